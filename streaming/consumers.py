"""WebSocket consumers: listeners of a network receive each published ``data`` frame."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
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
from networks.accounting import ahistory_since
from networks.lookup_cache import adatabase_call
from networks.selectors import NetworkInfo, anetwork_get_by_slug
from networks.services import envelope_text

from .connection_limits import connection_admit, connection_release
from .fanout import Outbox, gap_event, hub, text_event

logger = logging.getLogger(__name__)

# Documented close codes (docs/protocol.md).
CLOSE_POLICY_VIOLATION = 1008  # the listener talked too much
CLOSE_UNAUTHENTICATED = 4401  # paid network: no token, or not one of ours
CLOSE_NOT_ENTITLED = 4403  # the token's owner may not hear this network (any more)
CLOSE_TOKEN_EXPIRED = 4408  # expired or voided token: get a fresh one and reconnect
CLOSE_NETWORK_ARCHIVED = 4410  # the provider archived the network
CLOSE_TOO_SLOW = 4413  # fell behind under the network's "disconnect" backpressure policy
CLOSE_TOO_MANY_CONNECTIONS = 4429  # this person already holds the allowed connections

# Listeners cannot talk; a few stray frames are ignored, a stream of them is abuse.
INBOUND_FRAMES_ALLOWED = 20
INBOUND_WINDOW_SECONDS = 10.0

# Browsers cannot set headers: they offer ["katiedj", "<token>"] as subprotocols.
SUBPROTOCOL = "katiedj"


class NetworkListenerConsumer(AsyncWebsocketConsumer):
    """One listener of one network.

    Unknown or archived network: the handshake is refused (HTTP 403). Paid network: the
    entitlement token is checked before the listener joins; a failure is a 44xx close.
    Messages do not pass through this consumer: once admitted, its :class:`Outbox` joins the
    process's fan-out hub, which also relays the rare ``group_send`` events (archiving,
    revocation) sent to the network's group and the person's group.
    """

    # No channel of its own (documented: no layer under this alias means none): the hub is
    # the process's member of the groups, so a listener costs no Redis subscription, queue
    # or waiting task.
    channel_layer_alias = None
    network: NetworkInfo | None = None
    user_id: int | None = None
    outbox: Outbox | None = None

    async def connect(self) -> None:
        slug = self.scope["url_route"]["kwargs"]["slug"]
        network = await anetwork_get_by_slug(slug=slug)
        if network is None or network.archived:
            await self.close()  # before accept: the server answers HTTP 403
            return
        self._inbound: list[float] = []
        self.connection_id = uuid.uuid4().hex
        subprotocol = SUBPROTOCOL if SUBPROTOCOL in self.scope.get("subprotocols", []) else None
        if not network.is_public:
            refusal = await self._authorize(network)
            if refusal is not None:
                # Accept first so the client can read the reason in the close code.
                await self.accept(subprotocol)
                await self.close(code=refusal)
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
        await self.accept(subprotocol)
        since = self.query.get("since", [""])[0]
        replayed = await self._replay(network, int(since)) if since.isdigit() else None
        self.outbox.end_replay(last_replayed=replayed)

    async def _replay(self, network: NetworkInfo, since: int) -> int:
        """Send what was published after ``since`` from history, with a gap frame if needed;
        returns the last seq sent."""
        entries, oldest = await ahistory_since(
            network_id=network.id, since=since, max_age_seconds=network.history_max_age_seconds
        )
        if oldest is not None and oldest > since + 1:
            event = gap_event(missed=oldest - since - 1, from_seq=since + 1, to_seq=oldest - 1)
            await self.base_send(event)
        last = since
        for seq, ts, frame in entries:
            if self.outbox.envelope:
                frame = envelope_text(seq=seq, ts=ts, network=network.slug, frame=frame)
            await self.base_send(text_event(frame))
            last = seq
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
            raw = await adatabase_call(exchange_personal_token, raw)
            if raw is None:
                return CLOSE_UNAUTHENTICATED
        try:
            token = read_entitlement_token(raw)
        except TokenExpired:
            return CLOSE_TOKEN_EXPIRED
        except TokenInvalid:
            return CLOSE_UNAUTHENTICATED
        epoch = await aentitlement_epoch(token.user_id)
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
        self.user_id = token.user_id
        return None

    async def disconnect(self, code: int) -> None:
        if self.outbox is not None:
            await hub.leave(self.network.id, self.outbox)
            box = self.outbox
            if box.dropped or box.conflated:
                logger.info(
                    "a lagging listener of %s left: %d delivered, %d dropped, %d conflated",
                    self.network.slug, box.delivered, box.dropped, box.conflated,
                )  # fmt: skip
        if self.user_id is not None:
            await connection_release(
                user_id=self.user_id, network_id=self.network.id, connection=self.connection_id
            )

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # Never broadcast what a listener sends; close it if it keeps sending.
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
