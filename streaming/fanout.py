"""The fast fan-out path: one subscription per network per process, one send per listener.

A published message reaches a server process once (one Redis ``PUBLISH``, made by the same
Lua script that numbers and stores the message, so every process sees messages in ``seq``
order). The process-local :class:`FanoutHub` keeps the listeners that joined after their
entitlement check and hands each one the frame that was serialized once per publish.

The stock Channels path costs a queue, a task wake-up, a dispatch and a thread hop per
listener per message; here a listener costs one :meth:`Outbox.offer` call, which runs the
ASGI ``send`` synchronously when the socket can take it (:func:`start_eagerly`) and applies
the network's backpressure policy when it cannot. Everything else (archiving, revocation,
admin messages) still travels as ``group_send``: the hub is the process's one member of each
group and relays the events to its listeners (:class:`_GroupRelay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import redis
from channels.layers import get_channel_layer
from django.conf import settings

from katiedj import metrics, outages
from networks.accounting import (
    Epoch,
    add_local_receiver,
    ahistory_since,
    aresume_position,
    fanout_channel,
)
from networks.models import Backpressure
from networks.redis_clients import async_redis_client
from networks.selectors import NetworkInfo
from networks.services import envelope_text

from .occupancy import reporter as occupancy

logger = logging.getLogger(__name__)

# Live messages a listener may accumulate while its ?since= replay is still being sent.
REPLAY_BACKLOG_LIMIT = 10_000

SendFunction = Callable[[dict[str, Any]], Awaitable[None]]


def start_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` until it first waits; None if it finished, else a task finishing it.

    An ASGI ``send`` to a writable socket never waits, so the common case costs no task and
    no trip through the event loop (Python 3.12's eager tasks, by hand, for 3.11).
    """
    try:
        awaited = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_finish(coro, _unblock(awaited)))


def _unblock(awaited: Any) -> Any:
    # What a Task does with a future its coroutine yields: without this, awaiting it again
    # fails with "await wasn't used with future".
    if getattr(awaited, "_asyncio_future_blocking", False):
        awaited._asyncio_future_blocking = False
    return awaited


async def _finish(coro: Coroutine[Any, Any, None], awaited: Any) -> None:
    # Resume ``coro`` each time what it waits for is done, as a Task would.
    while True:
        try:
            if awaited is None:
                await asyncio.sleep(0)  # a bare yield
            else:
                await awaited
        except GeneratorExit:
            coro.close()  # this task is being destroyed: so is the send
            raise
        except BaseException as exc:
            try:
                awaited = _unblock(coro.throw(exc))
            except StopIteration:
                return
        else:
            try:
                awaited = _unblock(coro.send(None))
            except StopIteration:
                return


def text_event(text: str) -> dict[str, Any]:
    """An ASGI text frame event; one per message, shared by every listener."""
    return {"type": "websocket.send", "text": text}


def gap_event(*, missed: int, from_seq: int, to_seq: int) -> dict[str, Any]:
    gap = {"type": "gap", "missed": missed, "from_seq": from_seq, "to_seq": to_seq}
    return text_event(json.dumps(gap))


def reset_event(*, epoch: str, seq: int) -> dict[str, Any]:
    """The numbering changed under the listener: everything after ``seq`` of ``epoch``
    follows; nothing of the old numbering past what it saw will come."""
    return text_event(json.dumps({"type": "reset", "epoch": epoch, "seq": seq}))


# The seq of a backlog entry that is a control frame (a reset or gap frame of the hub's):
# never conflated or dropped.
CONTROL = -1


