"""Writes for people, organizations, memberships, invitations and personal tokens."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts.tokens import PERSONAL_TOKEN, SecretFormat, hash_secret

from .emails import invitation_email
from .limits import Limit, LimitReached, limits_consume
from .models import Invitation, Membership, Organization, PersonalToken, Role, User
from .selectors import Forbidden, NotFound, role_at_least
from .validators import single_line, validate_no_control_characters

INVITATION_TOKEN = SecretFormat("kdji_")
INVITATION_LIFETIME = timedelta(days=7)
HOUR, DAY = 3600, 86400


class MembershipError(Exception):
    """A membership change that would break a rule (e.g. leave no owner)."""


class InvitationRateLimited(Exception):
    """Too many invitations from this person or organization, or to this address, for now."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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


@transaction.atomic
def organization_create(*, name: str, owner: User, slug: str = "") -> Organization:
    """Create an organization owned by ``owner``; the slug is derived from the name if empty.

    ValidationError for a name with control characters (it reaches strangers' inboxes).
    """
    validate_no_control_characters(name)
    base = slugify(slug or name)[:50] or "org"
    candidate, counter = base, 1
    while Organization.objects.filter(slug=candidate).exists():
        counter += 1
        candidate = f"{base}-{counter}"
    organization = Organization.objects.create(name=name, slug=candidate)
    Membership.objects.create(user=owner, organization=organization, role=Role.OWNER)
    return organization


def _owner_count(organization: Organization) -> int:
    return organization.memberships.filter(role=Role.OWNER).count()


@transaction.atomic
def membership_change_role(*, actor: Membership, target: Membership, role: Role) -> Membership:
    """Only owners change roles; the last owner cannot step down."""
    if actor.organization_id != target.organization_id:
        raise NotFound
    if actor.role != Role.OWNER:
        raise Forbidden
    if target.role == Role.OWNER and role != Role.OWNER and _owner_count(target.organization) == 1:
        raise MembershipError("An organization needs at least one owner.")
    target.role = role
    target.save(update_fields=["role"])
    return target


@transaction.atomic
def membership_remove(*, actor: Membership, target: Membership) -> None:
    """Remove a member (or leave). Admins cannot remove owners; the last owner cannot leave."""
    if actor.organization_id != target.organization_id:
        raise NotFound
    leaving = actor.pk == target.pk
    if not leaving:
        if not role_at_least(actor.role, Role.ADMIN):
            raise Forbidden
        if target.role == Role.OWNER and actor.role != Role.OWNER:
            raise Forbidden
    if target.role == Role.OWNER and _owner_count(target.organization) == 1:
        raise MembershipError("The last owner cannot leave; make someone else owner first.")
    target.delete()


def _count(amount: int, noun: str) -> str:
    return f"{amount} {noun}" if amount == 1 else f"{amount} {noun}s"


def _duration(seconds: int) -> str:
    """Roughly how long, rounded up: "40 seconds", "12 minutes", "23 hours"."""
    if seconds < 90:
        return _count(seconds, "second")
    if seconds < 90 * 60:
        return _count(math.ceil(seconds / 60), "minute")
    return _count(math.ceil(seconds / 3600), "hour")


def _invitation_limits(*, actor: Membership, email: str) -> list[tuple[Limit, str]]:
    """Each invitation is an email to an address of the inviter's choosing: bounded per
    inviting person (new organizations buy no more), per organization and per address (a
    stranger's inbox is never flooded, whoever sends), each with what to tell the inviter."""
    organization = single_line(actor.organization.name) or actor.organization.slug
    per_person = settings.INVITATIONS_PER_INVITER_PER_DAY
    per_organization = settings.INVITATIONS_PER_ORGANIZATION_PER_HOUR
    per_address = settings.INVITATIONS_PER_ADDRESS_PER_DAY
    return [
        (
            Limit("invite-person", str(actor.user_id), per_person, DAY),
            f"You have reached the limit of {_count(per_person, 'invitation')} a day per person",
        ),
        (
            Limit("invite-org", str(actor.organization_id), per_organization, HOUR),
            f"{organization} has reached the limit of {_count(per_organization, 'invitation')} "
            "an hour per organization",
        ),
        (
            Limit("invite-address", email, per_address, DAY),
            f"{email} has reached the limit of {_count(per_address, 'invitation')} a day per "
            "address",
        ),
    ]


