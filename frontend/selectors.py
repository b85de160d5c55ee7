"""Reads behind the portal's public pages and dashboards (one query per kind of row)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from django.db.models import Count, Prefetch, Q, QuerySet
from django.db.models.functions import Lower
from django.utils import timezone

from accounts.models import Organization
from billing.models import Price
from networks.models import Network, UsageHour

Access = Literal["", "free", "paid"]


def live_networks() -> QuerySet[Network]:
    """Networks anyone may find: not archived, with their provider and active prices."""
    return (
        Network.objects.filter(archived_at__isnull=True)
        .select_related("organization")
        .prefetch_related(
            Prefetch(
                "prices",
                queryset=Price.objects.filter(active=True).order_by("amount"),
                to_attr="active_prices",
            )
        )
    )


def catalogue_networks(*, q: str = "", access: Access = "", provider: str = "") -> QuerySet:
    """The catalogue: search name, slug, description and provider; filter by access and
    provider slug. Free networks first, then by name."""
    networks = live_networks()
    q = q.strip()
    if q:
        networks = networks.filter(
            Q(name__icontains=q)
            | Q(slug__icontains=q)
            | Q(description__icontains=q)
            | Q(organization__name__icontains=q)
        )
    if access == "free":
        networks = networks.filter(is_public=True)
    elif access == "paid":
        networks = networks.filter(is_public=False)
    if provider:
        networks = networks.filter(organization__slug=provider)
    return networks.order_by("-is_public", Lower("name"), "slug")


def catalogue_providers() -> QuerySet[Organization]:
    """Organizations with at least one live network, for the provider filter."""
    return (
        Organization.objects.annotate(
            live=Count("networks", filter=Q(networks__archived_at__isnull=True))
        )
        .filter(live__gt=0)
        .order_by(Lower("name"))
    )


def featured_networks(*, limit: int = 6) -> list[Network]:
    """A few networks for the landing page: free ones first (anyone can try them)."""
    return list(live_networks().order_by("-is_public", Lower("name"))[:limit])


@dataclass(frozen=True)
class HourUsage:
    hour: datetime
    messages: int
    bytes: int


@dataclass(frozen=True)
class Usage:
    hours: list[HourUsage]  # oldest first, zeros kept
    by_network: dict[int, dict[str, int]]  # network id → {"messages", "bytes"} in the window

    def of(self, network_id: int) -> dict[str, int]:
        """``{"messages", "bytes"}`` of one network in the window (zeros if it was silent)."""
        return self.by_network.get(network_id, {"messages": 0, "bytes": 0})


def usage_window(*, network_ids: Iterable[int], hours: int = 24) -> Usage:
    """Messages and bytes over the last ``hours`` whole hours, per hour and per network.

    One query (a row per network and hour), so a page's chart and its per-network totals
    always cover the same hours.
    """
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    start = now - timedelta(hours=hours - 1)
    rows = UsageHour.objects.filter(network_id__in=list(network_ids), hour__gte=start).values_list(
        "network_id", "hour", "messages", "bytes"
    )
    per_hour: dict[datetime, list[int]] = {}
    by_network: dict[int, dict[str, int]] = {}
    for network_id, hour, messages, size in rows:
        slot = per_hour.setdefault(hour, [0, 0])
        slot[0] += messages
        slot[1] += size
        totals = by_network.setdefault(network_id, {"messages": 0, "bytes": 0})
        totals["messages"] += messages
        totals["bytes"] += size
    series = []
    for i in range(hours):
        hour = start + timedelta(hours=i)
        messages, size = per_hour.get(hour, (0, 0))
        series.append(HourUsage(hour, messages, size))
    return Usage(hours=series, by_network=by_network)
