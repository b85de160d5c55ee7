"""This process's streaming counters, exported in Prometheus text format by ``/metrics``.

Plain integers and fixed-bucket histograms updated on the event loop thread (no locks);
``katiedj.metrics`` renders them together with the cross-process figures from Redis.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

# Seconds; the same buckets for publish handling and publish→fan-out latency.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class Histogram:
    """Cumulative-bucket histogram, as Prometheus expects."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count) pairs, ``+Inf`` last."""
        running, pairs = 0, []
        for bound, count in zip((*map(repr, self.buckets), "+Inf"), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs


@dataclass
class StreamingMetrics:
    connections: Counter[int] = field(default_factory=Counter)  # by network id, now
    connections_opened: int = 0
    messages_fanned_out: int = 0  # messages this process handed to its listeners
    deliveries: int = 0  # frames offered to listeners (messages x listeners)
    skipped: Counter[str] = field(default_factory=Counter)  # by backpressure policy
    fanout_latency: Histogram = field(default_factory=Histogram)
    publish_latency: Histogram = field(default_factory=Histogram)
    published: Counter[int] = field(default_factory=Counter)  # accepted here, by status

    def reset(self) -> None:
        self.__init__()


current = StreamingMetrics()


def listener_joined(network_id: int) -> None:
    current.connections[network_id] += 1
    current.connections_opened += 1


def listener_left(network_id: int) -> None:
    current.connections[network_id] -= 1
    if current.connections[network_id] <= 0:
        del current.connections[network_id]


def message_fanned_out(listeners: int, latency: float) -> None:
    current.messages_fanned_out += 1
    current.deliveries += listeners
    current.fanout_latency.observe(max(0.0, latency))


def listener_skipped(policy: str) -> None:
    """A message a lagging listener will never get (conflated, dropped or disconnected)."""
    current.skipped[policy] += 1


def publish_handled(status: int, seconds: float) -> None:
    current.published[status] += 1
    current.publish_latency.observe(seconds)
