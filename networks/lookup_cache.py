"""Two-tier cache for the publish and listen paths: process memory, then the shared cache.

The process tier answers the common case without I/O or a thread hop, so async code can use
it directly. Its entries live ``PUBLISH_LOCAL_CACHE_SECONDS`` (1 s by default): that bounds
how long another process may keep using a revoked key. The process that makes a change drops
its own entries at once (``forget``).

The shared tier is one handle on the ``default`` cache for the process's life:
``django.core.cache.cache`` is bound to the request context under ASGI, so with Redis every
request would otherwise open a new connection (measured: most of the publish CPU).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import cache
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import BaseCache, caches
from django.db import close_old_connections, connection

from .redis_clients import async_redis_client, redis_client

# A miss is cached too, so a flood of bad keys or slugs does not reach the database.
_MISSING = "missing"
_MISS_TTL_SECONDS = 30
_LOCAL_MAX_ENTRIES = 10_000

_local: dict[str, tuple[float, Any]] = {}


@cache
def lookup_cache() -> BaseCache:
    """The process-wide instance of the ``default`` cache (thread-safe, pooled)."""
    return caches.create_connection("default")


def _local_get(key: str) -> tuple[bool, Any]:
    entry = _local.get(key)
    if entry is None or entry[0] < time.monotonic():
        return False, None
    return True, entry[1]


def local_get(key: str) -> tuple[bool, Any]:
    """(True, value) when this process's memory holds ``key``; no I/O."""
    return _local_get(key)


def local_put(key: str, value: Any, seconds: float) -> None:
    """Keep ``value`` in this process's memory for ``seconds`` (``forget``/``clear`` drop it)."""
    if len(_local) >= _LOCAL_MAX_ENTRIES:
        _local.clear()
    _local[key] = (time.monotonic() + seconds, value)


def cached_lookup(key: str, load: Callable[[], Any], *, local: bool = True) -> Any:
    """The value under ``key`` (None for "does not exist"), loading it on a miss of both tiers.

    ``local=False`` skips the process tier, for answers that must be fresh on every process
    at once (a revoked listener reconnecting).
    """
    if local:
        hit, value = _local_get(key)
        if hit:
            return value
    shared = lookup_cache().get(key)
    if shared is None:
        value = load()
        ttl = settings.PUBLISH_LOOKUP_CACHE_SECONDS if value is not None else _MISS_TTL_SECONDS
        lookup_cache().set(key, _MISSING if value is None else value, ttl)
    else:
        value = None if shared == _MISSING else shared
    if local:
        if len(_local) >= _LOCAL_MAX_ENTRIES:
            _local.clear()
        _local[key] = (time.monotonic() + settings.PUBLISH_LOCAL_CACHE_SECONDS, value)
    return value


def _with_fresh_connections(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    # Never in the middle of a caller's transaction (a test's, when the sync thread is the
    # caller's own): closing there would break it.
    if not connection.in_atomic_block:
        close_old_connections()
    return function(*args, **kwargs)


async def adatabase_call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a database-touching ``function`` in asgiref's sync thread, first closing stale
    connections there: what Channels does before every consumer handler, done only when the
    database is actually needed (listener consumers skip the per-handler hop)."""
    return await sync_to_async(_with_fresh_connections)(function, *args, **kwargs)


async def acached_lookup(key: str, load: Callable[[], Any]) -> Any:
    """``cached_lookup`` for async code: no thread hop when the process tier has the answer."""
    hit, value = _local_get(key)
    if hit:
        return value
    return await adatabase_call(cached_lookup, key, load)


def _fresh_key(key: str) -> str:
    return f"{settings.REDIS_KEY_PREFIX}:fresh:{key}"


async def afresh_lookup(key: str, load: Callable[[], Any]) -> Any:
    """The shared tier only, read without a thread hop: for answers that must hold on every
    process at once (a revoked listener reconnecting). Values must be JSON; ``forget`` drops
    them like any other entry.

    Django's cache API is synchronous (a thread hop per call from async code, and asgiref
    runs those hops one at a time), so with Redis the value lives under its own key, read
    with the async client; without Redis the one process's memory cache is read directly.
    """
    if not settings.REDIS_URL:
        shared = lookup_cache().get(key)  # local memory: no I/O
        if shared is not None:
            return None if shared == _MISSING else shared
        return await adatabase_call(cached_lookup, key, load, local=False)
    client = async_redis_client()
    raw = await client.get(_fresh_key(key))
    if raw is not None:
        return json.loads(raw)
    value = await adatabase_call(load)
    ttl = settings.PUBLISH_LOOKUP_CACHE_SECONDS if value is not None else _MISS_TTL_SECONDS
    await client.set(_fresh_key(key), json.dumps(value), ex=ttl)
    return value


def remember_fresh(key: str, value: Any) -> None:
    """Put a value ``afresh_lookup`` will find (e.g. just read from the database anyway)."""
    ttl = settings.PUBLISH_LOOKUP_CACHE_SECONDS
    if settings.REDIS_URL:
        redis_client().set(_fresh_key(key), json.dumps(value), ex=ttl)
    else:
        lookup_cache().set(key, value, ttl)


def forget(keys: list[str]) -> None:
    """Drop entries from both tiers (other processes' memory tiers expire on their own)."""
    for key in keys:
        _local.pop(key, None)
    lookup_cache().delete_many(keys)
    if settings.REDIS_URL:
        redis_client().delete(*[_fresh_key(key) for key in keys])


def clear() -> None:
    """Empty both tiers (tests)."""
    _local.clear()
    lookup_cache().clear()
