"""Listener soak: connect / fail / disconnect cycles against a real server, then count leftovers.

Starts one KatieDJ server process through ``tests.e2e.harness`` (production: uvicorn on a
fresh PostgreSQL database and Redis; or embedded: ``manage.py serve``), fills ``sample_net``'s
history, then runs ``--cycles`` cycles, ``--concurrency`` at a time, round-robin over kinds
of listener: ordinary ones (free and paid), bad ``?since=``, malformed tokens, chatty
clients, clients that drop mid-replay and a crowd over the per-address limit. Before and
after it reads the server's RSS (``/proc``) and its listener counts (``/metrics``), then checks
that every connection slot is free again: the address's limit and one person's 5 slots must
all be available. Run from the repository root::

    .venv/bin/python -m bench.listener_soak [--cycles 10000] [--concurrency 20] \\
        [--stack production|embedded] [--address-limit 40] [--json out.json]

Exit status 0 when nothing leaked (listeners back to 0, slots free, RSS growth under
``--max-rss-growth-mib``), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from bench.measure import git_commit, proc_status_kib, raise_fd_limit
from tests.e2e import harness

FREE, PAID = "sample_net", "paid-net"  # seeded by the e2e harness
HISTORY_MESSAGES = 1000  # sample_net's whole history (1,000 by default), 1 KiB each
PERSONS = 8  # paid listeners are spread over them (5 connections each at most)
CLIENT = {"open_timeout": 10, "close_timeout": 2, "ping_interval": None, "compression": None}
# Every CROWD_EVERY cycles, one client opens the address's limit + CROWD_EXTRA listeners.
CROWD, CROWD_EVERY, CROWD_EXTRA = "crowd over the address limit", 500, 5
REFUSAL_WAIT = 5.0  # seconds a refused listener waits for its close
BENCH_ENV = {"PUBLISH_RATE_PER_SECOND": "1000000"}

TOKENS_SETUP = """
import json
from accounts.models import User
from billing.entitlement import mint_entitlement_token
from billing.services import subscription_grant
from networks.models import Network
network = Network.objects.get(slug="{network}")
users = [User.objects.create_user(f"soak-{{i}}-{prefix}@bench.example") for i in range({count})]
for user in users:
    subscription_grant(user=user, network=network)
