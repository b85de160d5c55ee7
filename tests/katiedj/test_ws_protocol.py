"""The WebSocket protocol's deadlines (katiedj/ws_protocol.py), on a loopback server in this
process: a real socket with a tiny receive buffer that stops reading, short deadlines.

Each test waits for an outcome with a generous timeout; none asserts how long it took.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shlex
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.server import ServerState

from katiedj import metrics
from katiedj.management.commands.serve import WS_PROTOCOL
from katiedj.ws_protocol import ListenerWebSocketProtocol
from tests.e2e.harness import REPO_ROOT, uvicorn_command

GENEROUS = 30.0
FRAME = {"type": "websocket.send", "text": "x" * 48_000}


class Probe(ListenerWebSocketProtocol):
    """The protocol under test, telling the test when its transport first paused."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paused = asyncio.Event()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.paused.set()


App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(app: App, **config: Any) -> AsyncIterator[tuple[int, list[Probe]]]:
    """A loopback server speaking the protocol under test; yields its port and connections."""
    options = {"ws_ping_interval": None, "ws_per_message_deflate": False, **config}
    loaded = Config(app=app, ws=Probe, lifespan="off", log_config=None, **options)
    loaded.load()
    state = ServerState()
    connections: list[Probe] = []

    def connection() -> Probe:
        connections.append(Probe(config=loaded, server_state=state, app_state={}))
        return connections[-1]

    server = await asyncio.get_running_loop().create_server(connection, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        for protocol in connections:
            protocol.stop_keepalive()
            if not protocol.disconnected:
                protocol.transport.abort()
        server.close()
        await server.wait_closed()
        for task in list(state.tasks):
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)


async def stalled_client(port: int) -> socket.socket:
    """Completes the handshake with a tiny receive buffer; reads nothing more by itself."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            "GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += await loop.sock_recv(sock, 1)  # the headers only
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


async def read_to_the_end(sock: socket.socket) -> tuple[bytes, str]:
    """What is left to read, and how it ended: "eof" or "reset"."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    async with asyncio.timeout(GENEROUS):
        try:
            while chunk := await loop.sock_recv(sock, 1 << 16):
                data += chunk
        except ConnectionResetError:
            return bytes(data), "reset"
    return bytes(data), "eof"


def close_code(data: bytes) -> int | None:
    """The code of the close frame that ends ``data``, if one does (unmasked, < 126 bytes)."""
    for length in range(2, 126):
        start = len(data) - length - 2
        if start >= 0 and data[start : start + 2] == bytes([0x88, length]):
            return struct.unpack("!H", data[start + 2 : start + 4])[0]
    return None


async def flood(send: Any) -> str:
    """Send big frames until the connection is gone (or 1,000 of them went out)."""
    try:
        for _ in range(1000):
            await send(FRAME)
    except ClientDisconnected:
        return "disconnected"
    except RuntimeError:
        return "closed"  # a send after websocket.close
    return "all sent"


def flooding_app(outcome: dict[str, Any]) -> App:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        outcome["flood"] = await flood(send)
        outcome["event"] = await receive()

    return app


@pytest.fixture
def deadlines(settings):
    """Short deadlines; each test lengthens the ones it must not hit."""
    settings.WEBSOCKET_WRITE_TIMEOUT = 0.3
    settings.WEBSOCKET_CLOSE_TIMEOUT = 0.3
    return settings


async def wait_for(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(GENEROUS):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


async def test_a_peer_that_stops_reading_is_reset_at_the_write_deadline(deadlines):
    outcome: dict[str, Any] = {}
    cut_before = metrics.current.cut["write_timeout"]
    async with serving(flooding_app(outcome)) as (port, connections):
        sock = await stalled_client(port)
        try:
            await wait_for(lambda: "event" in outcome)
            assert outcome == {"flood": "disconnected", "event": outcome["event"]}
            assert outcome["event"]["type"] == "websocket.disconnect"
            assert connections[0].cut_reason == "write_timeout"
            assert metrics.current.cut["write_timeout"] == cut_before + 1
            _, ending = await read_to_the_end(sock)
            assert ending == "reset"
        finally:
            sock.close()


async def test_a_slow_reader_that_keeps_reading_is_not_cut(deadlines):
    deadlines.WEBSOCKET_WRITE_TIMEOUT = GENEROUS  # the peer drains long before this
    deadlines.WEBSOCKET_CLOSE_TIMEOUT = GENEROUS
    outcome: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        for _ in range(200):  # ~9.6 MB: more than the socket buffers hold
            await send(FRAME)
        await send({"type": "websocket.close", "code": 1000})
        outcome["event"] = await receive()

    async with serving(app) as (port, connections):
        sock = await stalled_client(port)
        try:
            await wait_for(lambda: bool(connections) and connections[0].paused.is_set())
            data = bytearray()
            close_1000 = b"\x88\x02" + struct.pack("!H", 1000)
            async with asyncio.timeout(GENEROUS):
                while not data.endswith(close_1000):  # everything, the close frame last
                    data += await asyncio.get_running_loop().sock_recv(sock, 1 << 16)
            assert data.count(b"x") == 200 * len(FRAME["text"])
            assert connections[0].cut_reason is None
        finally:
            sock.close()


async def test_a_close_is_not_held_back_by_a_full_buffer_and_has_a_deadline(deadlines):
    deadlines.WEBSOCKET_WRITE_TIMEOUT = GENEROUS  # so the close deadline is what cuts
    outcome: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        flooding = asyncio.ensure_future(flood(send))
        await connections[0].paused.wait()
        await send({"type": "websocket.close", "code": 4413})  # as the consumer's _too_slow
        outcome["event"] = await receive()  # the application is told at once
        outcome["flood"] = await flooding

    async with serving(app) as (port, connections):
        sock = await stalled_client(port)
        try:
            await wait_for(lambda: "flood" in outcome)
            assert outcome["event"] == {"type": "websocket.disconnect", "code": 4413, "reason": ""}
            assert outcome["flood"] in ("disconnected", "closed")
            await wait_for(lambda: connections[0].disconnected)
            assert connections[0].cut_reason == "close_timeout"
            _, ending = await read_to_the_end(sock)
            assert ending == "reset"
        finally:
            sock.close()


async def test_a_flushed_close_that_is_never_answered_ends_in_a_plain_close(deadlines):
    outcome: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "last words"})
        await send({"type": "websocket.close", "code": 4413})
        outcome["event"] = await receive()

    async with serving(app) as (port, connections):
        sock = await stalled_client(port)
        try:
            await wait_for(lambda: bool(connections) and connections[0].disconnected)
            data, ending = await read_to_the_end(sock)
            assert (ending, close_code(data)) == ("eof", 4413)
            assert b"last words" in data
            assert connections[0].cut_reason is None
        finally:
            sock.close()


