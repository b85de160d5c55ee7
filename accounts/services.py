"""Writes for people and organizations."""

from __future__ import annotations

from django.db import transaction

from .models import Membership, Organization, Role, User


@transaction.atomic
def organization_get_or_create(
    *, slug: str, name: str = "", owner: User | None = None
) -> tuple[Organization, bool]:
    """Return the organization with ``slug``, creating it (and the owner's membership) if new."""
    organization, created = Organization.objects.get_or_create(
        slug=slug, defaults={"name": name or slug}
    )
    if owner is not None:
        Membership.objects.get_or_create(
            user=owner, organization=organization, defaults={"role": Role.OWNER}
        )
    return organization, created
