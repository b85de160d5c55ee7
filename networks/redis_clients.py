"""Process-wide Redis clients (connection pools) for the publish and listen paths."""

from __future__ import annotations

import asyncio
import weakref
from functools import cache

import redis
import redis.asyncio
from django.conf import settings


@cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


# redis.asyncio clients are bound to the event loop that first used them.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
    weakref.WeakKeyDictionary()
)


def async_redis_client() -> redis.asyncio.Redis:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    return client
