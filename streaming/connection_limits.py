"""How many listener connections one person (per paid network) and one client address (across
every network) hold open, across every process.

Per person: a deterrent against sharing tokens, not an accounting system. With Redis each
connection is a member of a sorted set scored by its start time; members of a process that
died without saying goodbye age out after ``STALE_SECONDS``.

Per address: bounds what one anonymous client can hold (``LISTENER_CONNECTIONS_PER_ADDRESS``;
IPv6 counted per /64). Same sorted sets, but each process renews its members' scores every
``ADDRESS_REFRESH_SECONDS``, so a crashed process's connections stop counting after
``ADDRESS_STALE_SECONDS`` rather than a day: a shared address (NAT) must not stay locked out.

The embedded mode counts both in memory. Every admitted connection must be released: the
consumer does it whatever ends the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict

import redis
from django.conf import settings

from katiedj.client_address import address_bucket
from networks.accounting import redis_key
from networks.redis_clients import async_redis_client, registered_script

logger = logging.getLogger(__name__)

STALE_SECONDS = 24 * 3600
ADDRESS_STALE_SECONDS = 600.0
ADDRESS_REFRESH_SECONDS = 120.0

# KEYS: the set. ARGV: now, limit, stale seconds, member.
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[3]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])))
return 1
"""

# Embedded mode: key → connections (the truth). With Redis: address key → this process's
# connections, whose scores the refresher renews.
_local: dict[str, set[str]] = defaultdict(set)
_held: dict[str, set[str]] = defaultdict(set)
_refresher: asyncio.Task[None] | None = None


def _key(user_id: int, network_id: int) -> str:
    return redis_key("conns", network_id, user_id)


def _address_key(address: str) -> str:
    return redis_key("addr-conns", address_bucket(address))


def _admit_local(key: str, limit: int, connection: str) -> bool:
    members = _local[key]
    if len(members) >= limit:
        return False
    members.add(connection)
    return True


def _forget(registry: dict[str, set[str]], key: str, connection: str) -> None:
    # Drop emptied sets too: one per address or person ever seen would otherwise pile up.
    members = registry.get(key)
    if members is not None:
        members.discard(connection)
        if not members:
            del registry[key]


async def connection_admit(*, user_id: int, network_id: int, connection: str) -> bool:
    """Register the connection if the person is under the limit; False when at the limit."""
    limit = settings.LISTENER_CONNECTIONS_PER_USER
    key = _key(user_id, network_id)
    if settings.REDIS_URL:
        script = registered_script(async_redis_client(), _ADMIT)
        args = [time.time(), limit, STALE_SECONDS, connection]
        return bool(await script(keys=[key], args=args))
    return _admit_local(key, limit, connection)


async def connection_release(*, user_id: int, network_id: int, connection: str) -> None:
    key = _key(user_id, network_id)
    if settings.REDIS_URL:
        await async_redis_client().zrem(key, connection)
    else:
        _forget(_local, key, connection)


async def user_connections(*, user_id: int, network_id: int) -> int:
    """Connections the person holds to the network now (diagnostics, tests)."""
    key = _key(user_id, network_id)
    if settings.REDIS_URL:
        return await async_redis_client().zcount(key, time.time() - STALE_SECONDS, "+inf")
    return len(_local.get(key, ()))


async def address_admit(*, address: str, connection: str) -> bool:
    """Register the connection if its client address is under the limit; False at the limit.

    Always True when ``LISTENER_CONNECTIONS_PER_ADDRESS`` is 0 (no limit), and when Redis
    cannot be reached: an abuse bound must not refuse every listener during a Redis blip.
    """
    limit = settings.LISTENER_CONNECTIONS_PER_ADDRESS
    if limit <= 0:
        return True
    key = _address_key(address)
    if not settings.REDIS_URL:
        return _admit_local(key, limit, connection)
    script = registered_script(async_redis_client(), _ADMIT)
    args = [time.time(), limit, ADDRESS_STALE_SECONDS, connection]
    try:
        admitted = bool(await script(keys=[key], args=args))
    except (redis.RedisError, OSError) as exc:
        logger.warning("connections per address not checked (%s); admitting", exc)
        return True
    if admitted:
        _held[key].add(connection)
        _keep_refreshing()
    return admitted


async def address_release(*, address: str, connection: str) -> None:
    key = _address_key(address)
    if not settings.REDIS_URL:
        _forget(_local, key, connection)
        return
    _forget(_held, key, connection)  # first: the refresher must not renew it meanwhile
    await async_redis_client().zrem(key, connection)


async def address_connections(address: str) -> int:
    """Connections held from ``address`` (its /64 for IPv6) now, every process (diagnostics)."""
    key = _address_key(address)
    if settings.REDIS_URL:
        return await async_redis_client().zcount(key, time.time() - ADDRESS_STALE_SECONDS, "+inf")
    return len(_local.get(key, ()))


def _keep_refreshing() -> None:
    global _refresher
    loop = asyncio.get_running_loop()
    if _refresher is None or _refresher.done() or _refresher.get_loop() is not loop:
        _refresher = loop.create_task(_refresh_while_held())


async def _refresh_while_held() -> None:
    """Renew the scores of this process's address registrations while it holds any."""
    while _held:
        await asyncio.sleep(ADDRESS_REFRESH_SECONDS)
        now = time.time()
        try:
            async with async_redis_client().pipeline(transaction=False) as pipe:
                for key, members in _held.items():
                    # XX: a connection released meanwhile is not brought back.
                    pipe.zadd(key, dict.fromkeys(members, now), xx=True)
                    pipe.expire(key, int(ADDRESS_STALE_SECONDS) + 1)
                await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            logger.warning("connections per address not renewed (%s); retrying", exc)


def reset_local() -> None:
    """Forget in-memory registrations (tests)."""
    global _refresher
    _local.clear()
    _held.clear()
    if _refresher is not None:
        with contextlib.suppress(RuntimeError):  # its loop may be closed already
            _refresher.cancel()
        _refresher = None
