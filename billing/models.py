"""Prices of paid networks, Stripe customers, subscriptions, payments and webhook events.

Subscriptions and payments mirror Stripe, the source of truth (``billing/sync.py``). Every
change to a subscription row, however it is made (``save``, ``delete``, a queryset
``update``), goes through ``billing.access`` so a person who loses a network's rights is
disconnected and their tokens voided (``docs/billing.md``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from networks.models import Network


class Interval(models.TextChoices):
    MONTH = "month", "Monthly"
    YEAR = "year", "Yearly"


class Price(models.Model):
    """A price of a paid network. A change creates a new row; old subscribers keep theirs."""

    network = models.ForeignKey(Network, on_delete=models.CASCADE, related_name="prices")
    interval = models.CharField(max_length=5, choices=Interval.choices)
    amount = models.PositiveIntegerField(help_text="In the currency's smallest unit (cents).")
    currency = models.CharField(max_length=3, default="eur")
    stripe_product_id = models.CharField(max_length=100, blank=True)
    stripe_price_id = models.CharField(max_length=100, blank=True, db_index=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["network", "interval"],
                condition=models.Q(active=True),
                name="one_active_price_per_interval",
            )
        ]

    def __str__(self) -> str:
        return f"{self.network} {self.amount / 100:.2f} {self.currency.upper()}/{self.interval}"


class Customer(models.Model):
    """The Stripe customer of a person (reused for every checkout)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="stripe_customer"
    )
    stripe_customer_id = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.stripe_customer_id


class SubscriptionStatus(models.TextChoices):
    # Stripe's statuses, verbatim.
    INCOMPLETE = "incomplete"
    INCOMPLETE_EXPIRED = "incomplete_expired"
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    CANCELED = "canceled"
    UNPAID = "unpaid"
    PAUSED = "paused"


# Fields whose change can give or take listening rights.
ACCESS_FIELDS = frozenset(
    {
        "user",
        "user_id",
        "network",
        "network_id",
        "status",
        "current_period_end",
        "cancel_at_period_end",
        "past_due_since",
        "granted_by_admin",
    }
)


class SubscriptionQuerySet(models.QuerySet):
    """A bulk ``update`` of access fields still disconnects whoever lost their rights."""

    def update(self, **kwargs: Any) -> int:
        if not ACCESS_FIELDS & kwargs.keys():
            return super().update(**kwargs)
        from .access import access_rows_changed

        with transaction.atomic(using=self.db):
            before = list(self.select_for_update())
            count = super().update(**kwargs)
            access_rows_changed(before)
        return count

    def bulk_update(self, objs: Any, fields: Any, batch_size: int | None = None) -> int:
        if ACCESS_FIELDS & set(fields):
            raise TypeError("Save subscriptions one by one: access must follow each change.")
        return super().bulk_update(objs, fields, batch_size=batch_size)


class Subscription(models.Model):
    """A person's subscription to a paid network, mirrored from Stripe (or granted for demos)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="subscriptions"
    )
    network = models.ForeignKey(Network, on_delete=models.CASCADE, related_name="subscriptions")
    price = models.ForeignKey(Price, null=True, blank=True, on_delete=models.SET_NULL)
    stripe_subscription_id = models.CharField(max_length=100, unique=True, null=True, blank=True)
    # The subscription item whose price a plan change moves (one item per subscription).
    stripe_item_id = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=20, choices=SubscriptionStatus.choices)
    current_period_end = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    # When the status went past_due (the grace period counts from here), and when the end of
    # the rights (grace or period over, no renewal yet) was acted on (connections closed).
    past_due_since = models.DateTimeField(null=True, blank=True)
    access_lapsed_at = models.DateTimeField(null=True, blank=True, editable=False)
    # When the state held here was read from Stripe (our clock, taken before the read): a
    # state read earlier never overwrites one read later, whatever order events came in.
    stripe_read_at = models.DateTimeField(null=True, blank=True)
    granted_by_admin = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = SubscriptionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.user} → {self.network} ({self.status})"

    @property
    def is_stripe_backed(self) -> bool:
        return bool(self.stripe_subscription_id)

    @property
    def is_ended(self) -> bool:
        return self.status in ENDED_STATUSES


ENDED_STATUSES = (SubscriptionStatus.CANCELED, SubscriptionStatus.INCOMPLETE_EXPIRED)


class Payment(models.Model):
    """A paid invoice mirrored from Stripe: what was collected, Stripe's fee, what was refunded.

    Revenue is computed from these rows, never from prices.
    """

    stripe_invoice_id = models.CharField(max_length=100, unique=True)
    subscription = models.ForeignKey(
        Subscription, null=True, blank=True, on_delete=models.SET_NULL, related_name="payments"
    )
    network = models.ForeignKey(Network, on_delete=models.CASCADE, related_name="payments")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="payments"
    )
    currency = models.CharField(max_length=3)
    amount_paid = models.PositiveIntegerField(help_text="Collected, in the smallest unit.")
    fee = models.PositiveIntegerField(null=True, blank=True, help_text="Stripe's fee, if known.")
    amount_refunded = models.PositiveIntegerField(default=0)
    stripe_payment_intent_id = models.CharField(max_length=100, blank=True, db_index=True)
    stripe_charge_id = models.CharField(max_length=100, blank=True, db_index=True)
    billing_reason = models.CharField(max_length=50, blank=True)
    paid_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-paid_at"]
        indexes = [models.Index(fields=["network", "paid_at"])]

    def __str__(self) -> str:
        return f"{self.stripe_invoice_id} {self.amount_paid / 100:.2f} {self.currency.upper()}"


class WebhookEvent(models.Model):
    """Each Stripe event id is stored once; a replay finds it here and does nothing.

    One never applied and never refused is applied by a sweep once left alone for a while
    (its task was lost: ``billing.sync.webhook_events_sweep``).
    """

    stripe_event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100)
    created = models.DateTimeField(help_text="When Stripe created the event.")
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    # When a worker last started applying it: the sweep leaves it to that worker (or its
    # retry) for BILLING_SWEEP_GRACE_SECONDS after this, or after received_at.
    attempted_at = models.DateTimeField(null=True, blank=True)
    # Refused for good (not ours, malformed, Stripe said no): recorded in ``error``, not swept.
    failed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-received_at"]
        indexes = [
            # The sweep's question: which events are neither applied nor refused?
            models.Index(
                fields=["received_at"],
                condition=models.Q(processed_at__isnull=True, failed_at__isnull=True),
                name="billing_webhook_unapplied",
            )
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.stripe_event_id}"


# --- Access follows every change of a subscription row ------------------------------------


@receiver(pre_save, sender=Subscription)
def _remember_previous_rights(sender: type[Subscription], instance: Subscription, **_: Any):
    previous = Subscription.objects.filter(pk=instance.pk).first() if instance.pk else None
    instance._previous_row = previous  # type: ignore[attr-defined]


@receiver(post_save, sender=Subscription)
def _follow_saved_rights(sender: type[Subscription], instance: Subscription, **_: Any):
    from .access import access_row_saved

    access_row_saved(previous=getattr(instance, "_previous_row", None), current=instance)


@receiver(post_delete, sender=Subscription)
def _follow_deleted_rights(sender: type[Subscription], instance: Subscription, **_: Any):
    from .access import access_rows_changed

    access_rows_changed([instance])
