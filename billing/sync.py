"""Stripe → our mirror: webhooks, reconciliation, payments. Stripe is the source of truth.

A webhook is only a notification. Its handler locks the person's billing rows (their
``Customer`` row), re-reads the subscription or invoice from Stripe and applies that
current state, so the order events arrive in, same-second ties and two workers racing
cannot matter: whoever holds the lock last read Stripe last. Each state is labelled with
the time of its read (``stripe_read_at``); a state read earlier (a reconciliation's list)
never overwrites one read later. Stored event ids make replays no-ops, and applying an event
again is harmless, so a sweep can apply the events whose task was lost.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import DatabaseError, transaction
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import User
from networks.models import Network

from . import stripe_gateway
from .entitlement import subscription_entitled_until
from .errors import BillingError, StripeRejected, StripeUnavailable
from .models import (
    ENDED_STATUSES,
    Customer,
    Payment,
    Price,
    Subscription,
    SubscriptionStatus,
    WebhookEvent,
)

logger = logging.getLogger(__name__)

SUBSCRIPTION_EVENTS = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
)
INVOICE_EVENTS = ("invoice.paid", "invoice.payment_failed", "invoice.payment_succeeded")
CHARGE_EVENTS = ("charge.refunded", "charge.refund.updated")
HANDLED_EVENTS = (
    "checkout.session.completed",
    *SUBSCRIPTION_EVENTS,
    *INVOICE_EVENTS,
    *CHARGE_EVENTS,
)
# A person's Stripe subscriptions that still bill or may bill again.
LIVE_STRIPE_STATUSES = ("active", "trialing", "past_due", "unpaid", "paused", "incomplete")
# Failures worth trying again later; any other BillingError is final.
TRANSIENT = (StripeUnavailable, DatabaseError)


class NotOurs(BillingError):
    """A Stripe object no person or network of ours can be found for (ignored)."""


class MalformedEvent(BillingError):
    """A signed event without the ids we need: nothing to retry."""


# --- Reading Stripe's shapes (2026 API, and older accounts' webhook payloads) ---------------


def _epoch(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if isinstance(value, int) and value else None


def _first_item(stripe_subscription: dict[str, Any]) -> dict[str, Any]:
    items = (stripe_subscription.get("items") or {}).get("data") or [{}]
    return items[0] or {}


def subscription_period(stripe_subscription: dict[str, Any]) -> tuple[int | None, int | None]:
    """(start, end) of the current period: on the item since 2025, at the top level before."""
    item = _first_item(stripe_subscription)
    start = item.get("current_period_start") or stripe_subscription.get("current_period_start")
    end = item.get("current_period_end") or stripe_subscription.get("current_period_end")
    return start, end


def subscription_price_id(stripe_subscription: dict[str, Any]) -> str | None:
    item = _first_item(stripe_subscription)
    price = item.get("price") or item.get("plan") or stripe_subscription.get("plan") or {}
    return price.get("id") if isinstance(price, dict) else price


def _metadata_int(obj: dict[str, Any], key: str) -> int | None:
    value = (obj.get("metadata") or {}).get(key)
    return int(value) if isinstance(value, str) and value.isdigit() else None


def subscription_network_id(stripe_subscription: dict[str, Any]) -> int | None:
    """Our network of a Stripe subscription: by its price, else by its metadata."""
    price_id = subscription_price_id(stripe_subscription)
    if price_id:
        network_id = (
            Price.objects.filter(stripe_price_id=price_id).values_list("network_id", flat=True)
        ).first()
        if network_id is not None:
            return network_id
    return _metadata_int(stripe_subscription, "network_id")


def invoice_subscription_id(invoice: dict[str, Any]) -> str | None:
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    subscription = details.get("subscription") or invoice.get("subscription")
    return subscription.get("id") if isinstance(subscription, dict) else subscription


def _customer_id(obj: dict[str, Any]) -> str | None:
    customer = obj.get("customer")
    return customer.get("id") if isinstance(customer, dict) else customer


# --- The person's lock ---------------------------------------------------------------------------


def _lock_person(*, customer_id: str | None, fallback_user_id: int | None) -> User:
    """Lock the person's billing rows for this transaction; NotOurs if no one is found.

    Every write to a person's subscriptions takes this lock first, so two workers (or a
    worker and a request) never interleave their reads of Stripe and their writes.
    """
    if customer_id:
        customer = (
            Customer.objects.select_for_update().select_related("user")
            .filter(stripe_customer_id=customer_id).first()
        )  # fmt: skip
        if customer is not None:
            return customer.user
    if fallback_user_id is not None:
        user = User.objects.select_for_update().filter(pk=fallback_user_id).first()
        if user is not None:
            return user
    raise NotOurs(f"Stripe customer {customer_id} is not one of ours.")


def lock_person_billing(*, user: User) -> None:
    """The same lock, for a person we already know (plan changes, cancellations)."""
    locked = Customer.objects.select_for_update().filter(user=user).first()
    if locked is None:
        User.objects.select_for_update().filter(pk=user.pk).first()


# --- Applying a subscription's state ------------------------------------------------------------


def subscription_mirror(
    *, stripe_subscription: dict[str, Any], read_at: datetime, user: User
) -> Subscription:
    """Store a subscription's state as read from Stripe at ``read_at`` (caller holds the lock).

    A state read earlier than the one held is ignored. Access follows through the model.
    """
    stripe_id = stripe_subscription["id"]
    row = Subscription.objects.filter(stripe_subscription_id=stripe_id).first()
    if row is not None and row.stripe_read_at and read_at < row.stripe_read_at:
        return row
    network_id = subscription_network_id(stripe_subscription)
    if row is None:
        if network_id is None or not Network.objects.filter(pk=network_id).exists():
            raise NotOurs(f"Cannot tell which network subscription {stripe_id} is for.")
        row = Subscription(user=user, network_id=network_id, stripe_subscription_id=stripe_id)
    status = stripe_subscription.get("status") or SubscriptionStatus.INCOMPLETE
    if status == SubscriptionStatus.PAST_DUE and row.status != SubscriptionStatus.PAST_DUE:
        row.past_due_since = timezone.now()
    elif status != SubscriptionStatus.PAST_DUE:
        row.past_due_since = None
    _, period_end = subscription_period(stripe_subscription)
    price_id = subscription_price_id(stripe_subscription)
    price = Price.objects.filter(stripe_price_id=price_id).first() if price_id else None
    row.status = status
    row.current_period_end = _epoch(period_end)
    row.cancel_at_period_end = bool(stripe_subscription.get("cancel_at_period_end"))
    row.price = price or row.price
    row.stripe_item_id = _first_item(stripe_subscription).get("id") or row.stripe_item_id
    row.stripe_read_at = read_at
    if subscription_entitled_until(row, timezone.now()) is not None:
        row.access_lapsed_at = None  # rights again: a later lapse is acted on again
    row.save()
    return row


def subscription_refresh(
    *, stripe_subscription_id: str, customer_id: str | None = None, user_id: int | None = None
) -> Subscription:
    """Lock the person, re-read the subscription from Stripe, mirror it, undo duplicates.

    NotOurs if it belongs to nobody here; StripeUnavailable / StripeRejected from Stripe.
    """
    with transaction.atomic():
        if customer_id is None and user_id is None:
            # Only the subscription's id is known: its customer comes from Stripe.
            customer_id = _customer_id(
                stripe_gateway.subscription_retrieve(subscription_id=stripe_subscription_id)
            )
        user = _lock_person(customer_id=customer_id, fallback_user_id=user_id)
        read_at = timezone.now()
        fresh = stripe_gateway.subscription_retrieve(subscription_id=stripe_subscription_id)
        is_new = not Subscription.objects.filter(
            stripe_subscription_id=stripe_subscription_id
        ).exists()
        row = subscription_mirror(stripe_subscription=fresh, read_at=read_at, user=user)
        if is_new and row.status not in ENDED_STATUSES:
            duplicates_cancel(user=user, network_id=row.network_id, customer_id=_customer_id(fresh))
        row.refresh_from_db()
        return row


def duplicates_cancel(*, user: User, network_id: int, customer_id: str | None) -> list[str]:
    """Keep one live Stripe subscription per person and network: the oldest; end the others
    now and refund them in full. Asks Stripe, not our mirror (events may still be on their
    way). Returns the ids cancelled. The caller holds the person's lock."""
    if not customer_id:
        return []
    live = [
        s
        for s in stripe_gateway.subscriptions_list(status="all", customer_id=customer_id)
        if s.get("status") in LIVE_STRIPE_STATUSES and subscription_network_id(s) == network_id
    ]
    if len(live) < 2:
        return []
    paying = [s for s in live if s["status"] in ("active", "trialing", "past_due")] or live
    # Stripe lists newest first, so within one second of ``created`` the later one is older.
    position = {s["id"]: index for index, s in enumerate(live)}
    keep = min(paying, key=lambda s: (s.get("created") or 0, -position[s["id"]]))
    cancelled = []
    for duplicate in live:
        if duplicate["id"] == keep["id"]:
            continue
        logger.warning(
            "person %s had two subscriptions to network %s: cancelling %s, keeping %s",
            user.pk, network_id, duplicate["id"], keep["id"],
        )  # fmt: skip
        read_at = timezone.now()
        ended = stripe_gateway.subscription_cancel_now(subscription_id=duplicate["id"])
        latest_payment_refund(stripe_subscription=duplicate, fraction=1.0, reason="duplicate")
        subscription_mirror(stripe_subscription=ended, read_at=read_at, user=user)
        cancelled.append(duplicate["id"])
    return cancelled


