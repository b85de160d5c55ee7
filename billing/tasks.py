"""Stripe webhook processing, reconciliation and network-wide cancellations, off the request
path. Transient Stripe or database failures are retried with exponential backoff and
jitter, each retry logged; permanent ones (Stripe refusing the request, an object that is
not ours, a malformed event) are recorded and given up at once.

A worker can die holding a task (``kill -9``, OOM, a lost host). The broker hands the task out
again after its visibility timeout; sooner, the sweeps here finish what such a task left
undone. Every task is safe to run twice (``docs/billing.md``).
"""

from __future__ import annotations

import logging
import random

from celery import shared_task
from django.conf import settings

from . import services, sync
from .errors import BillingError
from .models import WebhookEvent
from .stripe_gateway import billing_configured
from .sync import TRANSIENT

logger = logging.getLogger(__name__)

MAX_RETRIES = 8
# A sweep starts no new item after this long; its soft and hard limits stop one stuck in a
# call (what it was doing is rolled back and swept again later).
SWEEP_BUDGET_SECONDS = 120


def retry_cap_seconds() -> float:
    """The longest retry countdown: 10 minutes, and at most half the broker's visibility
    timeout. A task waiting for its retry is held unacknowledged by its worker; a wait past
    the timeout would have the broker hand it to another worker as well."""
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
    return min(600.0, timeout / 2)


def backoff_seconds(retries: int, *, base: float = 5.0, cap: float | None = None) -> float:
    """5 s, 10 s, 20 s, … capped (``retry_cap_seconds``), with full jitter (retries spread
    out)."""
    ceiling = retry_cap_seconds() if cap is None else cap
    return random.uniform(0, min(ceiling, base * 2**retries))  # noqa: S311 (not a secret)


def _retry(task, error: Exception, what: str):  # type: ignore[no-untyped-def]
    countdown = backoff_seconds(task.request.retries)
    logger.warning(
        "%s failed (%s: %s); retry %d/%d in %.0f s",
        what, type(error).__name__, error, task.request.retries + 1, MAX_RETRIES, countdown,
    )  # fmt: skip
    return task.retry(exc=error, countdown=countdown, max_retries=MAX_RETRIES)


# The one-shot tasks whose loss leaves state wrong run again 5 s after their pool process dies
# mid-task (OOM killer, segfault): as a retry, so one that kills its process every time
# fails after MAX_RETRIES instead of looping (requeued at once if the retry can't be sent).
# Safe, as both are idempotent.
ON_WORKER_LOST = {
    "reject_on_worker_lost": True,
    "retry_on_worker_lost": True,
    "default_retry_delay": 5,  # only a lost worker's retry: ours pass their own countdown
}


@shared_task(
    bind=True, max_retries=MAX_RETRIES, time_limit=120, soft_time_limit=100, **ON_WORKER_LOST
)
def process_webhook_event(self, event_row_id: int) -> str:  # type: ignore[no-untyped-def]
    """Apply one stored Stripe event (by re-reading Stripe); idempotent."""
    row = WebhookEvent.objects.get(pk=event_row_id)
    if row.processed_at is not None:
        return "already processed"
    sync.webhook_event_started(event_row=row)
    try:
        return sync.webhook_event_apply(event_row=row)
    except TRANSIENT as error:
        sync.webhook_event_failed(event_row=row, error=error, final=False)
        raise _retry(self, error, f"Stripe event {row.stripe_event_id}") from error
    except BillingError as error:
        # Permanent: not ours, malformed, or Stripe refused. Recorded, visible in the admin.
        sync.webhook_event_failed(event_row=row, error=error, final=True)
        return f"not applied: {type(error).__name__}"


@shared_task(time_limit=SWEEP_BUDGET_SECONDS + 60, soft_time_limit=SWEEP_BUDGET_SECONDS + 50)
def sweep_webhook_events() -> int:
    """Apply stored Stripe events whose task was lost; returns how many were applied."""
    report = sync.webhook_events_sweep(
        grace_seconds=settings.BILLING_SWEEP_GRACE_SECONDS,
        batch_size=settings.BILLING_SWEEP_BATCH,
        budget_seconds=SWEEP_BUDGET_SECONDS,
    )
    if report.found:
        # Each one found is a task that was lost (or Stripe was down through its retries).
        logger.warning(
            "swept %d stored Stripe events never applied: %d applied, %d refused, "
            "%d failed, %d left for the next sweep",
            report.found, report.applied, report.refused, report.failed, report.left,
        )  # fmt: skip
    return report.applied


@shared_task(bind=True, max_retries=MAX_RETRIES, time_limit=1800, soft_time_limit=1700)
def reconcile_subscriptions(self) -> int:  # type: ignore[no-untyped-def]
    """Repair missed webhooks by re-reading subscriptions from Stripe (no-op without Stripe)."""
    if not billing_configured():
        return 0
    try:
        return sync.subscriptions_reconcile()
    except TRANSIENT as error:
        raise _retry(self, error, "Subscription reconciliation") from error


@shared_task(
    bind=True, max_retries=MAX_RETRIES, time_limit=1800, soft_time_limit=1700, **ON_WORKER_LOST
)
def end_network_subscriptions(self, network_id: int, reason: str) -> int:  # type: ignore[no-untyped-def]
    """A network was archived or made free: end its subscriptions (prorated refunds)."""
    try:
        return services.network_subscriptions_end(network_id=network_id, reason=reason)
    except TRANSIENT as error:
        raise _retry(self, error, f"Ending the subscriptions of network {network_id}") from error


@shared_task(time_limit=SWEEP_BUDGET_SECONDS + 60, soft_time_limit=SWEEP_BUDGET_SECONDS + 50)
def sweep_unsold_networks() -> int:
    """End the subscriptions of networks no longer sold whose task was lost; returns how many
    subscriptions were ended (no-op without Stripe)."""
    if not billing_configured():
        return 0
    try:
        networks, ended = services.unsold_networks_sweep(
            grace_seconds=settings.BILLING_SWEEP_GRACE_SECONDS,
            batch_size=settings.BILLING_SWEEP_BATCH,
            budget_seconds=SWEEP_BUDGET_SECONDS,
        )
    except TRANSIENT as error:
        logger.warning("sweep of networks no longer sold stopped (%s); the next one goes on", error)
        return 0
    if networks:
        logger.warning(
            "swept %d networks no longer sold whose subscriptions were not ended: %d ended",
            networks, ended,
        )  # fmt: skip
    return ended


@shared_task
def expire_lapsed_access() -> int:
    """Rights that ran out with time (grace or period over) close their connections."""
    return services.expire_lapsed_access()
