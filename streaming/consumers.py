"""WebSocket consumers: listeners of a network receive each published ``data`` frame."""

from __future__ import annotations

import logging
import time
from typing import Any

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from networks.selectors import NetworkInfo, network_get_by_slug

logger = logging.getLogger(__name__)

# Documented close codes (docs/streaming.md).
CLOSE_POLICY_VIOLATION = 1008  # the listener talked too much
CLOSE_NETWORK_ARCHIVED = 4410  # the provider archived the network

# Listeners cannot talk; a few stray frames are ignored, a stream of them is abuse.
INBOUND_FRAMES_ALLOWED = 20
INBOUND_WINDOW_SECONDS = 10.0


class NetworkListenerConsumer(AsyncWebsocketConsumer):
    """One listener of one network. Rejects the handshake for an unknown or paid network."""

    network: NetworkInfo | None = None

    async def connect(self) -> None:
        slug = self.scope["url_route"]["kwargs"]["slug"]
        network = await sync_to_async(network_get_by_slug)(slug=slug)
        if network is None or network.archived or not network.is_public:
            # Closing before accept makes the server answer the handshake with HTTP 403.
            # Paid networks are refused until entitlement checks exist.
            await self.close()
            return
        self.network = network
        self._inbound: list[float] = []
        await self.channel_layer.group_add(network.group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.network is not None:
            await self.channel_layer.group_discard(self.network.group_name, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # Never broadcast what a listener sends; close it if it keeps sending.
        now = time.monotonic()
        self._inbound = [t for t in self._inbound if now - t < INBOUND_WINDOW_SECONDS]
        self._inbound.append(now)
        if len(self._inbound) > INBOUND_FRAMES_ALLOWED:
            logger.info("closing a chatty listener of %s", self.network and self.network.slug)
            await self.close(code=CLOSE_POLICY_VIOLATION)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # The hot path: relay the pre-serialized frame. It touches no database, so it skips
        # the base class's per-message closing of stale DB connections (a thread hop).
        if message["type"] == "network.message":
            await self.network_message(message)
        else:
            await super().dispatch(message)

    async def network_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["frame"])

    async def network_archived(self, event: dict[str, Any]) -> None:
        await self.close(code=CLOSE_NETWORK_ARCHIVED)
