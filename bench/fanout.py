"""Fan-out benchmark: one open-loop publisher, N WebSocket listeners, real server processes.

Starts a KatieDJ stack through ``tests.e2e.harness``, connects N listeners to ``sample_net``,
publishes R messages/s over HTTP for S seconds (scheduled by the clock, never waiting for the
previous POST), drains, then reports deliveries, losses, latency and the CPU each side used.
Run from the repository root::

    .venv/bin/python -m bench.fanout --listeners 1000 --rate 100 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import timeit
import uuid
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.measure import (
    RedisStats,
    asyncio_runner,
    core_busy,
    core_jiffies,
    cpu_list,
    distribution_ms,
    event_loop,
    git_commit,
    other_processes,
    pin_process,
    proc_cpu_seconds,
    proc_status_kib,
    process_cpu_table,
    raise_fd_limit,
    self_cpu_seconds,
)
from tests.e2e import harness

FRAME_PREFIX = b'{"id":'
# Bytes of a frame around the padding: {"id":123456,"t":1234567890.123456,"pad":""}
FRAME_OVERHEAD = 48
WARMUP_ID = -1
NOT_SENT = "not sent (window over)"
# Our own Redis db (the e2e tests use 10, `make test` 9): runs never touch others' keys.
BENCH_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
STACKS = ("production", "embedded", "raw")


# --- Configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Everything one run depends on (echoed into the JSON report)."""

    listeners: int
    rate: float
    duration: float
    payload_bytes: int
    network: str
    stack: str
    processes: int
    server_cpus: str | None
    client_cpu: int | None
    compression: str
    connect_concurrency: int
    connect_timeout: float
    source_addresses: int
    publish_connections: int
    post_timeout: float
    drain_max: float
    drain_stall: float
    debug: bool
    loop: str
    redis_url: str
    json_path: str | None


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``bench.fanout`` and ``bench.targets`` (same meaning in both)."""
    parser.add_argument("--payload-bytes", type=int, default=1024, help="frame size (~bytes)")
    parser.add_argument("--server-cpus", default="0", help="taskset list for the servers")
    parser.add_argument("--client-cpu", type=int, default=1, help="core for this load process")
    parser.add_argument("--no-pin", action="store_true", help="pin neither server nor client")
    parser.add_argument(
        "--compression",
        choices=["deflate", "none"],
        default="deflate",
        help="permessage-deflate offered by listeners (browsers offer it; default)",
    )
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument(
        "--source-addresses",
        type=int,
        default=1,
        help="spread listeners over 127.0.0.1..N (ephemeral ports are per source address)",
    )
    parser.add_argument("--publish-connections", type=int, default=32, help="keep-alive pool")
    parser.add_argument("--post-timeout", type=float, default=30.0)
    parser.add_argument("--drain-stall", type=float, default=3.0, help="stop after s idle")
    parser.add_argument("--debug", action="store_true", help="servers with DEBUG=true")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument(
        "--redis-url", default=BENCH_REDIS_URL, help="Redis for the production stack"
    )
    parser.add_argument("--json", dest="json_path", help="write the report here")


def parse_args(argv: list[str] | None = None) -> Config:
    """Command-line options to a Config."""
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    parser.add_argument("--listeners", type=int, required=True, help="WebSocket listeners")
    parser.add_argument("--rate", type=float, required=True, help="published messages/s")
    parser.add_argument("--duration", type=float, required=True, help="publish seconds")
    parser.add_argument("--network", default="sample_net", help="network slug (demo key's)")
    parser.add_argument(
        "--stack",
        "--target",
        choices=STACKS,
        default="production",
        help="KatieDJ as deployed, the embedded default, or the raw websockets yardstick",
    )
    parser.add_argument("--processes", type=int, default=1, help="server processes")
    parser.add_argument("--connect-concurrency", type=int, default=50)
    parser.add_argument("--drain-max", type=float, help="drain cap, s (default max(5, S))")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.listeners < 1 or args.rate <= 0 or args.duration <= 0:
        parser.error("--listeners, --rate and --duration must be positive")
    if args.stack in ("embedded", "raw") and args.processes != 1:
        parser.error(f"the {args.stack} stack is one process")
    return config_from(args)


def config_from(args: argparse.Namespace) -> Config:
    """A Config from parsed options; pinning only where taskset and two cores exist."""
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) > 1
    return Config(
        listeners=args.listeners,
        rate=args.rate,
        duration=args.duration,
        payload_bytes=args.payload_bytes,
        network=args.network,
        stack=args.stack,
        processes=args.processes,
        server_cpus=args.server_cpus if pin else None,
        client_cpu=args.client_cpu if pin else None,
        compression=args.compression,
        connect_concurrency=args.connect_concurrency,
        connect_timeout=args.connect_timeout,
        source_addresses=max(1, args.source_addresses),
        publish_connections=args.publish_connections,
        post_timeout=args.post_timeout,
        drain_max=args.drain_max if args.drain_max is not None else max(5.0, args.duration),
        drain_stall=args.drain_stall,
        debug=args.debug,
        loop=event_loop(args.loop),
        redis_url=args.redis_url,
        json_path=args.json_path,
    )


# --- Processes ----------------------------------------------------------------------------


def server_cores(cfg: Config) -> int:
    """How many cores the server processes can run on together."""
    if cfg.server_cpus is not None:
        return len(cpu_list(cfg.server_cpus))
    return min(cfg.processes, os.cpu_count() or 1)


# The benchmark measures fan-out, not the per-key rate limiter (default 50 msg/s).
# Every load client connects from 127.0.0.1: the per-address listener limit (a defence
# against one stranger holding many sockets) would refuse all but the first 100.
BENCH_ENV = {"PUBLISH_RATE_PER_SECOND": "1000000", "LISTENER_CONNECTIONS_PER_ADDRESS": "0"}


@dataclass
class RawServerProcess(harness.ServerProcess):
    """``bench.raw_broadcast``: WebSockets on ``port``, publishing on ``http_port``."""

    http_port: int = 0

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def pinned(cfg: Config, command: list[str]) -> list[str]:
    """``command`` under ``taskset`` on the server cores, when pinning."""
    if cfg.server_cpus is None:
        return command
    return ["taskset", "-c", cfg.server_cpus, *command]


def start_servers(cfg: Config, stack: harness.Stack, tmp: Path, count: int) -> None:
    """Stop the stack's servers and start ``count`` fresh ones, pinned (production or raw).

    Fresh processes start each measurement from a cold cache and an unfragmented heap, so
    memory per connection is not blurred by an earlier run on the same process.
    """
    for server in stack.servers:
        server.stop()
    stack.servers.clear()
    for index in range(count):
        port = harness.free_port()
        log = tmp / f"bench-{stack.name}{index}-{port}.log"
        server: harness.ServerProcess
        if stack.name == "raw":
            http_port = harness.free_port()
            command = [sys.executable, "-m", "bench.raw_broadcast", "--port", str(port),
                       "--http-port", str(http_port), "--key", stack.demo_key,
                       "--loop", cfg.loop]  # fmt: skip
            server = RawServerProcess(pinned(cfg, command), stack.env, port, log)
            server.http_port = http_port
        else:
            server = harness.ServerProcess(
                pinned(cfg, harness.uvicorn_command(port)), stack.env, port, log
            )
        stack.servers.append(server)
        server.start()


def start_stack(cfg: Config, tmp: Path) -> harness.Stack:
    """The stack under test; production and raw servers run pinned via ``taskset``."""
    if cfg.stack == "raw":
        env = {**harness.base_env(), "DEBUG": "false"}
        stack = harness.Stack("raw", env, [], demo_key="raw-" + uuid.uuid4().hex)
    elif cfg.stack == "embedded":
        stack = harness.start_embedded_stack(tmp, BENCH_ENV)
        if cfg.server_cpus is not None:
            for server in stack.servers:
                assert server.process is not None
                pin_process(server.process.pid, cpu_list(cfg.server_cpus))
        return stack
    else:
        missing = harness.production_services_available()
        if missing:
            raise SystemExit(missing)
        stack = harness.start_production_stack(
            tmp, processes=0, redis_url=cfg.redis_url, extra_env=BENCH_ENV
        )
        if not cfg.debug:
            stack.env.update({"DEBUG": "false", "SECRET_KEY": uuid.uuid4().hex * 2})
    try:
        start_servers(cfg, stack, tmp, cfg.processes)
    except BaseException:
        stack.stop()
        raise
    return stack


# --- Listeners ----------------------------------------------------------------------------


class Tally:
    """Frames received across all listeners, for the drain's progress check.

    Ids below ``first_id`` belong to the warm-up (negative) or to an earlier publish window
    (``stale``): a session may run several windows on the same sockets.
    """

    __slots__ = ("first_id", "received", "stale", "warmup")

    def __init__(self) -> None:
        self.received = 0
        self.warmup = 0
        self.stale = 0
        self.first_id = 0


class Listener:
    """One WebSocket: the ids it received, in order, and each publish→receive latency."""

    __slots__ = ("closed_by_peer", "closing", "ids", "latencies", "ws")

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = array("q")
        self.latencies = array("d")
        self.closing = False
        self.closed_by_peer: str | None = None


def parse_frame(frame: bytes | str) -> tuple[int, float]:
    """Message id and send time from a frame, by slicing (the fields come first)."""
    if isinstance(frame, str):
        frame = frame.encode()
    if frame.startswith(FRAME_PREFIX):
        comma = frame.index(b",", 6)
        return int(frame[6:comma]), float(frame[comma + 5 : frame.index(b",", comma + 1)])
    data = json.loads(frame)
    return int(data["id"]), float(data["t"])


async def listen(listener: Listener, tally: Tally) -> None:
    """Record every frame until the connection closes."""
    recv = listener.ws.recv
    add_id = listener.ids.append
    add_latency = listener.latencies.append
    now = time.time
    try:
        while True:
            frame = await recv(decode=False)
            received_at = now()
            message_id, sent_at = parse_frame(frame)
            if message_id < tally.first_id:
                if message_id < 0:
                    tally.warmup += 1
                else:
                    tally.stale += 1
                continue
            add_id(message_id)
            add_latency(received_at - sent_at)
            tally.received += 1
    except ConnectionClosed as closed:
        if not listener.closing:
            rcvd = closed.rcvd
            listener.closed_by_peer = (
                f"close {rcvd.code} {rcvd.reason}".strip() if rcvd else "no close frame"
            )


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:160]


@dataclass
class ConnectResult:
    listeners: list[Listener]
    failures: Counter[str]
    seconds: float
    durations: list[float]


async def open_listeners(cfg: Config, urls: list[str]) -> ConnectResult:
    """Open ``cfg.listeners`` WebSockets, ``connect_concurrency`` at a time, spread over urls.

    Listener i connects to ``urls[i % len(urls)]`` (one URL per server process, or one per
    listener when each carries its own token) from 127.0.0.(1 + i % source_addresses).
    """
    gate = asyncio.Semaphore(cfg.connect_concurrency)
    failures: Counter[str] = Counter()
    durations: list[float] = []

    async def one(index: int) -> Listener | None:
        extra: dict[str, Any] = {}
        if cfg.source_addresses > 1:
            # Each source address has its own ~28k ephemeral ports towards one server port.
            extra["local_addr"] = (f"127.0.0.{1 + index % cfg.source_addresses}", 0)
        async with gate:
            started = time.perf_counter()
            try:
                ws = await connect(
                    urls[index % len(urls)],
                    open_timeout=cfg.connect_timeout,
                    ping_interval=None,  # never let a busy client drop a slow server
                    close_timeout=2,
                    compression="deflate" if cfg.compression == "deflate" else None,
                    **extra,
                )
            except Exception as error:
                failures[describe_error(error)] += 1
                return None
            durations.append(time.perf_counter() - started)
            return Listener(ws)

    started = time.perf_counter()
    opened = await asyncio.gather(*(one(i) for i in range(cfg.listeners)))
    return ConnectResult(
        [item for item in opened if item is not None],
        failures,
        time.perf_counter() - started,
        durations,
    )


async def close_listeners(listeners: list[Listener], tasks: list[asyncio.Task[None]]) -> None:
    """Close every socket (bounded wait), then stop the readers."""
    for listener in listeners:
        listener.closing = True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(item.ws.close() for item in listeners), return_exceptions=True), 15
        )
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- Publisher ----------------------------------------------------------------------------


@dataclass
class PublishLog:
    """What the publisher did: send and due times by id, accepted ids, statuses, timings."""

    due_at: dict[int, float] = field(default_factory=dict)  # wall clock it was scheduled for
    sent_at: dict[int, float] = field(default_factory=dict)  # wall clock just before its POST
    accepted: set[int] = field(default_factory=set)
    statuses: Counter[str] = field(default_factory=Counter)
    post_seconds: list[float] = field(default_factory=list)
    queue_wait: list[float] = field(default_factory=list)  # due → POST start
    schedule_lag: list[float] = field(default_factory=list)  # due → enqueued (client loop lag)
    started: float = 0.0  # wall clock of the first due time
    finished: float = 0.0  # wall clock when the last POST ended
    cutoff: float = 0.0  # wall clock when the drain ended: later frames do not count
    first_id: int = 0  # ids of this window are first_id, first_id + 1, ...
    scheduled: int = 0


class Publisher:
    """POSTs ``{"network", "data": {"id", "t", "pad"}}`` from a FIFO over keep-alive sockets.

    Each of ``publish_connections`` workers owns one persistent connection, so a slow server
    makes messages wait in the publisher's queue (measured) rather than in an HTTP pool.
    """

    def __init__(self, cfg: Config, urls: list[str], key: str) -> None:
        self.cfg = cfg
        self.urls = urls
        self.headers = {"API-KEY": key, "Content-Type": "application/json"}
        self.pad_chars = max(0, cfg.payload_bytes - FRAME_OVERHEAD)
        self.random = random.Random(20240501)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self.clients = [
            httpx.AsyncClient(limits=limits, timeout=cfg.post_timeout)
            for _ in range(cfg.publish_connections)
        ]

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients))

    def body(self, message_id: int, sent_at: float) -> bytes:
        # Random hex padding: if deflate is negotiated it does real work.
        pad = self.random.randbytes(self.pad_chars // 2 + 1).hex()[: self.pad_chars]
        data = {"id": message_id, "t": sent_at, "pad": pad}
        return json.dumps({"network": self.cfg.network, "data": data}).encode()

    async def post(self, client: httpx.AsyncClient, message_id: int, log: PublishLog) -> int:
        """One POST; the send time is taken just before it. Returns the status (0: error)."""
        sent_at = time.time()
        body = self.body(message_id, sent_at)
        log.sent_at[message_id] = sent_at
        started = time.perf_counter()
        try:
            response = await client.post(
                self.urls[message_id % len(self.urls)], content=body, headers=self.headers
            )
        except httpx.HTTPError as error:
            log.statuses[type(error).__name__] += 1
            return 0
        log.post_seconds.append(time.perf_counter() - started)
        log.statuses[str(response.status_code)] += 1
        if response.status_code == 200:
            log.accepted.add(message_id)
        return response.status_code

    async def worker(
        self, client: httpx.AsyncClient, queue: asyncio.Queue[tuple[int, float] | None],
        log: PublishLog, stop_sending: float,
    ) -> None:  # fmt: skip
        """Send queued messages in order; those still queued when the window ends are not."""
        while (item := await queue.get()) is not None:
            message_id, due = item
            now = time.perf_counter()
            if now > stop_sending:
                log.statuses[NOT_SENT] += 1
                continue
            log.queue_wait.append(now - due)
            await self.post(client, message_id, log)

    async def run(self, rate: float, duration: float, first_id: int = 0) -> PublishLog:
        """Open loop: message i is due at start + i/rate whatever happened to the others."""
        total = round(rate * duration)
        log = PublishLog(first_id=first_id, scheduled=total)
        interval = 1.0 / rate
        queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
        origin = time.perf_counter() + 0.01
        log.started = time.time() + 0.01
        stop_sending = origin + total * interval
        workers = [
            asyncio.create_task(self.worker(client, queue, log, stop_sending))
            for client in self.clients
        ]
        for index in range(total):
            due = origin + index * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            log.schedule_lag.append(time.perf_counter() - due)
            log.due_at[first_id + index] = log.started + index * interval
            queue.put_nowait((first_id + index, due))
        for _ in workers:
            queue.put_nowait(None)
        _, pending = await asyncio.wait(workers, timeout=self.cfg.post_timeout + 5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        log.finished = time.time()
        return log


# --- The run ------------------------------------------------------------------------------


@dataclass
class Drain:
    seconds: float
    stopped_because: str
    tail_rate: float  # deliveries/s over the drain's last second


async def drain(cfg: Config, tally: Tally, expected: int) -> Drain:
    """Wait until every expected frame arrived, nothing arrived for a while, or the cap."""
    started = time.perf_counter()
    samples: list[tuple[float, int]] = [(started, tally.received)]
    last_progress = started
    reason = "all delivered"
    while tally.received < expected:
        await asyncio.sleep(0.1)
        now = time.perf_counter()
        if tally.received != samples[-1][1]:
            last_progress = now
        samples.append((now, tally.received))
        if now - last_progress >= cfg.drain_stall:
            reason = f"no progress for {cfg.drain_stall:g} s"
            break
        if now - started >= cfg.drain_max:
            reason = f"cap of {cfg.drain_max:g} s"
            break
    end_time, end_count = samples[-1]
    then_time, then_count = next(s for s in samples if s[0] >= end_time - 1.0)
    span = end_time - then_time
    tail = (end_count - then_count) / span if span > 0 else 0.0
    return Drain(end_time - started, reason, tail)


def deliveries(listeners: list[Listener], log: PublishLog, starts: list[int]) -> dict[str, Any]:
    """Count delivered, duplicated, reordered and unexpected frames; latency percentiles.

    ``starts[i]``: how many ids listener i had recorded before this window began.
    """
    delivered = duplicates = reordered = unexpected = in_window = late = 0
    latencies: list[float] = []
    from_due: list[float] = []
    last_received = 0.0
    accepted, sent_at, due_at = log.accepted, log.sent_at, log.due_at
    for number, listener in enumerate(listeners):
        seen: set[int] = set()
        previous = -1
        start = starts[number]
        ids, received_after = listener.ids[start:], listener.latencies[start:]
        for message_id, latency in zip(ids, received_after, strict=True):
            if message_id in seen:
                duplicates += 1
                continue
            seen.add(message_id)
            if message_id < previous:
                reordered += 1
            previous = message_id
            if message_id not in accepted:
                unexpected += 1
                continue
            received = sent_at[message_id] + latency
            if received > log.cutoff:
                late += 1
                continue
            delivered += 1
            latencies.append(latency)
            from_due.append(received - due_at[message_id])
            last_received = max(last_received, received)
            if received <= log.finished:
                in_window += 1
    span = last_received - log.started
    publish_span = log.finished - log.started
    return {
        "delivered": delivered,
        "duplicates": duplicates,
        "reordered": reordered,
        "unexpected": unexpected,
        "after_drain": late,
        "delivered_per_s": round(delivered / span, 1) if span > 0 else None,
        "delivered_in_publish_window_per_s": (
            round(in_window / publish_span, 1) if publish_span > 0 else None
        ),
        "first_publish_to_last_delivery_s": round(span, 3) if delivered else None,
        "latency_ms": distribution_ms(latencies),
        "latency_from_due_ms": distribution_ms(from_due),
    }


def measure_parse_cost(payload_bytes: int) -> dict[str, float]:
    """ns per frame: the listener's slice parser against a full ``json.loads``."""
    pad = "a" * max(0, payload_bytes - FRAME_OVERHEAD)
    frame = json.dumps({"id": 123456, "t": time.time(), "pad": pad}, separators=(",", ":"))
    raw = frame.encode()
    rounds = 20_000
    sliced = timeit.timeit(lambda: parse_frame(raw), number=rounds) / rounds
    loaded = timeit.timeit(lambda: json.loads(raw), number=rounds) / rounds
    return {"slice_parse_ns": round(sliced * 1e9), "json_loads_ns": round(loaded * 1e9)}


