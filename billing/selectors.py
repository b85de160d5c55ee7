"""Reads about subscriptions and revenue for the portal's dashboards."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncMonth
from django.utils import timezone

from accounts.models import User

from .entitlement import ENTITLING
from .models import Customer, Interval, Payment, Subscription, SubscriptionStatus

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
    """Network id → paying subscribers and monthly recurring revenue (yearly prices count
    1/12). A person counts once per network (their newest paying subscription); grants and
    archived networks count for nothing."""
    ids = list(network_ids)
    result: dict[int, NetworkRevenue] = defaultdict(NetworkRevenue)
    rows = (
        Subscription.objects.filter(
            network_id__in=ids,
            status__in=PAYING,
            granted_by_admin=False,
            network__archived_at__isnull=True,
        )
        .order_by("network_id", "user_id", "-created_at")
        .values_list("network_id", "user_id", "price__amount", "price__interval", "price__currency")
    )
    seen: set[tuple[int, int]] = set()
    for network_id, user_id, amount, interval, currency in rows:
        if (network_id, user_id) in seen:
            continue
        seen.add((network_id, user_id))
        revenue = result[network_id]
        revenue.subscribers += 1
        if amount:
            monthly = round(amount / 12) if interval == Interval.YEAR else amount
            revenue.monthly_cents[currency] = revenue.monthly_cents.get(currency, 0) + monthly
    return {network_id: result[network_id] for network_id in ids}


@dataclass(frozen=True)
class MonthlyTakings:
    """Money actually collected for one network in one month and currency (from Stripe)."""

    network_id: int
    month: date
    currency: str
    gross: int
    fees: int
    refunded: int
    payments: int

    @property
    def net(self) -> int:
        return self.gross - self.fees - self.refunded


def takings_by_month(*, network_ids: Iterable[int], months: int = 12) -> list[MonthlyTakings]:
    """Collected gross, Stripe fees, refunds and net per network, month and currency, newest
    month first, from the payments mirrored from Stripe. A refund counts in the month of the
    payment it returns; an unknown fee counts as 0."""
    since = (timezone.now() - timedelta(days=31 * months)).replace(day=1)
    rows = (
        Payment.objects.filter(network_id__in=list(network_ids), paid_at__gte=since)
        .annotate(month=TruncMonth("paid_at"))
        .values("network_id", "month", "currency")
        .annotate(
            gross=Sum("amount_paid"),
            fees=Sum(Coalesce("fee", 0)),
            refunded=Sum("amount_refunded"),
            payments=Count("id"),
        )
        .order_by("-month", "network_id", "currency")
    )
    return [
        MonthlyTakings(
            network_id=row["network_id"],
            month=row["month"].date() if isinstance(row["month"], datetime) else row["month"],
            currency=row["currency"],
            gross=row["gross"] or 0,
            fees=row["fees"] or 0,
            refunded=row["refunded"] or 0,
            payments=row["payments"],
        )
        for row in rows
    ]
