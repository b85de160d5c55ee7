"""Refused credentials per client address: past a limit, refuse before any database lookup.

Each refusal of an unknown key is cached, but every new guess is a new database lookup. So
refusals (unknown, revoked, expired or mistyped keys; on the history endpoint, personal
tokens and sessions too) are counted per client address (IPv6: per /64) over a window that
starts at the address's first refusal. Past ``PUBLISH_KEY_FAILURES_PER_ADDRESS`` in
``PUBLISH_KEY_FAILURE_WINDOW_SECONDS`` the address gets TooManyFailedKeys (429 with
Retry-After) instead of a lookup until the window ends. A key the server has recently seen
valid is still looked up: generators behind one NAT share an address, and one misconfigured
neighbour must not stop them.

The count lives where every process sees it: Redis, or the embedded mode's cache (one
process). A process that learns an address is over the limit remembers it in memory, so a
flood from that address costs no I/O at all.
"""

from __future__ import annotations

import time
from functools import lru_cache

from django.conf import settings

from katiedj.client_address import address_bucket

from .lookup_cache import local_get, local_put, lookup_cache
from .redis_clients import async_redis_client, redis_client


class TooManyFailedKeys(Exception):
    """The client address is past its limit of refused keys; retry after ``retry_after`` s."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.0f} s")
        self.retry_after = retry_after


@lru_cache(maxsize=4096)
def _count_key(address: str) -> str:
    return f"{settings.REDIS_KEY_PREFIX}:keyfail:{address_bucket(address)}"


def _blocked_key(address: str) -> str:
    return f"keyfail:blocked:{address_bucket(address)}"


def _seen_valid_key(hashed_secret: str) -> str:
    return f"keyfail:valid:{hashed_secret}"


def _window() -> int:
    return max(1, settings.PUBLISH_KEY_FAILURE_WINDOW_SECONDS)


def _limited(address: str | None) -> bool:
    return address is not None and settings.PUBLISH_KEY_FAILURES_PER_ADDRESS > 0


def _block(address: str, seconds: float) -> TooManyFailedKeys:
    seconds = max(1.0, seconds)
    local_put(_blocked_key(address), time.monotonic() + seconds, seconds)
    return TooManyFailedKeys(seconds)


def seen_valid(hashed_secret: str) -> None:
    """Remember that a key was valid: it is looked up even from an address over the limit."""
    local_put(_seen_valid_key(hashed_secret), True, settings.PUBLISH_LOOKUP_CACHE_SECONDS)


def recently_valid(hashed_secret: str) -> bool:
    """Whether this process saw the key valid within ``PUBLISH_LOOKUP_CACHE_SECONDS``."""
    return local_get(_seen_valid_key(hashed_secret))[0]


def raise_if_blocked_here(address: str | None) -> None:
    """TooManyFailedKeys if this process knows ``address`` is over the limit; no I/O."""
    if not _limited(address):
        return
    blocked, until = local_get(_blocked_key(address))
    if blocked:
        raise TooManyFailedKeys(max(1.0, until - time.monotonic()))


def _local_count(address: str, increment: int) -> tuple[int, float]:
    # The embedded mode: one process, so its cache is the truth. (count, window end).
    cache, key, now = lookup_cache(), _count_key(address), time.time()
    count, ends = cache.get(key) or (0, now)
    if ends <= now:  # no window yet, or the last one is over
        count, ends = 0, now + _window()
    if increment:
        count += increment
        cache.set(key, (count, ends), max(1, int(ends - now) + 1))
    return count, ends - now


def check_before_lookup(address: str | None) -> None:
    """TooManyFailedKeys if ``address`` is over the limit: call it right before a database
    lookup (from sync code). Costs one Redis round trip; only lookups pay it."""
    if not _limited(address):
        return
    if settings.REDIS_URL:
        pipe = redis_client().pipeline(transaction=False)
        pipe.get(_count_key(address))
        pipe.ttl(_count_key(address))
        count, ttl = pipe.execute()
        count = int(count or 0)
    else:
        count, ttl = _local_count(address, 0)
    if count >= settings.PUBLISH_KEY_FAILURES_PER_ADDRESS:
        raise _block(address, ttl)


async def arecord_failure(address: str | None) -> None:
    """Count one refused credential of ``address``; TooManyFailedKeys when that puts it past
    the limit (the limit-th refusal itself is still answered as a refusal)."""
    if not _limited(address):
        return
    limit = settings.PUBLISH_KEY_FAILURES_PER_ADDRESS
    if settings.REDIS_URL:
        key = _count_key(address)
        pipe = async_redis_client().pipeline(transaction=True)
        # The window starts at the first refusal: SET NX only creates it.
        pipe.set(key, 0, ex=_window(), nx=True)
        pipe.incr(key)
        pipe.ttl(key)
        _, count, ttl = await pipe.execute()
    else:
        count, ttl = _local_count(address, 1)
    if count >= limit:
        blocked = _block(address, ttl)
        if count > limit:
            raise blocked
