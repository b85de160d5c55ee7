"""Reads for people and organizations, with the tenant check built in."""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from accounts.tokens import PERSONAL_TOKEN, hash_secret

from .models import Invitation, Membership, Organization, PersonalToken, Role, User

_RANK = {Role.MEMBER: 0, Role.ADMIN: 1, Role.OWNER: 2}


class NotFound(Exception):
    """The object does not exist *for this user*: same answer as "exists elsewhere"."""


class Forbidden(Exception):
    """The user is a member but their role does not allow this."""


def role_at_least(role: str, minimum: Role) -> bool:
    return _RANK[Role(role)] >= _RANK[minimum]


def membership_get(*, user: User, organization_slug: str) -> Membership:
    """The user's membership of the organization; NotFound if they are not a member."""
    membership = (
        Membership.objects.select_related("organization")
        .filter(user=user, organization__slug=organization_slug)
        .first()
    )
    if membership is None:
        raise NotFound
    return membership


def membership_require(*, user: User, organization_slug: str, minimum: Role) -> Membership:
    """The membership, if its role is at least ``minimum`` (NotFound / Forbidden otherwise)."""
    membership = membership_get(user=user, organization_slug=organization_slug)
    if not role_at_least(membership.role, minimum):
        raise Forbidden
    return membership


def organizations_of(*, user: User) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("organization")


def organization_members(*, organization: Organization) -> QuerySet[Membership]:
    return organization.memberships.select_related("user").order_by("created_at", "id")


def invitation_get_for_org(*, organization_id: int, invitation_id: int) -> Invitation:
    """The organization's invitation ``invitation_id``; NotFound otherwise (also if foreign)."""
    invitation = Invitation.objects.filter(
        organization_id=organization_id, pk=invitation_id
    ).first()
    if invitation is None:
        raise NotFound
    return invitation


def personal_token_user(*, raw_token: str) -> User | None:
    """The active user owning an active personal token, or None."""
    if not PERSONAL_TOKEN.is_valid(raw_token):
        return None  # typo or forgery: no lookup
    token = (
        PersonalToken.objects.select_related("user")
        .filter(hashed_secret=hash_secret(raw_token), revoked_at__isnull=True)
        .first()
    )
    if token is None or not token.is_active or not token.user.is_active:
        return None
    # Personal tokens drive the management API, not the hot path: a write is fine here.
    PersonalToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token.user
