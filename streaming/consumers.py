"""WebSocket consumers: listeners of a network receive each published ``data`` frame."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Coroutine
from functools import cached_property
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer

from accounts.tokens import PERSONAL_TOKEN
from billing.entitlement import (
    TOKEN_PREFIX,
    TokenExpired,
    TokenInvalid,
    aentitlement_epoch,
    exchange_personal_token,
    read_entitlement_token,
    user_group,
)
from networks.accounting import (
    ResumePosition,
    ahistory_since,
    aresume_position,
    first_missing_range,
)
from networks.lookup_cache import DatabaseUnavailable, adatabase_call
from networks.selectors import NetworkInfo, anetwork_get_by_slug
from networks.services import envelope_text

from .connection_limits import (
    address_admit,
    address_release,
    connection_admit,
    connection_release,
)
from .fanout import Outbox, gap_event, hub, reset_event, text_event

logger = logging.getLogger(__name__)

# Documented close codes (docs/protocol.md).
CLOSE_POLICY_VIOLATION = 1008  # the listener talked too much
CLOSE_TRY_AGAIN_LATER = 1013  # the database did not answer the handshake's lookup in time
CLOSE_BAD_REQUEST = 4400  # the handshake asks for what cannot be (a ?since= that is no seq)
CLOSE_UNAUTHENTICATED = 4401  # paid network: no token, or not one of ours
CLOSE_NOT_ENTITLED = 4403  # the token's owner may not hear this network (any more)
CLOSE_TOKEN_EXPIRED = 4408  # expired or voided token: get a fresh one and reconnect
CLOSE_NETWORK_ARCHIVED = 4410  # the provider archived the network
CLOSE_TOO_SLOW = 4413  # fell behind under the network's "disconnect" backpressure policy
CLOSE_TOO_MANY_CONNECTIONS = 4429  # this person, or this address, holds all it may

# A refusal's close frame says why in its reason (4429 has two).
BAD_SINCE = "bad request: since must be a sequence number"
BAD_EPOCH = "bad request: epoch must be an epoch id from an envelope"
TOO_MANY_FROM_ADDRESS = "too many connections from this address"
REFUSAL_REASONS = {
    CLOSE_UNAUTHENTICATED: "entitlement token missing or invalid",
    CLOSE_NOT_ENTITLED: "not entitled to this network",
    CLOSE_TOKEN_EXPIRED: "entitlement token expired or voided: get a fresh one",
    CLOSE_TOO_MANY_CONNECTIONS: "too many connections of this person to this network",
    CLOSE_TRY_AGAIN_LATER: "service unavailable, retry shortly",
}

# ?since= is a sequence number: an int64 (Redis INCR) in ASCII digits. Not str.isdigit(),
# which takes "²" and other digits int() refuses; nor unbounded (int() refuses over 4,300).
_SINCE = re.compile(r"[0-9]{1,19}")
SINCE_MAX = 2**63 - 1
# Epoch ids are opaque strings (today digits); bounded so a handshake cannot carry a novel.
EPOCH_PATTERN = re.compile(r"[0-9A-Za-z._-]{1,64}")

# Listeners cannot talk; a few stray frames are ignored, a stream of them is abuse.
INBOUND_FRAMES_ALLOWED = 20
INBOUND_WINDOW_SECONDS = 10.0

# Browsers cannot set headers: they offer ["katiedj", "<token>"] as subprotocols.
SUBPROTOCOL = "katiedj"


def history_headers(network: NetworkInfo) -> list[tuple[bytes, bytes]]:
    """What the network's history keeps, told in the handshake response: a client that knows
    its message rate keeps its reconnect backoff shorter than the history it resumes from."""
    return [
        (b"katiedj-history-messages", str(network.history_max_messages).encode()),
        (b"katiedj-history-seconds", str(network.history_max_age_seconds or 0).encode()),
    ]


class NetworkListenerConsumer(AsyncWebsocketConsumer):
    """One listener of one network.

    Unknown or archived network: the handshake is refused (HTTP 403). A bad ``?since=``, an
    address over its connection limit, or (paid network) a missing or insufficient
    entitlement token: accepted, then a 44xx close, before the listener joins anything.
    Messages do not pass through this consumer: once admitted, its :class:`Outbox` joins the
    process's fan-out hub, which also relays the rare ``group_send`` events (archiving,
    revocation) sent to the network's group and the person's group. However the connection
    ends, :meth:`_release` takes it out of the hub and frees its connection slots.
    """

    # No channel of its own (documented: no layer under this alias means none): the hub is
    # the process's member of the groups, so a listener costs no Redis subscription, queue
    # or waiting task.
    channel_layer_alias = None
    network: NetworkInfo | None = None
    user_id: int | None = None
    outbox: Outbox | None = None
    # Held until _release: the person's slot (user id, network id) and the address's slot.
    _person_slot: tuple[int, int] | None = None
    _address_slot: str | None = None
    _close_sent = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve the connection; however it ends (a disconnect, an exception in any handler,
        a cancelled task), release what it holds."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._holds_anything():  # after a plain disconnect, released already
                # Shielded: a second cancellation must not stop the release half-way.
                await asyncio.shield(self._release())

    async def connect(self) -> None:
        slug = self.scope["url_route"]["kwargs"]["slug"]
        try:
            network = await anetwork_get_by_slug(slug=slug)
        except DatabaseUnavailable:
            # Not a 403: the network may well exist. The client retries with its backoff.
            await self._try_again_later()
            return
        if network is None or network.archived:
            await self.close()  # before accept: the server answers HTTP 403
            return
        self._inbound: list[float] = []
        self.connection_id = uuid.uuid4().hex
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in self.scope.get("subprotocols", []) else None
        try:
            since = self._since()
        except ValueError:
            await self._refuse(subprotocol, CLOSE_BAD_REQUEST, BAD_SINCE)
            return
        epoch = self.query.get("epoch", [""])[0]
        if epoch and EPOCH_PATTERN.fullmatch(epoch) is None:
            await self._refuse(subprotocol, CLOSE_BAD_REQUEST, BAD_EPOCH)
            return
        if not await self._admit_address():
            await self._refuse(subprotocol, CLOSE_TOO_MANY_CONNECTIONS, TOO_MANY_FROM_ADDRESS)
            return
        if not network.is_public:
            refusal = await self._authorize(network)
            if refusal is not None:
                await self._refuse(subprotocol, refusal, REFUSAL_REASONS[refusal])
                return
        self.network = network
        self.outbox = Outbox(
            send=self.base_send,
            envelope=self.query.get("format", [""])[0] == "envelope",
            policy=network.backpressure,
            buffer=network.backpressure_buffer,
            on_too_slow=self._too_slow,
            on_event=self.dispatch,
        )
        # Join before accepting, holding live messages back: once the handshake completes
        # nothing published is missed, and a replay is followed by the held-back messages
        # without a gap or a duplicate.
        self.outbox.begin_replay()
        groups = [user_group(self.user_id)] if self.user_id is not None else []
        await hub.join(network, self.outbox, groups=groups)
        await self.accept(subprotocol, headers=history_headers(network))
        replayed = await self._replay(network, since, epoch) if since is not None else None
        self.outbox.end_replay(last_replayed=replayed)

    def _since(self) -> int | None:
        """The ``?since=`` sequence number, None without one; ValueError if it is not one."""
        raw = self.query.get("since")
        if not raw:
            return None
        if _SINCE.fullmatch(raw[0]) is None or int(raw[0]) > SINCE_MAX:
            raise ValueError(BAD_SINCE)
        return int(raw[0])

    async def _refuse(self, subprotocol: str | None, code: int, reason: str) -> None:
        # Accept first so the client can read the reason in the close code.
        await self.accept(subprotocol)
        await self.close(code=code, reason=reason)
        await self._release()  # now: the client may take its time to answer the close

    async def _try_again_later(self) -> None:
        """Close the handshake with 1013 (a bounded wait for the database ran out, or it
        refused): a cached network would have been served, this one needs the database."""
        offered = SUBPROTOCOL if SUBPROTOCOL in self.scope.get("subprotocols", []) else None
        await self._refuse(offered, CLOSE_TRY_AGAIN_LATER, REFUSAL_REASONS[CLOSE_TRY_AGAIN_LATER])

    async def _admit_address(self) -> bool:
        """Take a slot of the client's address; False when the address holds them all."""
        client = self.scope.get("client")
        if not client or not client[0]:
            return True  # no address (a Unix socket, no proxy header): nothing to count by
        if not await address_admit(address=client[0], connection=self.connection_id):
            return False
        self._address_slot = client[0]
        return True

    async def _replay(self, network: NetworkInfo, since: int, epoch: str) -> int:
        """Send what was published after (``epoch``, ``since``) from history: a reset frame
        first if that is no position in the current numbering, a gap frame if history no
        longer reaches it; returns the last seq sent."""
        position = await aresume_position(network_id=network.id, since=since, epoch=epoch)
        self.outbox.epoch = position.epoch.id
        last = await self._send_history(network, position)
        # The numbering may have gone back while this ran (a failover the hub noticed): what
        # was replayed is then the old numbering's; go on from where the new one starts.
        moved = hub.reset_to(network.id)
        if moved is not None and moved.id != self.outbox.epoch:
            self.outbox.epoch = moved.id
            restart = ResumePosition(epoch=moved, since=moved.start, newest=moved.start, reset=True)
            last = await self._send_history(network, restart)
        return last

    async def _send_history(self, network: NetworkInfo, position: ResumePosition) -> int:
        if position.reset:
            await self.base_send(reset_event(epoch=position.epoch.id, seq=position.since))
        since = position.since
        entries, oldest = await ahistory_since(
            network_id=network.id, since=since, max_age_seconds=network.history_max_age_seconds
        )
        missing = first_missing_range(since=since, oldest=oldest, newest=position.newest)
        if missing is not None:
            first, last = missing
            await self.base_send(gap_event(missed=last - first + 1, from_seq=first, to_seq=last))
        last = since
        for entry in entries:
            frame = entry.frame
            if self.outbox.envelope:
                frame = envelope_text(
                    seq=entry.seq,
                    epoch=entry.epoch or position.epoch.id,
                    ts=entry.ts,
                    network=network.slug,
                    frame=frame,
                )
            await self.base_send(text_event(frame))
            last = entry.seq
        return last

    def _too_slow(self) -> None:
        logger.info("closing a listener of %s: too far behind", self.network.slug)
        # Not awaited here: the hub is mid-delivery. The close waits behind unsent frames.
        self._closing = asyncio.ensure_future(self.close(code=CLOSE_TOO_SLOW))

    @cached_property
    def query(self) -> dict[str, list[str]]:
        """The handshake's query string (format, since, token), parsed once."""
        return parse_qs(self.scope.get("query_string", b"").decode("latin-1"))

    def _presented_token(self) -> str | None:
        if self.query.get("token"):
            return self.query["token"][0]
        for name, value in self.scope.get("headers", []):
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and credentials.strip():
                    return credentials.strip()
        for offered in self.scope.get("subprotocols", []):
            if offered.startswith(TOKEN_PREFIX) or PERSONAL_TOKEN.claims(offered):
                return offered
        return None

    async def _authorize(self, network: NetworkInfo) -> int | None:
        """None if the presented token lets its owner hear ``network``, else the close code."""
        raw = self._presented_token()
        if raw is None:
            return CLOSE_UNAUTHENTICATED
        if PERSONAL_TOKEN.claims(raw):
            # Scripts may present a personal token; exchanging it costs a database query.
            try:
                raw = await adatabase_call(exchange_personal_token, raw)
            except DatabaseUnavailable:
                return CLOSE_TRY_AGAIN_LATER
            if raw is None:
                return CLOSE_UNAUTHENTICATED
        try:
            token = read_entitlement_token(raw)
        except TokenExpired:
            return CLOSE_TOKEN_EXPIRED
        except TokenInvalid:
            return CLOSE_UNAUTHENTICATED
        try:
            epoch = await aentitlement_epoch(token.user_id)
        except DatabaseUnavailable:
            return CLOSE_TRY_AGAIN_LATER
        if epoch is None:
            return CLOSE_UNAUTHENTICATED
        if epoch != token.epoch:
            return CLOSE_TOKEN_EXPIRED
        if not token.allows(network):
            return CLOSE_NOT_ENTITLED
        admitted = await connection_admit(
            user_id=token.user_id, network_id=network.id, connection=self.connection_id
        )
        if not admitted:
            return CLOSE_TOO_MANY_CONNECTIONS
        self._person_slot = (token.user_id, network.id)
        self.user_id = token.user_id
        return None

    async def disconnect(self, code: int) -> None:
        await self._release()

    def _holds_anything(self) -> bool:
        return (self.outbox, self._person_slot, self._address_slot) != (None, None, None)

    async def _release(self) -> None:
        """Leave the hub and free this connection's slots, once; each step runs whatever
        the others do (a slot Redis failed to free ages out there)."""
        outbox, self.outbox = self.outbox, None
        if outbox is not None and self.network is not None:
            await _logging_failure(hub.leave(self.network.id, outbox), "leaving the hub")
            if outbox.dropped or outbox.conflated:
                logger.info(
                    "a lagging listener of %s left: %d delivered, %d dropped, %d conflated",
                    self.network.slug, outbox.delivered, outbox.dropped, outbox.conflated,
                )  # fmt: skip
        person, self._person_slot = self._person_slot, None
        if person is not None:
            user_id, network_id = person
            freed = connection_release(
                user_id=user_id, network_id=network_id, connection=self.connection_id
            )
            await _logging_failure(freed, "freeing the person's slot")
        address, self._address_slot = self._address_slot, None
        if address is not None:
            freed = address_release(address=address, connection=self.connection_id)
            await _logging_failure(freed, "freeing the address's slot")

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close once: frames the client sent before it heard the close still arrive, and a
        second ``websocket.close`` is an ASGI error (uvicorn raises)."""
        if self._close_sent:
            return
        self._close_sent = True
        await super().close(code, reason)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # Never broadcast what a listener sends; close it if it keeps sending.
        if self._close_sent:
            return  # closing already: what the client still sends is dropped
        now = time.monotonic()
        self._inbound = [t for t in self._inbound if now - t < INBOUND_WINDOW_SECONDS]
        self._inbound.append(now)
        if len(self._inbound) > INBOUND_FRAMES_ALLOWED:
            logger.info("closing a chatty listener of %s", self.network and self.network.slug)
            await self.close(code=CLOSE_POLICY_VIOLATION)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # The base class first closes stale database connections in the sync thread: a
        # thread hop per connect, frame and disconnect, and asgiref runs those one at a time.
        # These handlers reach the database only through adatabase_call, which does it then.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def network_archived(self, event: dict[str, Any]) -> None:
        await self.close(code=CLOSE_NETWORK_ARCHIVED)

    async def entitlement_revoked(self, event: dict[str, Any]) -> None:
        networks = event.get("networks")
        if self.network is not None and (networks is None or self.network.id in networks):
            await self.close(code=CLOSE_NOT_ENTITLED)


async def _logging_failure(step: Coroutine[Any, Any, None], what: str) -> None:
    """Await one release step; a failure is logged, not raised, so the other steps still run."""
    try:
        await step
    except Exception:
        logger.exception("releasing a listener: %s failed", what)
