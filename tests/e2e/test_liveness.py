"""Liveness on a real server: silent peers are reaped by pings, churn leaves nothing behind."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import urllib.request
from pathlib import Path

import pytest
import websockets

from .harness import start_embedded_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def quick_ping_stack(tmp_path_factory):
    """``make run``'s server, pinging every 0.5 s and giving up after 0.5 s more."""
    stack = start_embedded_stack(
        tmp_path_factory.mktemp("liveness"),
        {"WEBSOCKET_PING_INTERVAL": "0.5", "WEBSOCKET_PING_TIMEOUT": "0.5"},
    )
    yield stack
    stack.stop()


def process_listeners(stack) -> int:
    with urllib.request.urlopen(f"{stack.servers[0].http}/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    return int(re.search(r"^katiedj_process_listeners\{[^}]*\} (\d+)$", text, re.M)[1])


def rss_kib(stack) -> int:
    status = Path(f"/proc/{stack.servers[0].process.pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+)", status, re.M)[1])


def silent_listener(port: int) -> socket.socket:
    """Completes the WebSocket handshake, then never reads or answers again."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /ws/networks/sample_net/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    return sock


async def wait_until(predicate, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while True:
            if await asyncio.to_thread(predicate):
                return
            await asyncio.sleep(0.1)


async def test_a_listener_that_stops_answering_pings_is_reaped(quick_ping_stack):
    stack = quick_ping_stack
    sock = silent_listener(stack.servers[0].port)
    try:
        await wait_until(lambda: process_listeners(stack) == 1)
        # Nothing is wrong at the TCP level; only the unanswered pings give it away.
        await wait_until(lambda: process_listeners(stack) == 0, seconds=5)
    finally:
        sock.close()


async def test_connect_disconnect_churn_leaves_nothing_behind(quick_ping_stack):
    stack = quick_ping_stack
    url = f"{stack.servers[0].ws}/ws/networks/sample_net/"

    async def churn(times: int) -> None:
        for i in range(times):
            ws = await websockets.connect(url)
            if i % 2:
                await ws.close()  # a polite goodbye
            else:
                ws.transport.abort()  # the peer just vanishes (RST)

    await churn(100)  # warm up: caches, allocator arenas
    await wait_until(lambda: process_listeners(stack) == 0)
    rss_before = rss_kib(stack)
    await churn(400)
    await wait_until(lambda: process_listeners(stack) == 0)
    async with websockets.connect(url) as survivor:  # the server still works normally
        status, _ = await asyncio.to_thread(
            stack.publish, {"network": "sample_net", "data": {"ok": True}}, stack.demo_key
        )
        assert status == 200
        assert await asyncio.wait_for(survivor.recv(), 5) == '{"ok":true}'
    growth = rss_kib(stack) - rss_before
    assert growth < 4 * 1024, f"RSS grew {growth} KiB over 400 connections"