# --- Payments: what was collected, fees and refunds -----------------------------------------------


def _invoice_payment_intent(invoice: dict[str, Any]) -> str | None:
    payments = (invoice.get("payments") or {}).get("data") or []
    for payment in payments:
        inner = payment.get("payment") or {}
        intent = inner.get("payment_intent")
        if intent and payment.get("status", "paid") == "paid":
            return intent.get("id") if isinstance(intent, dict) else intent
    intent = invoice.get("payment_intent")  # API versions before 2025
    return intent.get("id") if isinstance(intent, dict) else intent


def _fee(charge: dict[str, Any] | None) -> int | None:
    transaction_ = (charge or {}).get("balance_transaction")
    return transaction_.get("fee") if isinstance(transaction_, dict) else None


def payment_record(*, invoice_id: str) -> Payment | None:
    """Mirror a paid invoice (re-read from Stripe) with its fee and refunds; None if nothing
    was collected or it is not for one of our subscriptions."""
    invoice = stripe_gateway.invoice_retrieve(invoice_id=invoice_id)
    if invoice.get("status") != "paid" or not invoice.get("amount_paid"):
        return None
    subscription_id = invoice_subscription_id(invoice)
    subscription = (
        Subscription.objects.filter(stripe_subscription_id=subscription_id).first()
        if subscription_id
        else None
    )
    if subscription is None:
        raise NotOurs(f"Invoice {invoice_id} is not for a subscription we know (yet).")
    intent_id = _invoice_payment_intent(invoice)
    charge = (
        stripe_gateway.payment_intent_charge(payment_intent_id=intent_id) if intent_id else None
    )
    paid_at = _epoch((invoice.get("status_transitions") or {}).get("paid_at")) or _epoch(
        invoice.get("created")
    )
    payment, _ = Payment.objects.update_or_create(
        stripe_invoice_id=invoice_id,
        defaults={
            "subscription": subscription,
            "network_id": subscription.network_id,
            "user_id": subscription.user_id,
            "currency": invoice.get("currency") or "eur",
            "amount_paid": invoice["amount_paid"],
            "fee": _fee(charge),
            "amount_refunded": (charge or {}).get("amount_refunded") or 0,
            "stripe_payment_intent_id": intent_id or "",
            "stripe_charge_id": (charge or {}).get("id") or "",
            "billing_reason": invoice.get("billing_reason") or "",
            "paid_at": paid_at or timezone.now(),
        },
    )
    return payment


