"""The embedded demo: an organization, the ``sample_net`` network and a publisher key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction

from accounts.services import organization_get_or_create
from accounts.tokens import hash_secret

from .models import ApiKey, Network
from .services import api_key_create

DEMO_ORGANIZATION_SLUG = "katiedj-demo"
SAMPLE_NET_DESCRIPTION = (
    "The original Katie DJ demo: vehicle densities (veh/km) of 13 streets, "
    'published as {"state": {"0": …, "12": …}, "timestamp": "…"}.'
)


@dataclass(frozen=True)
class DemoSetup:
    network: Network
    api_key: str
    created: bool


@transaction.atomic
def demo_bootstrap(*, key_file: Path, demo_key: str = "") -> DemoSetup:
    """Create what is missing of the demo, idempotently, and return its publisher key.

    ``demo_key`` (the ``DEMO_API_KEY`` setting), when given, is the key. Otherwise a key is
    generated once and kept in ``key_file`` (under ``var/``, never committed) for later runs.
    """
    organization, org_created = organization_get_or_create(
        slug=DEMO_ORGANIZATION_SLUG, name="KatieDJ demo"
    )
    network, net_created = Network.objects.get_or_create(
        slug=settings.DEMO_NETWORK_SLUG,
        defaults={
            "organization": organization,
            "name": "Sample traffic network",
            "description": SAMPLE_NET_DESCRIPTION,
            "is_public": True,
        },
    )
    raw_key = demo_key or (key_file.read_text().strip() if key_file.exists() else "")
    existing = (
        ApiKey.objects.filter(hashed_secret=hash_secret(raw_key)).first() if raw_key else None
    )
    key_created = False
    if existing is None:
        _, raw_key = api_key_create(
            organization=network.organization,
            name="Demo publisher",
            networks=[network],
            raw_key=raw_key or None,
        )
        key_created = True
    elif existing.revoked_at is not None:
        raise ValueError(f"The demo key was revoked; unset DEMO_API_KEY or delete {key_file}.")
    if not demo_key:
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(raw_key + "\n")
        key_file.chmod(0o600)
    return DemoSetup(
        network=network, api_key=raw_key, created=org_created or net_created or key_created
    )