print(json.dumps([mint_entitlement_token(user=user)[0] for user in users]))
"""

Run = Callable[[ClientConnection], Awaitable[str]]


@dataclass(frozen=True)
class Kind:
    """One kind of cycle: where it connects, what it does, what the server should answer."""

    name: str
    path: Callable[[str], str]  # token -> path and query
    run: Run
    expected: frozenset[str]


async def stays_open(ws: ClientConnection) -> str:
    """An ordinary listener: nothing closes it; it hangs up itself."""
    try:
        await asyncio.wait_for(ws.recv(), 0.05)
    except TimeoutError:
        return "ok"
    except ConnectionClosed as closed:
        return close_code(closed)
    return "ok"  # a frame (a replay): still an ordinary listener


async def waits_for_close(ws: ClientConnection) -> str:
    """A refused listener: the server should close it with a code."""
    try:
        async with asyncio.timeout(REFUSAL_WAIT):
            while True:
                await ws.recv()
    except ConnectionClosed as closed:
        return close_code(closed)
    except TimeoutError:
        return "left open"


async def chatty(ws: ClientConnection) -> str:
    """Listeners never talk: 25 frames at once, then the close the server should send."""
    with contextlib.suppress(ConnectionClosed):
        for index in range(25):
            await ws.send(f"hello {index}")
    return await waits_for_close(ws)


async def drops(ws: ClientConnection) -> str:
    """Vanish without a close (TCP reset) while the server is still sending the replay."""
    ws.transport.abort()
    return "dropped"


def close_code(closed: ConnectionClosed) -> str:
    return str(closed.rcvd.code) if closed.rcvd is not None else "closed, no code"


def kinds() -> list[Kind]:
    free, paid = f"/ws/networks/{FREE}/", f"/ws/networks/{PAID}/"
    ok, bad_since, bad_token = frozenset({"ok"}), frozenset({"4400"}), frozenset({"4401"})
    return [
        Kind("free listener", lambda t: free, stays_open, ok),
        Kind("paid listener", lambda t: f"{paid}?token={t}", stays_open, ok),
        Kind("resume, envelope", lambda t: f"{free}?since=990&format=envelope", stays_open, ok),
        Kind("since=² (non-ASCII digit)", lambda t: f"{free}?since=%C2%B2", waits_for_close,
             bad_since),
        Kind("since of 4,301 digits", lambda t: f"{free}?since={'9' * 4301}", waits_for_close,
             bad_since),
        Kind("paid, since=-1", lambda t: f"{paid}?token={t}&since=-1", waits_for_close,
             bad_since),
        Kind("token kdje.e30.%C3%A9", lambda t: f"{paid}?token=kdje.e30.%C3%A9", waits_for_close,
             bad_token),
        Kind("no token", lambda t: paid, waits_for_close, bad_token),
        Kind("chatty, free", lambda t: free, chatty, frozenset({"1008"})),
        Kind("chatty, paid", lambda t: f"{paid}?token={t}", chatty, frozenset({"1008"})),
        Kind("drops mid-replay", lambda t: f"{free}?since=0", drops, frozenset({"dropped"})),
        Kind("paid, drops at once", lambda t: f"{paid}?token={t}&since=0", drops,
             frozenset({"dropped"})),
    ]  # fmt: skip


async def one_cycle(base: str, kind: Kind, token: str) -> str:
    try:
        async with connect(base + kind.path(token), **CLIENT) as ws:
            return await kind.run(ws)
    except InvalidStatus as error:
        return f"HTTP {error.response.status_code}"
    except (InvalidHandshake, OSError, TimeoutError) as error:
        return type(error).__name__


async def crowd(base: str, size: int) -> Counter[str]:
    """Open ``size`` free listeners at once (over the address limit when size > limit), see
    which the server kept, then hang up: a short burst, so other cycles rarely meet 4429."""
    held: list[ClientConnection] = []
    outcomes: Counter[str] = Counter()
    try:
        for _ in range(size):
            try:
                held.append(await connect(base + f"/ws/networks/{FREE}/", **CLIENT))
            except (InvalidHandshake, OSError, TimeoutError) as error:
                outcomes[type(error).__name__] += 1
        outcomes.update(await asyncio.gather(*(stays_open(ws) for ws in held)))
    finally:
        await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)
    return outcomes


async def soak(
    base: str, cycles: int, concurrency: int, tokens: list[str], crowd_size: int
) -> dict[str, Counter[str]]:
    """Run ``cycles`` cycles, ``concurrency`` at a time; after every ``CROWD_EVERY``, a crowd
    alone (beside it, every cycle would meet 4429)."""
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    mix, persons = kinds(), itertools.cycle(tokens)

    async def worker(numbers: Iterator[int]) -> None:
        for number in numbers:
            kind = mix[number % len(mix)]
            outcomes[kind.name][await one_cycle(base, kind, next(persons))] += 1

    for first in range(0, cycles, CROWD_EVERY):
        numbers = iter(range(first, min(first + CROWD_EVERY, cycles)))
        await asyncio.gather(*(worker(numbers) for _ in range(concurrency)))
        if crowd_size:
            await asyncio.sleep(0.2)  # the server frees the slots of the sockets just closed
            outcomes[CROWD].update(await crowd(base, crowd_size))
    return outcomes


async def capacity(base: str, count: int, path: str) -> Counter[str]:
    """Open ``count`` listeners at once on ``path``: all accepted if every slot is free."""
    result: Counter[str] = Counter()
    held: list[ClientConnection] = []
    try:
        for _ in range(count):
            ws = await connect(base + path, **CLIENT)
            held.append(ws)
            result[await stays_open(ws)] += 1
    finally:
        await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)
    return result


# --- The server's side --------------------------------------------------------------------


def scrape(server: harness.ServerProcess) -> dict[str, float]:
    """Listener figures from /metrics (served to loopback without a token)."""
    with urllib.request.urlopen(f"{server.http}/metrics", timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    wanted = {
        f'katiedj_listeners{{network="{FREE}"}}': "listeners_now " + FREE,
        f'katiedj_listeners{{network="{PAID}"}}': "listeners_now " + PAID,
    }
    figures: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            figures[wanted[name]] = float(value)
        elif name.startswith("katiedj_process_listeners"):
            figures["hub listeners (process)"] = float(value)
        elif name.startswith("katiedj_connections_opened_total"):
            figures["connections admitted (process)"] = float(value)
    return figures


def rss_kib(server: harness.ServerProcess) -> int:
    assert server.process is not None
    return proc_status_kib(server.process.pid, "VmRSS")


def redis_slots(stack: harness.Stack) -> dict[str, int] | None:
    """Connection-slot members left in Redis for this stack's prefix (production only)."""
    if not stack.env.get("REDIS_URL"):
        return None
    import redis

    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    prefix = stack.env["REDIS_KEY_PREFIX"]
    slots = {"per address": 0, "per person": 0}
    for pattern, label in (("addr-conns", "per address"), ("conns", "per person")):
        for key in client.scan_iter(f"{prefix}:{pattern}:*"):
            slots[label] += client.zcard(key)
    return slots