def payment_refresh_refunds(*, charge_id: str) -> Payment | None:
    """Re-read a charge's refunded amount into its payment (None if we hold no such payment)."""
    payment = Payment.objects.filter(stripe_charge_id=charge_id).first()
    if payment is None:
        return None
    charge = stripe_gateway.charge_retrieve(charge_id=charge_id)
    payment.amount_refunded = charge.get("amount_refunded") or 0
    payment.fee = _fee(charge) if _fee(charge) is not None else payment.fee
    payment.save(update_fields=["amount_refunded", "fee", "updated_at"])
    return payment


def latest_payment_refund(
    *, stripe_subscription: dict[str, Any], fraction: float, reason: str
) -> int:
    """Refund ``fraction`` of the subscription's latest paid invoice; returns the amount.

    Idempotent per invoice and reason (a retry never refunds twice); a payment already
    refunded that far is left alone.
    """
    invoices = stripe_gateway.invoices_list(subscription_id=stripe_subscription["id"])
    paid = [i for i in invoices if i.get("amount_paid")]
    if not paid or fraction <= 0:
        return 0
    latest = max(paid, key=lambda i: (i.get("created") or 0, i["id"]))
    invoice = stripe_gateway.invoice_retrieve(invoice_id=latest["id"])
    intent_id = _invoice_payment_intent(invoice)
    amount = int(invoice["amount_paid"] * min(fraction, 1.0))
    if not intent_id or amount <= 0:
        return 0
    try:
        stripe_gateway.refund_create(
            payment_intent_id=intent_id,
            amount=amount,
            idempotency_key=f"katiedj-refund-{invoice['id']}-{reason}",
            reason=reason,
        )
    except StripeRejected as error:
        if error.code in ("charge_already_refunded", "amount_too_large"):
            return 0
        raise
    charge = stripe_gateway.payment_intent_charge(payment_intent_id=intent_id)
    if charge is not None:
        Payment.objects.filter(stripe_invoice_id=invoice["id"]).update(
            amount_refunded=charge.get("amount_refunded") or amount, stripe_charge_id=charge["id"]
        )
    return amount


