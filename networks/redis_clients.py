"""Process-wide Redis clients (connection pools) for the publish and listen paths.

The pools are blocking: when every connection is busy (a burst of connects or publishes), a
command waits up to ``REDIS_POOL_TIMEOUT`` seconds for one instead of failing at once, which
is what redis-py's default pool does past its 100 connections.

With ``REDIS_SENTINELS`` the pools are sentinel-managed (``katiedj.redis_sentinel``): each new
connection goes to the master the sentinels name, so after a failover the clients reconnect
to the promoted replica by themselves (a command in flight on the old master fails once).
"""

from __future__ import annotations

import asyncio
import weakref
from functools import cache
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from django.conf import settings

from katiedj.redis_sentinel import (
    AsyncBlockingSentinelConnectionPool,
    BlockingSentinelConnectionPool,
    master_kwargs,
)


def _pool_bounds() -> dict[str, Any]:
    return {
        "max_connections": settings.REDIS_MAX_CONNECTIONS,
        "timeout": settings.REDIS_POOL_TIMEOUT,
    }


@cache
def redis_client() -> redis.Redis:
    if settings.REDIS_SENTINELS:
        manager = redis.sentinel.Sentinel(
            settings.REDIS_SENTINELS, sentinel_kwargs=settings.REDIS_SENTINEL_KWARGS
        )
        return manager.master_for(
            settings.REDIS_SENTINEL_MASTER,
            connection_pool_class=BlockingSentinelConnectionPool,
            **{**master_kwargs(settings.REDIS_URL), **_pool_bounds()},
        )
    pool = redis.BlockingConnectionPool.from_url(settings.REDIS_URL, **_pool_bounds())
    return redis.Redis(connection_pool=pool)


# redis.asyncio clients are bound to the event loop that first used them.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
    weakref.WeakKeyDictionary()
)


def async_redis_client() -> redis.asyncio.Redis:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = _new_async_client()
    return client


def _new_async_client() -> redis.asyncio.Redis:
    if settings.REDIS_SENTINELS:
        # Its own Sentinel per loop: the connections to the sentinels are loop-bound too.
        manager = redis.asyncio.sentinel.Sentinel(
            settings.REDIS_SENTINELS, sentinel_kwargs=settings.REDIS_SENTINEL_KWARGS
        )
        return manager.master_for(
            settings.REDIS_SENTINEL_MASTER,
            connection_pool_class=AsyncBlockingSentinelConnectionPool,
            **{**master_kwargs(settings.REDIS_URL), **_pool_bounds()},
        )
    pool = redis.asyncio.BlockingConnectionPool.from_url(settings.REDIS_URL, **_pool_bounds())
    return redis.asyncio.Redis(connection_pool=pool)


_scripts: weakref.WeakKeyDictionary[object, dict[str, object]] = weakref.WeakKeyDictionary()


def registered_script(client: redis.Redis | redis.asyncio.Redis, source: str) -> Any:
    """``client.register_script(source)``, made once per client: the publish path calls it
    for every message, and each registration hashes the whole script again."""
    by_source = _scripts.setdefault(client, {})
    script = by_source.get(source)
    if script is None:
        script = by_source[source] = client.register_script(source)
    return script
