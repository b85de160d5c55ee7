"""Nothing lost silently when Redis restarts without its data mid-stream.

A publisher sends a counter at ~20 messages a second and retries what is refused; Redis is
killed and started empty (no persistence), so the numbering starts again at 1. Every
message the publisher got a 201 for must, for every listener, be delivered once, or be
announced: inside a gap frame, or after the listener's last seq of an epoch a reset frame
left behind. Before epochs, a resuming listener lost hundreds of messages with no frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
import websockets

from .harness import RedisServer, free_port, require_production_services, start_production_stack

pytestmark = pytest.mark.e2e

RATE = 20  # messages a second


@dataclass
class Publisher:
    """Publishes n = 0, 1, 2, … with retries; remembers (epoch, seq) of every accepted n."""

    url: str
    key: str
    accepted: dict[int, tuple[str, int]] = field(default_factory=dict)
    refused: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        n = 0
        with httpx.Client(timeout=5) as http:
            while not self.stop.is_set():
                try:
                    answer = http.post(
                        f"{self.url}/api/v1/networks/sample_net/messages",
                        json={"data": {"n": n}},
                        headers={"Authorization": f"Bearer {self.key}"},
                    )
                except httpx.HTTPError:
                    answer = None
                if answer is not None and answer.status_code == 201:
                    receipt = answer.json()
                    self.accepted[n] = (receipt["epoch"], receipt["seq"])
                    n += 1
                else:
                    self.refused += 1  # nothing was accepted: the same n is sent again
                time.sleep(1 / RATE)


@dataclass
class Record:
    """What one listener was told, frame by frame, across its connections."""

    delivered: list[tuple[str, int, int]] = field(default_factory=list)  # epoch, seq, n
    gaps: list[tuple[str, int, int]] = field(default_factory=list)  # epoch, from, to
    gone_after: dict[str, int] = field(default_factory=dict)  # epoch → last seq seen in it
    resets: int = 0
    connections: int = 0
    epoch: str | None = None
    seq: int | None = None

    def take(self, frame: dict) -> None:
        if frame.get("type") == "reset":
            if self.epoch is not None:
                # Everything of the old numbering after what this listener saw is not coming.
                self.gone_after.setdefault(self.epoch, self.seq or 0)
            self.epoch, self.seq = frame["epoch"], frame["seq"]
            self.resets += 1
        elif frame.get("type") == "gap":
            self.gaps.append((self.epoch, frame["from_seq"], frame["to_seq"]))
        else:
            self.epoch, self.seq = frame["epoch"], frame["seq"]
            self.delivered.append((frame["epoch"], frame["seq"], frame["data"]["n"]))

    def query(self) -> str:
        if self.seq is None:
            return "?format=envelope"
        return f"?format=envelope&since={self.seq}&epoch={self.epoch}"

    def silent_losses(self, accepted: dict[int, tuple[str, int]]) -> list[int]:
        heard = {n for _, _, n in self.delivered}
        lost = []
        for n, (epoch, seq) in accepted.items():
            announced = any(e == epoch and a <= seq <= b for e, a, b in self.gaps) or (
                epoch in self.gone_after and seq > self.gone_after[epoch]
            )
            if n not in heard and not announced:
                lost.append(n)
        return lost

    def duplicates(self) -> int:
        keys = [(epoch, seq) for epoch, seq, _ in self.delivered]
        return len(keys) - len(set(keys))


async def listen(url: str, record: Record, until: asyncio.Event, *, drop_at: asyncio.Event):
    """Listen, resuming with (epoch, since) after every drop; drops once when told to."""
    dropped = False
    while not until.is_set():
        with contextlib.suppress(OSError, websockets.WebSocketException):
            async with websockets.connect(url + record.query()) as ws:
                record.connections += 1
                while not until.is_set():
                    if drop_at.is_set() and not dropped:
                        dropped = True
                        break  # away while Redis restarts; back with ?since= afterwards
                    with contextlib.suppress(TimeoutError):
                        record.take(json.loads(await asyncio.wait_for(ws.recv(), 0.2)))
        if dropped and drop_at.is_set() and not until.is_set():
            await asyncio.sleep(1.5)  # stay away until the new numbering has moved on
        await asyncio.sleep(0.1)


@pytest.fixture
def private_redis_stack(tmp_path):
    require_production_services()
    redis_server = RedisServer(free_port(), tmp_path)
    redis_server.start()
    stack = start_production_stack(tmp_path, processes=2, redis_url=redis_server.url)
    yield stack, redis_server
    stack.stop()
    redis_server.stop()


async def test_a_redis_that_restarts_empty_loses_nothing_silently(private_redis_stack):
    stack, redis_server = private_redis_stack
    publisher = Publisher(stack.servers[0].http, stack.demo_key)
    done, away = asyncio.Event(), asyncio.Event()
    never = asyncio.Event()
    records = {"connected": Record(), "resuming": Record(), "other process": Record()}
    url = stack.servers[0].ws + "/ws/networks/sample_net/"
    other = stack.servers[1].ws + "/ws/networks/sample_net/"
    listeners = [
        asyncio.ensure_future(listen(url, records["connected"], done, drop_at=never)),
        asyncio.ensure_future(listen(url, records["resuming"], done, drop_at=away)),
        asyncio.ensure_future(listen(other, records["other process"], done, drop_at=never)),
    ]
    # A listener hears what is published once it is connected: start publishing after that.
    await wait_for(lambda: all(r.connections for r in records.values()), "listeners connected")
    thread = threading.Thread(target=publisher.run)
    thread.start()
    try:
        await wait_for(lambda: len(publisher.accepted) >= 3 * RATE, "publishing started")
        away.set()
        await asyncio.sleep(0.3)
        redis_server.stop()  # everything it held is gone
        await asyncio.sleep(1.0)
        redis_server.start()
        before = len(publisher.accepted)
        await wait_for(lambda: len(publisher.accepted) >= before + 3 * RATE, "publishing resumed")
    finally:
        publisher.stop.set()
        await asyncio.to_thread(thread.join)
    # Let every listener receive what was accepted last.
    total = len(publisher.accepted)
    await wait_for(
        lambda: all(r.delivered and r.delivered[-1][2] == total - 1 for r in records.values()),
        "every listener heard the last message",
    )
    done.set()
    await asyncio.gather(*listeners)

    assert publisher.refused > 0  # Redis really was away
    epochs = {epoch for epoch, _ in publisher.accepted.values()}
    assert len(epochs) == 2  # numbered in two epochs
    for name, record in records.items():
        lost = record.silent_losses(publisher.accepted)
        assert lost == [], (name, [publisher.accepted[n] for n in lost], record.gone_after)
        assert record.duplicates() == 0, name
        assert record.resets >= 1, name  # each saw numbers the new Redis never handed out
    print(  # the numbers behind docs/operations.md
        {name: (len(r.delivered), r.resets, len(r.gaps)) for name, r in records.items()},
        "accepted",
        total,
        "refused",
        publisher.refused,
    )


async def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + 60
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.05)