def fill_history(stack: harness.Stack) -> None:
    pad = "x" * 1000
    for index in range(HISTORY_MESSAGES):
        status, body = stack.publish(
            {"network": FREE, "data": {"i": index, "pad": pad}}, stack.demo_key
        )
        if status != 200:
            raise RuntimeError(f"publish failed: {status} {body}")


def paid_tokens(stack: harness.Stack) -> list[str]:
    script = TOKENS_SETUP.format(network=PAID, prefix=uuid.uuid4().hex[:8], count=PERSONS)
    output = harness.manage(stack.env, "shell", "-v", "0", "-c", script)
    return json.loads(output.strip().splitlines()[-1])


def start(options: argparse.Namespace, tmp: Path) -> harness.Stack:
    env = {
        **BENCH_ENV,
        "LISTENER_CONNECTIONS_PER_ADDRESS": str(options.address_limit),
        "SECRET_KEY": uuid.uuid4().hex * 2,  # as deployed: never the public development key
    }
    if options.stack == "embedded":
        return harness.start_embedded_stack(tmp, env)
    missing = harness.production_services_available()
    if missing:
        raise SystemExit(missing)
    # DEBUG off as deployed (Django would otherwise keep every query it ran).
    return harness.start_production_stack(
        tmp, processes=1, redis_url=options.redis_url, extra_env={**env, "DEBUG": "false"}
    )


# --- Main ---------------------------------------------------------------------------------


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=600, help="cycles before the baseline")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--stack", choices=("production", "embedded"), default="production")
    limit_help = "the server's LISTENER_CONNECTIONS_PER_ADDRESS"
    parser.add_argument("--address-limit", type=int, default=40, help=limit_help)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--max-rss-growth-mib", type=float, default=8.0)
    parser.add_argument("--json", type=Path, help="write the report here too")
    options = parser.parse_args(argv)
    if options.concurrency >= options.address_limit > 0:
        parser.error("--concurrency must stay under --address-limit (the crowd goes over it)")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    raise_fd_limit()
    crowd_size = options.address_limit + CROWD_EXTRA if options.address_limit > 0 else 0
    with tempfile.TemporaryDirectory(prefix="listener-soak-") as tmp:
        stack = start(options, Path(tmp))
        try:
            server = stack.servers[0]
            base = server.ws
            fill_history(stack)
            tokens = paid_tokens(stack)
            started_kib = rss_kib(server)
            run = asyncio.run
            run(soak(base, options.warmup, options.concurrency, tokens, crowd_size))
            time.sleep(1.0)  # occupancy is written a moment after it changes
            before_kib, before = rss_kib(server), scrape(server)
            began = time.monotonic()
            outcomes = run(soak(base, options.cycles, options.concurrency, tokens, crowd_size))
            seconds = time.monotonic() - began
            time.sleep(1.0)
            after_kib, after = rss_kib(server), scrape(server)
            slots = redis_slots(stack)
            limit = options.address_limit or 100
            address_check = run(capacity(base, limit, f"/ws/networks/{FREE}/"))
            person_check = run(capacity(base, 5, f"/ws/networks/{PAID}/?token={tokens[0]}"))
            problems = server_problems(server)
        finally:
            stack.stop()
    report = {
        "commit": git_commit(),
        "stack": options.stack,
        "cycles": options.cycles,
        "concurrency": options.concurrency,
        "address_limit": options.address_limit,
        "seconds": round(seconds, 1),
        "rss_kib": {"start": started_kib, "after warm-up": before_kib, "after": after_kib},
        "metrics_before": before,
        "metrics_after": after,
        "redis_slots_after": slots,
        "address_slots_free": dict(address_check),
        "person_slots_free": dict(person_check),
        "outcomes": {name: dict(counter) for name, counter in outcomes.items()},
        "server_log_problems": problems,
    }
    failures = judge(report, options, kinds())
    report["failures"] = failures
    print(render(report))
    if options.json:
        options.json.write_text(json.dumps(report, indent=2))
    return 1 if failures else 0


