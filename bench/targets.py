"""Issue 7's fan-out targets, KatieDJ against the raw ``websockets`` broadcast, in one session.

Scenarios (``--scenarios``, default all):

- ``saturation``: the highest publish rate 1,000 listeners sustain (0 lost, every POST
  accepted, due→receive p99 under ``--max-p99-ms``), found by a rate ramp on one set of
  sockets: times ``--ramp-factor`` until a window fails, then ``--ramp-refine`` bisections;
- ``latency``: 1,000 listeners at 10 msg/s, publish→receive percentiles;
- ``idle``: 10,000 idle listeners on one process, RSS per connection, all still alive;
- ``paid``: 1,000 entitlement-token connects to a paid network, total time and percentiles;
- ``cluster``: two KatieDJ processes behind one Redis, listeners and publishes split across
  them: every listener gets every message once; server CPU-µs per delivered message.

Every scenario starts fresh server processes (pinned like ``bench.fanout``); KatieDJ's
database and Redis are set up once. Prints one markdown table, target vs measured vs raw::

    .venv/bin/python -m bench.targets [--scenarios saturation,latency] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench.fanout import (
    Config,
    Session,
    add_common_arguments,
    config_from,
    prepare_load_process,
    report_header,
    run,
    server_log_problems,
    start_servers,
    start_stack,
    write_report,
)
from bench.measure import asyncio_runner
from tests.e2e import harness

SCENARIOS = ("saturation", "latency", "idle", "paid", "cluster")
TARGETS = ("katiedj", "raw")
STACK_OF = {"katiedj": "production", "raw": "raw"}
PAID_NETWORK = "paid-net"  # seeded by the e2e harness (organization katiedj-demo)

# One person per listener: each may hold LISTENER_CONNECTIONS_PER_USER (5) connections.
PAID_SETUP = """
import json
from django.db import transaction
from accounts.models import Organization, User
from billing.entitlement import mint_entitlement_token
from billing.services import subscription_grant
from networks.models import Network
from networks.services import api_key_create
network = Network.objects.get(slug="{network}")
with transaction.atomic():
    users = [User.objects.create_user(f"{prefix}-{{i}}@bench.example") for i in range({count})]
    for user in users:
        subscription_grant(user=user, network=network)