# --- Webhooks -------------------------------------------------------------------------------


def webhook_receive(*, payload: bytes, signature_header: str | None) -> WebhookEvent | None:
    """Verify and store an event once; returns it if new (to process), None for a replay.

    Raises WebhookRejected for unsigned, wrongly signed, stale or malformed payloads.
    """
    event = stripe_gateway.webhook_event(payload=payload, signature_header=signature_header)
    row, created = WebhookEvent.objects.get_or_create(
        stripe_event_id=event["id"],
        defaults={
            "type": event["type"][:100],
            "created": datetime.fromtimestamp(event["created"], tz=UTC),
            "payload": event,
        },
    )
    return row if created else None


def _required_id(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"The event's object has no {key}.")
    return value


def webhook_event_apply(*, event_row: WebhookEvent) -> str:
    """Act on one stored event by re-reading what it names from Stripe; returns what it did.

    Applying it again (a redelivered task, a sweep) is harmless: Stripe's current state is
    mirrored again, payments are upserted by invoice, and duplicates are looked for only when
    a subscription is new. NotOurs and MalformedEvent are final; StripeUnavailable is worth
    retrying.
    """
    kind = event_row.type
    obj = (event_row.payload.get("data") or {}).get("object") or {}
    outcome = "ignored"
    if kind == "checkout.session.completed":
        if obj.get("subscription"):
            subscription_refresh(
                stripe_subscription_id=_required_id(obj, "subscription"),
                customer_id=_customer_id(obj),
                user_id=_metadata_int(obj, "user_id"),
            )
            outcome = "subscription synced"
    elif kind in SUBSCRIPTION_EVENTS:
        subscription_refresh(
            stripe_subscription_id=_required_id(obj, "id"),
            customer_id=_customer_id(obj),
            user_id=_metadata_int(obj, "user_id"),
        )
        outcome = "subscription synced"
    elif kind in INVOICE_EVENTS:
        invoice_id = _required_id(obj, "id")
        subscription_id = invoice_subscription_id(obj)
        if subscription_id:
            subscription_refresh(
                stripe_subscription_id=subscription_id, customer_id=_customer_id(obj)
            )
            outcome = "subscription synced"
        if kind != "invoice.payment_failed" and payment_record(invoice_id=invoice_id):
            outcome += ", payment recorded"
    elif kind in CHARGE_EVENTS:
        charge_id = obj.get("charge") if kind == "charge.refund.updated" else obj.get("id")
        if isinstance(charge_id, str) and payment_refresh_refunds(charge_id=charge_id):
            outcome = "refunds updated"
    event_row.processed_at = timezone.now()
    event_row.error = ""
    event_row.failed_at = None
    event_row.save(update_fields=["processed_at", "error", "failed_at"])
    return outcome


