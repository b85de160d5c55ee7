"""Writes: networks, publisher keys, and the publish service every entry point shares."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Organization, User
from accounts.tokens import PUBLISHER_KEY, hash_secret
from katiedj import strict_json

from . import key_failures
from .accounting import RateLimited, aadmit_publish, admit_publish
from .models import ApiKey, KeyScope, Network
from .selectors import NetworkInfo, PublisherKey, anetwork_get_by_slug, apublisher_key_get

# --- Networks and keys ------------------------------------------------------------------


NETWORK_EDITABLE_FIELDS = (
    "name",
    "description",
    "is_public",
    "max_message_bytes",
    "history_max_messages",
    "history_max_age_seconds",
    "backpressure",
    "backpressure_buffer",
)


def network_create(
    *,
    organization: Organization,
    slug: str,
    name: str = "",
    description: str = "",
    is_public: bool = True,
    **fields: Any,
) -> Network:
    """Create a network after validating its fields (ValidationError on a bad or taken slug).

    ``fields`` are any of the other editable fields (``NETWORK_EDITABLE_FIELDS``).
    """
    unknown = set(fields) - set(NETWORK_EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"Not settable: {', '.join(sorted(unknown))}")
    network = Network(
        organization=organization,
        slug=slug,
        name=name or slug,
        description=description,
        is_public=is_public,
        **fields,
    )
    network.full_clean()
    network.save()
    return network


def network_update(*, network: Network, **changes: Any) -> Network:
    """Update editable fields (the slug is permanent: listeners and generators use it)."""
    unknown = set(changes) - set(NETWORK_EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"Not editable: {', '.join(sorted(unknown))}")
    for field, value in changes.items():
        setattr(network, field, value)
    network.full_clean()
    network.save()
    return network


def network_archive(*, network: Network) -> Network:
    """Archive: publishes get 409 and every listener is closed (code 4410) on every process."""
    if network.archived_at is None:
        network.archived_at = timezone.now()
        network.save(update_fields=["archived_at", "updated_at"])
        group = f"network.{network.pk}"
        transaction.on_commit(
            lambda: async_to_sync(get_channel_layer().group_send)(
                group, {"type": "network.archived"}
            )
        )
    return network


def network_unarchive(*, network: Network) -> Network:
    if network.archived_at is not None:
        network.archived_at = None
        network.save(update_fields=["archived_at", "updated_at"])
    return network


# How long a rotated key keeps working, so generators can be redeployed with the new one.
DEFAULT_ROTATION_GRACE = timedelta(hours=24)


@transaction.atomic
def api_key_create(
    *,
    organization: Organization,
    name: str,
    networks: list[Network],
    raw_key: str | None = None,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
    created_by: User | None = None,
    rate_limit_per_second: int | None = None,
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
    scopes = list(dict.fromkeys(scopes or [KeyScope.PUBLISH]))
    if not scopes or any(scope not in KeyScope.values for scope in scopes):
        raise ValueError(f"Scopes must be among: {', '.join(KeyScope.values)}")
    api_key = ApiKey.objects.create(
        organization=organization,
        name=name,
        prefix=PUBLISHER_KEY.display_prefix(raw_key),
        hashed_secret=hash_secret(raw_key),
        scopes=scopes,
        expires_at=expires_at,
        created_by=created_by,
        rate_limit_per_second=rate_limit_per_second,
    )
    api_key.networks.set(networks)
    return api_key, raw_key


@transaction.atomic
def api_key_rotate(
    *, api_key: ApiKey, grace: timedelta = DEFAULT_ROTATION_GRACE, created_by: User | None = None
) -> tuple[ApiKey, str]:
    """A new key with the same name, networks and scopes; the old one expires after ``grace``."""
    if not api_key.is_active:
        raise ValueError("Only an active key can be rotated.")
    new_key, secret = api_key_create(
        organization=api_key.organization,
        name=api_key.name,
        networks=list(api_key.networks.all()),
        scopes=list(api_key.scopes),
        expires_at=api_key.expires_at,
        created_by=created_by,
    )
    grace_end = timezone.now() + grace
    api_key.expires_at = min(api_key.expires_at or grace_end, grace_end)
    api_key.replaced_by = new_key
    api_key.save(update_fields=["expires_at", "replaced_by"])
    return new_key, secret


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key; the publish path stops accepting it as soon as this commits."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


# --- Publish ----------------------------------------------------------------------------


class PublishError(Exception):
    """A rejected publish: ``code`` is stable for clients, ``message`` the original text.

    One subclass per kind, and a new instance per rejection: an instance raised again and
    again chains every raise's frames (request bodies included) onto its one
    ``__traceback__`` and keeps them alive for the life of the process.
    """

    code = "invalid"
    message = ""
    status = 400
    # The original contract's text when it differs from ``message``.
    legacy_message: str | None = None
    retry_after: float | None = None  # seconds; sent as Retry-After

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)


# The original Katie DJ error strings, kept byte for byte.
class ApiKeyMissing(PublishError):
    code, message = "api_key_missing", "API-KEY missing in headers"


class ApiKeyInvalid(PublishError):
    code, message = "api_key_invalid", "API-KEY not valid"


class NotJSON(PublishError):
    code, message = "invalid_json", "POST data is not JSON"


class JSONTooDeep(NotJSON):
    code, legacy_message = "json_too_deep", NotJSON.message

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"JSON nested deeper than {max_depth} levels")


class NetworkMissing(PublishError):
    code, message = "network_missing", "*network* key missing"


class NetworkForbidden(PublishError):
    code, message, status = "network_forbidden", "You cannot broadcast to this channel", 403


class NetworkArchived(PublishError):
    code, message, status = "network_archived", "This network is archived", 409


class DataMissing(PublishError):
    code, message = "data_missing", "*data* key missing"


class DataNotObject(PublishError):
    code, message = "data_not_object", "Can only broadcast json data"


class PayloadTooLargeError(PublishError):
    code, status = "payload_too_large", 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"Payload too large: the limit is {limit} bytes")


class RateLimitedError(PublishError):
    code, message, status = (
        "rate_limited",
        "Too many messages: slow down and retry after a moment",
        429,
    )

    def __init__(self, retry_after: float) -> None:
        super().__init__()
        self.retry_after = retry_after


class TooManyFailedKeysError(PublishError):
    code, message, status = (
        "too_many_failed_keys",
        "Too many invalid API keys from this address: retry later",
        429,
    )

    def __init__(self, retry_after: float) -> None:
        super().__init__()
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class PublishedMessage:
    network: str
    seq: int
    ts: str
    frame: str  # ``data`` serialized once; every listener gets these exact characters
    epoch: str = ""  # the numbering ``seq`` belongs to (docs/protocol.md, "Epochs")

    def receipt(self, *, with_epoch: bool = False) -> dict[str, Any]:
        """The publish answer; the legacy path's stays byte for byte the original one."""
        receipt = {"message": "OK", "network": self.network, "seq": self.seq, "ts": self.ts}
        if with_epoch:
            receipt["epoch"] = self.epoch
        return receipt


