"""Networks (what listeners tune into) and the API keys that may publish to them."""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models

from accounts.models import Organization

slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9_-]{0,58}[a-z0-9])?$",
    "Use 1-60 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit.",
)


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
    # Upper bound of the sequence numbers handed out by the embedded (no Redis) allocator,
    # which reserves them in blocks so the publish path does not write per message.
    seq_reserved = models.BigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class ApiKey(models.Model):
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
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