tokens = [mint_entitlement_token(user=user)[0] for user in users]
_, key = api_key_create(
    organization=Organization.objects.get(slug="katiedj-demo"), name="{prefix}",
    networks=[network],
)
print(json.dumps({{"key": key, "tokens": tokens}}))
"""


# --- Options ------------------------------------------------------------------------------


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    """Scenario sizes and the options shared with ``bench.fanout``."""
    parser = argparse.ArgumentParser(prog="python -m bench.targets", description=__doc__)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--targets", default=",".join(TARGETS), help="katiedj,raw")
    parser.add_argument("--listeners", type=int, default=1000, help="saturation/latency/cluster")
    parser.add_argument("--connect-concurrency", type=int, default=50, help="handshakes at once")
    ramp = parser.add_argument_group("saturation ramp")
    ramp.add_argument("--ramp-start", type=float, default=4.0, help="first rate, msg/s")
    ramp.add_argument("--ramp-factor", type=float, default=1.5)
    ramp.add_argument("--ramp-max", type=float, default=1000.0, help="stop here, msg/s")
    ramp.add_argument("--ramp-refine", type=int, default=2, help="bisections after a failure")
    ramp.add_argument("--ramp-duration", type=float, default=5.0, help="s per window")
    ramp.add_argument("--ramp-retries", type=int, default=1, help="repeats of a failed window")
    ramp.add_argument("--max-p99-ms", type=float, default=500.0, help="due→receive p99 bound")
    steady = parser.add_argument_group("latency and cluster")
    steady.add_argument("--latency-rate", type=float, default=10.0)
    steady.add_argument("--latency-duration", type=float, default=10.0)
    steady.add_argument("--cluster-processes", type=int, default=2)
    steady.add_argument("--cluster-rate", type=float, default=10.0)
    steady.add_argument("--cluster-duration", type=float, default=10.0)
    connects = parser.add_argument_group("idle and paid connects")
    connects.add_argument("--idle-listeners", type=int, default=10_000)
    connects.add_argument("--idle-seconds", type=float, default=10.0, help="hold before probing")
    connects.add_argument("--idle-concurrency", type=int, default=200)
    connects.add_argument("--paid-listeners", type=int, default=1000)
    connects.add_argument("--paid-concurrency", type=int, default=200)
    connects.add_argument("--paid-budget", type=float, default=2.0, help="target seconds")
    add_common_arguments(parser)
    options = parser.parse_args(argv)
    options.scenarios = [name for name in options.scenarios.split(",") if name]
    options.targets = [name for name in options.targets.split(",") if name]
    unknown = set(options.scenarios) - set(SCENARIOS) | set(options.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    return options


def scenario_config(
    options: argparse.Namespace,
    target: str,
    *,
    listeners: int,
    rate: float = 1.0,
    duration: float = 1.0,
    network: str = "sample_net",
    processes: int = 1,
    connect_concurrency: int | None = None,
) -> Config:
    """The ``bench.fanout`` Config of one scenario on one target (same defaults as its CLI)."""
    values = {
        **vars(options),
        "listeners": listeners,
        "rate": rate,
        "duration": duration,
        "network": network,
        "stack": STACK_OF[target],
        "processes": processes,
        "connect_concurrency": connect_concurrency or options.connect_concurrency,
        "drain_max": None,
    }
    return config_from(argparse.Namespace(**values))


# --- Scenarios ----------------------------------------------------------------------------


def judge(summary: dict[str, Any], max_p99_ms: float) -> list[str]:
    """Why a window was not sustained (empty: it was)."""
    publish, counted = summary["publish"], summary["deliveries"]
    reasons = []
    # A message or two still queued when the window closes is the window's edge, not a trend.
    unpublished = publish["scheduled"] - publish["accepted_200"]
    if unpublished > max(1, 0.01 * publish["scheduled"]):
        reasons.append(f"{unpublished} not published")
    if counted["lost"]:
        reasons.append(f"{counted['lost']} lost")
    if counted["duplicates"]:
        reasons.append(f"{counted['duplicates']} duplicates")
    p99 = counted["latency_from_due_ms"]["p99"]
    if p99 is None or p99 > max_p99_ms:
        reasons.append(f"due→receive p99 {p99} ms")
    if summary["dropped_listeners"]:
        reasons.append(f"dropped {summary['dropped_listeners']}")
    return reasons


async def ramp_step(session: Session, rate: float, options: argparse.Namespace) -> dict:
    """One window at ``rate``; settles before counting so late frames count as late."""
    window = await session.publish_window(rate, options.ramp_duration)
    await session.settle()
    summary = session.summarize(window)
    reasons = judge(summary, options.max_p99_ms)
    counted, cpu = summary["deliveries"], summary["cpu"]
    step = {
        "rate": round(rate, 2),
        "sustained": not reasons,
        "why_not": reasons,
        "offered_deliveries_per_s": round(rate * len(session.listeners)),
        # What was accepted and delivered with nothing lost, per second of the window.
        "accepted_deliveries_per_s": round(
            summary["publish"]["accepted_200"] * len(session.listeners) / options.ramp_duration
        ),
        "delivered_per_s": counted["delivered_per_s"],
        "lost": counted["lost"],
        "latency_ms": counted["latency_ms"],
        "latency_from_due_ms": counted["latency_from_due_ms"],
        "server_util": cpu["server_util"],
        "server_us_per_delivery": cpu["server_us_per_delivery"],
        "client_util": cpu["client_util"],
        "other_processes": summary["machine_during_window"]["busiest_other_processes"],
    }
    print(f"  {rate:8.2f} msg/s: {'ok' if not reasons else '; '.join(reasons)}", flush=True)
    return step


async def try_rate(
    session: Session, rate: float, options: argparse.Namespace, steps: list[dict[str, Any]]
) -> dict[str, Any]:
    """A window at ``rate``, retried on failure: one stall of a shared core must not decide."""
    for _ in range(1 + options.ramp_retries):
        step = await ramp_step(session, rate, options)
        steps.append(step)
        if step["sustained"]:
            break
    return step


async def saturation(session: Session, options: argparse.Namespace) -> dict[str, Any]:
    """Rate ramp on one set of sockets: up by a factor until a window fails, then bisect."""
    result = await session.connect()
    result["warmup"] = await session.warm_up()
    steps: list[dict[str, Any]] = []
    good: float | None = None
    bad: float | None = None
    rate = options.ramp_start
    # Bounded both ways: a window needs a few messages, and the ramp must end.
    while rate <= options.ramp_max and rate * options.ramp_duration >= 3 and len(steps) < 40:
        step = await try_rate(session, rate, options, steps)
        if step["sustained"]:
            good = rate
            if bad is not None:
                break
            rate *= options.ramp_factor
        else:
            bad = rate
            if good is not None:
                break
            rate /= options.ramp_factor  # even the first rate failed: come down
    for _ in range(options.ramp_refine if good is not None and bad is not None else 0):
        assert good is not None and bad is not None
        rate = math.sqrt(good * bad)  # geometric midpoint: rates span orders of magnitude
        step = await try_rate(session, rate, options, steps)
        good, bad = (rate, bad) if step["sustained"] else (good, rate)
    best = max((s for s in steps if s["sustained"]), key=lambda s: s["rate"], default=None)
    result["steps"] = steps
    result["sustained_rate"] = best["rate"] if best else None
    result["sustained_deliveries_per_s"] = best["accepted_deliveries_per_s"] if best else None
    result["best_step"] = best
    result["first_failed_rate"] = bad
    result["peak_delivered_per_s"] = max((s["delivered_per_s"] or 0 for s in steps), default=0)
    return result


async def idle(session: Session, options: argparse.Namespace) -> dict[str, Any]:
    """Connect many listeners, hold them idle, sample memory, probe that all are alive."""
    result = await session.connect()
    cpu_before = session.probe.cpu()
    await asyncio.sleep(options.idle_seconds)
    rss_held = session.probe.rss_kib()
    result["idle"] = {
        "seconds": options.idle_seconds,
        "server_cpu_s": round(session.probe.cpu() - cpu_before, 3),
        "rss_kib": rss_held,
    }
    rss = result["server_rss_kib"]
    count = result["connect"]["connected"]
    rss["after_idle"] = rss_held
    rss["per_listener_after_idle"] = (
        round((rss_held - rss["before_listeners"]) / count, 1) if count else 0
    )
    result["probe"] = await session.warm_up(wait=60.0)
    result["still_open"] = session.open_count()
    return result


async def paid(session: Session, options: argparse.Namespace) -> dict[str, Any]:
    """Token-carrying connects; then a probe message proves each socket joined the network.

    Against the raw server the tokens are dummies (it checks none): the handshake cost
    alone, for reference.
    """
    count = session.cfg.listeners
    if session.stack.name == "raw":
        minted = [f"kdje.raw{index}" for index in range(count)]
    else:
        key, minted = await asyncio.to_thread(paid_tokens, session.stack, count)
        session.publisher.headers["API-KEY"] = key  # the demo key may not publish there
    server = session.stack.servers[0]
    path = f"{server.ws}/ws/networks/{session.cfg.network}/?token="
    session.ws_urls = [path + token for token in minted]
    result = await session.connect()
    await asyncio.sleep(0.5)  # a refused token is an accept followed by a 44xx close
    result["closed_by_server"] = dict(
        Counter(item.closed_by_peer for item in session.listeners if item.closed_by_peer)
    )
    result["probe"] = await session.warm_up(wait=30.0)
    return result


def paid_tokens(stack: harness.Stack, count: int) -> tuple[str, list[str]]:
    """Create ``count`` subscribers of the paid network; a publisher key and their tokens."""
    script = PAID_SETUP.format(network=PAID_NETWORK, prefix=f"bench{uuid.uuid4().hex[:8]}",
                               count=count)  # fmt: skip
    output = harness.manage(stack.env, "shell", "-v", "0", "-c", script)
    made = json.loads(output.strip().splitlines()[-1])
    return made["key"], made["tokens"]


# --- Driver -------------------------------------------------------------------------------


class Runner:
    """The stacks of one targets run: set up once, server processes fresh per scenario."""

    def __init__(self, options: argparse.Namespace, tmp: Path) -> None:
        self.options = options
        self.tmp = tmp
        self.stacks: dict[str, harness.Stack] = {}

    def stack(self, cfg: Config, target: str) -> harness.Stack:
        """The target's stack with ``cfg.processes`` fresh servers."""
        if target not in self.stacks:
            self.stacks[target] = start_stack(cfg, self.tmp)  # starts its servers
        else:
            start_servers(cfg, self.stacks[target], self.tmp, cfg.processes)
        return self.stacks[target]

    def stop(self) -> None:
        for stack in self.stacks.values():
            stack.stop()

    def measure(self, cfg: Config, target: str, work: Work) -> dict[str, Any]:
        """Fresh servers, then ``work`` on its own event loop; errors are reported, not raised."""
        started = time.perf_counter()
        try:
            stack = self.stack(cfg, target)
            result = asyncio_runner(cfg.loop)(self.in_session(cfg, stack, work))
            result["server_log_problems"] = server_log_problems(stack)
        except Exception as error:
            result = {"error": f"{type(error).__name__}: {error}"[:500]}
        result["config"] = {"listeners": cfg.listeners, "rate": cfg.rate,
                            "processes": cfg.processes, "network": cfg.network}  # fmt: skip
        result["wall_s"] = round(time.perf_counter() - started, 1)
        return result

    async def in_session(self, cfg: Config, stack: harness.Stack, work: Work) -> dict[str, Any]:
        """``work`` on a fresh Session, its sockets closed whatever happens."""
        session = Session(cfg, stack)
        try:
            return await work(session, self.options)
        finally:
            await session.close()


