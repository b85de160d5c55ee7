"""Reads for the publish and listen paths, served from cache so they cost no database query.

Entries are dropped by ``networks.signals`` whenever the underlying rows change (revocation
included): at once in the process that made the change, within
``PUBLISH_LOCAL_CACHE_SECONDS`` in every other one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.db.models import QuerySet

from accounts.models import Membership
from accounts.tokens import PUBLISHER_KEY, hash_secret

from . import key_failures
from .lookup_cache import acached_lookup, cached_lookup, local_get
from .models import ApiKey, KeyScope, Network


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    id: int
    slug: str
    organization_id: int
    is_public: bool
    archived: bool = False
    max_message_bytes: int | None = None
    history_max_messages: int = 1000
    history_max_age_seconds: int = 24 * 3600
    backpressure: str = "conflate"
    backpressure_buffer: int = 100

    @property
    def group_name(self) -> str:
        """The channel-layer group its listeners join."""
        return f"network.{self.id}"


@dataclass(frozen=True, slots=True)
class PublisherKey:
    id: int
    organization_id: int
    prefix: str
    network_ids: frozenset[int]
    scopes: frozenset[str] = frozenset({KeyScope.PUBLISH})
    expires_at: float | None = None  # epoch seconds
    rate_per_second: int | None = None  # None: settings.PUBLISH_RATE_PER_SECOND

    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= time.time()

    def may_publish_to(self, network: NetworkInfo) -> bool:
        return (
            KeyScope.PUBLISH in self.scopes
            and network.organization_id == self.organization_id
            and network.id in self.network_ids
        )


def api_key_cache_key(hashed_secret: str) -> str:
    return f"publish:apikey:{hashed_secret}"


def network_cache_key(slug: str) -> str:
    return f"publish:network:{slug}"


def _load_publisher_key(hashed: str) -> PublisherKey | None:
    api_key = (
        ApiKey.objects.filter(hashed_secret=hashed, revoked_at__isnull=True)
        .only("id", "organization_id", "prefix", "scopes", "expires_at", "rate_limit_per_second")
        .first()
    )
    if api_key is None:
        return None
    # Only networks of the key's own organization count, whatever the link table says.
    network_ids = api_key.networks.filter(organization_id=api_key.organization_id).values_list(
        "id", flat=True
    )
    return PublisherKey(
        id=api_key.id,
        organization_id=api_key.organization_id,
        prefix=api_key.prefix,
        network_ids=frozenset(network_ids),
        scopes=frozenset(api_key.scopes),
        expires_at=api_key.expires_at.timestamp() if api_key.expires_at else None,
        rate_per_second=api_key.rate_limit_per_second,
    )


def _load_network(slug: str) -> NetworkInfo | None:
    network = Network.objects.filter(slug=slug).first()
    if network is None:
        return None
    return NetworkInfo(
        id=network.id,
        slug=network.slug,
        organization_id=network.organization_id,
        is_public=network.is_public,
        archived=network.is_archived,
        max_message_bytes=network.max_message_bytes,
        history_max_messages=network.history_max_messages,
        history_max_age_seconds=network.history_max_age_seconds,
        backpressure=network.backpressure,
        backpressure_buffer=network.backpressure_buffer,
    )


def publisher_key_get(*, raw_key: str) -> PublisherKey | None:
    """The active, unexpired key matching ``raw_key``, or None. No query on a cache hit."""
    if PUBLISHER_KEY.claims(raw_key) and not PUBLISHER_KEY.is_valid(raw_key):
        return None  # a typo or a forgery: no lookup
    hashed = hash_secret(raw_key)
    key = cached_lookup(api_key_cache_key(hashed), lambda: _load_publisher_key(hashed))
    return None if key is None or key.is_expired() else key


async def apublisher_key_get(*, raw_key: str, client: str | None = None) -> PublisherKey | None:
    """``publisher_key_get`` for async code; no I/O when this process has the answer.

    ``client``, the caller's address, makes a lookup raise TooManyFailedKeys instead once
    the address is past its limit of refused keys (a key recently seen valid still answers).
    The caller counts a None answer with ``key_failures.arecord_failure``.
    """
    hashed = hash_secret(raw_key)
    cache_key = api_key_cache_key(hashed)
    hit, key = local_get(cache_key)
    if not (hit and key is not None):
        # A key in use is looked up whatever its address's refusals: no NAT neighbour of a
        # misconfigured generator is stopped.
        guarded = None if key_failures.recently_valid(hashed) else client
        key_failures.raise_if_blocked_here(guarded)
        if hit or (PUBLISHER_KEY.claims(raw_key) and not PUBLISHER_KEY.is_valid(raw_key)):
            return None  # refused a moment ago, or a typo or a forgery: no lookup

        def load() -> PublisherKey | None:
            key_failures.check_before_lookup(guarded)
            return _load_publisher_key(hashed)

        key = await acached_lookup(cache_key, load)
        if key is not None:
            # Refreshed about once a process-tier lifetime, not on every publish.
            key_failures.seen_valid(hashed)
    return None if key is None or key.is_expired() else key


SLUG_MAX_LENGTH = Network._meta.get_field("slug").max_length


def could_be_slug(slug: str) -> bool:
    """Whether some network could have ``slug``: none can hold a NUL (PostgreSQL text refuses
    it: looking one up would be a server error) or be longer than the column."""
    return 0 < len(slug) <= SLUG_MAX_LENGTH and "\x00" not in slug


def network_get_by_slug(*, slug: str) -> NetworkInfo | None:
    """The network with ``slug``, or None. No database query on a cache hit."""
    if not could_be_slug(slug):
        return None
    return cached_lookup(network_cache_key(slug), lambda: _load_network(slug))


async def anetwork_get_by_slug(*, slug: str) -> NetworkInfo | None:
    """``network_get_by_slug`` for async code; no I/O when this process has the answer."""
    if not could_be_slug(slug):
        return None
    return await acached_lookup(network_cache_key(slug), lambda: _load_network(slug))


# --- Tenant-checked reads for the management API and dashboard ---------------------------


def is_member(*, user_id: int, organization_id: int) -> bool:
    """Whether the person belongs to the organization (any role)."""
    return Membership.objects.filter(user_id=user_id, organization_id=organization_id).exists()


def networks_of(*, organization_id: int) -> QuerySet[Network]:
    return Network.objects.filter(organization_id=organization_id)


def network_get_for_org(*, organization_id: int, slug: str) -> Network:
    """The organization's network ``slug``; Network.DoesNotExist otherwise (also if foreign)."""
    if not could_be_slug(slug):
        raise Network.DoesNotExist
    return Network.objects.get(organization_id=organization_id, slug=slug)


def api_keys_of(*, organization_id: int) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(organization_id=organization_id).prefetch_related("networks")


def api_key_get_for_org(*, organization_id: int, key_id: int) -> ApiKey:
    """The organization's key ``key_id``; ApiKey.DoesNotExist otherwise (also if foreign)."""
    return api_keys_of(organization_id=organization_id).get(pk=key_id)