async def test_an_unanswered_ping_behind_unsent_bytes_is_a_reset(deadlines):
    deadlines.WEBSOCKET_WRITE_TIMEOUT = 0  # off: only the ping timeout can cut
    outcome: dict[str, Any] = {}
    async with serving(flooding_app(outcome), ws_ping_timeout=0.2) as (port, connections):
        sock = await stalled_client(port)
        try:
            await wait_for(lambda: bool(connections) and connections[0].paused.is_set())
            connections[0].send_keepalive_ping()  # what the ping interval would do
            await wait_for(lambda: "event" in outcome)
            assert outcome["flood"] == "disconnected"
            assert connections[0].cut_reason == "ping_timeout"
            _, ending = await read_to_the_end(sock)
            assert ending == "reset"
        finally:
            sock.close()


async def test_an_unanswered_ping_with_bytes_left_in_the_kernel_is_a_reset(deadlines):
    # The transport's buffer is empty, the kernel holds what the peer never read: a plain
    # close would leave an orphaned socket holding it for as long as the peer lives.
    outcome: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "x" * 20_000})  # > the client's buffer
        outcome["event"] = await receive()

    async with serving(app, ws_ping_timeout=0.2) as (port, connections):
        sock = await stalled_client(port)
        try:
            await wait_for(lambda: bool(connections) and connections[0].handshake_complete)
            protocol = connections[0]
            await wait_for(lambda: protocol.transport.get_write_buffer_size() == 0)
            assert protocol.unacknowledged() > 0
            protocol.send_keepalive_ping()
            await wait_for(lambda: "event" in outcome)
            assert protocol.cut_reason == "ping_timeout"
            _, ending = await read_to_the_end(sock)
            assert ending == "reset"
        finally:
            sock.close()


async def test_an_unanswered_ping_with_nothing_unread_is_uvicorns_1011_close(deadlines):
    outcome: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        outcome["event"] = await receive()

    async with serving(app, ws_ping_timeout=0.2) as (port, connections):
        sock = await stalled_client(port)
        try:
            await wait_for(lambda: bool(connections) and connections[0].handshake_complete)
            connections[0].send_keepalive_ping()  # read by the client's kernel, never answered
            await wait_for(lambda: "event" in outcome)
            data, ending = await read_to_the_end(sock)
            assert (ending, close_code(data)) == ("eof", 1011)
            assert connections[0].cut_reason is None
        finally:
            sock.close()


async def test_shutdown_does_not_wait_for_a_stalled_peer(deadlines):
    deadlines.WEBSOCKET_WRITE_TIMEOUT = GENEROUS
    outcome: dict[str, Any] = {}
    async with serving(flooding_app(outcome)) as (port, connections):
        sock = await stalled_client(port)
        try:
            await wait_for(lambda: bool(connections) and connections[0].paused.is_set())
            connections[0].shutdown()  # what uvicorn does to each connection on SIGTERM
            await wait_for(lambda: connections[0].disconnected)
            assert connections[0].cut_reason == "close_timeout"
        finally:
            sock.close()


def test_every_web_command_runs_the_protocol():
    procfile = (REPO_ROOT / "platform" / "Procfile").read_text()
    web = next(line for line in procfile.splitlines() if line.startswith("web:"))
    dockerfile = (REPO_ROOT / "platform" / "Dockerfile").read_text()
    cmd = json.loads(next(line for line in dockerfile.splitlines() if line.startswith("CMD "))[4:])
    for command in (shlex.split(web[4:]), shlex.split(cmd[-1]), uvicorn_command(1)):
        assert command[command.index("--ws") + 1] == WS_PROTOCOL, command
    module, name = WS_PROTOCOL.split(":")
    assert module == ListenerWebSocketProtocol.__module__
    assert name == ListenerWebSocketProtocol.__name__
