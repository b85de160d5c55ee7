"""What each accepted publish costs: a rate-limit token, a sequence number, usage counters.

With Redis, one Lua script does all of it in one round trip, atomically, for every server
process: take a token from the key's bucket (or answer how long to wait), ``INCR`` the
network's sequence, add to the hour's usage counters and note the key's last use. Periodic
tasks (``networks.tasks``) move usage and last use into the database; the publish path never
writes there. The embedded mode keeps the same state in process memory.

Sequence numbers belong to an *epoch* (``Epoch``): the numbering one Redis server hands out.
A Redis that restarted, was flushed or took over from a lagging replica may continue from an
older number than listeners saw; the script notices (Redis's ``run_id`` differs from the one
stored with the network's epoch) and starts a new epoch that records where it continues
from. ``aresume_position`` uses that to tell a listener whether its ``since`` is still a
position in the numbering, or whether it must be reset (docs/protocol.md, "Epochs").
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
import time
import weakref
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import redis
import redis.asyncio
from asgiref.sync import sync_to_async
from django.conf import settings

from .lookup_cache import adatabase_call
from .redis_clients import async_redis_client, redis_client, registered_script
from .selectors import NetworkInfo, PublisherKey
from .sequence import local_allocator

USAGE_TTL_SECONDS = 3 * 24 * 3600
# Sequence numbers come from Redis INCR (signed 64-bit): none is larger.
MAX_SEQ = 2**63 - 1

# The network's epoch, made current: a new one when this Redis server (its run_id) is not
# the one that started the stored epoch, or none is stored (a new network, a flush, a
# restart without persistence). The new epoch starts after the highest seq kept here.
# Returns the epoch id, its start and the previous epoch's id ('' if none).
#
# Reading run_id (INFO) costs ~10 µs, a third of the publish script, so the publish path asks
# only when ``verify`` is set: on a server's first run of the script (see _run_admit_script).
_CURRENT_EPOCH_LUA = """
local function current_epoch(epoch_key, seq_key, history_key, verify)
  local state = redis.call('HMGET', epoch_key, 'id', 'server', 'start', 'previous')
  if state[1] and not verify then
    return state[1], state[3], state[4] or ''
  end
  local server = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  if state[1] and state[2] == server then
    return state[1], state[3], state[4] or ''
  end
  -- Numbers stay strings: Lua's are doubles, which print 1e+14 and round past 2^53.
  local seq = redis.call('GET', seq_key) or '0'
  if redis.call('EXISTS', history_key) == 1 then
    -- The history must stay in seq order: never number at or below an ID it ever held.
    local info = redis.call('XINFO', 'STREAM', history_key)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        local kept = string.match(info[i + 1], '^(%d+)')
        if tonumber(kept) > tonumber(seq) then
          seq = kept
          redis.call('SET', seq_key, seq)
        end
      end
    end
  end
  local now = redis.call('TIME')
  local id = now[1] .. string.format('%06d', tonumber(now[2]))
  if id == state[1] then
    id = id .. '1'
  end
  local previous = state[1] or ''
  redis.call('HSET', epoch_key, 'id', id, 'server', server, 'start', seq, 'previous', previous)
  return id, seq, previous
end
"""

# KEYS: epoch hash, sequence, history stream
# Returns the current epoch id, its start, the previous epoch id and the newest seq.
_EPOCH_SCRIPT = (
    _CURRENT_EPOCH_LUA
    + """
local id, start, previous = current_epoch(KEYS[1], KEYS[2], KEYS[3], true)
return {id, start, previous, redis.call('GET', KEYS[2]) or '0'}
"""
)

# KEYS: bucket, sequence, usage hash, dirty-usage set, last-used hash, history stream,
#       fan-out channel, epoch hash
# ARGV: rate, burst, bytes, network id, key id ("" for none), usage key name, usage TTL,
#       frame, timestamp, history length, publish time (epoch seconds), verify ('1': check
#       which Redis server this is before numbering)
_ADMIT_SCRIPT = (
    _CURRENT_EPOCH_LUA
    + """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