Work = Callable[[Session, argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]]


async def steady(session: Session, options: argparse.Namespace) -> dict[str, Any]:
    """One window at the Config's rate, as ``bench.fanout`` runs it."""
    return await run(session.cfg, session.stack, session)


def run_scenario(runner: Runner, scenario: str, target: str) -> dict[str, Any]:
    """One scenario on one target."""
    options = runner.options
    print(f"{scenario} on {target}", flush=True)
    sizes: dict[str, Any] = {"listeners": options.listeners}
    work: Work = {"saturation": saturation, "idle": idle, "paid": paid}.get(scenario, steady)
    if scenario == "latency":
        sizes.update(rate=options.latency_rate, duration=options.latency_duration)
    elif scenario == "cluster":
        sizes.update(
            rate=options.cluster_rate,
            duration=options.cluster_duration,
            processes=options.cluster_processes,
        )
    elif scenario == "idle":
        sizes.update(listeners=options.idle_listeners, connect_concurrency=options.idle_concurrency)
    elif scenario == "paid":
        sizes.update(listeners=options.paid_listeners, network=PAID_NETWORK,
                     connect_concurrency=options.paid_concurrency)  # fmt: skip
    return runner.measure(scenario_config(options, target, **sizes), target, work)


# --- Report -------------------------------------------------------------------------------


