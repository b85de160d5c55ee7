"""Redis Sentinel settings: what each Redis user is given, and how the clients are built.

No Redis is contacted here (pools connect lazily); tests/e2e/test_redis_failover.py runs the
same clients through a real failover.
"""

from __future__ import annotations

import json
import os

import kombu
import pytest
import redis
import redis.asyncio
from django.core.cache.backends.redis import RedisCache

from katiedj.redis_sentinel import (
    AsyncBlockingSentinelConnectionPool,
    BlockingSentinelConnectionPool,
    CacheSentinelConnectionPool,
    celery_broker_url,
    channel_layer_host,
    master_kwargs,
    parse_sentinels,
    sentinel_kwargs,
)
from networks import redis_clients
from tests.e2e.harness import run_python


def test_sentinels_parse_with_the_default_port_and_ipv6():
    assert parse_sentinels([" s1:26380", "s2", "[::1]:26381"]) == [
        ("s1", 26380),
        ("s2", 26379),
        ("::1", 26381),
    ]
    with pytest.raises(ValueError, match="host:port"):
        parse_sentinels(["s1:port"])


def test_the_master_gets_db_credentials_and_options_from_redis_url_never_its_address():
    kwargs = master_kwargs("redis://app:p%40ss@unused.example:6390/4?socket_timeout=2")
    assert kwargs == {"username": "app", "password": "p@ss", "db": 4, "socket_timeout": 2.0}
    # TLS is a flag: the sentinel pools choose their own (sync or asyncio) SSL connection.
    assert master_kwargs("rediss://unused/0") == {"db": 0, "ssl": True}
    with pytest.raises(ValueError, match="redis://"):
        master_kwargs("unix:///run/redis.sock")


def test_the_sentinels_connections_are_time_bounded_and_authenticated_when_asked():
    assert sentinel_kwargs("", 1.5) == {"socket_timeout": 1.5, "socket_connect_timeout": 1.5}
    assert sentinel_kwargs("s3cret", 1)["password"] == "s3cret"


def test_the_channel_layer_host_is_a_channels_redis_sentinel_entry():
    host = channel_layer_host("redis://:pw@x/2", [("s1", 26379)], "prod", {"socket_timeout": 1})
    assert host == {
        "master_name": "prod",
        "sentinels": [("s1", 26379)],
        "sentinel_kwargs": {"socket_timeout": 1},
        "password": "pw",
        "db": 2,
    }


def test_the_celery_broker_url_names_every_sentinel_with_the_masters_credentials():
    url = celery_broker_url("redis://:p%40ss@unused/4", [("s1", 26379), ("::1", 26380)])
    assert url == "sentinel://:p%40ss@s1:26379/4;sentinel://:p%40ss@[::1]:26380/4"
    # As kombu reads it: every sentinel an alternate, the password decoded, the db the vhost.
    connection = kombu.Connection(url, transport_options={"master_name": "prod"})
    assert connection.transport_cls == "sentinel"
    assert len(connection.alt) == 2
    assert connection.password == "p@ss"
    assert connection.virtual_host == "4"


PROBE = """
import json, django
from django.conf import settings
django.setup()
print(json.dumps({
    "url": settings.REDIS_URL,
    "layer_hosts": settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"],
    "cache": settings.CACHES["default"],
    "broker": settings.CELERY_BROKER_URL,
    "transport": settings.CELERY_BROKER_TRANSPORT_OPTIONS,
}))
"""


