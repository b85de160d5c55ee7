"""Counters that bound what one caller may spend (e.g. invitation emails), in Django's cache.

The cache is Redis in production, so every server process shares the counts; embedded, it
is the one process's memory. A window opens at the first hit and lasts ``period`` seconds:
at most ``amount`` hits fit in it, and its end is the Retry-After of a refusal.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import dataclass

from django.core.cache import cache


@dataclass(frozen=True)
class Limit:
    """At most ``amount`` hits per ``period`` seconds for one subject (0 or less: no limit)."""

    name: str
    subject: str
    amount: int
    period: int

    @property
    def cache_key(self) -> str:
        # Hashed: subjects may be email addresses, which need not sit in the cache in clear.
        digest = hashlib.sha256(self.subject.encode()).hexdigest()[:32]
        return f"limit:{self.name}:{digest}"


class LimitReached(Exception):
    """A hit was refused: ``limit`` is full for ``retry_after`` more seconds."""

    def __init__(self, limit: Limit, retry_after: int) -> None:
        super().__init__(f"{limit.name} limit reached; retry after {retry_after} s")
        self.limit = limit
        self.retry_after = retry_after


def _count_one(limit: Limit, now: float) -> int:
    key = limit.cache_key
    if not cache.add(key, 1, timeout=limit.period):
        try:
            return cache.incr(key)  # atomic on Redis and in local memory; keeps the expiry
        except ValueError:  # the window ended between add and incr: this hit opens the next
            cache.set(key, 1, timeout=limit.period)
    # The window's end, kept beside the count: the cache API cannot read a key's TTL.
    cache.set(f"{key}:until", now + limit.period, timeout=limit.period)
    return 1


def _uncount(limit: Limit) -> None:
    with contextlib.suppress(ValueError):  # the window ended meanwhile: nothing to give back
        cache.decr(limit.cache_key)


def _retry_after(limit: Limit, now: float) -> int:
    until = cache.get(f"{limit.cache_key}:until")
    seconds = (until - now) if isinstance(until, (int, float)) else limit.period
    return max(1, math.ceil(seconds))


def limits_consume(limits: list[Limit]) -> None:
    """Count one hit against every limit, or against none: raise LimitReached for the first
    full one. A refused hit spends nothing, so refusals never eat into the other limits."""
    now = time.time()
    counted: list[Limit] = []
    for limit in limits:
        if limit.amount <= 0:
            continue
        counted.append(limit)
        if _count_one(limit, now) > limit.amount:
            for taken in counted:
                _uncount(taken)
            raise LimitReached(limit, _retry_after(limit, now))