if ARGV[5] ~= '' then
  local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
  local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  local tokens = tonumber(state[1]) or burst
  local at = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + (now - at) * rate)
  if tokens < 1 then
    return {0, tostring((1 - tokens) / rate)}
  end
  redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'at', now)
  redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
  redis.call('HSET', KEYS[5], ARGV[5], tostring(now))
end
local epoch, start = current_epoch(KEYS[8], KEYS[2], KEYS[6], ARGV[12] == '1')
local seq = redis.call('INCR', KEYS[2])
redis.call('HINCRBY', KEYS[3], 'messages:' .. ARGV[4], 1)
redis.call('HINCRBY', KEYS[3], 'bytes:' .. ARGV[4], tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[7]))
redis.call('SADD', KEYS[4], ARGV[6])
local length = tonumber(ARGV[10])
redis.call('XADD', KEYS[6], 'MAXLEN', length, seq .. '-0', 'f', ARGV[8], 't', ARGV[9], 'e', epoch)
-- Published from inside the script, so every process receives messages in seq order.
redis.call('PUBLISH', KEYS[7], seq .. '\\n' .. epoch .. '\\n' .. start .. '\\n' .. ARGV[9]
  .. '\\n' .. ARGV[11] .. '\\n' .. ARGV[8])
return {seq, '0', epoch, start}
"""
)


@dataclass(frozen=True, slots=True)
class Epoch:
    """One numbering of a network's messages: ``id`` is opaque (a string), ``start`` the
    last seq of the numbering it continues after (0 for a fresh one)."""

    id: str
    start: int


@dataclass(frozen=True, slots=True)
class Admission:
    """An accepted publish: its sequence number and the epoch that number belongs to."""

    seq: int
    epoch: Epoch


class HistoryEntry(NamedTuple):
    seq: int
    ts: str
    frame: str
    epoch: str  # '' for messages stored before epochs existed


_ADMIT_SHA = hashlib.sha1(_ADMIT_SCRIPT.encode()).hexdigest()  # noqa: S324 (Redis's name)


def _run_admit_script(client: redis.Redis, keys: list[str], args: list[str]) -> list:
    """Run the publish script; the first run on a Redis server also verifies its identity.

    A Redis server's script cache lives in its memory only: it is not persisted, and
    replicas do not get it. So a server that answers NOSCRIPT is one that never ran the
    script — a restart, a replica promoted by a failover — and the run that loads it (EVAL)
    checks which server it is, atomically with its own publish; later runs (EVALSHA) on that
    server can trust the stored epoch.
    """
    try:
        return client.evalsha(_ADMIT_SHA, len(keys), *keys, *args, "0")
    except redis.exceptions.NoScriptError:
        return client.eval(_ADMIT_SCRIPT, len(keys), *keys, *args, "1")


async def _arun_admit_script(client: redis.asyncio.Redis, keys: list[str], args: list[str]) -> list:
    """``_run_admit_script`` for the asyncio client."""
    try:
        return await client.evalsha(_ADMIT_SHA, len(keys), *keys, *args, "0")
    except redis.exceptions.NoScriptError:
        return await client.eval(_ADMIT_SCRIPT, len(keys), *keys, *args, "1")


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.3f} s")
        self.retry_after = retry_after


def _hour_start(epoch: float) -> int:
    return int(epoch // 3600 * 3600)


def _rate(publisher: PublisherKey) -> tuple[int, int]:
    rate = publisher.rate_per_second or settings.PUBLISH_RATE_PER_SECOND
    return rate, 2 * rate


def redis_key(*parts: object) -> str:
    return ":".join([settings.REDIS_KEY_PREFIX, *map(str, parts)])


def usage_key(organization_id: int, hour: int) -> str:
    return redis_key("usage", organization_id, hour)


def history_key(network_id: int) -> str:
    return redis_key("history", network_id)


def epoch_key(network_id: int) -> str:
    return redis_key("epoch", network_id)


def fanout_channel(network_id: int) -> str:
    """The Redis pub/sub channel carrying a network's messages to every server process."""
    return redis_key("fanout", network_id)


