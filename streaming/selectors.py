"""Reads about live listening, for pages and APIs (not for the hot path)."""

from __future__ import annotations

from collections.abc import Iterable

import redis
from django.conf import settings

from katiedj import outages
from katiedj.metrics import NetworkStats
from networks.accounting import history_stats
from networks.lookup_cache import DatabaseUnavailable, database_call
from networks.models import Network
from networks.redis_clients import redis_client

from . import occupancy


def listeners_now(network_ids: Iterable[int]) -> dict[int, int]:
    """Network id → listeners connected right now, across every server process.

    Best effort and cheap enough for a catalogue page: one Redis read for many networks
    (``streaming.occupancy``); counts lag connects and disconnects by about 0.1 s.
    """
    return occupancy.listeners_now(network_ids)


def _live_networks() -> list[tuple[int, str]]:
    """(id, slug) of every network not archived, by slug (database read)."""
    live = Network.objects.filter(archived_at__isnull=True).order_by("slug")
    return list(live.values_list("id", "slug"))


def _stream_figures(network_ids: list[int]) -> tuple[dict[int, int], dict[int, tuple[int, int]]]:
    """Listeners now, and (last seq, history kept), per network (Redis, or memory)."""
    if settings.REDIS_URL and not network_ids:
        redis_client().ping()  # nothing to read: still find out whether Redis answers
    history = history_stats(network_ids)  # raises when Redis is down (listeners_now says 0)
    return listeners_now(network_ids), history


def network_stream_stats() -> tuple[list[NetworkStats], dict[str, bool]]:
    """Listeners, messages published and history kept for every live network (monitoring),
    and whether each backing service answered: ``{"database": …, "redis": …}`` (no "redis"
    without one). A service that does not answer leaves the list empty rather than fail:
    the database within ``DATABASE_LOOKUP_TIMEOUT_SECONDS``, Redis at once when refused."""
    up = {outages.DATABASE: True}
    try:
        networks = database_call(_live_networks)
    except DatabaseUnavailable:
        up[outages.DATABASE] = False  # logged once per outage by the lookup
        networks = []
    ids = [network_id for network_id, _ in networks]
    try:
        listeners, history = _stream_figures(ids)
    except (redis.RedisError, OSError) as error:
        outages.note_outage(outages.REDIS, error)
        up[outages.REDIS] = False
        return [], up
    if settings.REDIS_URL:
        outages.note_recovered(outages.REDIS)
        up[outages.REDIS] = True
    stats = [
        NetworkStats(
            slug=slug,
            listeners=listeners[network_id],
            messages=history[network_id][0],
            history=history[network_id][1],
        )
        for network_id, slug in networks
    ]
    return stats, up
