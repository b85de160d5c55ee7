"""Stripe webhook processing, reconciliation and network-wide cancellations, off the request
path. Transient Stripe or database failures are retried with exponential backoff and
jitter, each retry logged; permanent ones (Stripe refusing the request, an object that is
not ours, a malformed event) are recorded and given up at once."""

from __future__ import annotations

import logging
import random

from celery import shared_task
from django.db import DatabaseError

from . import services, sync
from .errors import BillingError, StripeUnavailable
from .models import WebhookEvent
from .stripe_gateway import billing_configured

logger = logging.getLogger(__name__)

TRANSIENT = (StripeUnavailable, DatabaseError)
MAX_RETRIES = 8


def backoff_seconds(retries: int, *, base: float = 5.0, cap: float = 600.0) -> float:
    """5 s, 10 s, 20 s, … capped at 10 minutes, with full jitter (retries spread out)."""
    return random.uniform(0, min(cap, base * 2**retries))  # noqa: S311 (not a secret)


def _retry(task, error: Exception, what: str):  # type: ignore[no-untyped-def]
    countdown = backoff_seconds(task.request.retries)
    logger.warning(
        "%s failed (%s: %s); retry %d/%d in %.0f s",
        what, type(error).__name__, error, task.request.retries + 1, MAX_RETRIES, countdown,
    )  # fmt: skip
    return task.retry(exc=error, countdown=countdown, max_retries=MAX_RETRIES)


@shared_task(bind=True, max_retries=MAX_RETRIES, time_limit=120, soft_time_limit=100)
def process_webhook_event(self, event_row_id: int) -> str:  # type: ignore[no-untyped-def]
    """Apply one stored Stripe event (by re-reading Stripe); idempotent."""
    row = WebhookEvent.objects.get(pk=event_row_id)
    if row.processed_at is not None:
        return "already processed"
    try:
        return sync.webhook_event_apply(event_row=row)
    except TRANSIENT as error:
        WebhookEvent.objects.filter(pk=row.pk).update(error=repr(error)[:2000])
        raise _retry(self, error, f"Stripe event {row.stripe_event_id}") from error
    except BillingError as error:
        # Permanent: not ours, malformed, or Stripe refused. Recorded, visible in the admin.
        logger.warning("Stripe event %s not applied: %s", row.stripe_event_id, error)
        WebhookEvent.objects.filter(pk=row.pk).update(error=repr(error)[:2000])
        return f"not applied: {type(error).__name__}"


@shared_task(bind=True, max_retries=MAX_RETRIES, time_limit=1800, soft_time_limit=1700)
def reconcile_subscriptions(self) -> int:  # type: ignore[no-untyped-def]
    """Repair missed webhooks by re-reading subscriptions from Stripe (no-op without Stripe)."""
    if not billing_configured():
        return 0
    try:
        return sync.subscriptions_reconcile()
    except TRANSIENT as error:
        raise _retry(self, error, "Subscription reconciliation") from error


@shared_task(bind=True, max_retries=MAX_RETRIES, time_limit=1800, soft_time_limit=1700)
def end_network_subscriptions(self, network_id: int, reason: str) -> int:  # type: ignore[no-untyped-def]
    """A network was archived or made free: end its subscriptions (prorated refunds)."""
    try:
        return services.network_subscriptions_end(network_id=network_id, reason=reason)
    except TRANSIENT as error:
        raise _retry(self, error, f"Ending the subscriptions of network {network_id}") from error


@shared_task
def expire_lapsed_access() -> int:
    """Rights that ran out with time (grace or period over) close their connections."""
    return services.expire_lapsed_access()
