"""Prices of paid networks, Stripe customers, subscriptions and processed webhook events."""

from __future__ import annotations

from django.conf import settings
from django.db import models

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


class Subscription(models.Model):
    """A person's subscription to a paid network, mirrored from Stripe (or granted for demos)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="subscriptions"
    )
    network = models.ForeignKey(Network, on_delete=models.CASCADE, related_name="subscriptions")
    price = models.ForeignKey(Price, null=True, blank=True, on_delete=models.SET_NULL)
    stripe_subscription_id = models.CharField(max_length=100, unique=True, null=True, blank=True)
    status = models.CharField(max_length=20, choices=SubscriptionStatus.choices)
    current_period_end = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    # When the status went past_due (the grace period counts from here), and when the grace
    # period's end was acted on (connections closed).
    past_due_since = models.DateTimeField(null=True, blank=True)
    grace_expired_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Creation time of the newest Stripe event applied: an older event never overwrites it.
    stripe_state_at = models.DateTimeField(null=True, blank=True)
    granted_by_admin = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.user} → {self.network} ({self.status})"


class WebhookEvent(models.Model):
    """Each Stripe event id is stored once; a replay finds it here and does nothing."""

    stripe_event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100)
    created = models.DateTimeField(help_text="When Stripe created the event.")
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.stripe_event_id}"
