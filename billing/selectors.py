"""Reads about subscriptions and revenue for the portal's dashboards."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db.models import Count, QuerySet, Sum

from accounts.models import User

from .entitlement import ENTITLING
from .models import Customer, Interval, Subscription, SubscriptionStatus

# Statuses that still bring money in (past_due is in its grace period, and may pay).
PAYING = (*ENTITLING, SubscriptionStatus.PAST_DUE)


@dataclass
class NetworkRevenue:
    """Subscribers of a paid network and its monthly recurring revenue, per currency."""

    subscribers: int = 0
    monthly_cents: dict[str, int] = field(default_factory=dict)

    @property
    def monthly(self) -> list[tuple[str, int]]:
        """``[(currency, cents), ...]`` sorted by currency, for templates."""
        return sorted(self.monthly_cents.items())


def subscriptions_of(*, user: User) -> QuerySet[Subscription]:
    """The person's subscriptions, newest first, with their network, provider and price."""
    return Subscription.objects.filter(user=user).select_related("network__organization", "price")


def is_stripe_customer(*, user: User) -> bool:
    """Whether the Customer Portal has anything to show this person."""
    return Customer.objects.filter(user=user).exists()


def revenue_by_network(*, network_ids: Iterable[int]) -> dict[int, NetworkRevenue]:
    """Network id → subscribers and monthly recurring revenue (yearly prices count 1/12).

    One grouped query whatever the number of networks; admin-granted subscriptions count as
    subscribers but bring no revenue (they have no price).
    """
    ids = list(network_ids)
    result: dict[int, NetworkRevenue] = defaultdict(NetworkRevenue)
    rows = (
        Subscription.objects.filter(network_id__in=ids, status__in=PAYING)
        .values("network_id", "price__currency", "price__interval")
        .annotate(subscribers=Count("user_id", distinct=True), cents=Sum("price__amount"))
    )
    for row in rows:
        revenue = result[row["network_id"]]
        revenue.subscribers += row["subscribers"]
        if row["cents"]:
            yearly = row["price__interval"] == Interval.YEAR
            monthly = round(row["cents"] / 12) if yearly else row["cents"]
            currency = row["price__currency"]
            revenue.monthly_cents[currency] = revenue.monthly_cents.get(currency, 0) + monthly
    return {network_id: result[network_id] for network_id in ids}