def read(**env: str) -> dict:
    """The Redis settings a fresh process derives from ``env`` (and no other REDIS_*)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    clean.update({"DJANGO_SETTINGS_MODULE": "katiedj.settings", "CELERY_BROKER_URL": "", **env})
    result = run_python(clean, "-c", PROBE)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_settings_wire_every_redis_user_to_the_sentinels():
    loaded = read(
        REDIS_SENTINELS="s1:26379, s2:26380",
        REDIS_SENTINEL_MASTER="prod",
        REDIS_SENTINEL_PASSWORD="sentinel-pw",
        REDIS_URL="redis://:pw@unused:6379/2",
    )
    sentinel_options = {
        "socket_timeout": 1.0,
        "socket_connect_timeout": 1.0,
        "password": "sentinel-pw",
    }
    assert loaded["layer_hosts"] == [
        {
            "master_name": "prod",
            "sentinels": [["s1", 26379], ["s2", 26380]],
            "sentinel_kwargs": sentinel_options,
            "password": "pw",
            "db": 2,
        }
    ]
    assert loaded["cache"]["LOCATION"] == "redis://:pw@unused:6379/2"
    assert loaded["cache"]["OPTIONS"] == {
        "pool_class": "katiedj.redis_sentinel.CacheSentinelConnectionPool",
        "sentinels": [["s1", 26379], ["s2", 26380]],
        "master_name": "prod",
        "sentinel_kwargs": sentinel_options,
    }
    assert loaded["broker"] == "sentinel://:pw@s1:26379/2;sentinel://:pw@s2:26380/2"
    assert loaded["transport"]["master_name"] == "prod"
    assert loaded["transport"]["sentinel_kwargs"] == sentinel_options


def test_sentinels_without_redis_url_mean_database_0_and_no_password():
    loaded = read(REDIS_SENTINELS="s1")
    assert loaded["url"] == "redis://mymaster/0"
    assert loaded["broker"] == "sentinel://s1:26379/0"
    assert loaded["layer_hosts"][0]["master_name"] == "mymaster"


def test_without_sentinels_nothing_changes():
    loaded = read(REDIS_URL="redis://cache.internal:6379/0")
    assert loaded["layer_hosts"] == ["redis://cache.internal:6379/0"]
    assert "OPTIONS" not in loaded["cache"]
    assert loaded["broker"] == "redis://cache.internal:6379/0"
    assert "master_name" not in loaded["transport"]


def test_an_explicit_celery_broker_url_wins():
    loaded = read(REDIS_SENTINELS="s1", CELERY_BROKER_URL="amqp://rabbit//")
    assert loaded["broker"] == "amqp://rabbit//"
    assert "master_name" not in loaded["transport"]


@pytest.fixture
def sentinel_settings(settings):
    settings.REDIS_URL = "redis://:pw@unused/5"
    settings.REDIS_SENTINELS = [("s1", 26379), ("s2", 26380)]
    settings.REDIS_SENTINEL_MASTER = "prod"
    settings.REDIS_SENTINEL_KWARGS = sentinel_kwargs("", 0.5)
    settings.REDIS_MAX_CONNECTIONS = 7
    settings.REDIS_POOL_TIMEOUT = 3.0
    redis_clients.redis_client.cache_clear()
    yield settings
    redis_clients.redis_client.cache_clear()


def assert_sentinel_pool(pool, pool_class: type) -> None:
    assert type(pool) is pool_class
    assert pool.service_name == "prod"
    assert pool.is_master
    # The publish/listen bounds hold under Sentinel too.
    assert pool.max_connections == 7
    assert pool.timeout == 3.0
    assert pool.connection_kwargs["db"] == 5
    assert pool.connection_kwargs["password"] == "pw"
    addresses = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in pool.sentinel_manager.sentinels
    ]
    assert addresses == [("s1", 26379), ("s2", 26380)]
    sentinel_options = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert sentinel_options["socket_timeout"] == 0.5


def test_the_sync_client_is_a_blocking_sentinel_pool(sentinel_settings):
    pool = redis_clients.redis_client().connection_pool
    assert_sentinel_pool(pool, BlockingSentinelConnectionPool)
    # Waiting for a free connection is BlockingConnectionPool's; finding the master Sentinel's.
    assert type(pool).get_connection is redis.BlockingConnectionPool.get_connection
    assert type(pool).owns_connection is redis.sentinel.SentinelConnectionPool.owns_connection


async def test_the_async_client_is_a_blocking_sentinel_pool(sentinel_settings):
    client = redis_clients._new_async_client()
    try:
        pool = client.connection_pool
        assert_sentinel_pool(pool, AsyncBlockingSentinelConnectionPool)
        blocking = redis.asyncio.BlockingConnectionPool
        assert type(pool).get_connection is blocking.get_connection
        assert type(pool).release is blocking.release
    finally:
        await client.aclose()


def test_without_sentinels_the_clients_use_redis_url(settings):
    settings.REDIS_URL = "redis://127.0.0.1:6399/6"
    settings.REDIS_SENTINELS = []
    redis_clients.redis_client.cache_clear()
    try:
        pool = redis_clients.redis_client().connection_pool
        assert type(pool) is redis.BlockingConnectionPool
        assert pool.connection_kwargs["port"] == 6399
        assert pool.connection_kwargs["db"] == 6
    finally:
        redis_clients.redis_client.cache_clear()


def test_the_django_cache_builds_a_sentinel_pool_from_its_options():
    cache = RedisCache(
        "redis://:pw@unused/3",
        {
            "OPTIONS": {
                "pool_class": "katiedj.redis_sentinel.CacheSentinelConnectionPool",
                "sentinels": [("s1", 26379)],
                "master_name": "prod",
                "sentinel_kwargs": {"socket_timeout": 1.0},
            }
        },
    )
    pool = cache._cache._get_connection_pool(write=True)
    assert type(pool) is CacheSentinelConnectionPool
    assert pool.service_name == "prod"
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["password"] == "pw"
    # What Django passes to every pool still reaches the connections.
    assert "parser_class" in pool.connection_kwargs
