"""Writes for subscriptions: demo grants and endings (Stripe-driven changes come later)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from networks.models import Network

from . import stripe_gateway
from .entitlement import entitlements_changed, entitlements_grew, subscription_entitled_until
from .models import Customer, Price, Subscription, SubscriptionStatus, WebhookEvent


@transaction.atomic
def subscription_grant(*, user: User, network: Network, days: int = 30) -> Subscription:
    """Give a person an active subscription without payment (demos, support)."""
    if network.is_public:
        raise ValueError(f"{network.slug} is free: nothing to grant.")
    subscription = Subscription.objects.create(
        user=user,
        network=network,
        status=SubscriptionStatus.ACTIVE,
        current_period_end=timezone.now() + timedelta(days=days),
        granted_by_admin=True,
    )
    entitlements_grew(user_id=user.pk)
    return subscription


@transaction.atomic
def subscription_end(*, subscription: Subscription) -> Subscription:
    """End a subscription now: its owner's connections to the network close within seconds."""
    subscription.status = SubscriptionStatus.CANCELED
    subscription.current_period_end = timezone.now()
    subscription.save(update_fields=["status", "current_period_end", "updated_at"])
    entitlements_changed(user_id=subscription.user_id, network_ids=[subscription.network_id])
    return subscription


# --- Stripe: prices, checkout, portal -------------------------------------------------------


class BillingError(Exception):
    """A billing action that cannot be done as asked (message is for people)."""


@transaction.atomic
def price_set(*, network: Network, interval: str, amount: int, currency: str = "eur") -> Price:
    """Set a paid network's price for ``interval``: a new Stripe Price; subscribers keep theirs."""
    if network.is_public:
        raise BillingError("Free networks have no price; make the network paid first.")
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
    product_id = stripe_gateway.product_upsert(
        product_id=product_id,
        name=network.name,
        description=network.description,
        network_id=network.pk,
    )
    stripe_price_id = stripe_gateway.price_create(
        product_id=product_id,
        amount=amount,
        currency=currency,
        interval=interval,
        network_id=network.pk,
    )
    if current is not None:
        current.active = False
        current.save(update_fields=["active"])
        if current.stripe_price_id:
            stripe_gateway.price_deactivate(price_id=current.stripe_price_id)
    return Price.objects.create(
        network=network,
        interval=interval,
        amount=amount,
        currency=currency,
        stripe_product_id=product_id,
        stripe_price_id=stripe_price_id,
    )


def customer_for(*, user: User) -> Customer:
    """The person's Stripe customer, created on first use and reused afterwards."""
    existing = Customer.objects.filter(user=user).first()
    if existing is not None:
        return existing
    stripe_id = stripe_gateway.customer_create(email=user.email, user_id=user.pk)
    customer, _ = Customer.objects.get_or_create(
        user=user, defaults={"stripe_customer_id": stripe_id}
    )
    return customer


def checkout_start(
    *, user: User, network: Network, interval: str, success_url: str, cancel_url: str
) -> str:
    """Start Stripe Checkout for a paid network; returns the URL to send the person to."""
    price = Price.objects.filter(network=network, interval=interval, active=True).first()
    if price is None or not price.stripe_price_id:
        raise BillingError(f"{network.name} has no {interval}ly price yet.")
    session = stripe_gateway.checkout_session_create(
        customer_id=customer_for(user=user).stripe_customer_id,
        price_id=price.stripe_price_id,
        success_url=success_url,
        cancel_url=cancel_url,
        user_id=user.pk,
        network_id=network.pk,
    )
    return session["url"]


def portal_url(*, user: User, return_url: str) -> str:
    """Stripe's Customer Portal for card changes and cancellation."""
    customer = Customer.objects.filter(user=user).first()
    if customer is None:
        raise BillingError("You have no subscription to manage yet.")
    return stripe_gateway.portal_session_url(
        customer_id=customer.stripe_customer_id, return_url=return_url
    )


# --- Stripe: webhooks and reconciliation ------------------------------------------------------


HANDLED_EVENTS = (
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
)


def webhook_receive(*, payload: bytes, signature_header: str | None) -> WebhookEvent | None:
    """Verify and store an event once; returns it if new (to process), None for a replay.

    Raises WebhookRejected for unsigned, wrongly signed or stale payloads.
    """
    event = stripe_gateway.webhook_event(payload=payload, signature_header=signature_header)
    row, created = WebhookEvent.objects.get_or_create(
        stripe_event_id=event["id"],
        defaults={
            "type": event["type"],
            "created": datetime.fromtimestamp(event["created"], tz=UTC),
            "payload": event,
        },
    )
    return row if created else None


