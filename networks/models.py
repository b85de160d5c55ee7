"""Networks (what listeners tune into) and the API keys that may publish to them."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from accounts.models import IssuedSecret, Organization

slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9_-]{0,58}[a-z0-9])?$",
    "Use 1-60 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit.",
)


class Backpressure(models.TextChoices):
    # The listener's socket is full: the network's messages are not waiting for it.
    CONFLATE = "conflate", "Conflate: keep only the latest unsent message"
    DROP = "drop", "Drop oldest, then tell the listener how many it missed"
    DISCONNECT = "disconnect", "Disconnect the listener (close code 4413)"


class Network(models.Model):
    """A broadcast channel owned by one organization."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="networks"
    )
    slug = models.CharField(max_length=60, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    is_public = models.BooleanField(
        default=True, help_text="Public networks are open to every listener; others are paid."
    )
    max_message_bytes = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(64)],
        help_text="Largest publish body in bytes; empty: the platform limit (PUBLISH_MAX_BYTES).",
    )
    history_max_messages = models.PositiveIntegerField(
        default=1000,
        validators=[MaxValueValidator(100_000)],
        help_text="How many recent messages are kept for listeners who resume.",
    )
    history_max_age_seconds = models.PositiveIntegerField(
        default=24 * 3600,
        validators=[MaxValueValidator(30 * 24 * 3600)],
        help_text="How long recent messages are kept for listeners who resume.",
    )
    backpressure = models.CharField(
        max_length=10,
        choices=Backpressure.choices,
        default=Backpressure.CONFLATE,
        help_text="What happens to a listener that reads slower than the network publishes.",
    )
    backpressure_buffer = models.PositiveIntegerField(
        default=100,
        validators=[MinValueValidator(1), MaxValueValidator(10_000)],
        help_text="Messages held for a lagging listener before dropping or disconnecting.",
    )
    archived_at = models.DateTimeField(
        null=True, blank=True, help_text="Archived networks refuse publishes and listeners."
    )
    # Upper bound of the sequence numbers handed out by the embedded (no Redis) allocator,
    # which reserves them in blocks so the publish path does not write per message.
    seq_reserved = models.BigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_archived(self) -> bool:
        return self.archived_at is not None


class KeyScope(models.TextChoices):
    PUBLISH = "publish", "Publish messages"
    READ_HISTORY = "read_history", "Read message history"


def default_key_scopes() -> list[str]:
    return [KeyScope.PUBLISH]


class ApiKey(IssuedSecret, models.Model):  # noqa: DJ008 (__str__ comes from IssuedSecret)
    """A publisher credential, scoped to some of its organization's networks.

    Only a display prefix and the SHA-256 of the secret are stored; the secret is shown once.
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True, editable=False)
    hashed_secret = models.CharField(max_length=64, unique=True, editable=False)
    networks = models.ManyToManyField(Network, related_name="api_keys", blank=True)
    scopes = models.JSONField(default=default_key_scopes)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # Written from the usage buffer by a periodic task, never on the publish path.
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    replaced_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaces"
    )
    rate_limit_per_second = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(10_000)],
        help_text="Sustained publishes per second (bursts of twice that); empty: the default.",
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"


class UsageHour(models.Model):
    """Messages and bytes published to one network in one hour (rolled up from Redis)."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    network = models.ForeignKey(Network, on_delete=models.CASCADE, related_name="usage")
    hour = models.DateTimeField(help_text="Start of the hour, UTC.")
    messages = models.BigIntegerField(default=0)
    bytes = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-hour"]
        constraints = [
            models.UniqueConstraint(fields=["network", "hour"], name="unique_usage_hour")
        ]

    def __str__(self) -> str:
        return f"{self.network} {self.hour:%Y-%m-%d %H}:00 {self.messages} msgs"
