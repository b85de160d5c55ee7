"""Reads about live listening, for pages and APIs (not for the hot path)."""

from __future__ import annotations

from collections.abc import Iterable

from . import occupancy


def listeners_now(network_ids: Iterable[int]) -> dict[int, int]:
    """Network id → listeners connected right now, across every server process.

    Best effort and cheap enough for a catalogue page: one Redis read for many networks
    (``streaming.occupancy``); counts lag connects and disconnects by about 0.1 s.
    """
    return occupancy.listeners_now(network_ids)
