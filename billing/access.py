"""Access follows every change of a subscription row, however it was made.

The model's signals and queryset call these after a save, a delete or a bulk update; the
periodic lapse check calls ``access_check`` when time alone ended someone's rights. Rights
are per person and network: one of two subscriptions ending takes nothing away while the
other still entitles.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.utils import timezone

from .entitlement import (
    entitlements_changed,
    entitlements_grew,
    entitlements_of_user_id,
    subscription_entitled_until,
)
from .models import Subscription


def access_check(*, user_id: int, network_id: int) -> bool:
    """Revoke (close sockets, void tokens) unless the person may still hear the network.

    Returns whether they still may.
    """
    if network_id in entitlements_of_user_id(user_id=user_id):
        return True
    entitlements_changed(user_id=user_id, network_ids=[network_id])
    return False


def _entitled(row: Subscription | None) -> bool:
    return row is not None and subscription_entitled_until(row, timezone.now()) is not None


def access_row_saved(*, previous: Subscription | None, current: Subscription) -> None:
    """After a save: revoke what the old state gave and the new one doesn't; refresh caches."""
    moved = previous is not None and (
        (previous.user_id, previous.network_id) != (current.user_id, current.network_id)
    )
    if _entitled(previous) and (moved or not _entitled(current)):
        access_check(user_id=previous.user_id, network_id=previous.network_id)
    if _entitled(current) and not (_entitled(previous) and not moved):
        entitlements_grew(user_id=current.user_id)


def access_rows_changed(before: Iterable[Subscription]) -> None:
    """After a bulk update or a delete of ``before`` (the rows as they were)."""
    checked: set[tuple[int, int]] = set()
    for row in before:
        pair = (row.user_id, row.network_id)
        if pair in checked:
            continue
        checked.add(pair)
        if _entitled(row):
            access_check(user_id=row.user_id, network_id=row.network_id)
        entitlements_grew(user_id=row.user_id)
