"""Reads about live listening, for pages and APIs (not for the hot path)."""

from __future__ import annotations

from collections.abc import Iterable

from katiedj.metrics import NetworkStats
from networks.accounting import history_stats
from networks.models import Network

from . import occupancy


def listeners_now(network_ids: Iterable[int]) -> dict[int, int]:
    """Network id → listeners connected right now, across every server process.

    Best effort and cheap enough for a catalogue page: one Redis read for many networks
    (``streaming.occupancy``); counts lag connects and disconnects by about 0.1 s.
    """
    return occupancy.listeners_now(network_ids)


def network_stream_stats() -> list[NetworkStats]:
    """Listeners, messages published and history kept for every live network (monitoring)."""
    networks = list(
        Network.objects.filter(archived_at__isnull=True).order_by("slug").values_list("id", "slug")
    )
    ids = [network_id for network_id, _ in networks]
    listeners = listeners_now(ids)
    history = history_stats(ids)
    return [
        NetworkStats(
            slug=slug,
            listeners=listeners[network_id],
            messages=history[network_id][0],
            history=history[network_id][1],
        )
        for network_id, slug in networks
    ]
