"""Reads about live listening, for pages and APIs (not for the hot path)."""

from __future__ import annotations

from collections.abc import Iterable


def listeners_now(network_ids: Iterable[int]) -> dict[int, int]:
    """Network id → listeners connected right now, across every server process.

    Best effort and cheap enough for a catalogue page: one call for many networks. Until
    occupancy is tracked, every network reads 0.
    """
    return dict.fromkeys(network_ids, 0)