def number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def failed(result: dict[str, Any] | None) -> str | None:
    """The cell for a missing or failed measurement, else None."""
    if result is None:
        return "not run"
    if "error" in result:
        return f"error: {result['error'][:120]}"
    return None


def cell(scenario: str, result: dict[str, Any] | None) -> str:
    """What one target measured in one scenario, for the table."""
    if (problem := failed(result)) is not None:
        return problem
    assert result is not None
    if scenario == "saturation":
        best = result["best_step"]
        if best is None:
            return f"nothing sustained from {result['steps'][-1]['rate']} msg/s down"
        return (
            f"**{number(result['sustained_deliveries_per_s'])}/s** "
            f"({best['rate']:g} msg/s x {result['connect']['connected']:,}), "
            f"due→recv p99 {number(best['latency_from_due_ms']['p99'], 1)} ms, "
            f"server {best['server_util']:.0%} / client {best['client_util']:.0%}; "
            f"failed at {number(result['first_failed_rate'], 1)} msg/s"
        )
    if scenario in ("latency", "cluster"):
        counted, cpu = result["deliveries"], result["cpu"]
        latency = counted["latency_ms"]
        return (
            f"p50 / p99 **{number(latency['p50'], 1)} / {number(latency['p99'], 1)} ms**, "
            f"{counted['delivered']:,}/{result['expected']:,} delivered, lost {counted['lost']}, "
            f"dup {counted['duplicates']}; **{number(cpu['server_us_per_delivery'], 1)} "
            f"µs/deliv.** (server {cpu['server_util']:.0%}"
            + (f"; CPU s per process {cpu['server_s_each']}" if scenario == "cluster" else "")
            + ")"
        )
    connect, rss = result["connect"], result["server_rss_kib"]
    if scenario == "idle":
        return (
            f"{connect['connected']:,}/{connect['requested']:,} in {connect['seconds']:.1f} s, "
            f"**{rss['per_listener_after_idle']:.1f} KiB/conn** (RSS "
            f"{rss['before_listeners'] / 1024:.0f} → {rss['after_idle'] / 1024:.0f} MiB), "
            f"probe {result['probe']['delivered']:,}, open {result['still_open']:,}"
        )
    per = connect["per_connection_ms"]
    closes = result["closed_by_server"]
    return (
        f"{connect['connected']:,}/{connect['requested']:,} in **{connect['seconds']:.2f} s** "
        f"(p50 / p99 {number(per['p50'], 1)} / {number(per['p99'], 1)} ms), probe "
        f"{result['probe']['delivered']:,}" + (f", closed {closes}" if closes else "")
    )