class ServerProbe:
    """CPU and memory of the stack's server processes, summed."""

    def __init__(self, stack: harness.Stack) -> None:
        self.pids = [server.process.pid for server in stack.servers if server.process]

    def cpu(self) -> float:
        return sum(self.cpu_each())

    def cpu_each(self) -> list[float]:
        """CPU seconds of each server process, in ``pids`` order."""
        return [proc_cpu_seconds(pid) for pid in self.pids]

    def rss_kib(self) -> int:
        return sum(proc_status_kib(pid, "VmRSS") for pid in self.pids)

    def peak_kib(self) -> int:
        return sum(proc_status_kib(pid, "VmHWM") for pid in self.pids)


@dataclass
class Window:
    """One publish window as measured, before it is counted (see ``Session.summarize``)."""

    log: PublishLog
    starts: list[int]
    expected: int
    drained: Drain
    wall: float
    server_cpu_each: list[float]
    client_cpu: float
    redis: dict[str, float] | None
    machine: dict[str, Any]
    rss_end: int
    rss_peak: int


class Session:
    """Listeners connected to one stack, measured over one or more publish windows.

    ``bench.fanout`` runs one window; ``bench.targets`` reuses the same sockets for a rate
    ramp. Server pids are read when the session starts, so restart servers between sessions.
    """

    def __init__(self, cfg: Config, stack: harness.Stack) -> None:
        self.cfg = cfg
        self.stack = stack
        self.probe = ServerProbe(stack)
        self.redis_stats = RedisStats(stack.env.get("REDIS_URL"))
        self.ws_urls = [f"{server.ws}/ws/networks/{cfg.network}/" for server in stack.servers]
        http_urls = [f"{server.http}/api/publish" for server in stack.servers]
        self.publisher = Publisher(cfg, http_urls, stack.demo_key)
        self.listeners: list[Listener] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.tally = Tally()
        self.next_id = 0
        self.closed = False

    async def connect(self) -> dict[str, Any]:
        """Open the listeners; the ``connect`` and ``server_rss_kib`` report sections."""
        probe = self.probe
        rss_idle = probe.rss_kib()
        cpu_before, redis_before = probe.cpu(), self.redis_stats.sample()
        connected = await open_listeners(self.cfg, self.ws_urls)
        self.listeners = connected.listeners
        self.tasks = [asyncio.create_task(listen(item, self.tally)) for item in self.listeners]
        rss_connected = probe.rss_kib()
        count = len(self.listeners)
        return {
            "server_pids": probe.pids,
            "connect": {
                "requested": self.cfg.listeners,
                "connected": count,
                "failed": sum(connected.failures.values()),
                "failures": dict(connected.failures),
                "seconds": round(connected.seconds, 3),
                "per_connection_ms": distribution_ms(connected.durations),
                "server_cpu_s": round(probe.cpu() - cpu_before, 3),
                "redis": RedisStats.delta(redis_before, self.redis_stats.sample()),
            },
            "server_rss_kib": {
                "before_listeners": rss_idle,
                "after_connect": rss_connected,
                "per_listener": round((rss_connected - rss_idle) / count, 1) if count else 0,
            },
        }

    async def warm_up(self, wait: float = 15.0) -> dict[str, Any]:
        """Publish one unmeasured message and wait until every open listener has it.

        Caches get warm and every subscription is proven live (or, for idle and paid
        connects, this is the check that every socket really joined its network).
        """
        self.tally.warmup = 0
        started = time.perf_counter()
        status = await self.publisher.post(self.publisher.clients[0], WARMUP_ID, PublishLog())
        for _ in range(round(wait / 0.05)):
            if self.tally.warmup >= self.open_count():
                break
            await asyncio.sleep(0.05)
        return {
            "status": status,
            "delivered": self.tally.warmup,
            "seconds": round(time.perf_counter() - started, 3),
        }

    def open_count(self) -> int:
        """Listeners the server has not closed."""
        return sum(1 for item in self.listeners if item.closed_by_peer is None)

    async def publish_window(self, rate: float, duration: float) -> Window:
        """Publish open-loop at ``rate`` for ``duration`` s, drain, take the CPU accounting."""
        tally, probe = self.tally, self.probe
        first_id = self.next_id
        self.next_id += round(rate * duration)
        tally.first_id, tally.received = first_id, 0
        starts = [len(item.ids) for item in self.listeners]
        server_cpu0, client_cpu0 = probe.cpu_each(), self_cpu_seconds()
        redis0 = self.redis_stats.sample()
        cores0, processes0 = core_jiffies(), process_cpu_table()
        wall0 = time.perf_counter()
        log = await self.publisher.run(rate, duration, first_id)
        expected = len(self.listeners) * len(log.accepted)
        drained = await drain(self.cfg, tally, expected)
        log.cutoff = time.time()
        wall = time.perf_counter() - wall0
        return Window(
            log=log,
            starts=starts,
            expected=expected,
            drained=drained,
            wall=wall,
            server_cpu_each=[
                after - before for before, after in zip(server_cpu0, probe.cpu_each(), strict=True)
            ],
            client_cpu=self_cpu_seconds() - client_cpu0,
            redis=RedisStats.delta(redis0, self.redis_stats.sample()),
            machine={
                "core_busy": core_busy(cores0, core_jiffies()),
                "busiest_other_processes": other_processes(
                    processes0, process_cpu_table(), {*probe.pids, os.getpid()}
                ),
                "loadavg": [round(value, 2) for value in os.getloadavg()],
            },
            rss_end=probe.rss_kib(),
            rss_peak=probe.peak_kib(),
        )

    async def settle(self, quiet: float = 1.0, cap: float = 60.0) -> None:
        """Wait until no frame arrived for ``quiet`` s, so a backlog cannot leak onward."""
        started = last_change = time.perf_counter()
        seen = self.frames_seen()
        while (now := time.perf_counter()) - last_change < quiet and now - started < cap:
            await asyncio.sleep(0.1)
            if (count := self.frames_seen()) != seen:
                seen, last_change = count, time.perf_counter()

    def frames_seen(self) -> int:
        return self.tally.received + self.tally.stale + self.tally.warmup

    def summarize(self, window: Window) -> dict[str, Any]:
        """The ``publish``, ``deliveries``, ``cpu`` … report sections of one window."""
        log, cfg = window.log, self.cfg
        counted = deliveries(self.listeners, log, window.starts)
        delivered = counted["delivered"]
        wall, client_cpu = window.wall, window.client_cpu
        server_cpu = sum(window.server_cpu_each)
        not_sent = log.statuses.get(NOT_SENT, 0)
        return {
            "publish": {
                "scheduled": log.scheduled,
                "accepted_200": len(log.accepted),
                "errors": sum(
                    n for status, n in log.statuses.items() if status not in ("200", NOT_SENT)
                ),
                "unanswered": len(log.sent_at) - (sum(log.statuses.values()) - not_sent),
                "statuses": dict(log.statuses),
                "post_ms": distribution_ms(log.post_seconds),
                "schedule_lag_ms": distribution_ms(log.schedule_lag),
                "queue_wait_ms": distribution_ms(log.queue_wait),
                "sent": len(log.sent_at),
                "seconds": round(log.finished - log.started, 3),
            },
            "expected": window.expected,
            "deliveries": {
                **counted,
                "lost": window.expected - delivered,
                "from_earlier_windows": self.tally.stale,
            },
            "drain": asdict(window.drained),
            "dropped_listeners": dict(
                Counter(item.closed_by_peer for item in self.listeners if item.closed_by_peer)
            ),
            "cpu": {
                "window_s": round(wall, 3),
                "server_s": round(server_cpu, 3),
                "server_s_each": [round(seconds, 3) for seconds in window.server_cpu_each],
                "server_util": round(server_cpu / wall / server_cores(cfg), 3),
                "server_us_per_delivery": (
                    round(server_cpu / delivered * 1e6, 1) if delivered else None
                ),
                "client_s": round(client_cpu, 3),
                "client_util": round(client_cpu / wall, 3),
                "client_us_per_delivery": (
                    round(client_cpu / delivered * 1e6, 1) if delivered else None
                ),
            },
            "redis": window.redis,
            "machine_during_window": window.machine,
            "server_rss_end_kib": {"end": window.rss_end, "peak": window.rss_peak},
        }

    async def close(self) -> None:
        """Close the publisher and every socket (once)."""
        if not self.closed:
            self.closed = True
            await self.publisher.aclose()
            await close_listeners(self.listeners, self.tasks)


