"""Reads behind the portal's public pages and dashboards (one query per kind of row)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from django.db.models import Count, Prefetch, Q, QuerySet, Sum
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


def usage_by_hour(*, network_ids: Iterable[int], hours: int = 24) -> list[HourUsage]:
    """Messages and bytes per hour over the last ``hours`` hours (oldest first, zeros kept)."""
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    start = now - timedelta(hours=hours - 1)
    rows = (
        UsageHour.objects.filter(network_id__in=list(network_ids), hour__gte=start)
        .values("hour")
        .annotate(messages=Sum("messages"), bytes=Sum("bytes"))
    )
    by_hour = {row["hour"]: row for row in rows}
    series = []
    for i in range(hours):
        hour = start + timedelta(hours=i)
        row = by_hour.get(hour, {})
        series.append(HourUsage(hour, row.get("messages") or 0, row.get("bytes") or 0))
    return series


def usage_totals(*, network_ids: Iterable[int], since: datetime) -> dict[int, dict]:
    """Network id → {"messages", "bytes"} published since ``since``."""
    rows = (
        UsageHour.objects.filter(network_id__in=list(network_ids), hour__gte=since)
        .values("network_id")
        .annotate(messages=Sum("messages"), bytes=Sum("bytes"))
    )
    return {row["network_id"]: row for row in rows}