class Outbox:
    """What is on its way to one listener, and what its network's policy does when it lags.

    While the listener's socket takes frames, :meth:`offer` sends at once. While a send waits
    (the transport's buffer is full: the listener reads slower than the network publishes)
    or a ``?since=`` replay is running, offers are held back and the policy applies:

    - ``conflate``: keep only the latest unsent message (state-like data);
    - ``drop``: keep the newest ``buffer`` messages, drop the oldest, and send a gap frame
      saying how many were missed before sending the rest;
    - ``disconnect``: once ``buffer`` messages are waiting, call ``on_too_slow`` (the
      consumer closes with 4413).
    """

    __slots__ = (
        "backlog",
        "buffer",
        "closed",
        "conflated",
        "delivered",
        "dropped",
        "envelope",
        "epoch",
        "gap_from",
        "gap_to",
        "groups",
        "last_seq",
        "on_event",
        "on_too_slow",
        "pending",
        "policy",
        "replaying",
        "send",
        "skip_up_to",
    )

    def __init__(
        self,
        *,
        send: SendFunction,
        envelope: bool = False,
        policy: str = Backpressure.CONFLATE,
        buffer: int = 100,
        on_too_slow: Callable[[], None] | None = None,
        on_event: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.send = send
        self.on_event = on_event  # group_send events for this listener (archive, revocation)
        self.groups: list[str] = []
        self.envelope = envelope
        self.policy = policy
        self.buffer = max(1, buffer)
        self.on_too_slow = on_too_slow
        self.backlog: deque[tuple[int, dict[str, Any]]] = deque()
        self.pending: asyncio.Task[None] | None = None
        self.replaying = False
        self.skip_up_to: int | None = None  # after a replay: live seqs already sent
        self.last_seq = 0
        self.gap_from = self.gap_to = 0  # seqs dropped and not yet reported
        self.closed = False
        self.delivered = self.dropped = self.conflated = 0
        # The epoch a ?since= replay placed the listener in: a hub that learns of a reset
        # to that epoch later has nothing to tell it.
        self.epoch: str | None = None

    # --- The hot path ------------------------------------------------------------------

    def offer(self, seq: int, event: dict[str, Any]) -> None:
        """Send ``event`` (message ``seq``) now if the socket takes it, else apply the policy."""
        if self.skip_up_to is not None:
            if seq <= self.skip_up_to:
                return  # the replay sent it already
            self.skip_up_to = None
        if self.pending is None and not self.replaying:
            self._send(seq, event)
        elif not self.closed:
            self._hold(seq, event)

    def _send(self, seq: int, event: dict[str, Any]) -> None:
        try:
            task = start_eagerly(self.send(event))
        except Exception:
            self.closed = True
            return
        self.last_seq = seq
        self.delivered += 1
        if task is not None:
            self.pending = task
            task.add_done_callback(self._sent)

    def offer_control(self, event: dict[str, Any]) -> None:
        """Send a reset or gap frame after whatever is held back; policies never skip it.

        The numbering starts again after it, so live seqs are no longer compared with what a
        replay sent."""
        if self.closed:
            return
        self.skip_up_to = None
        if self.pending is None and not self.replaying and not self.backlog:
            self._send(self.last_seq, event)
        else:
            self.backlog.append((CONTROL, event))

    def _hold(self, seq: int, event: dict[str, Any]) -> None:
        if self.replaying and len(self.backlog) < REPLAY_BACKLOG_LIMIT:
            self.backlog.append((seq, event))
            return
        if self.policy == Backpressure.CONFLATE:
            if self.backlog:
                kept = [entry for entry in self.backlog if entry[0] == CONTROL]
                if len(kept) < len(self.backlog):
                    self.conflated += 1
                    metrics.listener_skipped(Backpressure.CONFLATE)
                self.backlog = deque(kept)
            self.backlog.append((seq, event))
        elif self.policy == Backpressure.DROP:
            if len(self.backlog) >= self.buffer:
                self._drop_oldest_message()
            self.backlog.append((seq, event))
        elif len(self.backlog) >= self.buffer:
            self.closed = True
            self.backlog.clear()
            metrics.listener_skipped(Backpressure.DISCONNECT)
            if self.on_too_slow is not None:
                self.on_too_slow()
        else:
            self.backlog.append((seq, event))

    def _drop_oldest_message(self) -> None:
        for index, (dropped_seq, _) in enumerate(self.backlog):
            if dropped_seq != CONTROL:
                del self.backlog[index]
                break
        else:
            return  # only control frames wait: they are never dropped
        if not self.gap_from:
            self.gap_from = dropped_seq
        self.gap_to = dropped_seq
        self.dropped += 1
        metrics.listener_skipped(Backpressure.DROP)

    # --- Catching up -------------------------------------------------------------------

    def _sent(self, task: asyncio.Task[None]) -> None:
        self.pending = None
        if task.cancelled() or task.exception() is not None:
            self.closed = True  # the socket is gone; its disconnect will follow
            self.backlog.clear()
            return
        self.drain()

    def drain(self) -> None:
        """Send what was held back, gap frame first, until done or the socket is full again."""
        while not self.closed and self.pending is None and not self.replaying:
            if self.gap_from:
                missed = self.gap_to - self.gap_from + 1
                event = gap_event(missed=missed, from_seq=self.gap_from, to_seq=self.gap_to)
                self.gap_from = self.gap_to = 0
                self._send(self.last_seq, event)
            elif self.backlog:
                seq, event = self.backlog.popleft()
                if seq == CONTROL:
                    self._send(self.last_seq, event)
                    continue
                if self.skip_up_to is not None and seq <= self.skip_up_to:
                    continue
                self._send(seq, event)
            else:
                return

    def begin_replay(self) -> None:
        """Hold live messages back while history is sent (see :meth:`end_replay`)."""
        self.replaying = True

    def end_replay(self, *, last_replayed: int | None) -> None:
        """Live messages up to ``last_replayed`` were in the replay: skip them, send the rest."""
        self.replaying = False
        if last_replayed is not None:
            self.skip_up_to = last_replayed
        self.drain()


# A message as the hub receives it: seq, epoch, ts, frame, publish time.
Message = tuple[int, Epoch, str, str, float]


class _NetworkListeners:
    __slots__ = ("catch_up_to", "epoch", "held", "outboxes", "reset_to", "slug", "subscribed")

    def __init__(self, slug: str) -> None:
        self.slug = slug
        self.outboxes: set[Outbox] = set()
        self.subscribed = asyncio.Event()
        self.catch_up_to: int | None = None
        self.epoch: str | None = None  # of the last message delivered
        self.held: list[Message] | None = None  # live messages held while rebasing
        self.reset_to: Epoch | None = None  # the last numbering listeners were reset to


class _GroupRelay:
    """This process's one member of a channel-layer group, relaying its events to the
    listeners in it: ``group_send`` keeps working, and a listener needs no channel (no
    Redis subscription, queue or waiting task) of its own."""

    # The in-memory layer forgets group members after a day: renew well before.
    RENEW_SECONDS = 3600.0

    def __init__(self, group: str) -> None:
        self.group = group
        self.members: set[Outbox] = set()
        self.channel = ""
        self.task: asyncio.Task[None] | None = None
        self.handling: set[asyncio.Task[None]] = set()  # referenced until done

    async def start(self) -> None:
        layer = get_channel_layer()
        self.channel = await layer.new_channel("fanout.")
        await layer.group_add(self.group, self.channel)
        self.task = asyncio.ensure_future(self._relay(layer))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        layer = get_channel_layer()
        with contextlib.suppress(redis.RedisError, OSError):
            await layer.group_discard(self.group, self.channel)

    async def _relay(self, layer: Any) -> None:
        while True:
            try:
                event = await asyncio.wait_for(layer.receive(self.channel), self.RENEW_SECONDS)
            except TimeoutError:
                await layer.group_add(self.group, self.channel)
                continue
            for outbox in tuple(self.members):
                if outbox.on_event is not None:
                    # Each listener handles it in its own task: one slow close holds no one.
                    task = asyncio.ensure_future(outbox.on_event(event))
                    self.handling.add(task)
                    task.add_done_callback(self.handling.discard)


class FanoutHub:
    """This process's listeners by network, fed by one Redis subscription per network.

    Without Redis (the embedded mode) the publish service hands messages to the hub directly.
    """

    def __init__(self) -> None:
        self.networks: dict[int, _NetworkListeners] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._last_seq: dict[int, int] = {}  # last message seen per network (for catch-up)
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self.relays: dict[str, _GroupRelay] = {}
        self._rebasing: set[asyncio.Task[None]] = set()  # referenced until done

    # --- Joining and leaving -----------------------------------------------------------

    async def join(self, network: NetworkInfo, outbox: Outbox, groups: Iterable[str] = ()) -> None:
        """Add a listener; returns once this process receives the network's messages.

        It also hears ``group_send`` events to the network's group and to ``groups``.
        """
        self.loop = asyncio.get_running_loop()
        for group in (network.group_name, *groups):
            await self._join_group(group, outbox)
        entry = self.networks.get(network.id)
        if entry is None:
            entry = self.networks[network.id] = _NetworkListeners(network.slug)
            if settings.REDIS_URL:
                self._ensure_reader()
                async with self._subscription_lock():
                    if self._pubsub is not None and network.id in self.networks:
                        with contextlib.suppress(redis.RedisError, OSError):
                            await self._pubsub.subscribe(fanout_channel(network.id))
            else:
                add_local_receiver(self.deliver_threadsafe)
                entry.subscribed.set()
        entry.outboxes.add(outbox)
        metrics.listener_joined(network.id)
        occupancy.note(network.id, len(entry.outboxes))
        if not entry.subscribed.is_set():
            # Confirmed by Redis, so a replay that follows cannot miss a message.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry.subscribed.wait(), timeout=5)

    async def leave(self, network_id: int, outbox: Outbox) -> None:
        """Remove a listener; the last one out ends the process's subscription."""
        for group in outbox.groups:
            await self._leave_group(group, outbox)
        outbox.groups = []
        entry = self.networks.get(network_id)
        if entry is None or outbox not in entry.outboxes:
            return
        entry.outboxes.discard(outbox)
        outbox.closed = True
        metrics.listener_left(network_id)
        occupancy.note(network_id, len(entry.outboxes))
        if entry.outboxes:
            return
        del self.networks[network_id]
        self._last_seq.pop(network_id, None)
        async with self._subscription_lock():
            # A listener may have joined meanwhile (a client reconnecting): keep it subscribed.
            if self._pubsub is not None and network_id not in self.networks:
                with contextlib.suppress(redis.RedisError, OSError):
                    await self._pubsub.unsubscribe(fanout_channel(network_id))

    def _subscription_lock(self) -> asyncio.Lock:
        # SUBSCRIBE and UNSUBSCRIBE go out one at a time, each decided under the lock, so a
        # leave and a join racing on one network always end subscribed. One lock per loop.
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    # --- Group events (archiving, revocation, admin messages) -----------------------------

    async def _join_group(self, group: str, outbox: Outbox) -> None:
        relay = self.relays.get(group)
        if relay is None:
            relay = self.relays[group] = _GroupRelay(group)
            await relay.start()
        relay.members.add(outbox)
        outbox.groups.append(group)

    async def _leave_group(self, group: str, outbox: Outbox) -> None:
        relay = self.relays.get(group)
        if relay is None:
            return
        relay.members.discard(outbox)
        if not relay.members:
            del self.relays[group]
            await relay.stop()

    def reset_to(self, network_id: int) -> Epoch | None:
        """The numbering this process last reset the network's listeners to, if any."""
        entry = self.networks.get(network_id)
        return entry.reset_to if entry is not None else None

    def listener_counts(self) -> dict[int, int]:
        """Listeners connected to this process, by network id."""
        return {network_id: len(e.outboxes) for network_id, e in self.networks.items()}

    # --- Delivering --------------------------------------------------------------------

    def deliver(
        self, network_id: int, seq: int, epoch: Epoch, ts: str, frame: str, published_at: float
    ) -> None:
        """Hand message ``seq`` to every local listener of the network (event loop thread)."""
        entry = self.networks.get(network_id)
        if entry is None:
            return
        if entry.held is not None:
            entry.held.append((seq, epoch, ts, frame, published_at))
            return
        if (
            entry.epoch is not None
            and epoch.id != entry.epoch
            and self._last_seq.get(network_id, 0) > epoch.start
        ):
            # The numbering went back (a Redis failover or restart lost its tail): what the
            # listeners saw past epoch.start is not the record any more.
            self._rebase(network_id, entry, epoch, (seq, epoch, ts, frame, published_at))
            return
        entry.epoch = epoch.id
        if entry.catch_up_to is not None:
            if seq <= entry.catch_up_to:
                return  # already delivered from history after a reconnect
            entry.catch_up_to = None
        self._last_seq[network_id] = seq
        frame_event = text_event(frame)
        envelope_event = None
        for outbox in tuple(entry.outboxes):
            if outbox.envelope:
                if envelope_event is None:
                    envelope_event = text_event(
                        envelope_text(
                            seq=seq, epoch=epoch.id, ts=ts, network=entry.slug, frame=frame
                        )
                    )
                outbox.offer(seq, envelope_event)
            else:
                outbox.offer(seq, frame_event)
        metrics.message_fanned_out(len(entry.outboxes), time.time() - published_at)

    def _rebase(
        self, network_id: int, entry: _NetworkListeners, epoch: Epoch, message: Message | None
    ) -> None:
        """Tell the network's listeners the numbering was reset, then send them the new
        numbering from its start: from history, then the live messages held meanwhile."""
        logger.warning(
            "network %s: numbering reset to epoch %s after seq %d (last seen: seq %d)",
            entry.slug, epoch.id, epoch.start, self._last_seq.get(network_id, 0),
        )  # fmt: skip
        entry.held = [message] if message is not None else []
        entry.catch_up_to = None
        entry.epoch = epoch.id
        entry.reset_to = epoch
        self._last_seq[network_id] = epoch.start
        event = reset_event(epoch=epoch.id, seq=epoch.start)
        # Not those a ?since= replay placed in this epoch already, nor those whose replay has
        # yet to ask where they are (it will get the new numbering; see the consumer's
        # _replay, which also checks reset_to when it ends).
        told = [
            outbox
            for outbox in entry.outboxes
            if outbox.epoch != epoch.id and not (outbox.replaying and outbox.epoch is None)
        ]
        for outbox in told:
            outbox.offer_control(event)
        task = asyncio.ensure_future(self._deliver_after_reset(network_id, entry, epoch, told))
        self._rebasing.add(task)
        task.add_done_callback(self._rebasing.discard)

    async def _deliver_after_reset(
        self, network_id: int, entry: _NetworkListeners, epoch: Epoch, told: list[Outbox]
    ) -> None:
        try:
            history, _ = await ahistory_since(network_id=network_id, since=epoch.start)
        except (redis.RedisError, OSError) as exc:
            logger.warning("reading history after a reset failed (%s)", exc)
            history = []
        held, entry.held = entry.held or [], None
        if self.networks.get(network_id) is not entry:
            return  # every listener left meanwhile
        first = history[0].seq if history else held[0][0] if held else epoch.start + 1
        if first > epoch.start + 1:
            missed = first - epoch.start - 1
            gap = gap_event(missed=missed, from_seq=epoch.start + 1, to_seq=first - 1)
            for outbox in told:
                outbox.offer_control(gap)
        now = time.time()
        messages: list[Message] = [
            (e.seq, Epoch(id=e.epoch or epoch.id, start=epoch.start), e.ts, e.frame, now)
            for e in history
        ]
        for message in [*messages, *held]:
            if message[0] > self._last_seq.get(network_id, 0):
                self.deliver(network_id, *message)

    def deliver_threadsafe(
        self, network_id: int, seq: int, epoch: Epoch, ts: str, frame: str, published_at: float
    ) -> None:
        """``deliver`` from any thread (the embedded mode's publishers)."""
        loop = self.loop
        if loop is None or network_id not in self.networks or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self.deliver(network_id, seq, epoch, ts, frame, published_at)
        else:
            loop.call_soon_threadsafe(self.deliver, network_id, seq, epoch, ts, frame, published_at)

    # --- The Redis subscription --------------------------------------------------------

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._read_forever())

    async def _read_forever(self) -> None:
        """Read published messages; on a dropped connection resubscribe and catch up."""
        backoff = 0.1
        while self.networks:
            try:
                await self._subscribe_all()
                outages.note_recovered(outages.REDIS)
                backoff = 0.1
                while self.networks:
                    message = await self._pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._handle_safely(message)
            except (redis.RedisError, OSError) as exc:
                # One line per outage (katiedj.outages), not one per attempt.
                outages.note_outage(outages.REDIS, exc)
                await self._close_pubsub()
                for entry in self.networks.values():
                    entry.subscribed.clear()
                await asyncio.sleep(backoff)
                # Capped low: a failover is over in ~2 s and listeners wait for this; an
                # attempt is one connection per process.
                backoff = min(backoff * 2, 0.5)
        await self._close_pubsub()
        if self.networks:
            # A listener joined while the subscription was closing: start over for it.
            self._reader = asyncio.ensure_future(self._read_forever())

    def _handle_safely(self, message: dict[str, Any]) -> None:
        # One bad message or listener must not end the subscription every listener relies on.
        try:
            self._handle(message)
        except Exception:
            logger.exception("fan-out of a message failed")

    async def _subscribe_all(self) -> None:
        self._pubsub = async_redis_client().pubsub()
        channels = [fanout_channel(network_id) for network_id in self.networks]
        await self._pubsub.subscribe(*channels)
        # Whatever was published while we were away is in the history.
        for network_id, last in list(self._last_seq.items()):
            entry = self.networks.get(network_id)
            if entry is None or entry.held is not None:
                continue
            # The question a resuming listener asks: is the last seq seen still a position in
            # the numbering (a Redis that restarted or failed over may have lost its tail)?
            position = await aresume_position(network_id=network_id, since=last, epoch=entry.epoch)
            if position.reset:
                self._rebase(network_id, entry, position.epoch, None)
                continue
            entries, _ = await ahistory_since(network_id=network_id, since=last)
            for e in entries:
                epoch = Epoch(id=e.epoch or position.epoch.id, start=position.epoch.start)
                self.deliver(network_id, e.seq, epoch, e.ts, e.frame, time.time())
            if entries and entry.held is None:
                entry.catch_up_to = entries[-1].seq

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            network_id = int(message["channel"].rsplit(b":", 1)[1])
            seq, epoch, start, ts, published_at, frame = message["data"].decode().split("\n", 5)
            epoch_info = Epoch(id=epoch, start=int(start))
            self.deliver(network_id, int(seq), epoch_info, ts, frame, float(published_at))
        elif kind == "subscribe":
            network_id = int(message["channel"].rsplit(b":", 1)[1])
            entry = self.networks.get(network_id)
            if entry is not None:
                entry.subscribed.set()


hub = FanoutHub()
"""This process's hub (one per process: the ASGI server runs one event loop)."""