def webhook_event_started(*, event_row: WebhookEvent) -> None:
    """Stamp the event as being applied now: the sweep leaves it alone for its grace period."""
    event_row.attempted_at = timezone.now()
    WebhookEvent.objects.filter(pk=event_row.pk).update(attempted_at=event_row.attempted_at)


def webhook_event_claim(*, event_row: WebhookEvent) -> bool:
    """Take a listed event for a sweep: False if it was applied, refused or taken by another
    worker since it was read (two sweeps never apply the same event)."""
    now = timezone.now()
    taken = WebhookEvent.objects.filter(
        pk=event_row.pk,
        processed_at__isnull=True,
        failed_at__isnull=True,
        attempted_at=event_row.attempted_at,  # None matches only a row never attempted
    ).update(attempted_at=now)
    if taken:
        event_row.attempted_at = now
    return bool(taken)


def webhook_event_failed(*, event_row: WebhookEvent, error: Exception, final: bool) -> None:
    """Record why an event was not applied (admin: Billing → Webhook events). ``final``: it
    was refused for good and is never swept; otherwise a retry or the sweep tries again."""
    if final:
        logger.warning("Stripe event %s not applied: %s", event_row.stripe_event_id, error)
    try:
        WebhookEvent.objects.filter(pk=event_row.pk).update(
            error=repr(error)[:2000], failed_at=timezone.now() if final else None
        )
    except DatabaseError:
        if final:
            raise
        # The database is what failed: the retry (or the sweep) finds the event unapplied.


@dataclass
class SweepReport:
    """What one sweep found and did."""

    found: int = 0  # past their grace period, neither applied nor refused
    applied: int = 0
    refused: int = 0  # refused for good (recorded, not swept again)
    failed: int = 0  # transient failures: swept again after another grace period
    left: int = 0  # not attempted in this run (out of time, or Stripe down)


def webhook_events_unapplied(*, older_than: datetime, limit: int) -> list[WebhookEvent]:
    """Events neither applied nor refused, untouched since before ``older_than`` (last
    attempted, else received), the longest waiting first."""
    return list(
        WebhookEvent.objects.filter(processed_at__isnull=True, failed_at__isnull=True)
        .annotate(waiting_since=Coalesce("attempted_at", "received_at"))
        .filter(waiting_since__lt=older_than)
        .order_by("waiting_since", "pk")[:limit]
    )


def webhook_events_sweep(
    *, grace_seconds: float, batch_size: int, budget_seconds: float
) -> SweepReport:
    """Apply stored events whose task was lost: a worker killed while holding it, a retry
    that never came, a broker down when it was queued. Stripe had its 200 and will not send
    them again. At most ``batch_size`` per run, none started after ``budget_seconds``; a
    transient failure ends the run (Stripe or the database is likely down)."""
    deadline = time.monotonic() + budget_seconds
    older_than = timezone.now() - timedelta(seconds=grace_seconds)
    rows = webhook_events_unapplied(older_than=older_than, limit=batch_size)
    report = SweepReport(found=len(rows))
    for index, row in enumerate(rows):
        if time.monotonic() >= deadline:
            report.left = len(rows) - index
            break
        if not webhook_event_claim(event_row=row):
            continue
        try:
            webhook_event_apply(event_row=row)
        except TRANSIENT as error:
            webhook_event_failed(event_row=row, error=error, final=False)
            report.failed += 1
            report.left = len(rows) - index - 1
            break
        except BillingError as error:
            webhook_event_failed(event_row=row, error=error, final=True)
            report.refused += 1
            continue
        report.applied += 1
    return report


# --- Reconciliation -------------------------------------------------------------------------------


def subscriptions_reconcile() -> int:
    """Re-read every subscription from Stripe to repair missed webhooks; returns how many.

    Each is applied under its person's lock and only over a state read before the list was.
    """
    listed_at = timezone.now()
    synced = 0
    for stripe_subscription in stripe_gateway.subscriptions_list(status="all"):
        try:
            with transaction.atomic():
                user = _lock_person(
                    customer_id=_customer_id(stripe_subscription),
                    fallback_user_id=_metadata_int(stripe_subscription, "user_id"),
                )
                subscription_mirror(
                    stripe_subscription=stripe_subscription, read_at=listed_at, user=user
                )
            synced += 1
        except NotOurs:
            continue  # e.g. created by hand in the Stripe dashboard for another product
    return synced
