"""Redis Sentinel: how every Redis user finds the current master.

With ``REDIS_SENTINELS`` set, no client connects to a fixed address: each asks the sentinels
for the master of ``REDIS_SENTINEL_MASTER`` when it opens a connection, so after a failover
new connections reach the promoted replica. ``REDIS_URL`` then supplies only what every
master connection shares (database number, user, password, ``rediss`` for TLS, query options
such as ``socket_timeout``); its host and port are not used.

The helpers here turn those settings into what each library takes: redis-py pools (the
publish/listen clients in ``networks.redis_clients`` and Django's cache), a ``hosts`` entry
for channels-redis and a ``sentinel://`` broker URL for Celery (kombu). Settings import this
module, so it must not touch ``django.conf.settings`` at import time.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.connection import parse_url

DEFAULT_SENTINEL_PORT = 26379


def parse_sentinels(entries: list[str]) -> list[tuple[str, int]]:
    """``["host:port", "host"]`` → ``[(host, port), ...]`` (port 26379 when omitted)."""
    sentinels = []
    for entry in entries:
        host, sep, port = entry.strip().rpartition(":")
        if not sep:
            host, port = port, str(DEFAULT_SENTINEL_PORT)
        host = host.strip("[]")  # "[::1]:26379"
        if not host or not port.isdigit():
            raise ValueError(f"REDIS_SENTINELS: {entry!r} is not host:port")
        sentinels.append((host, int(port)))
    return sentinels


def master_kwargs(redis_url: str) -> dict[str, Any]:
    """The connection options ``redis_url`` gives a sentinel-managed master connection.

    Host and port are dropped (the sentinels name the master). A ``rediss`` URL becomes
    ``ssl=True``: the sentinel pools pick their own SSL connection class from it, and the
    class ``parse_url`` names is the sync one, wrong for asyncio pools.
    """
    scheme = urlsplit(redis_url).scheme
    if scheme not in ("redis", "rediss"):
        raise ValueError("With REDIS_SENTINELS, REDIS_URL must be a redis:// or rediss:// URL")
    kwargs = parse_url(redis_url)
    for name in ("host", "port", "connection_class"):
        kwargs.pop(name, None)
    if scheme == "rediss":
        kwargs["ssl"] = True
    return kwargs


def sentinel_kwargs(password: str, timeout: float) -> dict[str, Any]:
    """Options for the connections to the sentinels themselves.

    Bounded timeouts: a sentinel that is down or unreachable must cost a connection attempt
    a moment, not a hang, before the next sentinel is asked.
    """
    kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if password:
        kwargs["password"] = password
    return kwargs


def channel_layer_host(
    redis_url: str,
    sentinels: list[tuple[str, int]],
    master: str,
    sentinel_options: dict[str, Any],
) -> dict[str, Any]:
    """A channels-redis ``hosts`` entry: a dict with ``master_name`` and ``sentinels``
    makes its ``create_pool`` build a ``redis.asyncio`` ``SentinelConnectionPool``."""
    return {
        "master_name": master,
        "sentinels": sentinels,
        "sentinel_kwargs": sentinel_options,
        **master_kwargs(redis_url),
    }


def celery_broker_url(redis_url: str, sentinels: list[tuple[str, int]]) -> str:
    """kombu's form: ``sentinel://[auth@]host:port/db`` per sentinel, joined by ``;``.

    kombu takes the master's user, password and database from the first URL (the master
    name comes from the transport option ``master_name``).
    """
    parts = urlsplit(redis_url)
    auth = parts.netloc.rpartition("@")[0]  # kept as written: already percent-encoded
    prefix = f"{auth}@" if auth else ""
    db = master_kwargs(redis_url).get("db", 0)
    return ";".join(
        f"sentinel://{prefix}{_netloc_host(host)}:{port}/{db}" for host, port in sentinels
    )


def _netloc_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class BlockingSentinelConnectionPool(
    redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool
):
    """A sentinel-managed master pool that waits for a free connection (up to ``timeout``)
    instead of failing when all ``max_connections`` are busy, like ``BlockingConnectionPool``.

    ``SentinelConnectionPool`` decides where connections go (it asks the sentinels);
    ``BlockingConnectionPool`` how many there are: the MRO combines the two unchanged.
    """


class AsyncBlockingSentinelConnectionPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """``BlockingSentinelConnectionPool`` for ``redis.asyncio``."""


class CacheSentinelConnectionPool(redis.sentinel.SentinelConnectionPool):
    """The ``pool_class`` for Django's ``RedisCache`` under Sentinel.

    ``RedisCacheClient`` builds its pool with ``pool_class.from_url(LOCATION, **OPTIONS)``;
    this ``from_url`` takes the sentinel settings from the cache's ``OPTIONS`` and the rest
    of the connection options from ``LOCATION`` (``REDIS_URL``).
    """

    @classmethod
    def from_url(  # type: ignore[override]
        cls,
        url: str,
        *,
        sentinels: list[tuple[str, int]],
        master_name: str,
        sentinel_kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> CacheSentinelConnectionPool:
        manager = redis.sentinel.Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
        return cls(master_name, manager, is_master=True, **{**master_kwargs(url), **options})
