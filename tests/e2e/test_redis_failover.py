"""Redis Sentinel failover on a live stack: nothing a publisher was told is stored is lost
silently, and publishers and listeners carry on with the promoted replica.

The cluster (harness.RedisSentinelCluster) is a primary, a replica and three sentinels on
loopback. Before the primary is killed, its replication link is cut (the replication user is
disabled on the primary): the messages accepted during the last second exist on the primary
only, as after a failover to a lagging replica. The promoted replica numbers from where it
was: every listener must then be told, by a reset frame (docs: epochs) or a gap frame, what
it will never get.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import websockets

from .harness import (
    REPO_ROOT,
    RedisSentinelCluster,
    Stack,
    base_env,
    manage,
    require_production_services,
    start_production_stack,
)

pytestmark = pytest.mark.e2e

SLUG = "failover-net"
RATE = 20  # publishes per second
STREAM_BEFORE_CUT = 3.0  # seconds of fully replicated traffic
UNREPLICATED = 1.0  # seconds of traffic only the primary gets before it is killed
STREAM_AFTER_FAILOVER = 5.0


@pytest.fixture
def cluster(tmp_path: Path):
    require_production_services()
    running = RedisSentinelCluster(tmp_path / "redis")
    running.start()
    yield running
    running.stop()


# --- Every Redis user of a process follows the failover --------------------------------

CLIENTS_PROBE = """
import asyncio, json, sys, time
import django
django.setup()
from channels.layers import get_channel_layer
from django.core.cache import cache
from katiedj.celery import app
from networks.redis_clients import async_redis_client, redis_client

def retried(check):
    # Seconds until ``check`` worked: connections to the dead primary fail until the
    # sentinels name the new one.
    started = time.monotonic()
    while True:
        try:
            check()
            return time.monotonic() - started
        except Exception:
            if time.monotonic() - started > 30:
                raise
            time.sleep(0.1)

def broker(tag):
    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue("sentinel-probe")
        queue.put({"tag": tag})
        message = queue.get(timeout=5)
        message.ack()
        queue.close()
        assert message.payload == {"tag": tag}

def sync_client(tag):
    redis_client().set("probe", tag)
    assert redis_client().get("probe") == tag.encode()

def django_cache(tag):
    cache.set("probe", tag)
    assert cache.get("probe") == tag

async def async_checks(tag):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("probe", channel)
    times = {}
    for name in ("async_client", "channel_layer"):
        started = time.monotonic()
        while True:
            try:
                if name == "async_client":
                    await async_redis_client().set("aprobe", tag)
                    assert await async_redis_client().get("aprobe") == tag.encode()
                else:
                    await layer.group_send("probe", {"type": "probe", "tag": tag})
                    message = await asyncio.wait_for(layer.receive(channel), 2)
                    assert message["tag"] == tag
                break
            except Exception:
                if time.monotonic() - started > 30:
                    raise
                await asyncio.sleep(0.1)
        times[name] = time.monotonic() - started
    return times

loop = asyncio.new_event_loop()
for tag in ("before", "after"):
    times = {"sync_client": retried(lambda: sync_client(tag)),
             "cache": retried(lambda: django_cache(tag)),
             "celery_broker": retried(lambda: broker(tag))}
    times.update(loop.run_until_complete(async_checks(tag)))
    print(json.dumps({"phase": tag, "seconds": times}), flush=True)
    if tag == "before":
        sys.stdin.readline()  # the test kills the primary meanwhile
