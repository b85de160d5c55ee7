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
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from array import array
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e import harness

CLK_TCK = os.sysconf("SC_CLK_TCK")
FRAME_PREFIX = b'{"id":'
# Bytes of a frame around the padding: {"id":123456,"t":1234567890.123456,"pad":""}
FRAME_OVERHEAD = 48
WARMUP_ID = -1
NOT_SENT = "not sent (window over)"


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
    publish_connections: int
    post_timeout: float
    drain_max: float
    drain_stall: float
    debug: bool
    loop: str
    json_path: str | None


def parse_args(argv: list[str] | None = None) -> Config:
    """Command-line options to a Config."""
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    parser.add_argument("--listeners", type=int, required=True, help="WebSocket listeners")
    parser.add_argument("--rate", type=float, required=True, help="published messages/s")
    parser.add_argument("--duration", type=float, required=True, help="publish seconds")
    parser.add_argument("--payload-bytes", type=int, default=1024, help="frame size (~bytes)")
    parser.add_argument("--network", default="sample_net", help="network slug (demo key's)")
    parser.add_argument("--stack", choices=["production", "embedded"], default="production")
    parser.add_argument("--processes", type=int, default=1, help="server processes")
    parser.add_argument("--server-cpus", default="0", help="taskset list for the servers")
    parser.add_argument("--client-cpu", type=int, default=1, help="core for this load process")
    parser.add_argument("--no-pin", action="store_true", help="pin neither server nor client")
    parser.add_argument(
        "--compression",
        choices=["deflate", "none"],
        default="deflate",
        help="permessage-deflate offered by listeners (browsers offer it; default)",
    )
    parser.add_argument("--connect-concurrency", type=int, default=50)
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument("--publish-connections", type=int, default=32, help="keep-alive pool")
    parser.add_argument("--post-timeout", type=float, default=30.0)
    parser.add_argument("--drain-max", type=float, help="drain cap, s (default max(5, S))")
    parser.add_argument("--drain-stall", type=float, default=3.0, help="stop after s idle")
    parser.add_argument("--debug", action="store_true", help="servers with DEBUG=true")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--json", dest="json_path", help="write the report here")
    args = parser.parse_args(argv)
    if args.listeners < 1 or args.rate <= 0 or args.duration <= 0:
        parser.error("--listeners, --rate and --duration must be positive")
    if args.stack == "embedded" and args.processes != 1:
        parser.error("the embedded stack is one process")
    if args.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            args.loop = "asyncio"
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
        publish_connections=args.publish_connections,
        post_timeout=args.post_timeout,
        drain_max=args.drain_max if args.drain_max is not None else max(5.0, args.duration),
        drain_stall=args.drain_stall,
        debug=args.debug,
        loop=args.loop,
        json_path=args.json_path,
    )


# --- Processes ----------------------------------------------------------------------------


def cpu_list(spec: str) -> set[int]:
    """``"0"``, ``"0,2"`` or ``"0-3"`` to a set of cores."""
    cores: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cores.update(range(int(low), int(high or low) + 1))
    return cores


