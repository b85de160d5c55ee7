"""Occupancy: how many listeners each network has right now, across every server process.

Each process writes its own counts into one Redis hash (field ``<network>|<process>``, value
``<count>|<expires>``) a moment after they change and every ``HEARTBEAT_SECONDS``; a count
whose process stopped refreshing it expires after ``TTL_SECONDS``. One Lua script applies a
process's changes and returns each network's total before and after, so the process whose
change takes a network from 0 to some listeners (or back) announces it: the Django signal
``occupancy_changed`` in that process and a JSON message on the Redis channel
``<prefix>:occupancy-events`` for everyone else (the simulator, dashboards, operators).

The embedded mode has one process: its hub's counts are the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable

import redis
from django.conf import settings
from django.dispatch import Signal

from networks.accounting import redis_key
from networks.redis_clients import async_redis_client, redis_client, registered_script

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0
TTL_SECONDS = 30.0
# Changes within this window are written together (a burst of connects is one write).
COALESCE_SECONDS = 0.1

PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

occupancy_changed = Signal()
"""Sent with ``network_id``, ``listeners`` and ``occupied`` (bool) when a network gains its
first listener or loses its last one."""

# KEYS[1]: the occupancy hash. ARGV: now, expiry, process id, then network id / count pairs.
# Returns network id, total before, total after for each network in the update.
_UPDATE_SCRIPT = """
local now, expires, process = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local totals = {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local network = string.match(fields[i], '^(%d+)|')
  local count, until_ = string.match(fields[i + 1], '^(%d+)|(.+)$')
  if tonumber(until_) < now then
    redis.call('HDEL', KEYS[1], fields[i])
  else
    totals[network] = (totals[network] or 0) + tonumber(count)
  end
end
local result = {}
for i = 4, #ARGV, 2 do
  local network, count = ARGV[i], tonumber(ARGV[i + 1])
  local field = network .. '|' .. process
  local old = redis.call('HGET', KEYS[1], field)
  local mine = old and tonumber(string.match(old, '^(%d+)|')) or 0
  local before = totals[network] or 0
  if count > 0 then
    redis.call('HSET', KEYS[1], field, count .. '|' .. expires)
  else
    redis.call('HDEL', KEYS[1], field)
  end
  table.insert(result, network)
  table.insert(result, before)
  table.insert(result, before - mine + count)
end
return result
"""


def occupancy_key() -> str:
    return redis_key("occupancy")


def events_channel() -> str:
    """The Redis channel carrying occupied / vacated events as JSON."""
    return redis_key("occupancy-events")


class OccupancyReporter:
    """Writes this process's listener counts to Redis and announces 0 ↔ n transitions."""

    def __init__(self, process_id: str = PROCESS_ID, ttl: float = TTL_SECONDS) -> None:
        self.process_id = process_id
        self.ttl = ttl
        self.counts: dict[int, int] = {}
        self._dirty: set[int] = set()
        self._writer: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    def note(self, network_id: int, count: int) -> None:
        """The hub's callback: ``network_id`` now has ``count`` listeners in this process."""
        before = self.counts.get(network_id, 0)
        if count:
            self.counts[network_id] = count
        else:
            self.counts.pop(network_id, None)
        if not settings.REDIS_URL:
            if (before == 0) != (count == 0):
                announce(network_id, count)
            return
        self._dirty.add(network_id)
        if not _pending_here(self._writer):
            self._writer = asyncio.ensure_future(self._write_soon())
        if not _pending_here(self._heartbeat):
            self._heartbeat = asyncio.ensure_future(self._beat())

    async def _write_soon(self) -> None:
        await asyncio.sleep(COALESCE_SECONDS)
        await self.flush()

    async def flush(self) -> None:
        """Write the changed counts now."""
        while self._dirty:
            dirty, self._dirty = self._dirty, set()
            if not await self._write({n: self.counts.get(n, 0) for n in dirty}):
                self._dirty |= dirty  # Redis is away: the heartbeat tries again
                return

    async def _beat(self) -> None:
        while self.counts or self._dirty:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await self.flush()
            await self._write(dict(self.counts))

    async def _write(self, counts: dict[int, int]) -> bool:
        now = time.time()
        args: list[object] = [now, now + self.ttl, self.process_id]
        for network_id, count in counts.items():
            args += [network_id, count]
        try:
            script = registered_script(async_redis_client(), _UPDATE_SCRIPT)
            reply = await script(keys=[occupancy_key()], args=[str(a) for a in args])
        except (redis.RedisError, OSError) as exc:
            logger.warning("occupancy not written (%s); retrying", exc)
            return False
        for i in range(0, len(reply), 3):
            network_id, before, after = int(reply[i]), int(reply[i + 1]), int(reply[i + 2])
            if (before == 0) != (after == 0):
                announce(network_id, after)
                with contextlib.suppress(redis.RedisError, OSError):
                    await async_redis_client().publish(events_channel(), _event(network_id, after))
        return True


def _pending_here(task: asyncio.Task[None] | None) -> bool:
    """True while ``task`` will still run: not done, and of the running loop. A task left
    pending on a loop that closed (a listener released while its loop shut down) never
    finishes: a check of ``done()`` alone would wait for it forever."""
    return task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop()


def _event(network_id: int, listeners: int) -> str:
    kind = "occupied" if listeners else "vacated"
    return json.dumps({"event": kind, "network_id": network_id, "listeners": listeners})


def announce(network_id: int, listeners: int) -> None:
    """Tell this process's receivers that ``network_id`` became occupied or vacated."""
    occupancy_changed.send(
        sender=OccupancyReporter, network_id=network_id, listeners=listeners, occupied=listeners > 0
    )


reporter = OccupancyReporter()


def listeners_now(network_ids: Iterable[int]) -> dict[int, int]:
    """Network id → listeners connected now, summed over every live server process."""
    wanted = dict.fromkeys(network_ids, 0)
    if not settings.REDIS_URL:
        from .fanout import hub

        for network_id, count in hub.listener_counts().items():
            if network_id in wanted:
                wanted[network_id] = count
        return wanted
    now = time.time()
    try:
        fields = redis_client().hgetall(occupancy_key())
    except (redis.RedisError, OSError):
        return wanted  # a page showing 0 beats a page that fails
    for field, value in fields.items():
        network_id = int(field.split(b"|", 1)[0])
        count, until = value.split(b"|", 1)
        if network_id in wanted and float(until) >= now:
            wanted[network_id] += int(count)
    return wanted
