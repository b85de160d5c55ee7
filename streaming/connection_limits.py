"""How many connections one person holds open to one paid network, across every process.

A deterrent against sharing tokens, not an accounting system: with Redis each connection is
a member of a sorted set scored by its start time; members of a process that died without
saying goodbye age out after ``STALE_SECONDS``. The embedded mode counts in memory.
"""

from __future__ import annotations

import time
from collections import defaultdict

from django.conf import settings

from networks.accounting import redis_key
from networks.redis_clients import async_redis_client, registered_script

STALE_SECONDS = 24 * 3600

# KEYS: the set. ARGV: now, limit, stale seconds, member.
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[3]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

_local: dict[str, set[str]] = defaultdict(set)


def _key(user_id: int, network_id: int) -> str:
    return redis_key("conns", network_id, user_id)


async def connection_admit(*, user_id: int, network_id: int, connection: str) -> bool:
    """Register the connection if the person is under the limit; False when at the limit."""
    limit = settings.LISTENER_CONNECTIONS_PER_USER
    key = _key(user_id, network_id)
    if settings.REDIS_URL:
        script = registered_script(async_redis_client(), _ADMIT)
        args = [time.time(), limit, STALE_SECONDS, connection]
        return bool(await script(keys=[key], args=args))
    members = _local[key]
    if len(members) >= limit:
        return False
    members.add(connection)
    return True


async def connection_release(*, user_id: int, network_id: int, connection: str) -> None:
    key = _key(user_id, network_id)
    if settings.REDIS_URL:
        await async_redis_client().zrem(key, connection)
    else:
        _local[key].discard(connection)


def reset_local() -> None:
    """Forget in-memory registrations (tests)."""
    _local.clear()