def _script_args(
    network: NetworkInfo, publisher: PublisherKey | None, nbytes: int, frame: str, ts: str
) -> tuple[list[str], list[str]]:
    hour_key = usage_key(network.organization_id, _hour_start(time.time()))
    rate, burst = _rate(publisher) if publisher else (0, 0)
    keys = [
        redis_key("bucket", publisher.id if publisher else 0),
        redis_key("seq", network.id),
        hour_key,
        redis_key("usage", "dirty"),
        redis_key("lastused"),
        history_key(network.id),
        fanout_channel(network.id),
        epoch_key(network.id),
    ]
    key_id = publisher.id if publisher else ""
    args = [rate, burst, nbytes, network.id, key_id, hour_key, USAGE_TTL_SECONDS, frame, ts]
    args += [network.history_max_messages, repr(time.time())]
    return keys, [str(a) for a in args]


def _result(reply: list) -> Admission:
    seq, wait = int(reply[0]), float(reply[1])
    if seq == 0:
        raise RateLimited(wait)
    return Admission(seq=seq, epoch=Epoch(id=reply[2].decode(), start=int(reply[3])))


async def aadmit_publish(
    *, network: NetworkInfo, publisher: PublisherKey | None, nbytes: int, frame: str, ts: str
) -> Admission:
    """Account for one publish, append it to the network's history and return its sequence
    number and epoch; RateLimited if over the limit."""
    if settings.REDIS_URL:
        keys, args = _script_args(network, publisher, nbytes, frame, ts)
        return _result(await _arun_admit_script(async_redis_client(), keys, args))
    # One publish at a time per network from here to the hand-over, so listeners get
    # messages in seq order even when a block reservation makes one publish wait.
    async with _local_publish_lock(network.id):
        local.take(network, publisher, nbytes)
        seq = local_allocator.next_without_reserving(network.id)
        if seq is None:
            seq = await sync_to_async(local_allocator.next)(network.id)
        return _admit_locally(network, seq, ts, frame)


_local_publish_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict] = (
    weakref.WeakKeyDictionary()
)


def _local_publish_lock(network_id: int) -> asyncio.Lock:
    # asyncio locks belong to one event loop (tests run many).
    locks = _local_publish_locks.setdefault(asyncio.get_running_loop(), {})
    lock = locks.get(network_id)
    if lock is None:
        lock = locks[network_id] = asyncio.Lock()
    return lock


def admit_publish(
    *, network: NetworkInfo, publisher: PublisherKey | None, nbytes: int, frame: str, ts: str
) -> Admission:
    """``aadmit_publish`` for sync callers (tasks, commands)."""
    if settings.REDIS_URL:
        keys, args = _script_args(network, publisher, nbytes, frame, ts)
        return _result(_run_admit_script(redis_client(), keys, args))
    local.take(network, publisher, nbytes)
    return _admit_locally(network, local_allocator.next(network.id), ts, frame)


def _admit_locally(network: NetworkInfo, seq: int, ts: str, frame: str) -> Admission:
    epoch = local_history.append(network, seq, ts, frame)
    _broadcast_locally(network.id, seq, epoch, ts, frame)
    return Admission(seq=seq, epoch=epoch)


# (network id, seq, epoch, ts, frame, publish time): the embedded mode's stand-in for the
# PUBLISH of the accounting script; the streaming app's fan-out hub registers itself here.
LocalReceiver = Callable[[int, int, Epoch, str, str, float], None]
_local_receivers: list[LocalReceiver] = []


def add_local_receiver(receiver: LocalReceiver) -> None:
    """Be handed every message published in this process (embedded mode only)."""
    if receiver not in _local_receivers:
        _local_receivers.append(receiver)


def _broadcast_locally(network_id: int, seq: int, epoch: Epoch, ts: str, frame: str) -> None:
    published_at = time.time()
    for receiver in _local_receivers:
        receiver(network_id, seq, epoch, ts, frame, published_at)


@dataclass
class _Bucket:
    tokens: float
    at: float