def verdict(
    scenario: str,
    mine: dict[str, Any] | None,
    raw: dict[str, Any] | None,
    options: argparse.Namespace,
    steady_one: dict[str, Any] | None,
) -> tuple[str, str]:
    """(comparison, met?) for one row; "?" when a needed measurement is missing."""
    if failed(mine) is not None:
        return "-", "?"
    assert mine is not None
    have_raw = failed(raw) is None and raw is not None
    if scenario == "saturation":
        if not have_raw or not raw["sustained_deliveries_per_s"]:
            return "-", "?"
        ratio = (mine["sustained_deliveries_per_s"] or 0) / raw["sustained_deliveries_per_s"]
        return f"{ratio:.0%} of raw", "yes" if ratio >= 0.5 else "no"
    if scenario == "latency":
        if not have_raw:
            return "-", "?"
        p99, raw_p99 = (
            mine["deliveries"]["latency_ms"]["p99"],
            raw["deliveries"]["latency_ms"]["p99"],
        )
        if p99 is None or not raw_p99:
            return "-", "no"
        ok = p99 <= 2 * raw_p99 and mine["deliveries"]["lost"] == 0
        return f"{p99 / raw_p99:.1f}x raw p99", "yes" if ok else "no"
    if scenario == "idle":
        compared = "-"
        if have_raw and raw["server_rss_kib"]["per_listener_after_idle"]:
            ratio = (mine["server_rss_kib"]["per_listener_after_idle"]
                     / raw["server_rss_kib"]["per_listener_after_idle"])  # fmt: skip
            compared = f"{ratio:.1f}x raw memory"
        count = mine["connect"]["requested"]
        ok = mine["connect"]["connected"] == count and mine["probe"]["delivered"] == count
        return compared, "yes" if ok else "no"
    if scenario == "paid":
        connect, count = mine["connect"], mine["connect"]["requested"]
        admitted = connect["connected"] == mine["probe"]["delivered"] == count
        ok = admitted and not mine["closed_by_server"] and connect["seconds"] <= options.paid_budget
        compared = f"raw handshakes: {raw['connect']['seconds']:.2f} s" if have_raw else "-"
        return compared, "yes" if ok else "no"
    counted = mine["deliveries"]
    ok = counted["lost"] == 0 and counted["duplicates"] == 0 and mine["expected"] > 0
    compared = "-"
    if failed(steady_one) is None and steady_one is not None:
        one = steady_one["cpu"]["server_us_per_delivery"]
        compared = f"1 process, {steady_one['config']['rate']:g} msg/s: {number(one, 1)} µs/deliv."
    return compared, "yes" if ok else "no"