def server_problems(server: harness.ServerProcess) -> dict[str, int]:
    """Tracebacks and 500s in the server's log, by first line."""
    found: Counter[str] = Counter()
    text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    for line in text.splitlines():
        traceback = line.startswith(("RuntimeError", "ValueError", "TypeError", "KeyError"))
        if traceback or "Exception in ASGI application" in line or re.search(r"\b500\b", line):
            found[line.strip()[:120]] += 1
    return dict(found)


def judge(report: dict[str, Any], options: argparse.Namespace, mix: list[Kind]) -> list[str]:
    failures = []
    for figure, value in report["metrics_after"].items():
        if figure.startswith(("listeners_now", "hub listeners")) and value != 0:
            failures.append(f"{figure} is {value:g} after the soak, not 0")
    growth_mib = (report["rss_kib"]["after"] - report["rss_kib"]["after warm-up"]) / 1024
    if growth_mib > options.max_rss_growth_mib:
        failures.append(f"RSS grew {growth_mib:.1f} MiB (limit {options.max_rss_growth_mib})")
    if report["redis_slots_after"] and any(report["redis_slots_after"].values()):
        failures.append(f"connection slots left in Redis: {report['redis_slots_after']}")
    limit = options.address_limit or 100
    if report["address_slots_free"] != {"ok": limit}:
        failures.append(f"{limit} listeners from one address: {report['address_slots_free']}")
    if report["person_slots_free"] != {"ok": 5}:
        failures.append(f"5 connections of one person: {report['person_slots_free']}")
    expected = {kind.name: kind.expected for kind in mix}
    for name, counter in report["outcomes"].items():
        if name == CROWD:
            # Each crowd: exactly the limit admitted, the 5 beyond it refused with 4429.
            crowds = sum(counter.values()) // (limit + CROWD_EXTRA)
            wanted = {"ok": limit * crowds, "4429": CROWD_EXTRA * crowds}
            if counter != wanted:
                failures.append(f"{name}: {dict(counter)}, not {wanted}")
            continue
        unexpected = {o: n for o, n in counter.items() if o not in expected[name]}
        if unexpected:
            failures.append(f"{name}: unexpected {unexpected}")
    if report["server_log_problems"]:
        failures.append(f"server log: {report['server_log_problems']}")
    return failures


def render(report: dict[str, Any]) -> str:
    rss = report["rss_kib"]
    lines = [
        f"# Listener soak: {report['cycles']:,} cycles, {report['concurrency']} at a time, "
        f"{report['stack']} stack, commit {report['commit']}",
        "",
        f"{report['seconds']} s ({report['cycles'] / max(report['seconds'], 0.001):,.0f} cycles/s)",
        "",
        "| server | after warm-up | after the soak | change |",
        "|---|---|---|---|",
        f"| RSS | {rss['after warm-up'] / 1024:.1f} MiB | {rss['after'] / 1024:.1f} MiB | "
        f"{(rss['after'] - rss['after warm-up']) / 1024:+.1f} MiB |",
    ]
    for figure, value in report["metrics_after"].items():
        lines.append(
            f"| {figure} | {report['metrics_before'].get(figure, 0):g} | {value:g} | "
            f"{value - report['metrics_before'].get(figure, 0):+g} |"
        )
    lines += [
        "",
        f"RSS at start {rss['start'] / 1024:.1f} MiB. Slots left in Redis: "
        f"{report['redis_slots_after']}. After the soak, {report['address_limit'] or 100} "
        f"listeners from one address: {report['address_slots_free']}; one person's 5: "
        f"{report['person_slots_free']}.",
        "",
        "| cycle | outcomes |",
        "|---|---|",
    ]
    for name, counter in report["outcomes"].items():
        lines.append(f"| {name} | {', '.join(f'{o}: {n}' for o, n in sorted(counter.items()))} |")
    lines += ["", "PASS" if not report["failures"] else "FAIL", *report["failures"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
