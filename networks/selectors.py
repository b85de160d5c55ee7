"""Reads for the publish and listen paths, served from cache so they cost no database query.

Entries are deleted by ``networks.signals`` whenever the underlying rows change (revocation
included), so a revoked key stops working on every process at the next publish.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from . import keys
from .lookup_cache import lookup_cache
from .models import ApiKey, Network

# A miss is cached too, so a flood of bad keys or slugs does not reach the database.
_MISSING = "missing"
_MISS_TTL_SECONDS = 30


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    id: int
    slug: str
    organization_id: int
    is_public: bool

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

    def may_publish_to(self, network: NetworkInfo) -> bool:
        return network.organization_id == self.organization_id and network.id in self.network_ids


def api_key_cache_key(hashed_secret: str) -> str:
    return f"publish:apikey:{hashed_secret}"


def network_cache_key(slug: str) -> str:
    return f"publish:network:{slug}"


def publisher_key_get(*, raw_key: str) -> PublisherKey | None:
    """The active key matching ``raw_key``, or None. No database query on a cache hit."""
    if not keys.is_well_formed(raw_key):
        return None
    hashed = keys.hash_key(raw_key)
    cache_key = api_key_cache_key(hashed)
    cache = lookup_cache()
    cached = cache.get(cache_key)
    if cached == _MISSING:
        return None
    if cached is not None:
        return cached
    api_key = (
        ApiKey.objects.filter(hashed_secret=hashed, revoked_at__isnull=True)
        .only("id", "organization_id", "prefix")
        .first()
    )
    if api_key is None:
        cache.set(cache_key, _MISSING, _MISS_TTL_SECONDS)
        return None
    network_ids = api_key.networks.filter(organization_id=api_key.organization_id).values_list(
        "id", flat=True
    )
    publisher = PublisherKey(
        id=api_key.id,
        organization_id=api_key.organization_id,
        prefix=api_key.prefix,
        network_ids=frozenset(network_ids),
    )
    cache.set(cache_key, publisher, settings.PUBLISH_LOOKUP_CACHE_SECONDS)
    return publisher


def network_get_by_slug(*, slug: str) -> NetworkInfo | None:
    """The network with ``slug``, or None. No database query on a cache hit."""
    cache_key = network_cache_key(slug)
    cache = lookup_cache()
    cached = cache.get(cache_key)
    if cached == _MISSING:
        return None
    if cached is not None:
        return cached
    network = Network.objects.filter(slug=slug).only("id", "slug", "organization_id", "is_public")
    row = network.first()
    if row is None:
        cache.set(cache_key, _MISSING, _MISS_TTL_SECONDS)
        return None
    info = NetworkInfo(
        id=row.id, slug=row.slug, organization_id=row.organization_id, is_public=row.is_public
    )
    cache.set(cache_key, info, settings.PUBLISH_LOOKUP_CACHE_SECONDS)
    return info