def _epoch(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value else None


def _invoice_subscription_id(invoice: dict[str, Any]) -> str | None:
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    return details.get("subscription") or invoice.get("subscription")


@transaction.atomic
def webhook_event_apply(*, event_row: WebhookEvent) -> None:
    """Apply one stored event (idempotent; an older event never overwrites a newer state)."""
    event = event_row.payload
    kind, obj = event["type"], event["data"]["object"]
    # Every state is labelled with Stripe's clock (whole seconds). A subscription read fresh
    # from Stripe is at least as new as the event that made us read it.
    state_at = event_row.created
    if kind == "checkout.session.completed" and obj.get("subscription"):
        fresh = stripe_gateway.subscription_retrieve(subscription_id=obj["subscription"])
        subscription_sync(stripe_subscription=fresh, state_at=state_at)
    elif kind.startswith("customer.subscription."):
        subscription_sync(stripe_subscription=obj, state_at=state_at)
    elif kind in ("invoice.paid", "invoice.payment_failed"):
        subscription_id = _invoice_subscription_id(obj)
        if subscription_id:
            fresh = stripe_gateway.subscription_retrieve(subscription_id=subscription_id)
            subscription_sync(stripe_subscription=fresh, state_at=state_at)
    event_row.processed_at = timezone.now()
    event_row.save(update_fields=["processed_at"])


def _owner_and_network(stripe_subscription: dict[str, Any]) -> tuple[User, Network, Price | None]:
    metadata = stripe_subscription.get("metadata") or {}
    items = (stripe_subscription.get("items") or {}).get("data") or [{}]
    price_id = (items[0].get("price") or {}).get("id")
    price = Price.objects.filter(stripe_price_id=price_id).first() if price_id else None
    customer = Customer.objects.filter(
        stripe_customer_id=stripe_subscription.get("customer")
    ).first()
    user = customer.user if customer else User.objects.filter(pk=metadata.get("user_id")).first()
    network = (
        price.network if price else Network.objects.filter(pk=metadata.get("network_id")).first()
    )
    if user is None or network is None:
        raise BillingError(f"Cannot tell whose subscription {stripe_subscription['id']} is.")
    return user, network, price


@transaction.atomic
def subscription_sync(*, stripe_subscription: dict[str, Any], state_at: datetime) -> Subscription:
    """Mirror a Stripe subscription; ignored if ``state_at`` is older than what we hold."""
    stripe_id = stripe_subscription["id"]
    row = Subscription.objects.select_for_update().filter(stripe_subscription_id=stripe_id).first()
    if row is not None and row.stripe_state_at and state_at < row.stripe_state_at:
        return row  # an older event arriving late
    if row is None:
        user, network, price = _owner_and_network(stripe_subscription)
        row = Subscription(
            user=user, network=network, price=price, stripe_subscription_id=stripe_id
        )
        was_entitled = False
    else:
        was_entitled = subscription_entitled_until(row, timezone.now()) is not None
    items = (stripe_subscription.get("items") or {}).get("data") or [{}]
    status = stripe_subscription["status"]
    if status == SubscriptionStatus.PAST_DUE and row.status != SubscriptionStatus.PAST_DUE:
        row.past_due_since = timezone.now()
    elif status != SubscriptionStatus.PAST_DUE:
        row.past_due_since = None
        row.grace_expired_at = None
    row.status = status
    row.current_period_end = _epoch(items[0].get("current_period_end"))
    row.cancel_at_period_end = bool(stripe_subscription.get("cancel_at_period_end"))
    row.stripe_state_at = state_at
    row.save()
    entitled = subscription_entitled_until(row, timezone.now()) is not None
    if was_entitled and not entitled:
        entitlements_changed(user_id=row.user_id, network_ids=[row.network_id])
    elif entitled and not was_entitled:
        entitlements_grew(user_id=row.user_id)
    return row


def subscriptions_reconcile() -> int:
    """Re-read every subscription from Stripe to repair missed webhooks; returns how many."""
    # One second back on Stripe's whole-second clock: an event of this very second still wins.
    now = timezone.now().replace(microsecond=0) - timedelta(seconds=1)
    synced = 0
    for stripe_subscription in stripe_gateway.subscriptions_list(status="all"):
        try:
            subscription_sync(stripe_subscription=stripe_subscription, state_at=now)
            synced += 1
        except BillingError:
            continue  # not one of ours (e.g. created by hand in the Stripe dashboard)
    return synced


def expire_grace_periods() -> int:
    """Close the connections of people whose past_due grace period just ended.

    Nothing else happens at that moment (no webhook), so a periodic task looks for it.
    Returns how many subscriptions lost their rights in this run.
    """
    now = timezone.now()
    grace = timedelta(seconds=settings.BILLING_PAST_DUE_GRACE_SECONDS)
    ended = Subscription.objects.filter(
        status=SubscriptionStatus.PAST_DUE,
        past_due_since__lte=now - grace,
        grace_expired_at__isnull=True,
    )
    count = 0
    for subscription in ended:
        with transaction.atomic():
            subscription.grace_expired_at = now
            subscription.save(update_fields=["grace_expired_at"])
            entitlements_changed(
                user_id=subscription.user_id, network_ids=[subscription.network_id]
            )
        count += 1
    return count
