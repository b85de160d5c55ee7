"""Stalled peers are cut: a listener that completes the handshake and then never reads.

The stalled socket asks the kernel for a tiny receive buffer and never calls ``recv``, so
everything the server sends it piles up in the server's socket and transport buffers. The
server must reset it (freeing its listener slot, descriptor and buffers) while a healthy
listener of the same network gets every message. Deadlines are short here (2 s) so the tests
wait seconds; pings stay at their defaults (20 s + 20 s), far beyond what the tests wait.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import urllib.request

import pytest
import websockets

from .harness import (
    require_production_services,
    start_production_stack,
)
from .test_backpressure import PAD, network_with_policy

pytestmark = pytest.mark.e2e

QUICK_DEADLINES = {"WEBSOCKET_WRITE_TIMEOUT": "2", "WEBSOCKET_CLOSE_TIMEOUT": "2"}
PUBLISH_AT_MOST = 3000  # ~140 MB at 48 KB: far more than any deadline needs
GENEROUS = 60.0  # seconds to wait for what should take a few


@pytest.fixture(scope="module")
def quick_stack(tmp_path_factory):
    """One server process with short write and close deadlines. The production stack only:
    `make run`'s server runs the same protocol (tests/katiedj/test_ws_protocol.py checks that
    every command line names it), and the suite's time is better spent elsewhere."""
    require_production_services()
    tmp = tmp_path_factory.mktemp("stalled")
    stack = start_production_stack(tmp, processes=1, extra_env=QUICK_DEADLINES)
    yield stack
    stack.stop()


def metric(server, name: str) -> int:
    """Sum of a counter or gauge of this process in ``/metrics`` (all label sets)."""
    with urllib.request.urlopen(f"{server.http}/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    return sum(int(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\d+)$", text, re.M))


def stalled_socket(port: int, slug: str) -> socket.socket:
    """Completes the WebSocket handshake with a tiny receive buffer, then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/networks/{slug}/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    sock.settimeout(10)
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)  # the headers only: frames after them stay unread
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def read_to_the_end(sock: socket.socket, seconds: float) -> str:
    """Read what is left; "eof" or "reset" once the server's side is gone (raises
    TimeoutError if the server still holds the connection open)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(1 << 16):
            pass
    except ConnectionResetError:
        return "reset"
    return "eof"


async def wait_until(predicate, seconds: float = GENEROUS) -> None:
    async with asyncio.timeout(seconds):
        while True:
            if await asyncio.to_thread(predicate):
                return
            await asyncio.sleep(0.2)


async def publish_until(stack, slug: str, key: str, done: asyncio.Event) -> int:
    """Publish ~48 KB messages until ``done``; returns the last seq published."""
    last = 0
    for i in range(1, PUBLISH_AT_MOST + 1):
        if done.is_set():
            break
        status, body = await asyncio.to_thread(
            stack.publish, {"network": slug, "data": {"i": i, "pad": PAD}}, key
        )
        assert status == 200, body
        last = body["seq"]
    return last


async def cut_while_publishing(stack, policy: str) -> None:
    """A healthy and a stalled listener of a fresh ``policy`` network; publish until the
    server cuts the stalled one, then check what each side sees."""
    server = stack.servers[0]
    slug, key = network_with_policy(stack, policy)

    def listeners() -> int:
        return metric(server, "katiedj_process_listeners")

    listeners_before = listeners()
    cut_before = metric(server, "katiedj_connections_cut_total")
    received: list[int] = []

    async def read(healthy) -> None:
        async for raw in healthy:
            received.append(json.loads(raw)["seq"])

    url = f"{server.ws}/ws/networks/{slug}/?format=envelope"
    async with websockets.connect(url) as healthy:
        reader = asyncio.create_task(read(healthy))
        stalled = await asyncio.to_thread(stalled_socket, server.port, slug)
        try:
            await wait_until(lambda: listeners() == listeners_before + 2)
            done = asyncio.Event()
            publisher = asyncio.create_task(publish_until(stack, slug, key, done))
            try:
                # The stalled listener's slot is freed: only the healthy one is counted.
                await wait_until(lambda: listeners() == listeners_before + 1)
            finally:
                done.set()
                last = await publisher
            # ... and its connection reset (a 4413 close frees the slot first, then has
            # WEBSOCKET_CLOSE_TIMEOUT to get out).
            await wait_until(lambda: metric(server, "katiedj_connections_cut_total") > cut_before)
            # The server's side is gone: reading what is left ends (reset or end of stream).
            assert await asyncio.to_thread(read_to_the_end, stalled, GENEROUS) in ("reset", "eof")
            # The healthy listener lost nothing, in order, and is still connected.
            await wait_until(lambda: bool(received) and received[-1] == last)
            assert received == list(range(1, last + 1))
            assert not reader.done()
        finally:
            stalled.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def test_a_stalled_listener_is_cut_and_the_others_lose_nothing(quick_stack):
    await cut_while_publishing(quick_stack, "conflate")


async def test_a_stalled_listener_of_a_disconnect_network_is_cut(quick_stack):
    await cut_while_publishing(quick_stack, "disconnect")
