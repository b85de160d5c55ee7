"""Two-tier cache for the publish and listen paths: process memory, then the shared cache.

The process tier answers the common case without I/O or a thread hop, so async code can use
it directly. Its entries live ``PUBLISH_LOCAL_CACHE_SECONDS`` (1 s by default): that bounds
how long another process may keep using a revoked key. The process that makes a change drops
its own entries at once (``forget``).

The shared tier is one handle on the ``default`` cache for the process's life:
``django.core.cache.cache`` is bound to the request context under ASGI, so with Redis every
request would otherwise open a new connection (measured: most of the publish CPU). Async
code reads it on the event loop (Redis's async client, or memory), never behind a database
query.

Database hops (``adatabase_call``) run on a small pool of threads of their own, and each
caller waits at most ``DATABASE_LOOKUP_TIMEOUT_SECONDS``: a database that hangs or refuses
costs a caller a bounded wait and a ``DatabaseUnavailable`` (503, close 1013), never a stall
of every other publish. They used to share asgiref's one sync thread, so one hung query held
up every publish and connect of the process (issue 13: 25-34 s). Concurrent misses of one key
share one load, so a flood of one unknown key occupies one thread, however long it hangs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

from asgiref.sync import AsyncToSync, sync_to_async
from django.conf import settings
from django.core.cache import BaseCache, caches
from django.core.cache.backends.redis import RedisCache, RedisSerializer
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from katiedj import outages

from .redis_clients import async_redis_client, redis_client

# A miss is cached too, so a flood of bad keys or slugs does not reach the database.
_MISSING = "missing"
_MISS_TTL_SECONDS = 30
_LOCAL_MAX_ENTRIES = 10_000
# Database hops that may wait for a lookup thread, per thread; past that a caller gets
# DatabaseUnavailable at once: with the database hung, waiting could not help, and the
# queue (and its memory) stays bounded whatever a flood of distinct unknown keys sends.
_QUEUED_PER_THREAD = 64

_local: dict[str, tuple[float, Any]] = {}


class DatabaseUnavailable(Exception):
    """The database refused, failed or did not answer within
    ``DATABASE_LOOKUP_TIMEOUT_SECONDS``. Publishers answer 503 with Retry-After, listeners
    close 1013. Each caller gets an instance of its own."""


# What a database that is down, restarting, unreachable or past statement_timeout raises
# (Django's wrappers of psycopg's errors; the pool's PoolTimeout is an OperationalError).
# Not IntegrityError, DataError, ProgrammingError: those are bugs, and stay 500s.
_UNREACHABLE = (OperationalError, InterfaceError)


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


def _unwrap(shared: Any) -> Any:
    return None if shared == _MISSING else shared


def _shared_ttl(value: Any) -> int:
    return settings.PUBLISH_LOOKUP_CACHE_SECONDS if value is not None else _MISS_TTL_SECONDS


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
    value = _load_and_share(key, load) if shared is None else _unwrap(shared)
    if local:
        local_put(key, value, settings.PUBLISH_LOCAL_CACHE_SECONDS)
    return value


def _load_and_share(key: str, load: Callable[[], Any]) -> Any:
    """``load()``, then its answer (a miss too) into the shared tier. Nothing is stored when
    ``load`` raises: a database that failed is no answer."""
    value = load()
    lookup_cache().set(key, _MISSING if value is None else value, _shared_ttl(value))
    return value


async def _ashared_get(key: str) -> tuple[bool, Any]:
    """(found, value) from the shared tier, read on the event loop: with Redis through the
    async client (the cache's own key and serialization), else the process's memory cache."""
    shared_cache = lookup_cache()
    if isinstance(shared_cache, RedisCache):
        raw = await async_redis_client().get(shared_cache.make_and_validate_key(key))
        shared = None if raw is None else RedisSerializer().loads(raw)
    else:
        shared = shared_cache.get(key)  # local memory: no I/O
    return (False, None) if shared is None else (True, _unwrap(shared))


# --- Database hops ---------------------------------------------------------------------------


@cache
def _lookup_threads() -> concurrent.futures.ThreadPoolExecutor:
    # Sized once per process: DATABASE_LOOKUP_THREADS busy threads hold at most that many
    # pooled connections (keep it at or under DATABASE_POOL_MAX_SIZE).
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, settings.DATABASE_LOOKUP_THREADS), thread_name_prefix="db-lookup"
    )


# Hops submitted to the lookup threads and not finished (queued or running); a finished or
# cancelled one leaves from its worker thread (set operations are atomic under the GIL).
_outstanding: set[concurrent.futures.Future] = set()


def _run_noting_outages(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        result = function(*args, **kwargs)
    except _UNREACHABLE as error:
        outages.note_outage(outages.DATABASE, error)
        raise
    outages.note_recovered(outages.DATABASE)
    return result


def _in_lookup_thread(function: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    close_old_connections()
    try:
        return _run_noting_outages(function, *args, **kwargs)
    finally:
        # Give the connection back now (to the pool, or closed): an idle lookup thread must
        # hold none, or the threads would pin connections the server has only 100 of.
        close_old_connections()


def _with_fresh_connections(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    # Never in the middle of a caller's transaction (a test's, when the sync thread is the
    # caller's own): closing there would break it.
    if not connection.in_atomic_block:
        close_old_connections()
    return _run_noting_outages(function, *args, **kwargs)


def _under_sync_caller() -> bool:
    """Whether this event loop serves a sync caller through ``async_to_sync`` (the tests'
    ASGI client, a management command): that thread may hold the caller's transaction, so
    its database hops run there, where asgiref sends thread-sensitive calls. A server's
    event loop has none."""
    return getattr(AsyncToSync.executors, "current", None) is not None


def _submit(function: Callable[..., Any], args: tuple, kwargs: dict) -> concurrent.futures.Future:
    """``function`` queued for a lookup thread; DatabaseUnavailable when too many wait."""
    if len(_outstanding) >= max(1, settings.DATABASE_LOOKUP_THREADS) * _QUEUED_PER_THREAD:
        error = DatabaseUnavailable("too many database lookups waiting")
        outages.note_outage(outages.DATABASE, error)
        raise error
    context = contextvars.copy_context()
    future = _lookup_threads().submit(context.run, _in_lookup_thread, function, args, kwargs)
    _outstanding.add(future)
    future.add_done_callback(_outstanding.discard)
    return future


@dataclass(eq=False)
class _Hop:
    """One database hop: its future on this loop, its work item on a lookup thread (None on
    a sync caller's thread), and how many callers wait for it now."""

    future: asyncio.Future
    work: concurrent.futures.Future | None = None
    waiters: int = 0


def _start(function: Callable[..., Any], args: tuple, kwargs: dict) -> _Hop:
    if _under_sync_caller():
        call = sync_to_async(_with_fresh_connections)(function, *args, **kwargs)
        hop = _Hop(asyncio.ensure_future(call))
    else:
        work = _submit(function, args, kwargs)
        hop = _Hop(asyncio.wrap_future(work), work)
    hop.future.add_done_callback(_retrieve)
    return hop


class _NotShared(Exception):
    """A shared load failed for a reason of its first caller's own (not the database)."""


def _unavailable_after(seconds: float) -> DatabaseUnavailable:
    error = DatabaseUnavailable(f"the database did not answer within {seconds:g} s")
    outages.note_outage(outages.DATABASE, error)
    return error


def _outcome(future: asyncio.Future | concurrent.futures.Future, *, joined: bool) -> Any:
    """The result of a finished hop, or a fresh exception for this caller: raising the
    future's own exception in every waiter would share one instance (and its traceback)."""
    if future.cancelled():
        raise DatabaseUnavailable("the database lookup was cancelled")
    error = future.exception()
    if error is None:
        return future.result()
    if isinstance(error, _UNREACHABLE):
        raise DatabaseUnavailable(outages.describe(error)) from error
    if joined:
        raise _NotShared
    raise error  # the one caller that started it: the original exception


async def _await_bounded(hop: _Hop, *, joined: bool = False) -> Any:
    """Wait for ``hop`` at most ``DATABASE_LOOKUP_TIMEOUT_SECONDS``.

    When its last caller gives up, a hop still queued is dropped: after a hang, the threads
    would otherwise work through everything anyone asked before what is asked now. A running
    one cannot be stopped; it goes on, and its answer still fills the cache.
    """
    seconds = settings.DATABASE_LOOKUP_TIMEOUT_SECONDS
    hop.waiters += 1
    try:
        # asyncio.wait, not wait_for: it neither cancels the shared hop nor raises its error.
        done, _ = await asyncio.wait({hop.future}, timeout=seconds)
    finally:
        hop.waiters -= 1
        if not hop.future.done() and not hop.waiters and hop.work is not None:
            hop.work.cancel()  # no effect once running
    if not done:
        raise _unavailable_after(seconds)
    return _outcome(hop.future, joined=joined)


def _retrieve(future: asyncio.Future) -> None:
    # A hop every caller gave up on must not log "exception was never retrieved".
    if not future.cancelled():
        future.exception()


async def adatabase_call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a database-touching ``function`` on a lookup thread, with fresh connections there
    (what Channels does before every consumer handler, done only when the database is
    actually needed), waiting at most ``DATABASE_LOOKUP_TIMEOUT_SECONDS``.

    Raises DatabaseUnavailable when the database refuses, fails or does not answer in time.
    """
    return await _await_bounded(_start(function, args, kwargs))


# One loop's loads in flight, by cache key (asyncio futures belong to one event loop).
_flights: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Hop]] = (
    weakref.WeakKeyDictionary()
)


def _landed(flights: dict[str, _Hop], key: str, hop: _Hop, future: asyncio.Future) -> None:
    if flights.get(key) is hop:
        del flights[key]


async def _load_once(key: str, function: Callable[..., Any], *args: Any) -> Any:
    """``adatabase_call(function, *args)``, shared by every caller that misses ``key`` while
    it runs: until it finishes (a hung query: until the database answers) the key occupies
    one lookup thread, and each caller still waits only its bounded time."""
    flights = _flights.setdefault(asyncio.get_running_loop(), {})
    flight = flights.get(key)
    if flight is not None:
        try:
            return await _await_bounded(flight, joined=True)
        except _NotShared:
            return await adatabase_call(function, *args)
    flight = flights[key] = _start(function, args, {})
    flight.future.add_done_callback(partial(_landed, flights, key, flight))
    return await _await_bounded(flight)


async def acached_lookup(key: str, load: Callable[[], Any]) -> Any:
    """``cached_lookup`` for async code: no thread hop when the process tier has the answer,
    none either when the shared tier has it; a miss of both loads once per key at a time.

    Raises DatabaseUnavailable when the load needs a database that is not answering.
    """
    hit, value = _local_get(key)
    if hit:
        return value
    found, value = await _ashared_get(key)
    if not found:
        value = await _load_once(key, _load_and_share, key, load)
    local_put(key, value, settings.PUBLISH_LOCAL_CACHE_SECONDS)
    return value


def database_call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``adatabase_call`` for sync code that must not hang with the database (monitoring):
    on a lookup thread with the same bounded wait, or right here inside the caller's open
    transaction (tests), which another thread could not see."""
    if connection.in_atomic_block:
        try:
            return _with_fresh_connections(function, *args, **kwargs)
        except _UNREACHABLE as error:
            raise DatabaseUnavailable(outages.describe(error)) from error
    future = _submit(function, args, kwargs)
    seconds = settings.DATABASE_LOOKUP_TIMEOUT_SECONDS
    done, _ = concurrent.futures.wait([future], timeout=seconds)
    if not done:
        future.cancel()  # still queued: it never runs (no effect once running)
        raise _unavailable_after(seconds)
    return _outcome(future, joined=False)


def _fresh_key(key: str) -> str:
    return f"{settings.REDIS_KEY_PREFIX}:fresh:{key}"


def _load_and_share_fresh(key: str, load: Callable[[], Any]) -> Any:
    value = load()
    redis_client().set(_fresh_key(key), json.dumps(value), ex=_shared_ttl(value))
    return value


async def afresh_lookup(key: str, load: Callable[[], Any]) -> Any:
    """The shared tier only, read without a thread hop: for answers that must hold on every
    process at once (a revoked listener reconnecting). Values must be JSON; ``forget`` drops
    them like any other entry.

    Django's cache API is synchronous (a thread hop per call from async code), so with Redis
    the value lives under its own key, read with the async client; without Redis the one
    process's memory cache is read directly. A miss loads once per key at a time, like
    ``acached_lookup``.
    """
    if not settings.REDIS_URL:
        shared = lookup_cache().get(key)  # local memory: no I/O
        if shared is not None:
            return _unwrap(shared)
        return await _load_once(key, _load_and_share, key, load)
    raw = await async_redis_client().get(_fresh_key(key))
    if raw is not None:
        return json.loads(raw)
    return await _load_once(f"fresh:{key}", _load_and_share_fresh, key, load)


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