"""


def test_every_redis_client_follows_a_failover(cluster: RedisSentinelCluster, tmp_path: Path):
    """One process's redis-py clients (sync, asyncio), Django cache, Channels layer and
    Celery broker connection all work again on the new master, without a restart."""
    env = base_env()
    env.update(cluster.settings_env(db=3))
    env.update({"DJANGO_SETTINGS_MODULE": "katiedj.settings", "KATIEDJ_VAR_DIR": str(tmp_path)})
    probe = subprocess.Popen(
        [sys.executable, "-c", CLIENTS_PROBE],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the layer logs the lost connection once
        text=True,
    )
    try:
        before = json.loads(probe.stdout.readline() or "{}")
        assert before.get("phase") == "before", "the probe failed before the failover"
        old = cluster.kill_primary()
        failover = cluster.wait_for_failover(old)
        probe.stdin.write("go\n")
        probe.stdin.flush()
        after = json.loads(probe.stdout.readline() or "{}")
        assert probe.wait(timeout=60) == 0
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
        probe.stdin.close()
        probe.stdout.close()
    assert after.get("phase") == "after", "a client did not recover after the failover"
    print(f"\nfailover {failover:.2f} s; first success after it: {after['seconds']}")


# --- A stack under load through a failover ---------------------------------------------


@dataclass(frozen=True)
class Receipt:
    counter: int
    seq: int
    epoch: str | None
    at: float


@dataclass
class Ledger:
    """Everything one listener was told, and where it stands ((epoch, seq) of its last frame)."""

    name: str
    epoch: str | None
    last_seq: int
    delivered: Counter = field(default_factory=Counter)
    counters: dict[tuple[str | None, int], int] = field(default_factory=dict)
    arrivals: dict[str | None, float] = field(default_factory=dict)  # epoch -> first frame
    gaps: list[tuple[str | None, int, int]] = field(default_factory=list)
    resets: list[tuple[str | None, int, str, int]] = field(default_factory=list)
    connects: int = 0
    errors: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # compact, for failure messages
    breaks: list[str] = field(default_factory=list)  # a data frame that does not follow on
    expect: int | None = None  # the seq the next data frame must have

    def take(self, frame: dict) -> None:
        kind = frame.get("type")
        self.log.append(
            f"{kind}({frame.get('epoch')},{frame.get('seq', frame.get('from_seq'))})"
            if kind
            else str(frame["seq"])
        )
        if kind == "reset":
            self.expect = frame["seq"] + 1
            # Nothing of the listener's epoch after its last seq is coming; the new numbering
            # continues after frame["seq"].
            self.resets.append((self.epoch, self.last_seq, frame["epoch"], frame["seq"]))
            self.epoch, self.last_seq = frame["epoch"], frame["seq"]
        elif kind == "gap":
            self.gaps.append((self.epoch, frame["from_seq"], frame["to_seq"]))
            self.last_seq = max(self.last_seq, frame["to_seq"])
            self.expect = frame["to_seq"] + 1
        else:
            key = (frame.get("epoch"), frame["seq"])
            if self.expect is not None and frame["seq"] != self.expect:
                self.breaks.append(f"{self.log[-2:]} expected {self.expect}")
            self.expect = frame["seq"] + 1
            self.delivered[key] += 1
            self.counters[key] = frame["data"]["c"]
            self.arrivals.setdefault(key[0], time.monotonic())
            self.epoch, self.last_seq = key

    def told(self, receipt: Receipt) -> str | None:
        """How this listener learnt of an accepted message; None: it was lost silently."""
        if self.delivered[(receipt.epoch, receipt.seq)]:
            return "delivered"
        same = [receipt.epoch, None] if receipt.epoch is not None else None

        def in_epoch(epoch: str | None) -> bool:
            return same is None or epoch in same

        if any(in_epoch(e) and a <= receipt.seq <= b for e, a, b in self.gaps):
            return "gap"
        if any(in_epoch(e) and receipt.seq > last for e, last, _, _ in self.resets):
            return "reset"
        return None


def post(stack: Stack, key: str, counter: int) -> tuple[int | None, dict]:
    """One publish; (None, {}) when the connection failed."""
    body = json.dumps({"network": SLUG, "data": {"c": counter}}).encode()
    request = urllib.request.Request(  # noqa: S310
        stack.servers[counter % len(stack.servers)].http + "/api/publish",
        data=body,
        headers={"Content-Type": "application/json", "API-KEY": key},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {}
    except (OSError, ValueError):
        return None, {}


async def publish_steadily(
    stack: Stack, key: str, receipts: list[Receipt], failures: list[tuple[float, int | None]],
    stop: asyncio.Event,
) -> None:  # fmt: skip
    """RATE publishes a second, each retried (with backoff) until it gets a 2xx receipt."""
    loop = asyncio.get_running_loop()
    counter = 0
    next_at = loop.time()
    while not stop.is_set():
        counter += 1
        backoff = 0.05
        while True:
            status, answer = await asyncio.to_thread(post, stack, key, counter)
            if status is not None and 200 <= status < 300:
                receipts.append(
                    Receipt(counter, answer["seq"], answer.get("epoch"), time.monotonic())
                )
                break
            assert status is None or status >= 500 or status == 429, f"publish answered {status}"
            failures.append((time.monotonic(), status))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
        next_at = max(next_at + 1 / RATE, loop.time())
        await asyncio.sleep(next_at - loop.time())


async def listen(
    ws_base: str, ledger: Ledger, stop: asyncio.Event,
    drop: asyncio.Event | None = None, come_back: asyncio.Event | None = None,
) -> None:  # fmt: skip
    """A raw envelope listener that resumes with ?since=&epoch= whenever its socket closes.

    With ``drop``, it closes its socket once when ``drop`` is set and comes back when
    ``come_back`` is.
    """
    dropped = False
    while not stop.is_set():
        query = f"format=envelope&since={ledger.last_seq}"
        if ledger.epoch:
            query += f"&epoch={ledger.epoch}"
        try:
            async with websockets.connect(
                f"{ws_base}/ws/networks/{SLUG}/?{query}", open_timeout=5, close_timeout=1
            ) as ws:
                ledger.connects += 1
                ledger.log.append(f"connect(since={ledger.last_seq})")
                ledger.expect = None  # a resume starts with a replay, a reset or a gap
                while not stop.is_set():
                    if drop is not None and drop.is_set() and not dropped:
                        dropped = True
                        break
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 0.1)  # cancelling is safe
                    except TimeoutError:
                        continue
                    ledger.take(json.loads(raw))
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            ledger.errors.append(repr(exc))
        if dropped and come_back is not None:
            await come_back.wait()
        await asyncio.sleep(0.1)


@pytest.fixture
def failover_stack(cluster: RedisSentinelCluster, tmp_path: Path):
    env = cluster.settings_env()
    stack = start_production_stack(tmp_path, processes=2, redis_url=env["REDIS_URL"], extra_env=env)
    yield stack
    stack.stop()


async def test_publishers_and_listeners_carry_on_through_a_failover_and_nothing_is_lost_silently(
    cluster: RedisSentinelCluster, failover_stack: Stack
):
    stack = failover_stack
    manage(stack.env, "create_network", SLUG, "--org", "katiedj-demo", "--backpressure", "drop")
    key = manage(stack.env, "create_api_key", "--org", "katiedj-demo", "--name", "failover",
                 "--network", SLUG, "--rate-limit", "5000").strip().splitlines()[-1]  # fmt: skip
    # Listeners start from a published position, so none depends on when its server's
    # subscription became active: everything after it is replayed from history.
    status, warmup = await asyncio.to_thread(post, stack, key, 0)
    assert status == 200, status
    start = (warmup.get("epoch"), warmup["seq"])

    stop_listening, stop_publishing = asyncio.Event(), asyncio.Event()
    drop, come_back_now, come_back_later = asyncio.Event(), asyncio.Event(), asyncio.Event()
    ledgers: list[Ledger] = []
    tasks = []
    for index, server in enumerate(stack.servers):
        # Two stay connected through the failover; one drops at the kill and resumes at once;
        # one drops and resumes only once the new master has taken publishes.
        kinds = [("steady", None), ("steady", None), ("resume-now", come_back_now),
                 ("resume-later", come_back_later)]  # fmt: skip
        for kind, come_back in kinds:
            ledger = Ledger(f"{kind}@web{index}#{len(ledgers)}", *start)
            ledgers.append(ledger)
            dropping = drop if come_back is not None else None
            tasks.append(
                asyncio.create_task(listen(server.ws, ledger, stop_listening, dropping, come_back))
            )
    receipts: list[Receipt] = []
    failures: list[tuple[float, int | None]] = []
    publisher = asyncio.create_task(
        publish_steadily(stack, key, receipts, failures, stop_publishing)
    )
    try:
        await asyncio.sleep(STREAM_BEFORE_CUT)
        await asyncio.to_thread(cluster.cut_replication)
        cut_at = len(receipts)
        await asyncio.sleep(UNREPLICATED)
        drop.set()
        await asyncio.sleep(0.05)
        killed_at = time.monotonic()
        counter_at_kill = receipts[-1].counter
        unreplicated = receipts[cut_at:]
        old_port = await asyncio.to_thread(cluster.kill_primary)
        come_back_now.set()
        failover_seconds = await asyncio.to_thread(cluster.wait_for_failover, old_port)
        await asyncio.sleep(2)
        come_back_later.set()
        await asyncio.sleep(STREAM_AFTER_FAILOVER - 2)
        stop_publishing.set()
        await asyncio.wait_for(publisher, 30)

        # Let every listener catch up with the last receipt (or give up after a while).
        last = receipts[-1]
        for _ in range(100):
            if all(ledger.told(last) for ledger in ledgers):
                break
            await asyncio.sleep(0.2)
    finally:
        stop_publishing.set()
        stop_listening.set()
        come_back_now.set()
        come_back_later.set()
        publisher.cancel()
        await asyncio.gather(publisher, *tasks, return_exceptions=True)

    # Receipts may lack the epoch: take it from a listener that got that message.
    seen = {(seq, c): epoch for ledger in ledgers for (epoch, seq), c in ledger.counters.items()}
    receipts = [
        r if r.epoch is not None else Receipt(r.counter, r.seq, seen.get((r.seq, r.counter)), r.at)
        for r in receipts
    ]
    after_kill = [r for r in receipts if r.counter > counter_at_kill]
    # Recovery: the first message numbered by the new master (a new epoch).
    old_epoch = next(r.epoch for r in receipts if r.counter == counter_at_kill)
    new_epoch = [r for r in after_kill if r.epoch != old_epoch]
    first_ok = new_epoch[0].at - killed_at if new_epoch else float("nan")
    report = [
        f"failover {failover_seconds:.2f} s after kill -9; first receipt from the new master "
        f"{first_ok:.2f} s; {len(failures)} failed publish attempts "
        f"(statuses {dict(Counter(status for _, status in failures))}); {len(receipts)} "
        f"receipts, {len(unreplicated)} accepted after replication was cut"
    ]
    problems = []
    for ledger in ledgers:
        how = Counter(ledger.told(r) for r in receipts)
        duplicates = [key for key, n in ledger.delivered.items() if n > 1]
        wrong = [
            r.counter
            for r in receipts
            if ledger.counters.get((r.epoch, r.seq), r.counter) != r.counter
        ]
        back = [t - killed_at for epoch, t in ledger.arrivals.items() if epoch != old_epoch]
        report.append(
            f"{ledger.name}: {dict(how)}; duplicates {len(duplicates)}; wrong content "
            f"{len(wrong)}; out of sequence {ledger.breaks}; resets {ledger.resets}; "
            f"gaps {ledger.gaps}; connects "
            f"{ledger.connects}; first message of the new master "
            f"{min(back) if back else float('nan'):.2f} s"
        )
        if how[None] or duplicates or wrong or ledger.breaks:
            lost = [r.counter for r in receipts if ledger.told(r) is None]
            problems.append(
                f"{ledger.name}: {len(lost)} silently lost {lost[:20]}, duplicates "
                f"{duplicates[:10]}, wrong content {wrong[:10]}, out of sequence "
                f"{ledger.breaks[:5]}; frames: {' '.join(ledger.log)}"
            )
    print("\n" + "\n".join(report))
    assert unreplicated, "no publish was accepted while replication was cut"
    assert after_kill and len(after_kill) >= RATE * 2, "publishing did not carry on"
    assert not problems, "\n".join(problems + report)
