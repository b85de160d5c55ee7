"""Per-network sequence numbers: monotonically increasing, no database write per message.

With Redis (``REDIS_URL``) one ``INCR`` serves every server process (inside the publish
accounting script, ``networks.accounting``). In the embedded mode a
single process hands numbers out of blocks reserved in the database, one write per block; a
restart skips the unused rest of a block, so numbers stay increasing (gaps are allowed).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from functools import cache

import redis
import redis.asyncio
from django.conf import settings
from django.db import transaction
from django.db.models import F

from .models import Network

BLOCK_SIZE = 1000


@cache
def _redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


# redis.asyncio clients are bound to the event loop that first used them.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
    weakref.WeakKeyDictionary()
)


def _async_redis_client() -> redis.asyncio.Redis:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    return client


def redis_sequence_key(network_id: int) -> str:
    return f"{settings.REDIS_KEY_PREFIX}:seq:{network_id}"


class _BlockAllocator:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[int, int] = {}
        self._limit: dict[int, int] = {}

    def next(self, network_id: int) -> int:
        with self._lock:
            value = self._next.get(network_id, 0)
            if value == 0 or value > self._limit[network_id]:
                value, self._limit[network_id] = self._reserve(network_id)
            self._next[network_id] = value + 1
            return value

    def next_without_reserving(self, network_id: int) -> int | None:
        """The next number if the current block has one; None when the database is needed."""
        with self._lock:
            value = self._next.get(network_id, 0)
            if value == 0 or value > self._limit[network_id]:
                return None
            self._next[network_id] = value + 1
            return value

    @staticmethod
    def _reserve(network_id: int) -> tuple[int, int]:
        with transaction.atomic():
            Network.objects.filter(pk=network_id).update(
                seq_reserved=F("seq_reserved") + BLOCK_SIZE
            )
            limit = Network.objects.values_list("seq_reserved", flat=True).get(pk=network_id)
        return limit - BLOCK_SIZE + 1, limit

    def reset(self) -> None:
        with self._lock:
            self._next.clear()
            self._limit.clear()


_local_allocator = _BlockAllocator()


def next_sequence(network_id: int) -> int:
    """The next sequence number of a network."""
    if settings.REDIS_URL:
        return int(_redis_client().incr(redis_sequence_key(network_id)))
    return _local_allocator.next(network_id)


def reset_local_allocator() -> None:
    """Forget reserved blocks (tests: the database they came from was rolled back)."""
    _local_allocator.reset()