class PayloadTooLarge(Exception):
    """Raised by a body reader that stopped reading at ``PUBLISH_MAX_BYTES``."""


async def publish_request(
    *,
    raw_key: str | None,
    read_body: Callable[[int], Awaitable[bytes]],
    content_length: int | None = None,
    network_slug: str | None = None,
    client: str | None = None,
) -> PublishedMessage:
    """Check and publish one HTTP publish request, in the original contract's order of checks.

    ``read_body(limit)`` is awaited only once the key is valid and the declared length fits;
    it raises PayloadTooLarge past ``limit`` bytes. ``network_slug`` comes from the URL on the
    REST path, else from the body's ``network``. ``client`` is the caller's address: its
    refused keys are counted (``key_failures``). Raises PublishError; a rejected publish
    reaches no listener. No database query and no thread hop once the caches are warm.
    """
    if not raw_key:
        raise ApiKeyMissing()
    try:
        publisher = await apublisher_key_get(raw_key=raw_key, client=client)
        if publisher is None:
            await key_failures.arecord_failure(client)
            raise ApiKeyInvalid()
    except key_failures.TooManyFailedKeys as blocked:
        raise TooManyFailedKeysError(blocked.retry_after) from None
    limit = settings.PUBLISH_MAX_BYTES
    if content_length is not None and content_length > limit:
        raise PayloadTooLargeError(limit)
    try:
        body = await read_body(limit)
    except PayloadTooLarge:
        raise PayloadTooLargeError(limit) from None
    try:
        payload = strict_json.loads(body)
    except strict_json.JSONTooDeep as too_deep:
        raise JSONTooDeep(too_deep.max_depth) from None
    except strict_json.InvalidJSON:
        raise NotJSON() from None
    if not isinstance(payload, dict):
        raise NotJSON()
    if network_slug is None:
        if "network" not in payload:
            raise NetworkMissing()
        network_slug = payload["network"]
    network = None
    if isinstance(network_slug, str):
        network = await anetwork_get_by_slug(slug=network_slug)
    # The same answer whether the network exists or belongs to someone else: no enumeration.
    if network is None or not publisher.may_publish_to(network):
        raise NetworkForbidden()
    if network.archived:
        raise NetworkArchived()
    if network.max_message_bytes is not None and len(body) > network.max_message_bytes:
        raise PayloadTooLargeError(network.max_message_bytes)
    if "data" not in payload:
        raise DataMissing()
    return await amessage_publish(
        network=network, data=payload["data"], publisher=publisher, nbytes=len(body)
    )


