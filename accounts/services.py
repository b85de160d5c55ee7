"""Writes for people, organizations, memberships, invitations and personal tokens."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts.tokens import PERSONAL_TOKEN, SecretFormat, hash_secret

from .models import Invitation, Membership, Organization, PersonalToken, Role, User
from .selectors import Forbidden, NotFound, role_at_least

INVITATION_TOKEN = SecretFormat("kdji_")
INVITATION_LIFETIME = timedelta(days=7)


class MembershipError(Exception):
    """A membership change that would break a rule (e.g. leave no owner)."""


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
    """Create an organization owned by ``owner``; the slug is derived from the name if empty."""
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


def invitation_create(*, actor: Membership, email: str, role: Role) -> tuple[Invitation, str]:
    """Invite ``email``; returns the invitation and its one-time secret (for the email link)."""
    if not role_at_least(actor.role, Role.ADMIN):
        raise Forbidden
    if role == Role.OWNER and actor.role != Role.OWNER:
        raise Forbidden
    secret = INVITATION_TOKEN.generate()
    invitation = Invitation.objects.create(
        organization=actor.organization,
        email=email.lower(),
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


def invitation_send(*, invitation: Invitation, secret: str, accept_url: str) -> None:
    """Email the invitation link (the secret travels only in this email and the API answer)."""
    from django.core.mail import send_mail

    inviter = invitation.invited_by.email if invitation.invited_by else "Someone"
    send_mail(
        subject=f"[KatieDJ] Join {invitation.organization.name}",
        message=(
            f"{inviter} invited you to join {invitation.organization.name} on KatieDJ "
            f"as {invitation.role}.\n\nAccept the invitation (valid for 7 days):\n{accept_url}\n\n"
            "Sign in or sign up with this email address first.\n"
        ),
        from_email=None,
        recipient_list=[invitation.email],
    )
