"""Stalled peer: how long a listener that never reads keeps its slot, descriptor and buffers.

Starts one KatieDJ server process through ``tests.e2e.harness`` (production: uvicorn on a
fresh PostgreSQL database and Redis, the Procfile's command line) with the settings as
deployed unless ``--env`` overrides them, creates a fresh network with ``--policy``, then
connects a healthy listener and a stalled one (a raw socket with a 4 KiB receive buffer that
completes the handshake and never reads) and publishes ``--payload-bytes`` messages at
``--rate`` until the server has dropped the stalled listener and closed its socket, or for
``--max-seconds``. Every 5 s it samples the server's listener count (``/metrics``) and the
stalled connection's kernel send queue (``ss``). Run from the repository root::

    .venv/bin/python -m bench.stalled_peer [--policy conflate|drop|disconnect] \\
        [--payload-bytes 1024] [--rate 20] [--max-seconds 150] [--env NAME=VALUE ...]

Prints the timeline and a JSON summary: when the listener's slot was freed, when the
server's socket was gone, the resets counted by reason, what the stalled peer read when it
finally did and how that ended (``reset``, ``eof`` or ``still open``), and whether the
healthy listener got every message in order. Exit status 0 when the stalled listener was
dropped and the healthy one lost nothing, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from websockets.asyncio.client import connect

from tests.e2e import harness

SAMPLE_EVERY = 5.0  # seconds between timeline samples


@dataclass
class Outcome:
    """What one run saw (seconds are from the stalled listener's handshake)."""

    policy: str
    payload_bytes: int
    rate: float
    published: int = 0
    slot_freed_after_s: float | None = None
    socket_gone_after_s: float | None = None
    resets: dict[str, int] = field(default_factory=dict)
    stalled_read_bytes: int = 0
    stalled_ending: str = ""
    healthy_got_all: bool = False
    timeline: list[tuple[float, int | None, str, int]] = field(default_factory=list)


def metrics_text(server: harness.ServerProcess) -> str:
    with urllib.request.urlopen(f"{server.http}/metrics", timeout=5) as response:  # noqa: S310
        return response.read().decode()


def process_listeners(server: harness.ServerProcess) -> int:
    found = re.search(r"^katiedj_process_listeners\{[^}]*\} (\d+)$", metrics_text(server), re.M)
    return int(found[1]) if found else 0


def resets(server: harness.ServerProcess) -> dict[str, int]:
    """``katiedj_connections_cut_total`` by reason (empty before the server counted any)."""
    pattern = r'^katiedj_connections_cut_total\{[^}]*reason="([a-z_]+)"\} (\d+)$'
    return {r: int(n) for r, n in re.findall(pattern, metrics_text(server), re.M) if int(n)}


def send_queue(server_port: int, client_port: int) -> tuple[int | None, str]:
    """The server side's kernel send queue (bytes) and TCP state; (None, "gone") if closed."""
    filter_ = f"( sport = :{server_port} and dport = :{client_port} )"
    fields = subprocess.run(
        ["ss", "-tnH", filter_], capture_output=True, text=True, check=False
    ).stdout.split()
    return (int(fields[2]), fields[0]) if len(fields) > 2 else (None, "gone")


def stalled_listener(port: int, slug: str) -> socket.socket:
    """Completes the WebSocket handshake with a 4 KiB receive buffer; never reads again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/networks/{slug}/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    if not response.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {response!r}")
    return sock


def read_what_is_left(sock: socket.socket) -> tuple[int, str]:
    """Bytes the stalled peer reads when it finally does, and how that ends."""
    sock.settimeout(10)
    read = 0
    try:
        while chunk := sock.recv(1 << 16):
            read += len(chunk)
    except ConnectionResetError:
        return read, "reset"
    except TimeoutError:
        return read, "still open"
    return read, "eof"


async def run(stack: harness.Stack, args: argparse.Namespace) -> Outcome:
    server = stack.servers[0]
    slug = f"stalled-{args.policy}"
    harness.manage(stack.env, "create_network", slug, "--org", "katiedj-demo",
                   "--backpressure", args.policy)  # fmt: skip
    key = harness.manage(stack.env, "create_api_key", "--org", "katiedj-demo", "--name", slug,
                         "--network", slug, "--rate-limit", "100000")  # fmt: skip
    key = key.strip().splitlines()[-1]
    outcome = Outcome(args.policy, args.payload_bytes, args.rate)
    before = process_listeners(server)
    received: list[int] = []
    async with connect(f"{server.ws}/ws/networks/{slug}/?format=envelope") as healthy:

        async def read_healthy() -> None:
            async for raw in healthy:
                received.append(json.loads(raw)["seq"])

        reader = asyncio.create_task(read_healthy())
        sock = await asyncio.to_thread(stalled_listener, server.port, slug)
        client_port = sock.getsockname()[1]
        start = time.monotonic()
        pad = "x" * args.payload_bytes
        next_sample = 0.0
        try:
            for i in range(1, int(args.max_seconds * args.rate) + 1):
                status, body = await asyncio.to_thread(
                    stack.publish, {"network": slug, "data": {"i": i, "pad": pad}}, key
                )
                if status != 200:
                    raise RuntimeError(f"publish answered {status}: {body}")
                outcome.published = body["seq"]
                now = time.monotonic() - start
                listeners = await asyncio.to_thread(process_listeners, server)
                queued, state = send_queue(server.port, client_port)
                if outcome.slot_freed_after_s is None and listeners == before + 1:
                    outcome.slot_freed_after_s = round(now, 1)
                if outcome.socket_gone_after_s is None and state == "gone":
                    outcome.socket_gone_after_s = round(now, 1)
                if now >= next_sample:
                    outcome.timeline.append((round(now, 1), queued, state, listeners - before))
                    next_sample += SAMPLE_EVERY
                if outcome.slot_freed_after_s is not None and outcome.socket_gone_after_s:
                    break
                await asyncio.sleep(max(0.0, start + i / args.rate - time.monotonic()))
            outcome.resets = await asyncio.to_thread(resets, server)
            read, ending = await asyncio.to_thread(read_what_is_left, sock)
            outcome.stalled_read_bytes, outcome.stalled_ending = read, ending
            for _ in range(100):  # the healthy listener's last frames: 10 s at most
                if received and received[-1] >= outcome.published:
                    break
                await asyncio.sleep(0.1)
            outcome.healthy_got_all = received == list(range(1, outcome.published + 1))
        finally:
            sock.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stalled_peer", description=__doc__)
    parser.add_argument("--policy", choices=["conflate", "drop", "disconnect"], default="conflate")
    parser.add_argument("--payload-bytes", type=int, default=1024)
    parser.add_argument("--rate", type=float, default=20.0, help="published messages/s")
    parser.add_argument("--max-seconds", type=float, default=150.0)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    missing = harness.production_services_available()
    if missing is not None:
        print(missing, file=sys.stderr)
        return 1
    stack = harness.start_production_stack(
        Path(tempfile.mkdtemp(prefix="stalled-peer-")), processes=1, extra_env=extra
    )
    try:
        outcome = asyncio.run(run(stack, args))
    finally:
        stack.stop()
    print("t (s)   kernel send queue (B)   TCP state    listeners (this run's)")
    for t, queued, state, listeners in outcome.timeline:
        print(f"{t:>5}   {queued if queued is not None else '-':>21}   {state:<11}  {listeners}")
    summary = asdict(outcome)
    del summary["timeline"]
    print(json.dumps(summary, indent=2))
    dropped = outcome.slot_freed_after_s is not None and outcome.socket_gone_after_s is not None
    return 0 if dropped and outcome.healthy_got_all else 1


if __name__ == "__main__":
    sys.exit(main())
