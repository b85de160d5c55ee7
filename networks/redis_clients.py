"""Process-wide Redis clients (connection pools) for the publish and listen paths.

The pools are blocking: when every connection is busy (a burst of connects or publishes), a
command waits up to ``REDIS_POOL_TIMEOUT`` seconds for one instead of failing at once, which
is what redis-py's default pool does past its 100 connections.
"""

from __future__ import annotations

import asyncio
import weakref
from functools import cache
from typing import Any

import redis
import redis.asyncio
from django.conf import settings


@cache
def redis_client() -> redis.Redis:
    pool = redis.BlockingConnectionPool.from_url(
        settings.REDIS_URL,
        max_connections=settings.REDIS_MAX_CONNECTIONS,
        timeout=settings.REDIS_POOL_TIMEOUT,
    )
    return redis.Redis(connection_pool=pool)


# redis.asyncio clients are bound to the event loop that first used them.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
    weakref.WeakKeyDictionary()
)


def async_redis_client() -> redis.asyncio.Redis:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=settings.REDIS_MAX_CONNECTIONS,
            timeout=settings.REDIS_POOL_TIMEOUT,
        )
        client = _async_clients[loop] = redis.asyncio.Redis(connection_pool=pool)
    return client


_scripts: weakref.WeakKeyDictionary[object, dict[str, object]] = weakref.WeakKeyDictionary()


def registered_script(client: redis.Redis | redis.asyncio.Redis, source: str) -> Any:
    """``client.register_script(source)``, made once per client: the publish path calls it
    for every message, and each registration hashes the whole script again."""
    by_source = _scripts.setdefault(client, {})
    script = by_source.get(source)
    if script is None:
        script = by_source[source] = client.register_script(source)
    return script