GOALS = {
    "saturation": ("Saturated deliveries/s, {listeners} listeners", ">= 50 % of raw, 0 lost"),
    "latency": ("{listeners} listeners x {latency_rate:g} msg/s: p99 publish→receive",
                "<= 2x raw p99, 0 lost"),
    "idle": ("{idle_listeners} idle listeners, one process", "all connected; RSS/conn reported"),
    "paid": ("{paid_listeners} entitlement-token connects (paid network)",
             "<= {paid_budget:g} s, all admitted"),
    "cluster": ("{cluster_processes} processes, one Redis, {listeners} listeners x "
                "{cluster_rate:g} msg/s", "every message once; CPU-µs/delivery"),
}  # fmt: skip


def table(results: dict[str, dict[str, dict[str, Any]]], options: argparse.Namespace) -> str:
    """The markdown results table: target, goal, KatieDJ, raw, comparison, met."""
    lines = [
        "| Target | Goal | KatieDJ | Raw websockets | Comparison | Met |",
        "|---|---|---|---|---|---|",
    ]
    sizes = {key: (f"{value:,}" if isinstance(value, int) else value)
             for key, value in vars(options).items()}  # fmt: skip
    for scenario in options.scenarios:
        measured = results.get(scenario, {})
        mine, raw = measured.get("katiedj"), measured.get("raw")
        title, goal = (text.format(**sizes) for text in GOALS[scenario])
        steady_one = results.get("latency", {}).get("katiedj")
        compared, met = verdict(scenario, mine, raw, options, steady_one)
        raw_cell = "n/a (one process)" if scenario == "cluster" else cell(scenario, raw)
        if "raw" not in options.targets and scenario != "cluster":
            raw_cell = "not run"
        lines.append(f"| {title} | {goal} | {cell(scenario, mine)} | {raw_cell} | "
                     f"{compared} | {met} |")  # fmt: skip
    return "\n".join(lines)


def machine_notes(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Other processes that used CPU during measured windows: this machine is shared."""
    notes = []
    for scenario, by_target in results.items():
        for target, result in by_target.items():
            windows = [result.get("machine_during_window")]
            windows += [{"busiest_other_processes": step["other_processes"]}
                        for step in result.get("steps", [])]  # fmt: skip
            busy = Counter[str]()
            for window in windows:
                for name, seconds in ((window or {}).get("busiest_other_processes") or {}).items():
                    busy[name] += seconds
            if busy:
                top = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in busy.most_common(3))
                notes.append(f"- {scenario} / {target}: other processes used CPU: {top}")
    return notes


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    first = scenario_config(options, options.targets[0], listeners=1)
    prepare_load_process(first)
    report = report_header("bench.targets", vars(options), options.payload_bytes)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="katiedj-targets-"))
    runner = Runner(options, tmp)
    try:
        for scenario in options.scenarios:
            # Raw is one process: the cluster scenario is KatieDJ's alone.
            targets = ["katiedj"] if scenario == "cluster" else options.targets
            for target in targets:
                if target in options.targets:
                    results.setdefault(scenario, {})[target] = run_scenario(
                        runner, scenario, target
                    )
    finally:
        runner.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report["results"] = results
    print()
    print(table(results, options))
    notes = machine_notes(results)
    if notes:
        print("\n" + "\n".join(notes))
    write_report(report, options.json_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
