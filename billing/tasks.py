"""Stripe webhook processing and reconciliation, off the request path."""

from __future__ import annotations

from celery import shared_task

from . import services
from .models import WebhookEvent


@shared_task(bind=True, max_retries=8, retry_backoff=True, retry_backoff_max=600)
def process_webhook_event(self, event_row_id: int) -> str:  # type: ignore[no-untyped-def]
    """Apply one stored Stripe event; retried with backoff if Stripe or the database fail."""
    row = WebhookEvent.objects.get(pk=event_row_id)
    if row.processed_at is not None:
        return "already processed"
    try:
        services.webhook_event_apply(event_row=row)
    except Exception as error:
        WebhookEvent.objects.filter(pk=row.pk).update(error=repr(error)[:2000])
        raise self.retry(exc=error) from error
    return row.type


@shared_task(max_retries=3, retry_backoff=True)
def reconcile_subscriptions() -> int:
    """Repair missed webhooks by re-reading subscriptions from Stripe (no-op without Stripe)."""
    from .stripe_gateway import billing_configured

    if not billing_configured():
        return 0
    return services.subscriptions_reconcile()


@shared_task
def expire_grace_periods() -> int:
    """Past-due subscriptions whose grace ended lose their rights; their connections close."""
    return services.expire_grace_periods()
