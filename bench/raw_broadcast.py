"""The yardstick for fan-out: a plain ``websockets`` server that serializes once and broadcasts.

It speaks just enough of KatieDJ's protocol for ``bench.fanout`` to drive it unchanged:

- listeners connect to ``ws://127.0.0.1:<port>/ws/networks/<slug>/`` (query string ignored,
  so entitlement tokens are accepted and not checked);
- ``POST /api/publish`` with ``API-KEY`` and ``{"network": …, "data": {…}}`` on
  ``--http-port`` answers the same receipt as KatieDJ after ``data`` has been serialized once
  (compact JSON, key order kept) and handed to ``websockets.broadcast`` for that network;
- ``GET /healthz`` answers 200 on both ports (the harness waits for it).

No permessage-deflate, 4 KiB inbound frames, pings every 20 s: as KatieDJ's uvicorn is run.
Publishing is plain HTTP/1.1 keep-alive on its own tiny asyncio protocol because the
``websockets`` server only parses GET requests. Both listen in one process on one event loop,
so the publish path and the fan-out share one core, as in a KatieDJ server process. Run::

    python -m bench.raw_broadcast --port 9001 --http-port 9002 --key secret
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections import defaultdict
from datetime import UTC, datetime
from http import HTTPStatus
from typing import cast

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response

from bench.measure import asyncio_runner

PATH_PREFIX = "/ws/networks/"
MAX_BODY_BYTES = 65_536


class Broadcaster:
    """Listeners by network and per-network sequence numbers."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.listeners: defaultdict[str, set[ServerConnection]] = defaultdict(set)
        self.seq: defaultdict[str, int] = defaultdict(int)

    def publish(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, object]]:
        """Check the key, serialize ``data`` once, broadcast; (status, JSON answer)."""
        if headers.get("api-key") != self.key:
            return 403, {"error": "Invalid API key"}
        try:
            payload = json.loads(body)
            network, data = payload["network"], payload["data"]
        except (ValueError, KeyError, TypeError):
            return 400, {"error": "Invalid JSON"}
        if not isinstance(data, dict):
            return 400, {"error": "data must be an object"}
        # The same bytes KatieDJ sends: compact separators, key order kept.
        frame = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        self.seq[network] += 1
        broadcast(self.listeners.get(network, ()), frame)
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return 200, {"message": "OK", "network": network, "seq": self.seq[network], "ts": ts}

    async def listen(self, ws: ServerConnection) -> None:
        """Register a listener until it leaves; what it sends is read and dropped."""
        slug = ws.request.path.split("?", 1)[0][len(PATH_PREFIX) :].strip("/")
        group = self.listeners[slug]
        group.add(ws)
        try:
            async for _ in ws:
                pass
        finally:
            group.discard(ws)


def health_or_refuse(ws: ServerConnection, request: Request) -> Response | None:
    """Answer /healthz; refuse paths other than /ws/networks/<slug>/ with 404."""
    if request.path == "/healthz":
        return ws.respond(HTTPStatus.OK, "ok\n")
    if not request.path.startswith(PATH_PREFIX):
        return ws.respond(HTTPStatus.NOT_FOUND, "not found\n")
    return None


class PublishProtocol(asyncio.Protocol):
    """Minimal HTTP/1.1 keep-alive server: Content-Length bodies, handled synchronously."""

    def __init__(self, broadcaster: Broadcaster) -> None:
        self.broadcaster = broadcaster
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if length > MAX_BODY_BYTES:
                self.respond(413, {"error": "Payload too large"}, close=True)
                return
            if len(self.buffer) < end + 4 + length:
                return  # the rest of the body is still on its way
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            method, path, *_ = [*head[0].split(" "), "", ""]
            if method == "POST" and path.rstrip("/") in ("/api/publish", "/publish"):
                status, answer = self.broadcaster.publish(headers, body)
            elif method == "GET" and path == "/healthz":
                status, answer = 200, {"status": "ok"}
            else:
                status, answer = 404, {"error": "Not found"}
            self.respond(status, answer, close=headers.get("connection") == "close")

    def respond(self, status: int, answer: dict[str, object], close: bool = False) -> None:
        assert self.transport is not None
        body = json.dumps(answer).encode()
        reason = HTTPStatus(status).phrase
        connection = "Connection: close\r\n" if close else ""
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{connection}\r\n"
        )
        self.transport.write(head.encode() + body)
        if close:
            self.transport.close()


async def serve_forever(host: str, port: int, http_port: int, key: str) -> None:
    """Both listeners until SIGTERM or SIGINT."""
    broadcaster = Broadcaster(key)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set_result, None)
    http_server = await loop.create_server(lambda: PublishProtocol(broadcaster), host, http_port)
    async with (
        http_server,
        serve(
            broadcaster.listen,
            host,
            port,
            process_request=health_or_refuse,
            compression=None,  # as uvicorn is run: --ws-per-message-deflate false
            max_size=4096,
            ping_interval=20,
            backlog=2048,  # uvicorn's default: a burst of handshakes is queued, not refused
        ),
    ):
        await stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_broadcast", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="WebSocket port")
    parser.add_argument("--http-port", type=int, required=True, help="publish (HTTP) port")
    parser.add_argument("--key", required=True, help="the API-KEY publishers must send")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args(argv)
    asyncio_runner(args.loop)(serve_forever(args.host, args.port, args.http_port, args.key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