def server_cores(cfg: Config) -> int:
    """How many cores the server processes can run on together."""
    if cfg.server_cpus is not None:
        return len(cpu_list(cfg.server_cpus))
    return min(cfg.processes, os.cpu_count() or 1)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of ``pid`` (stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status, e.g. VmRSS or VmHWM."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def self_cpu_seconds() -> float:
    """CPU used so far by this load process (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def core_jiffies() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies per ``cpu``/``cpuN`` line of /proc/stat."""
    result: dict[str, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu"):
            break
        name, *values = line.split()
        numbers = [int(value) for value in values[:8]]
        idle = numbers[3] + numbers[4]
        result[name] = (sum(numbers) - idle, sum(numbers))
    return result


def core_busy(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict:
    """Busy fraction of each core between two ``core_jiffies`` snapshots."""
    busy: dict[str, float] = {}
    for name, (busy1, total1) in after.items():
        busy0, total0 = before.get(name, (0, 0))
        if total1 > total0:
            busy[name] = round((busy1 - busy0) / (total1 - total0), 3)
    return busy


def process_cpu_table() -> dict[int, tuple[str, float]]:
    """CPU seconds of every process, by pid, with its command name."""
    table: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                name = stat[stat.index("(") + 1 : stat.rindex(")")]
                fields = stat.rsplit(")", 1)[1].split()
                table[int(entry)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return table


def other_processes(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], mine: set[int]
) -> dict[str, float]:
    """The busiest processes besides server and client between two snapshots (>= 0.1 s)."""
    used: Counter[str] = Counter()
    for pid, (name, seconds) in after.items():
        if pid not in mine:
            used[f"{name}[{pid}]"] += seconds - before.get(pid, (name, 0.0))[1]
    return {name: round(seconds, 2) for name, seconds in used.most_common(5) if seconds >= 0.1}


def pin_process(pid: int, cores: set[int]) -> None:
    """Pin every existing thread of ``pid``; threads they start inherit the mask."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cores)


def raise_fd_limit() -> None:
    """Soft open-files limit up to the hard one (server processes inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# The benchmark measures fan-out, not the per-key rate limiter (default 50 msg/s).
BENCH_ENV = {"PUBLISH_RATE_PER_SECOND": "1000000"}


def start_stack(cfg: Config, tmp: Path) -> harness.Stack:
    """The stack under test; production servers run pinned via ``taskset``."""
    if cfg.stack == "embedded":
        stack = harness.start_embedded_stack(tmp, BENCH_ENV)
        if cfg.server_cpus is not None:
            for server in stack.servers:
                assert server.process is not None
                pin_process(server.process.pid, cpu_list(cfg.server_cpus))
        return stack
    missing = harness.production_services_available()
    if missing:
        raise SystemExit(missing)
    stack = harness.start_production_stack(tmp, processes=0, extra_env=BENCH_ENV)
    try:
        env = dict(stack.env)
        if not cfg.debug:
            env.update({"DEBUG": "false", "SECRET_KEY": uuid.uuid4().hex * 2})
        for index in range(cfg.processes):
            port = harness.free_port()
            command = harness.uvicorn_command(port)
            if cfg.server_cpus is not None:
                command = ["taskset", "-c", cfg.server_cpus, *command]
            server = harness.ServerProcess(command, env, port, tmp / f"bench-web{index}.log")
            stack.servers.append(server)
            server.start()
    except BaseException:
        stack.stop()
        raise
    return stack


class RedisStats:
    """CPU seconds, connections accepted and commands run by Redis (INFO), or None."""

    def __init__(self, url: str | None) -> None:
        self.client: Any = None
        if url:
            import redis

            self.client = redis.Redis.from_url(url, socket_timeout=3)

    def sample(self) -> tuple[float, int, int] | None:
        if self.client is None:
            return None
        try:
            info = self.client.info()
        except Exception:
            return None
        return (
            float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            int(info["total_connections_received"]),
            int(info["total_commands_processed"]),
        )

    @staticmethod
    def delta(
        before: tuple[float, int, int] | None, after: tuple[float, int, int] | None
    ) -> dict[str, float] | None:
        if before is None or after is None:
            return None
        return {
            "cpu_s": round(after[0] - before[0], 3),
            "connections_opened": after[1] - before[1],
            "commands": after[2] - before[2] - 1,  # minus the first INFO
        }


# --- Listeners ----------------------------------------------------------------------------


class Tally:
    """Frames received across all listeners, for the drain's progress check."""

    __slots__ = ("received", "warmup")

    def __init__(self) -> None:
        self.received = 0
        self.warmup = 0


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
            if message_id < 0:
                tally.warmup += 1
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
    """Open ``cfg.listeners`` WebSockets, ``connect_concurrency`` at a time, spread over urls."""
    gate = asyncio.Semaphore(cfg.connect_concurrency)
    failures: Counter[str] = Counter()
    durations: list[float] = []

    async def one(index: int) -> Listener | None:
        async with gate:
            started = time.perf_counter()
            try:
                ws = await connect(
                    urls[index % len(urls)],
                    open_timeout=cfg.connect_timeout,
                    ping_interval=None,  # never let a busy client drop a slow server
                    close_timeout=2,
                    compression="deflate" if cfg.compression == "deflate" else None,
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

    async def run(self) -> PublishLog:
        """Open loop: message i is due at start + i/rate whatever happened to the others."""
        log = PublishLog()
        total = round(self.cfg.rate * self.cfg.duration)
        interval = 1.0 / self.cfg.rate
        queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
        origin = time.perf_counter() + 0.01
        log.started = time.time() + 0.01
        stop_sending = origin + total * interval
        workers = [
            asyncio.create_task(self.worker(client, queue, log, stop_sending))
            for client in self.clients
        ]
        for message_id in range(total):
            due = origin + message_id * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            log.schedule_lag.append(time.perf_counter() - due)
            log.due_at[message_id] = log.started + message_id * interval
            queue.put_nowait((message_id, due))
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


def percentile(ordered: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def distribution_ms(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    return {
        "p50": ms(percentile(ordered, 0.50)),
        "p90": ms(percentile(ordered, 0.90)),
        "p99": ms(percentile(ordered, 0.99)),
        "max": ms(ordered[-1] if ordered else None),
    }


def deliveries(listeners: list[Listener], log: PublishLog) -> dict[str, Any]:
    """Count delivered, duplicated, reordered and unexpected frames; latency percentiles."""
    delivered = duplicates = reordered = unexpected = in_window = late = 0
    latencies: list[float] = []
    from_due: list[float] = []
    last_received = 0.0
    accepted, sent_at, due_at = log.accepted, log.sent_at, log.due_at
    for listener in listeners:
        seen: set[int] = set()
        previous = -1
        for message_id, latency in zip(listener.ids, listener.latencies, strict=True):
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
        return sum(proc_cpu_seconds(pid) for pid in self.pids)

    def rss_kib(self) -> int:
        return sum(proc_status_kib(pid, "VmRSS") for pid in self.pids)

    def peak_kib(self) -> int:
        return sum(proc_status_kib(pid, "VmHWM") for pid in self.pids)


async def run(cfg: Config, stack: harness.Stack) -> dict[str, Any]:
    """Connect, warm up, publish, drain, measure; always closes the listeners."""
    probe = ServerProbe(stack)
    redis_stats = RedisStats(stack.env.get("REDIS_URL"))
    ws_urls = [f"{server.ws}/ws/networks/{cfg.network}/" for server in stack.servers]
    http_urls = [f"{server.http}/api/publish" for server in stack.servers]
    result: dict[str, Any] = {"server_pids": probe.pids}
    rss_idle = probe.rss_kib()
    cpu_before_connect, redis_before_connect = probe.cpu(), redis_stats.sample()

    connected = await open_listeners(cfg, ws_urls)
    listeners = connected.listeners
    tally = Tally()
    tasks = [asyncio.create_task(listen(item, tally)) for item in listeners]
    rss_connected = probe.rss_kib()
    result["connect"] = {
        "requested": cfg.listeners,
        "connected": len(listeners),
        "failed": sum(connected.failures.values()),
        "failures": dict(connected.failures),
        "seconds": round(connected.seconds, 3),
        "per_connection_ms": distribution_ms(connected.durations),
        "server_cpu_s": round(probe.cpu() - cpu_before_connect, 3),
        "redis": RedisStats.delta(redis_before_connect, redis_stats.sample()),
    }
    result["server_rss_kib"] = {
        "before_listeners": rss_idle,
        "after_connect": rss_connected,
        "per_listener": round((rss_connected - rss_idle) / len(listeners), 1) if listeners else 0,
    }
    publisher = Publisher(cfg, http_urls, stack.demo_key)
    try:
        # Warm-up: caches filled, every subscription proven live; not measured.
        warmup_status = await publisher.post(publisher.clients[0], WARMUP_ID, PublishLog())
        for _ in range(300):  # up to 15 s
            if tally.warmup >= len(listeners):
                break
            await asyncio.sleep(0.05)
        result["warmup"] = {"status": warmup_status, "delivered": tally.warmup}
        await asyncio.sleep(0.5)

        server_cpu0, client_cpu0 = probe.cpu(), self_cpu_seconds()
        redis0 = redis_stats.sample()
        cores0, processes0 = core_jiffies(), process_cpu_table()
        wall0 = time.perf_counter()
        log = await publisher.run()
        expected = len(listeners) * len(log.accepted)
        drained = await drain(cfg, tally, expected)
        log.cutoff = time.time()
        wall = time.perf_counter() - wall0
        server_cpu = probe.cpu() - server_cpu0
        client_cpu = self_cpu_seconds() - client_cpu0
        redis1 = redis_stats.sample()
        cores1, processes1 = core_jiffies(), process_cpu_table()
        rss_end, rss_peak = probe.rss_kib(), probe.peak_kib()
    finally:
        await publisher.aclose()
        await close_listeners(listeners, tasks)

    counted = deliveries(listeners, log)
    delivered = counted["delivered"]
    result["publish"] = {
        "scheduled": round(cfg.rate * cfg.duration),
        "accepted_200": len(log.accepted),
        "errors": sum(n for status, n in log.statuses.items() if status not in ("200", NOT_SENT)),
        "unanswered": len(log.sent_at)
        - sum(n for status, n in log.statuses.items() if status != NOT_SENT),
        "statuses": dict(log.statuses),
        "post_ms": distribution_ms(log.post_seconds),
        "schedule_lag_ms": distribution_ms(log.schedule_lag),
        "queue_wait_ms": distribution_ms(log.queue_wait),
        "sent": len(log.sent_at),
        "seconds": round(log.finished - log.started, 3),
    }
    result["expected"] = expected
    result["deliveries"] = {**counted, "lost": expected - delivered}
    result["drain"] = asdict(drained)
    result["dropped_listeners"] = dict(
        Counter(item.closed_by_peer for item in listeners if item.closed_by_peer)
    )
    result["cpu"] = {
        "window_s": round(wall, 3),
        "server_s": round(server_cpu, 3),
        "server_util": round(server_cpu / wall / server_cores(cfg), 3),
        "server_us_per_delivery": round(server_cpu / delivered * 1e6, 1) if delivered else None,
        "client_s": round(client_cpu, 3),
        "client_util": round(client_cpu / wall, 3),
        "client_us_per_delivery": round(client_cpu / delivered * 1e6, 1) if delivered else None,
    }
    result["redis"] = RedisStats.delta(redis0, redis1)
    result["machine_during_window"] = {
        "core_busy": core_busy(cores0, cores1),
        "busiest_other_processes": other_processes(
            processes0, processes1, {*probe.pids, os.getpid()}
        ),
        "loadavg": [round(value, 2) for value in os.getloadavg()],
    }
    result["server_rss_kib"].update({"end": rss_end, "peak": rss_peak})
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


def git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=harness.REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return done.stdout.strip() or None
    return None


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


def asyncio_runner(loop: str) -> Callable[[Coroutine[Any, Any, dict[str, Any]]], dict[str, Any]]:
    """Run a coroutine on uvloop or the stock loop."""
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop

    def execute(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)

    return execute


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if cfg.client_cpu is not None:
        os.sched_setaffinity(0, {cfg.client_cpu})
    raise_fd_limit()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "git_commit": git_commit(),
        "command": " ".join(["python -m bench.fanout", *sys.argv[1:]]),
        "config": asdict(cfg),
        "parse_cost": measure_parse_cost(cfg.payload_bytes),
    }
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
    if cfg.json_path:
        Path(cfg.json_path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {cfg.json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