def invitation_create(*, actor: Membership, email: str, role: Role) -> tuple[Invitation, str]:
    """Invite ``email``; returns the invitation and its one-time secret (for the email link).

    Admins only (owners to invite owners). Counts against the invitation limits first:
    InvitationRateLimited, and no invitation, when one is reached.
    """
    if not role_at_least(actor.role, Role.ADMIN):
        raise Forbidden
    if role == Role.OWNER and actor.role != Role.OWNER:
        raise Forbidden
    email = email.strip().lower()
    limits = _invitation_limits(actor=actor, email=email)
    try:
        limits_consume([limit for limit, _ in limits])
    except LimitReached as reached:
        message = next(text for limit, text in limits if limit == reached.limit)
        raise InvitationRateLimited(
            f"{message}: try again in {_duration(reached.retry_after)}.", reached.retry_after
        ) from None
    secret = INVITATION_TOKEN.generate()
    invitation = Invitation.objects.create(
        organization=actor.organization,
        email=email,
        role=role,
        hashed_token=hash_secret(secret),
        invited_by=actor.user,
        expires_at=timezone.now() + INVITATION_LIFETIME,
    )
    return invitation, secret


def invitation_revoke(*, actor: Membership, invitation: Invitation) -> None:
    if invitation.organization_id != actor.organization_id:
        raise NotFound
    if not role_at_least(actor.role, Role.ADMIN):
        raise Forbidden
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])


@transaction.atomic
def invitation_accept(*, user: User, secret: str) -> Membership:
    """Join the organization of a pending invitation addressed to ``user``'s email."""
    if not INVITATION_TOKEN.is_valid(secret):
        raise NotFound
    invitation = (
        Invitation.objects.select_for_update().filter(hashed_token=hash_secret(secret)).first()
    )
    if invitation is None or not invitation.is_pending or invitation.email != user.email.lower():
        raise NotFound
    membership, _ = Membership.objects.get_or_create(
        user=user, organization=invitation.organization, defaults={"role": invitation.role}
    )
    invitation.accepted_at = timezone.now()
    invitation.save(update_fields=["accepted_at"])
    return membership


def personal_token_create(
    *, user: User, name: str, expires_at: datetime | None = None
) -> tuple[PersonalToken, str]:
    """Create a personal token; the secret is returned only here."""
    secret = PERSONAL_TOKEN.generate()
    token = PersonalToken.objects.create(
        user=user,
        name=name,
        prefix=PERSONAL_TOKEN.display_prefix(secret),
        hashed_secret=hash_secret(secret),
        expires_at=expires_at,
    )
    return token, secret


def personal_token_revoke(*, token: PersonalToken) -> PersonalToken:
    """Revoke a token; listening connections opened with it close within seconds.

    Entitlement tokens do not say which personal token minted them, so every entitlement
    token of the person is voided (their clients refresh with another personal token).
    """
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        from billing.entitlement import entitlements_changed  # billing builds on accounts

        entitlements_changed(user_id=token.user_id, network_ids=None)
    return token


def personal_tokens_revoke_all(*, user: User) -> int:
    """Revoke every personal token of ``user`` and void every entitlement token they hold,
    which closes their listening connections within seconds; returns how many were revoked.

    For when the password is reset or changed: whoever knew the old one may have minted
    tokens or opened connections, and a token is a login that no password change ends.
    """
    revoked = PersonalToken.objects.filter(user=user, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    from billing.entitlement import entitlements_changed  # billing builds on accounts

    # Even with no personal token: a session's entitlement tokens outlive the session.
    entitlements_changed(user_id=user.pk, network_ids=None)
    return revoked


def invitation_send(*, invitation: Invitation, secret: str, accept_url: str) -> None:
    """Email the invitation link (the secret travels only in this email and the API answer)."""
    from django.core.mail import send_mail

    email = invitation_email(
        invitation=invitation, accept_url=accept_url, lifetime_days=INVITATION_LIFETIME.days
    )
    send_mail(
        subject=email.subject,
        message=email.body,
        from_email=None,
        recipient_list=[invitation.email],
    )