async def run(cfg: Config, stack: harness.Stack, session: Session | None = None) -> dict[str, Any]:
    """Connect, warm up, publish, drain, measure; always closes the listeners."""
    session = session or Session(cfg, stack)
    try:
        result = await session.connect()
        # Warm-up: caches filled, every subscription proven live; not measured.
        result["warmup"] = await session.warm_up()
        await asyncio.sleep(0.5)
        window = await session.publish_window(cfg.rate, cfg.duration)
    finally:
        await session.close()
    # Counted after closing, as frames still arriving count as "arrived after the drain".
    result.update(session.summarize(window))
    result["server_rss_kib"].update(result.pop("server_rss_end_kib"))
    return result


# --- Report -------------------------------------------------------------------------------


def server_log_problems(stack: harness.Stack) -> dict[str, int]:
    """Lines that look like errors in the server logs."""
    problems: Counter[str] = Counter()
    for server in stack.servers:
        if server.log_path.exists():
            for line in server.log_path.read_text(errors="replace").splitlines():
                if "Traceback" in line or " ERROR " in line or line.startswith("ERROR"):
                    problems[line.strip()[:120]] += 1
    return dict(problems.most_common(10))


def fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {fmt(item)}" for key, item in value.items()) or "-"
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(report: dict[str, Any]) -> str:
    """The report as an aligned two-column table."""
    cfg, res = report["config"], report["results"]
    conn, pub, dlv, cpu = res["connect"], res["publish"], res["deliveries"], res["cpu"]
    rss = res["server_rss_kib"]
    rows: list[tuple[str, Any]] = [
        ("stack", f"{cfg['stack']} x{cfg['processes']}, server cpus {cfg['server_cpus']}, "
                  f"client cpu {cfg['client_cpu']}, ws compression {cfg['compression']}"),
        ("load", f"{cfg['listeners']} listeners, {cfg['rate']:g} msg/s for {cfg['duration']:g} s, "
                 f"~{cfg['payload_bytes']} B frames"),
        ("listeners connected", f"{conn['connected']:,}/{conn['requested']:,} in "
                                f"{conn['seconds']:.2f} s (failed {conn['failed']})"),
        ("  connect ms per socket", conn["per_connection_ms"]),
        ("  connect failures",
         "; ".join(f"{n} x {why}" for why, n in conn["failures"].items()) or "-"),
        ("warm-up delivered", f"{res['warmup']['delivered']:,} (HTTP {res['warmup']['status']})"),
        ("messages published (200)", f"{pub['accepted_200']:,} of {pub['sent']:,} sent, "
                                     f"{pub['scheduled']:,} scheduled; {pub['seconds']:.2f} s"),
        ("  publish errors / unanswered", f"{pub['errors']} / {pub['unanswered']} (statuses: "
                             + ", ".join(f"{k} x{v}" for k, v in pub["statuses"].items()) + ")"),
        ("  POST ms", pub["post_ms"]),
        ("  publisher queue wait ms", pub["queue_wait_ms"]),
        ("  publisher schedule lag ms", pub["schedule_lag_ms"]),
        ("expected deliveries", res["expected"]),
        ("delivered", dlv["delivered"]),
        ("lost (not delivered by end)", dlv["lost"]),
        ("  of them arrived after the drain", dlv["after_drain"]),
        ("duplicates / reordered", f"{dlv['duplicates']} / {dlv['reordered']}"),
        ("unexpected (non-200 ids)", dlv["unexpected"]),
        ("listeners dropped by server", res["dropped_listeners"] or "-"),
        ("drain", f"{res['drain']['seconds']:.1f} s, stopped: {res['drain']['stopped_because']}, "
                  f"last-second rate {res['drain']['tail_rate']:,.0f}/s"),
        ("delivered msg/s (publish+drain)", dlv["delivered_per_s"]),
        ("delivered msg/s (publish window)", dlv["delivered_in_publish_window_per_s"]),
        ("latency ms POST start->receive", dlv["latency_ms"]),
        ("latency ms due->receive", dlv["latency_from_due_ms"]),
        ("server CPU s (util of its cores)", f"{cpu['server_s']:.2f} s over {cpu['window_s']:.1f} s"
                                             f" ({cpu['server_util']:.0%})"),
        ("  per process (CPU s)", " / ".join(f"{x:.2f}" for x in cpu["server_s_each"])),
        ("server CPU us / delivered msg", cpu["server_us_per_delivery"]),
        ("client CPU s (util of 1 core)", f"{cpu['client_s']:.2f} s ({cpu['client_util']:.0%})"),
        ("client CPU us / delivered msg", cpu["client_us_per_delivery"]),
        ("redis during window", res["redis"]),
        ("server RSS MiB idle/connected/end/peak",
         " / ".join(f"{rss[k] / 1024:.0f}" for k in ("before_listeners", "after_connect", "end",
                                                      "peak"))),
        ("server RSS KiB per listener", rss["per_listener"]),
        ("server connect CPU s", conn["server_cpu_s"]),
        ("redis during connect", conn["redis"]),
        ("client parse ns (slice / json)", f"{report['parse_cost']['slice_parse_ns']} / "
                                           f"{report['parse_cost']['json_loads_ns']}"),
        ("core busy during window", res["machine_during_window"]["core_busy"]),
        ("other busy processes (CPU s)", res["machine_during_window"]["busiest_other_processes"]
                                         or "-"),
        ("server log errors", res.get("server_log_problems") or "-"),
    ]  # fmt: skip
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {fmt(value)}" for label, value in rows)


