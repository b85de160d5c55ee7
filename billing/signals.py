"""A network that stops being sold stops charging: archived or made free, however the change
was made (dashboard, API, admin, shell), its subscriptions are ended by a worker."""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver

from networks.models import Network

from .models import ENDED_STATUSES, Price, Subscription


def _sold(is_public: bool, archived_at: object) -> bool:
    return not is_public and archived_at is None


@receiver(pre_save, sender=Network)
def _remember_whether_sold(sender: type, instance: Network, **kwargs: object) -> None:
    previous = (
        Network.objects.filter(pk=instance.pk).values("is_public", "archived_at").first()
        if instance.pk is not None
        else None
    )
    instance._was_sold = previous is not None and _sold(**previous)  # type: ignore[attr-defined]


@receiver(post_save, sender=Network)
def _end_subscriptions_when_no_longer_sold(
    sender: type, instance: Network, **kwargs: object
) -> None:
    if not getattr(instance, "_was_sold", False) or _sold(instance.is_public, instance.archived_at):
        return
    has_money = (
        Subscription.objects.filter(network=instance).exclude(status__in=ENDED_STATUSES).exists()
        or Price.objects.filter(network=instance, active=True).exists()
    )
    if not has_money:
        return
    from .services import network_unsold_reason
    from .tasks import end_network_subscriptions

    reason = network_unsold_reason(instance)
    network_id = instance.pk
    transaction.on_commit(lambda: end_network_subscriptions.delay(network_id, reason))
