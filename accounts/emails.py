"""The emails accounts sends itself, built so that text chosen by users stays inert.

An invitation goes to an address the inviter chooses, carrying words the inviter chose (the
organization's name) and their own address. Those words are put on one line, cut to length,
quoted and labelled as the inviter's, so they cannot add headers, fake paragraphs or pass
for KatieDJ's own text.
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import Invitation
from .validators import single_line

SUBJECT_PREFIX = "[KatieDJ] "
# Enough to recognise an organization; a whole sentence is not needed in a subject line.
SUBJECT_NAME_LENGTH = 60


def header_safe(text: str) -> str:
    """``text`` fit for a mail header: one line, no control characters."""
    return single_line(text)


@dataclass(frozen=True)
class Email:
    subject: str
    body: str


def invitation_email(*, invitation: Invitation, accept_url: str, lifetime_days: int) -> Email:
    """The invitation's subject and plain-text body."""
    organization = single_line(invitation.organization.name) or invitation.organization.slug
    inviter = single_line(invitation.invited_by.email) if invitation.invited_by else "Someone"
    subject = header_safe(
        f"{SUBJECT_PREFIX}Invitation to join "
        f"“{single_line(organization, max_length=SUBJECT_NAME_LENGTH)}”"
    )
    body = (
        f"{inviter} invited you to join the organization “{organization}” on KatieDJ "
        f"as {invitation.get_role_display().lower()}.\n"
        "\n"
        f"Accept the invitation (valid for {lifetime_days} days):\n"
        f"{accept_url}\n"
        "\n"
        "Sign in or sign up with this email address first.\n"
        "\n"
        "The organization's name above was chosen by the person who invited you, not by "
        "KatieDJ. If you do not know them or did not expect this invitation, ignore this "
        "email: nothing happens unless you accept.\n"
    )
    return Email(subject=subject, body=body)
