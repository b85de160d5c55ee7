"""Writes for subscriptions: demo grants and endings (Stripe-driven changes come later)."""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from networks.models import Network

from .entitlement import entitlements_changed
from .models import Subscription, SubscriptionStatus


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
    # Rights grew: no connection closes, but cached answers must be recomputed.
    entitlements_changed(user_id=user.pk, network_ids=[])
    return subscription


@transaction.atomic
def subscription_end(*, subscription: Subscription) -> Subscription:
    """End a subscription now: its owner's connections to the network close within seconds."""
    subscription.status = SubscriptionStatus.CANCELED
    subscription.current_period_end = timezone.now()
    subscription.save(update_fields=["status", "current_period_end", "updated_at"])
    entitlements_changed(user_id=subscription.user_id, network_ids=[subscription.network_id])
    return subscription
