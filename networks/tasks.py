"""Periodic tasks: move publish-path counters from Redis (or memory) into the database."""

from __future__ import annotations

from celery import shared_task

from . import accounting


@shared_task(autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=5)
def rollup_usage() -> int:
    """Hourly message and byte counts per network → ``UsageHour`` (idempotent)."""
    return accounting.rollup_usage()


@shared_task(autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=5)
def flush_key_last_used() -> int:
    """Keys' last-use times → ``ApiKey.last_used_at`` (never moves backwards)."""
    return accounting.flush_last_used()
