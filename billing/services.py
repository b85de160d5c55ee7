"""Writes about money and access: prices, checkout, plan changes, cancellations, grants.

Every change that touches a Stripe subscription asks Stripe first and then mirrors what
Stripe answered (``billing.sync.subscription_mirror``), so we never hold a state Stripe
doesn't have. Access then follows through the model (``billing.access``).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from accounts.models import User
from networks.models import Network

from . import stripe_gateway
from .access import access_check
from .errors import BillingError, BillingNotConfigured, StripeRejected, StripeUnavailable
from .models import ENDED_STATUSES, Customer, Price, Subscription, SubscriptionStatus
from .sync import (
    LIVE_STRIPE_STATUSES,
    latest_payment_refund,
    lock_person_billing,
    subscription_mirror,
    subscription_network_id,
    subscription_period,
    subscription_refresh,
)

logger = logging.getLogger(__name__)

__all__ = [
    "AlreadySubscribed",
    "BillingError",
    "BillingNotConfigured",
    "StripeRejected",
    "StripeUnavailable",
]


class AlreadySubscribed(BillingError):
    """The person already has a live subscription to this network: change its plan instead."""

    def __init__(self, subscription: Subscription) -> None:
        super().__init__(
            f"You already subscribe to {subscription.network.name}: change your plan instead."
        )
        self.subscription = subscription


# --- Grants (no Stripe) -----------------------------------------------------------------------


@transaction.atomic
def subscription_grant(*, user: User, network: Network, days: int = 30) -> Subscription:
    """Give a person an active subscription without payment (demos, support); no renewal."""
    if network.is_public:
        raise ValueError(f"{network.slug} is free: nothing to grant.")
    return Subscription.objects.create(
        user=user,
        network=network,
        status=SubscriptionStatus.ACTIVE,
        current_period_end=timezone.now() + timedelta(days=days),
        granted_by_admin=True,
    )


# --- Ending subscriptions: the one way access is taken away ------------------------------------

Refund = Literal["prorated", "full", "none"]


def _remaining_fraction(stripe_subscription: dict[str, Any]) -> float:
    start, end = subscription_period(stripe_subscription)
    if not start or not end or end <= start:
        return 0.0
    now = timezone.now().timestamp()
    return max(0.0, min(1.0, (end - now) / (end - start)))


@transaction.atomic
def subscription_cancel(
    *,
    subscription: Subscription,
    at_period_end: bool = False,
    refund: Refund = "prorated",
    reason: str = "cancelled",
) -> Subscription:
    """End a subscription: at its period end, or now with a refund of the unused part.

    Stripe is told first; the row then mirrors what Stripe answered. Ending now disconnects
    the person within seconds and voids their tokens (unless another subscription entitles
    them). A grant simply ends now. StripeUnavailable / StripeRejected leave nothing changed.
    """
    lock_person_billing(user=subscription.user)
    subscription.refresh_from_db()
    if subscription.is_ended:
        # Ended meanwhile (a redelivered task, a sweep racing it): nothing to ask Stripe.
        return subscription
    if not subscription.is_stripe_backed:
        subscription.status = SubscriptionStatus.CANCELED
        subscription.current_period_end = timezone.now()
        subscription.save()
        return subscription
    read_at = timezone.now()
    if at_period_end:
        answer = stripe_gateway.subscription_set_cancel_at_period_end(
            subscription_id=subscription.stripe_subscription_id, cancel=True
        )
    else:
        before = stripe_gateway.subscription_retrieve(
            subscription_id=subscription.stripe_subscription_id
        )
        answer = stripe_gateway.subscription_cancel_now(
            subscription_id=subscription.stripe_subscription_id
        )
        if refund != "none" and before.get("status") not in ENDED_STATUSES:
            fraction = 1.0 if refund == "full" else _remaining_fraction(before)
            latest_payment_refund(stripe_subscription=before, fraction=fraction, reason=reason)
    logger.info(
        "subscription %s cancelled (%s, refund %s, %s)",
        subscription.stripe_subscription_id,
        "at period end" if at_period_end else "now",
        refund,
        reason,
    )
    return subscription_mirror(stripe_subscription=answer, read_at=read_at, user=subscription.user)


def subscription_end(*, subscription: Subscription, refund: Refund = "prorated") -> Subscription:
    """End a subscription now (the admin's action): see ``subscription_cancel``."""
    return subscription_cancel(subscription=subscription, refund=refund, reason="ended by staff")


@transaction.atomic
def subscription_delete(*, subscription: Subscription) -> None:
    """Delete a row: a live Stripe subscription is ended at Stripe first (prorated refund)."""
    if subscription.is_stripe_backed and not subscription.is_ended:
        subscription_cancel(subscription=subscription, reason="deleted by staff")
        subscription.refresh_from_db()
    subscription.delete()


def subscription_resync(*, subscription: Subscription) -> Subscription:
    """Re-read one subscription from Stripe (the admin's "resync" action)."""
    if not subscription.is_stripe_backed:
        return subscription
    return subscription_refresh(
        stripe_subscription_id=subscription.stripe_subscription_id, user_id=subscription.user_id
    )


def network_unsold_reason(network: Network) -> str:
    """Why a network's subscriptions end; part of the refunds' idempotency keys, so the task
    and a sweep racing it never refund twice."""
    return "network archived" if network.archived_at is not None else "network made free"


def network_subscriptions_end(*, network_id: int, reason: str) -> int:
    """The network was archived or made free: end every live subscription now with a prorated
    refund and retire its prices. Returns how many subscriptions were ended.

    Runs in a worker (a network may have many subscribers); StripeUnavailable makes the task
    retry, and a retry picks up where this stopped. Running it twice, or twice at once, is
    harmless: a row ended meanwhile is skipped under its person's lock.
    """
    ended = 0
    live = Subscription.objects.filter(network_id=network_id).exclude(status__in=ENDED_STATUSES)
    for subscription in live.select_related("user"):
        subscription_cancel(subscription=subscription, reason=reason)
        ended += 1
    for price in Price.objects.filter(network_id=network_id, active=True):
        price_retire(price=price)
    return ended


def networks_unsold_unended(*, older_than: datetime, limit: int) -> list[Network]:
    """Networks archived or made free (last changed before ``older_than``) that still have a
    live subscription or an active price: their ending task was lost."""
    live = Subscription.objects.filter(network=OuterRef("pk")).exclude(status__in=ENDED_STATUSES)
    priced = Price.objects.filter(network=OuterRef("pk"), active=True)
    return list(
        Network.objects.filter(Q(archived_at__isnull=False) | Q(is_public=True))
        .filter(updated_at__lt=older_than)
        .filter(Exists(live) | Exists(priced))
        .order_by("updated_at", "pk")[:limit]
    )


def unsold_networks_sweep(
    *, grace_seconds: float, batch_size: int, budget_seconds: float
) -> tuple[int, int]:
    """Finish what a lost ``end_network_subscriptions`` left (a worker killed, a broker down,
    a queryset update that sent no signal): end the subscriptions of networks no longer sold.
    At most ``batch_size`` networks, none started after ``budget_seconds``; a network Stripe
    refuses is logged and skipped. Returns (networks, subscriptions ended)."""
    deadline = time.monotonic() + budget_seconds
    older_than = timezone.now() - timedelta(seconds=grace_seconds)
    networks = ended = 0
    for network in networks_unsold_unended(older_than=older_than, limit=batch_size):
        if time.monotonic() >= deadline:
            break
        try:
            ended += network_subscriptions_end(
                network_id=network.pk, reason=network_unsold_reason(network)
            )
        except StripeUnavailable:
            raise
        except BillingError as error:
            logger.warning("could not end the subscriptions of network %s: %s", network, error)
            continue
        networks += 1
    return networks, ended


# --- Prices ------------------------------------------------------------------------------------


def price_retire(*, price: Price) -> None:
    """No new subscriptions at this price (existing ones keep it until they end)."""
    if price.stripe_price_id and stripe_gateway.billing_configured():
        stripe_gateway.price_deactivate(price_id=price.stripe_price_id)
    price.active = False
    price.save(update_fields=["active"])


@transaction.atomic
def price_remove(*, network: Network, interval: str) -> int:
    """Stop selling ``interval``: the price is retired and its subscribers are set to cancel
    at their period end (they keep what they paid for). Returns how many were set so."""
    price = Price.objects.filter(network=network, interval=interval, active=True).first()
    if price is None:
        raise BillingError(f"{network.name} has no {interval}ly price.")
    price_retire(price=price)
    count = 0
    subscribers = Subscription.objects.filter(price=price, cancel_at_period_end=False).exclude(
        status__in=ENDED_STATUSES
    )
    for subscription in subscribers.select_related("user"):
        subscription_cancel(subscription=subscription, at_period_end=True, reason="price removed")
        count += 1
    return count


@transaction.atomic
def price_set(*, network: Network, interval: str, amount: int, currency: str = "eur") -> Price:
    """Set a paid network's price for ``interval``: a new Stripe Price; subscribers keep theirs.

    A Product created here is deleted again if its Price cannot be created, so a failure
    leaves nothing behind at Stripe.
    """
    if network.is_public:
        raise BillingError("Free networks have no price; make the network paid first.")
    if network.archived_at is not None:
        raise BillingError("Archived networks cannot be sold.")
    if amount < 50:
        raise BillingError("The smallest price is 0.50.")
    current = Price.objects.filter(network=network, interval=interval, active=True).first()
    if current and current.amount == amount and current.currency == currency:
        return current
    product_id = (
        Price.objects.filter(network=network)
        .exclude(stripe_product_id="")
        .values_list("stripe_product_id", flat=True)
        .first()
        or ""
    )
    created_product = not product_id
    if created_product:
        product_id = stripe_gateway.product_create(
            name=network.name, description=network.description, network_id=network.pk
        )
    else:
        stripe_gateway.product_update(
            product_id=product_id, name=network.name, description=network.description
        )
    try:
        stripe_price_id = stripe_gateway.price_create(
            product_id=product_id,
            amount=amount,
            currency=currency,
            interval=interval,
            network_id=network.pk,
            idempotency_key=f"katiedj-price-{uuid.uuid4()}",
        )
    except BillingError:
        if created_product:
            _product_cleanup(product_id)
        raise
    if current is not None:
        price_retire(price=current)
    return Price.objects.create(
        network=network,
        interval=interval,
        amount=amount,
        currency=currency,
        stripe_product_id=product_id,
        stripe_price_id=stripe_price_id,
    )


def _product_cleanup(product_id: str) -> None:
    try:
        stripe_gateway.product_delete(product_id=product_id)
    except BillingError:
        # Stripe is down for the clean-up too: an empty product costs nothing and the next
        # price_set for another network makes its own; say so for the operator.
        logger.warning("could not delete the unused Stripe product %s", product_id)


# --- Checkout, plan changes, the customer portal -----------------------------------------------


def customer_for(*, user: User) -> Customer:
    """The person's Stripe customer, created on first use and reused afterwards."""
    existing = Customer.objects.filter(user=user).first()
    if existing is not None:
        return existing
    with transaction.atomic():
        # Two tabs at once must not create two customers.
        User.objects.select_for_update().filter(pk=user.pk).first()
        existing = Customer.objects.filter(user=user).first()
        if existing is not None:
            return existing
        stripe_id = stripe_gateway.customer_create(email=user.email, user_id=user.pk)
        return Customer.objects.create(user=user, stripe_customer_id=stripe_id)


def live_subscription(*, user: User, network: Network) -> Subscription | None:
    """The person's Stripe subscription to the network that still bills, if any."""
    return (
        Subscription.objects.filter(user=user, network=network, granted_by_admin=False)
        .exclude(stripe_subscription_id=None)
        .filter(status__in=LIVE_STRIPE_STATUSES)
        .select_related("network", "price")
        .order_by("created_at")
        .first()
    )


def _live_at_stripe(*, customer: Customer, network: Network) -> dict[str, Any] | None:
    for stripe_subscription in stripe_gateway.subscriptions_list(
        status="all", customer_id=customer.stripe_customer_id
    ):
        if (
            stripe_subscription.get("status") in LIVE_STRIPE_STATUSES
            and subscription_network_id(stripe_subscription) == network.pk
        ):
            return stripe_subscription
    return None


def checkout_start(
    *, user: User, network: Network, interval: str, success_url: str, cancel_url: str
) -> str:
    """Start Stripe Checkout for a paid network; returns the URL to send the person to.

    AlreadySubscribed if the person already has a live subscription to it (asked of Stripe
    too, in case its webhooks are still on their way): a second one is never sold.
    """
    price = Price.objects.filter(network=network, interval=interval, active=True).first()
    if price is None or not price.stripe_price_id:
        raise BillingError(f"{network.name} has no {interval}ly price yet.")
    existing = live_subscription(user=user, network=network)
    if existing is not None:
        raise AlreadySubscribed(existing)
    customer = customer_for(user=user)
    at_stripe = _live_at_stripe(customer=customer, network=network)
    if at_stripe is not None:
        raise AlreadySubscribed(
            subscription_refresh(stripe_subscription_id=at_stripe["id"], user_id=user.pk)
        )
    session = stripe_gateway.checkout_session_create(
        customer_id=customer.stripe_customer_id,
        price_id=price.stripe_price_id,
        success_url=success_url,
        cancel_url=cancel_url,
        user_id=user.pk,
        network_id=network.pk,
    )
    return session["url"]


@dataclass(frozen=True)
class PlanChange:
    subscription: Subscription
    price: Price


@transaction.atomic
def subscription_change_plan(*, user: User, network: Network, interval: str) -> PlanChange:
    """Move the person's subscription to the network's current ``interval`` price, prorated
    by Stripe and invoiced at once (never a second subscription)."""
    lock_person_billing(user=user)
    subscription = live_subscription(user=user, network=network)
    if subscription is None:
        raise BillingError(f"You have no subscription to {network.name} to change.")
    price = Price.objects.filter(network=network, interval=interval, active=True).first()
    if price is None or not price.stripe_price_id:
        raise BillingError(f"{network.name} has no {interval}ly price.")
    if subscription.price_id == price.pk:
        raise BillingError(f"You are already on the {price.get_interval_display().lower()} plan.")
    if not subscription.stripe_item_id:
        subscription = subscription_resync(subscription=subscription)
    read_at = timezone.now()
    answer = stripe_gateway.subscription_change_price(
        subscription_id=subscription.stripe_subscription_id,
        item_id=subscription.stripe_item_id,
        price_id=price.stripe_price_id,
        idempotency_key=f"katiedj-plan-{subscription.stripe_subscription_id}-{price.pk}",
    )
    mirrored = subscription_mirror(stripe_subscription=answer, read_at=read_at, user=user)
    return PlanChange(subscription=mirrored, price=price)


def portal_url(*, user: User, return_url: str) -> str:
    """Stripe's Customer Portal for card changes and cancellation."""
    customer = Customer.objects.filter(user=user).first()
    if customer is None:
        raise BillingError("You have no subscription to manage yet.")
    return stripe_gateway.portal_session_url(
        customer_id=customer.stripe_customer_id, return_url=return_url
    )


# --- Time ends rights too -------------------------------------------------------------------------


def expire_lapsed_access() -> int:
    """Close the connections of people whose rights just ran out with no event to say so: a
    past_due grace period over, or a period (plus leeway) over with no renewal. Returns how
    many subscriptions lapsed in this run; each is acted on once until its rights return."""
    from .entitlement import ENTITLING, subscription_entitled_until

    now = timezone.now()
    candidates = Subscription.objects.filter(
        access_lapsed_at__isnull=True,
        status__in=(*ENTITLING, SubscriptionStatus.PAST_DUE),
        current_period_end__isnull=False,
    )
    past_due_cutoff = now - timedelta(seconds=settings.BILLING_PAST_DUE_GRACE_SECONDS)
    candidates = candidates.filter(current_period_end__lte=now) | candidates.filter(
        status=SubscriptionStatus.PAST_DUE, past_due_since__lte=past_due_cutoff
    )
    lapsed = 0
    for subscription in candidates.distinct():
        if subscription_entitled_until(subscription, now) is not None:
            continue  # within its leeway
        with transaction.atomic():
            subscription.access_lapsed_at = now
            subscription.save(update_fields=["access_lapsed_at"])
            access_check(user_id=subscription.user_id, network_id=subscription.network_id)
        lapsed += 1
    return lapsed