def prepare_load_process(cfg: Config) -> None:
    """Pin this process to the client core; open-files limit up (servers inherit it)."""
    if cfg.client_cpu is not None:
        os.sched_setaffinity(0, {cfg.client_cpu})
    raise_fd_limit()


def report_header(program: str, config: dict[str, Any], payload_bytes: int) -> dict[str, Any]:
    """Date, machine, commit, command line and configuration of a run."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "git_commit": git_commit(),
        "command": " ".join([f"python -m {program}", *sys.argv[1:]]),
        "config": config,
        "parse_cost": measure_parse_cost(payload_bytes),
    }


def write_report(report: dict[str, Any], path: str | None) -> None:
    """The JSON report to ``path``, if one was asked for."""
    if path:
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {path}")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    prepare_load_process(cfg)
    report = report_header("bench.fanout", asdict(cfg), cfg.payload_bytes)
    tmp = Path(tempfile.mkdtemp(prefix="katiedj-bench-"))
    stack: harness.Stack | None = None
    try:
        stack = start_stack(cfg, tmp)
        report["results"] = asyncio_runner(cfg.loop)(run(cfg, stack))
        report["results"]["server_log_problems"] = server_log_problems(stack)
    finally:
        if stack is not None:
            stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(render(report))
    write_report(report, cfg.json_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