class LocalAccounting:
    """The embedded mode's buckets and counters (one process, so memory is the truth)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.buckets: dict[int, _Bucket] = {}
        # (organization id, network id, hour start) -> [messages, bytes]
        self.usage: dict[tuple[int, int, int], list[int]] = defaultdict(lambda: [0, 0])
        self.last_used: dict[int, float] = {}

    def take(self, network: NetworkInfo, publisher: PublisherKey | None, nbytes: int) -> None:
        now = time.time()
        with self._lock:
            if publisher is not None:
                rate, burst = _rate(publisher)
                bucket = self.buckets.setdefault(publisher.id, _Bucket(burst, now))
                bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * rate)
                bucket.at = now
                if bucket.tokens < 1:
                    raise RateLimited((1 - bucket.tokens) / rate)
                bucket.tokens -= 1
                self.last_used[publisher.id] = now
            counters = self.usage[(network.organization_id, network.id, _hour_start(now))]
            counters[0] += 1
            counters[1] += nbytes

    def drain_last_used(self) -> dict[int, float]:
        with self._lock:
            drained, self.last_used = self.last_used, {}
        return drained

    def snapshot_usage(self) -> dict[tuple[int, int, int], tuple[int, int]]:
        with self._lock:
            current = _hour_start(time.time())
            snapshot = {k: (v[0], v[1]) for k, v in self.usage.items()}
            # Past hours are final once copied out.
            for key in [k for k in self.usage if k[2] < current]:
                del self.usage[key]
        return snapshot

    def reset(self) -> None:
        with self._lock:
            self.buckets.clear()
            self.usage.clear()
            self.last_used.clear()


local = LocalAccounting()


class LocalHistory:
    """The embedded mode's recent messages per network, oldest first.

    History lives in this process's memory, so each process start is a new epoch: it
    continues after the last number the previous one reserved (``started_at``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: dict[int, deque[HistoryEntry]] = {}
        self.epochs: dict[int, Epoch] = {}
        self.epoch_id = _new_epoch_id()

    def append(self, network: NetworkInfo, seq: int, ts: str, frame: str) -> Epoch:
        """Keep a message; returns its epoch."""
        with self._lock:
            epoch = self.epochs.get(network.id)
            if epoch is None:
                epoch = self.epochs[network.id] = Epoch(id=self.epoch_id, start=seq - 1)
            entries = self.entries.get(network.id)
            if entries is None or entries.maxlen != network.history_max_messages:
                entries = deque(entries or (), maxlen=network.history_max_messages)
                self.entries[network.id] = entries
            entries.append(HistoryEntry(seq, ts, frame, epoch.id))
            return epoch

    def epoch(self, network_id: int) -> Epoch | None:
        """The network's epoch in this process; None before its first message here."""
        with self._lock:
            return self.epochs.get(network_id)

    def started_at(self, network_id: int, start: int) -> Epoch:
        """The network's epoch, starting it after ``start`` if it has none yet."""
        with self._lock:
            epoch = self.epochs.get(network_id)
            if epoch is None:
                epoch = self.epochs[network_id] = Epoch(id=self.epoch_id, start=start)
            return epoch

    def since(
        self, network_id: int, since: int, limit: int, not_before: str = ""
    ) -> tuple[list[HistoryEntry], int | None]:
        with self._lock:
            entries = [e for e in self.entries.get(network_id, ()) if e.ts >= not_before]
        first = entries[0].seq if entries else None
        return [e for e in entries if e.seq > since][:limit], first

    def stats(self, network_id: int) -> tuple[int, int]:
        """(last seq kept, messages kept) of one network."""
        with self._lock:
            entries = self.entries.get(network_id, ())
            return (entries[-1][0] if entries else 0), len(entries)

    def reset(self) -> None:
        with self._lock:
            self.entries.clear()
            self.epochs.clear()
            self.epoch_id = _new_epoch_id()


def _new_epoch_id() -> str:
    # Microseconds since 1970, like the Redis script's ids.
    return str(time.time_ns() // 1000)


local_history = LocalHistory()


@dataclass(frozen=True, slots=True)
class ResumePosition:
    """Where a listener resuming from (``epoch``, ``since``) continues.

    ``since``: replay what follows this seq. ``reset``: the listener's position is not one of
    the current numbering (another epoch, or a seq never handed out in it), so ``since`` is
    where the current epoch starts and the listener must be told (a reset frame).
    """

    epoch: Epoch
    since: int
    newest: int  # the newest seq handed out (0: none yet)
    reset: bool


def resume_position(
    *, current: Epoch, previous: str, newest: int, since: int, epoch: str | None
) -> ResumePosition:
    """Place a listener's (``epoch``, ``since``) in the current numbering (pure)."""
    in_numbering = since <= newest and (
        not epoch
        or epoch == current.id
        # The previous epoch's numbers up to the current one's start are still the record.
        or (epoch == previous and since <= current.start)
    )
    if in_numbering:
        return ResumePosition(epoch=current, since=since, newest=newest, reset=False)
    return ResumePosition(epoch=current, since=current.start, newest=newest, reset=True)


async def aresume_position(*, network_id: int, since: int, epoch: str | None) -> ResumePosition:
    """``resume_position`` against the network's current epoch, making one if it has none
    (with Redis: the same script step the publish path runs, so both agree)."""
    if settings.REDIS_URL:
        keys = [epoch_key(network_id), redis_key("seq", network_id), history_key(network_id)]
        script = registered_script(async_redis_client(), _EPOCH_SCRIPT)
        reply = await script(keys=keys, args=[])
        current = Epoch(id=reply[0].decode(), start=int(reply[1]))
        previous, newest = reply[2].decode(), int(reply[3])
    else:
        current = local_history.epoch(network_id)
        if current is None:
            reserved = await adatabase_call(_reserved_seq, network_id)
            current = local_history.started_at(network_id, reserved)
        previous = ""  # the previous process's epoch is not known: its history is gone
        newest = max(local_history.stats(network_id)[0], current.start)
    return resume_position(
        current=current, previous=previous, newest=newest, since=min(since, MAX_SEQ), epoch=epoch
    )


def _reserved_seq(network_id: int) -> int:
    from .models import Network

    reserved = Network.objects.filter(pk=network_id).values_list("seq_reserved", flat=True)
    return reserved.first() or 0


def first_missing_range(*, since: int, oldest: int | None, newest: int) -> tuple[int, int] | None:
    """The seqs after ``since`` that history no longer holds, (from, to); None if none.

    ``oldest`` is the oldest seq kept (None: nothing kept, so everything up to ``newest``
    that followed ``since`` is gone).
    """
    first_kept = oldest if oldest is not None else newest + 1
    if first_kept > since + 1:
        return since + 1, first_kept - 1
    return None


def _not_before(max_age_seconds: int | None) -> str:
    # Timestamps are ISO 8601 UTC with a fixed layout, so they compare as strings.
    if not max_age_seconds:
        return ""
    cutoff = datetime.now(UTC) - timedelta(seconds=max_age_seconds)
    return cutoff.isoformat(timespec="microseconds").replace("+00:00", "Z")


async def ahistory_since(
    *, network_id: int, since: int, limit: int = 10_000, max_age_seconds: int | None = None
) -> tuple[list[HistoryEntry], int | None]:
    """Messages after ``since`` (oldest first, at most ``limit``) and the oldest seq kept.

    The history holds at most the network's ``history_max_messages`` (trimmed on write);
    messages older than ``max_age_seconds`` count as gone (filtered on read).
    """
    not_before = _not_before(max_age_seconds)
    # Past MAX_SEQ nothing can follow, and Redis refuses such a stream ID (a 500 otherwise).
    since = min(since, MAX_SEQ)
    if not settings.REDIS_URL:
        return local_history.since(network_id, since, limit, not_before)
    client = async_redis_client()
    key = history_key(network_id)
    if not_before:
        return await _history_since_not_before(client, key, since, limit, not_before)
    oldest = await client.xrange(key, "-", "+", count=1)
    rows = await client.xrange(key, f"({since}-0", "+", count=limit)
    first = _entry_seq(oldest[0][0]) if oldest else None
    return [_entry(i, f) for i, f in rows], first


async def _history_since_not_before(client, key: str, since: int, limit: int, not_before: str):
    # Find the oldest entry young enough by bisecting on seq: entries are in time order.
    first_row = await client.xrange(key, "-", "+", count=1)
    last_row = await client.xrevrange(key, "+", "-", count=1)
    if not first_row:
        return [], None
    low, high = _entry_seq(first_row[0][0]), _entry_seq(last_row[0][0])
    if _entry(*last_row[0])[1] < not_before:
        return [], None  # everything kept is too old
    while low < high:
        middle = (low + high) // 2
        row = await client.xrange(key, f"{middle}-0", "+", count=1)
        if _entry(*row[0])[1] >= not_before:
            high = _entry_seq(row[0][0]) if _entry_seq(row[0][0]) <= middle else middle
        else:
            low = _entry_seq(row[0][0]) + 1
    oldest = low
    start = max(since + 1, oldest)
    rows = await client.xrange(key, f"{start}-0", "+", count=limit)
    return [_entry(i, f) for i, f in rows], oldest


def _entry_seq(entry_id: bytes) -> int:
    return int(entry_id.decode().split("-")[0])


def _entry(entry_id: bytes, fields: dict) -> HistoryEntry:
    epoch = fields.get(b"e", b"").decode()
    return HistoryEntry(_entry_seq(entry_id), fields[b"t"].decode(), fields[b"f"].decode(), epoch)


def history_stats(network_ids: list[int]) -> dict[int, tuple[int, int]]:
    """Network id → (last sequence number, messages kept in history), for monitoring."""
    if not settings.REDIS_URL:
        return {n: local_history.stats(n) for n in network_ids}
    pipe = redis_client().pipeline(transaction=False)
    for network_id in network_ids:
        pipe.get(redis_key("seq", network_id))
        pipe.xlen(history_key(network_id))
    replies = pipe.execute()
    return {
        n: (int(replies[2 * i] or 0), int(replies[2 * i + 1])) for i, n in enumerate(network_ids)
    }


def retry_after_header(retry_after: float) -> str:
    """Whole seconds, at least 1 (the header takes an integer)."""
    return str(max(1, math.ceil(retry_after)))


def hour_datetime(hour_start: int) -> datetime:
    return datetime.fromtimestamp(hour_start, tz=UTC)


# --- Moving counters into the database (periodic tasks) -----------------------------------


def flush_last_used() -> int:
    """Write keys' last use into the database; returns how many keys were updated."""
    from .models import ApiKey

    if settings.REDIS_URL:
        client = redis_client()
        source = redis_key("lastused")
        batch = redis_key("lastused", "flushing", time.time_ns())
        try:
            # Renaming first means publishes during the flush land in a fresh hash.
            client.rename(source, batch)
        except redis.ResponseError:
            return 0  # no such key: nothing was published since the last flush
        stamps = {int(k): float(v) for k, v in client.hgetall(batch).items()}
        client.delete(batch)
    else:
        stamps = local.drain_last_used()
    for key_id, stamp in stamps.items():
        when = datetime.fromtimestamp(stamp, tz=UTC)
        # Never move backwards (a slower flush racing a newer one).
        ApiKey.objects.filter(pk=key_id).exclude(last_used_at__gte=when).update(last_used_at=when)
    return len(stamps)


def _upsert_usage(organization_id: int, network_id: int, hour: int, messages: int, nbytes: int):
    from .models import Network, UsageHour

    if not Network.objects.filter(pk=network_id).exists():
        return
    # Counters are cumulative for the hour, so writing the absolute value is idempotent.
    UsageHour.objects.update_or_create(
        network_id=network_id,
        hour=hour_datetime(hour),
        defaults={"organization_id": organization_id, "messages": messages, "bytes": nbytes},
    )


def rollup_usage() -> int:
    """Copy hourly usage counters into ``UsageHour`` rows; returns how many rows were written."""
    written = 0
    current = _hour_start(time.time())
    if settings.REDIS_URL:
        client = redis_client()
        dirty = redis_key("usage", "dirty")
        for raw_name in client.smembers(dirty):
            name = raw_name.decode()
            organization_id, hour = (int(part) for part in name.rsplit(":", 2)[-2:])
            counters = client.hgetall(name)
            by_network: dict[int, list[int]] = defaultdict(lambda: [0, 0])
            for field, value in counters.items():
                kind, network_id = field.decode().split(":")
                by_network[int(network_id)][0 if kind == "messages" else 1] = int(value)
            for network_id, (messages, nbytes) in by_network.items():
                _upsert_usage(organization_id, network_id, hour, messages, nbytes)
                written += 1
            if hour < current:
                client.srem(dirty, raw_name)  # that hour is over: its counters are final
    else:
        for (organization_id, network_id, hour), counts in local.snapshot_usage().items():
            _upsert_usage(organization_id, network_id, hour, *counts)
            written += 1
    return written