def _serialize_data(data: Any) -> str:
    if not isinstance(data, dict):
        raise DataNotObject()
    # allow_nan=False: a sync caller's NaN or inf raises here rather than reach a listener
    # as Infinity, which is not JSON (the publish endpoints refuse them on input already).
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _server_timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def envelope_text(*, seq: int, epoch: str, ts: str, network: str, frame: str) -> str:
    """The envelope format, built around an already serialized frame."""
    return (
        f'{{"seq":{seq},"epoch":"{epoch}","ts":"{ts}","network":{json.dumps(network)},'
        f'"data":{frame}}}'
    )


async def amessage_publish(
    *,
    network: NetworkInfo,
    data: Any,
    publisher: PublisherKey | None = None,
    nbytes: int | None = None,
) -> PublishedMessage:
    """Sequence, timestamp, serialize once, store in history and fan ``data`` out.

    Counts usage (``nbytes``, default the frame's size) and, for a ``publisher``, takes a
    rate-limit token: PublishError 429 when the key is over its limit.
    """
    frame = _serialize_data(data)
    ts = _server_timestamp()
    try:
        admitted = await aadmit_publish(
            network=network,
            publisher=publisher,
            nbytes=nbytes or len(frame.encode()),
            frame=frame,
            ts=ts,
        )
    except RateLimited as limited:
        raise RateLimitedError(limited.retry_after) from None
    # The accounting script also PUBLISHed it: every server process's listeners get it from
    # their process's fan-out hub (streaming.fanout), in seq order.
    return PublishedMessage(
        network=network.slug, seq=admitted.seq, ts=ts, frame=frame, epoch=admitted.epoch.id
    )


def message_publish(*, network: NetworkInfo, data: Any) -> PublishedMessage:
    """``amessage_publish`` for sync callers (tasks, commands): no key, so no rate limit."""
    frame = _serialize_data(data)
    ts = _server_timestamp()
    admitted = admit_publish(
        network=network, publisher=None, nbytes=len(frame.encode()), frame=frame, ts=ts
    )
    return PublishedMessage(
        network=network.slug, seq=admitted.seq, ts=ts, frame=frame, epoch=admitted.epoch.id
    )
