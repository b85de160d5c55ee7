"""Writes: networks, publisher keys, and the publish service every entry point shares."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Organization
from accounts.tokens import PUBLISHER_KEY, hash_secret

from .models import ApiKey, Network
from .selectors import NetworkInfo, anetwork_get_by_slug, apublisher_key_get
from .sequence import anext_sequence, next_sequence

# --- Networks and keys ------------------------------------------------------------------


def network_create(
    *,
    organization: Organization,
    slug: str,
    name: str = "",
    description: str = "",
    is_public: bool = True,
) -> Network:
    """Create a network after validating its fields (ValidationError on a bad or taken slug)."""
    network = Network(
        organization=organization,
        slug=slug,
        name=name or slug,
        description=description,
        is_public=is_public,
    )
    network.full_clean()
    network.save()
    return network


@transaction.atomic
def api_key_create(
    *,
    organization: Organization,
    name: str,
    networks: list[Network],
    raw_key: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a key scoped to ``networks`` of ``organization``; return it and its secret.

    The secret is returned only here. ``raw_key`` imports an existing string (an original
    Katie DJ key, the demo key) instead of generating one.
    """
    foreign = [n.slug for n in networks if n.organization_id != organization.id]
    if foreign:
        raise ValueError(f"Networks not owned by {organization.slug}: {', '.join(foreign)}")
    if raw_key is None:
        raw_key = PUBLISHER_KEY.generate()
    elif not raw_key or (PUBLISHER_KEY.claims(raw_key) and not PUBLISHER_KEY.is_valid(raw_key)):
        raise ValueError(
            "An imported key must be a non-empty string (and well formed if it starts with kdj_)."
        )
    api_key = ApiKey.objects.create(
        organization=organization,
        name=name,
        prefix=PUBLISHER_KEY.display_prefix(raw_key),
        hashed_secret=hash_secret(raw_key),
    )
    api_key.networks.set(networks)
    return api_key, raw_key


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key; the publish path stops accepting it as soon as this commits."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


# --- Publish ----------------------------------------------------------------------------


class PublishError(Exception):
    """A rejected publish. ``code`` is stable for clients; ``message`` is the original text."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


# The original Katie DJ error strings, kept byte for byte.
ERR_KEY_MISSING = PublishError("api_key_missing", "API-KEY missing in headers", 400)
ERR_KEY_INVALID = PublishError("api_key_invalid", "API-KEY not valid", 400)
ERR_NOT_JSON = PublishError("invalid_json", "POST data is not JSON", 400)
ERR_NETWORK_MISSING = PublishError("network_missing", "*network* key missing", 400)
ERR_FORBIDDEN = PublishError("network_forbidden", "You cannot broadcast to this channel", 403)
ERR_DATA_MISSING = PublishError("data_missing", "*data* key missing", 400)
ERR_DATA_NOT_OBJECT = PublishError("data_not_object", "Can only broadcast json data", 400)


def _payload_too_large(limit: int) -> PublishError:
    return PublishError("payload_too_large", f"Payload too large: the limit is {limit} bytes", 413)


@dataclass(frozen=True, slots=True)
class PublishedMessage:
    network: str
    seq: int
    ts: str
    frame: str  # ``data`` serialized once; every listener gets these exact characters

    def receipt(self) -> dict[str, Any]:
        return {"message": "OK", "network": self.network, "seq": self.seq, "ts": self.ts}


def _reject_constant(name: str) -> None:
    # NaN and Infinity are not JSON; browsers' JSON.parse would choke on the frame.
    raise ValueError(name)


class PayloadTooLarge(Exception):
    """Raised by a body reader that stopped reading at ``PUBLISH_MAX_BYTES``."""


async def publish_request(
    *,
    raw_key: str | None,
    read_body: Callable[[int], Awaitable[bytes]],
    content_length: int | None = None,
    network_slug: str | None = None,
) -> PublishedMessage:
    """Check and publish one HTTP publish request, in the original contract's order of checks.

    ``read_body(limit)`` is awaited only once the key is valid and the declared length fits;
    it raises PayloadTooLarge past ``limit`` bytes. ``network_slug`` comes from the URL on the
    REST path, else from the body's ``network``. Raises PublishError; a rejected publish
    reaches no listener. No database query and no thread hop once the caches are warm.
    """
    if not raw_key:
        raise ERR_KEY_MISSING
    publisher = await apublisher_key_get(raw_key=raw_key)
    if publisher is None:
        raise ERR_KEY_INVALID
    limit = settings.PUBLISH_MAX_BYTES
    if content_length is not None and content_length > limit:
        raise _payload_too_large(limit)
    try:
        body = await read_body(limit)
    except PayloadTooLarge:
        raise _payload_too_large(limit) from None
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ERR_NOT_JSON from None
    if not isinstance(payload, dict):
        raise ERR_NOT_JSON
    if network_slug is None:
        if "network" not in payload:
            raise ERR_NETWORK_MISSING
        network_slug = payload["network"]
    network = None
    if isinstance(network_slug, str):
        network = await anetwork_get_by_slug(slug=network_slug)
    # The same answer whether the network exists or belongs to someone else: no enumeration.
    if network is None or not publisher.may_publish_to(network):
        raise ERR_FORBIDDEN
    if "data" not in payload:
        raise ERR_DATA_MISSING
    return await amessage_publish(network=network, data=payload["data"])


def _serialize_data(data: Any) -> str:
    if not isinstance(data, dict):
        raise ERR_DATA_NOT_OBJECT
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _server_timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _fan_out_event(message: PublishedMessage) -> dict[str, Any]:
    return {"type": "network.message", "frame": message.frame, "seq": message.seq, "ts": message.ts}


async def amessage_publish(*, network: NetworkInfo, data: Any) -> PublishedMessage:
    """Sequence, timestamp, serialize once and fan ``data`` out to the network's listeners."""
    frame = _serialize_data(data)
    message = PublishedMessage(
        network=network.slug,
        seq=await anext_sequence(network.id),
        ts=_server_timestamp(),
        frame=frame,
    )
    # One group_send: with Redis, one PUBLISH reaches every server process's listeners.
    await get_channel_layer().group_send(network.group_name, _fan_out_event(message))
    return message


def message_publish(*, network: NetworkInfo, data: Any) -> PublishedMessage:
    """``amessage_publish`` for sync callers (tasks, commands)."""
    frame = _serialize_data(data)
    message = PublishedMessage(
        network=network.slug, seq=next_sequence(network.id), ts=_server_timestamp(), frame=frame
    )
    async_to_sync(get_channel_layer().group_send)(network.group_name, _fan_out_event(message))
    return message
