"""This process's streaming counters, exported in Prometheus text format by ``/metrics``.

Plain integers and fixed-bucket histograms updated on the event loop thread (no locks);
``streaming.views.metrics`` renders them with the cross-process figures from Redis.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

# Why the server reset a WebSocket connection (katiedj/ws_protocol.py).
CUT_REASONS = ("write_timeout", "close_timeout", "ping_timeout")

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
    cut: Counter[str] = field(default_factory=Counter)  # connections reset, by deadline

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


def connection_cut(reason: str) -> None:
    """A stalled connection reset by one of ``CUT_REASONS`` (katiedj/ws_protocol.py)."""
    current.cut[reason] += 1


def publish_handled(status: int, seconds: float) -> None:
    current.published[status] += 1
    current.publish_latency.observe(seconds)


# --- Prometheus text format ----------------------------------------------------------------


@dataclass(frozen=True)
class NetworkStats:
    """Cross-process figures for one network (from Redis, or memory when embedded)."""

    slug: str
    listeners: int
    messages: int  # published so far: the network's last sequence number
    history: int  # messages kept for resuming listeners


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")


def _histogram(lines: list[str], name: str, help_text: str, histogram: Histogram) -> None:
    _family(lines, name, "histogram", help_text)
    for bound, count in histogram.cumulative():
        lines.append(f'{name}_bucket{{le="{bound}"}} {count}')
    lines.append(f"{name}_sum {histogram.total}")
    lines.append(f"{name}_count {histogram.count}")


def render_prometheus(
    networks: list[NetworkStats], process: str, up: dict[str, bool] | None = None
) -> str:
    """The exposition text: cross-process gauges per network, then this process's counters,
    then ``katiedj_<service>_up`` for each backing service in ``up`` (1: it answered this
    scrape; 0: it did not, and the per-network figures it holds are left out)."""
    lines: list[str] = []
    per_network = [
        ("katiedj_listeners", "gauge", "Listeners connected now, all processes", "listeners"),
        ("katiedj_messages_published_total", "counter", "Messages published", "messages"),
        ("katiedj_history_messages", "gauge", "Messages kept for resuming", "history"),
    ]
    for name, kind, help_text, attribute in per_network:
        _family(lines, name, kind, help_text)
        for stats in networks:
            lines.append(f'{name}{{network="{_label(stats.slug)}"}} {getattr(stats, attribute)}')
    proc = f'process="{_label(process)}"'
    _family(lines, "katiedj_process_listeners", "gauge", "Listeners on this process")
    lines.append(f"katiedj_process_listeners{{{proc}}} {sum(current.connections.values())}")
    scalars = [
        ("katiedj_connections_opened_total", "Listener connections admitted", "connections_opened"),
        ("katiedj_messages_fanned_out_total", "Messages fanned out", "messages_fanned_out"),
        ("katiedj_deliveries_total", "Frames handed to listeners", "deliveries"),
    ]
    for name, help_text, attribute in scalars:
        _family(lines, name, "counter", f"{help_text} by this process")
        lines.append(f"{name}{{{proc}}} {getattr(current, attribute)}")
    _family(lines, "katiedj_listener_skipped_total", "counter", "Messages a lagging listener "
            "never got, by backpressure policy (this process)")  # fmt: skip
    for policy in ("conflate", "drop", "disconnect"):
        lines.append(f'katiedj_listener_skipped_total{{{proc},policy="{policy}"}} '
                     f"{current.skipped[policy]}")  # fmt: skip
    _family(lines, "katiedj_connections_cut_total", "counter", "WebSocket connections reset "
            "because the peer stopped reading, by deadline (this process)")  # fmt: skip
    for reason in CUT_REASONS:
        lines.append(f'katiedj_connections_cut_total{{{proc},reason="{reason}"}} '
                     f"{current.cut[reason]}")  # fmt: skip
    _family(lines, "katiedj_publish_requests_total", "counter", "Publish requests by status")
    for status, count in sorted(current.published.items()):
        lines.append(f'katiedj_publish_requests_total{{{proc},status="{status}"}} {count}')
    _histogram(lines, "katiedj_publish_seconds", "Publish request handling time (this process)",
               current.publish_latency)  # fmt: skip
    _histogram(lines, "katiedj_fanout_seconds", "Publish to hand-over to listeners "
               "(this process)", current.fanout_latency)  # fmt: skip
    for service, answered in sorted((up or {}).items()):
        name = f"katiedj_{service}_up"
        _family(lines, name, "gauge", f"Whether this process reached the {service} (1) or not")
        lines.append(f"{name}{{{proc}}} {int(answered)}")
    return "\n".join(lines) + "\n"
