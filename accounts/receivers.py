"""Reactions to allauth's account events (connected in ``AccountsConfig.ready``)."""

from __future__ import annotations

from typing import Any

from allauth.account.signals import password_changed, password_reset
from django.contrib import messages
from django.dispatch import receiver
from django.http import HttpRequest

from .models import User
from .services import personal_tokens_revoke_all


@receiver(password_reset, dispatch_uid="accounts.revoke_tokens_on_password_reset")
@receiver(password_changed, dispatch_uid="accounts.revoke_tokens_on_password_change")
def revoke_tokens_with_the_old_password(
    sender: type[User], request: HttpRequest, user: User, **kwargs: Any
) -> None:
    """A new password ends what the old one opened: Django already ends the other sessions
    (their auth hash changed); personal tokens and paid connections end here."""
    revoked = personal_tokens_revoke_all(user=user)
    if revoked:
        noun = "personal token was" if revoked == 1 else "personal tokens were"
        messages.info(
            request,
            f"With the new password, your {revoked} {noun} revoked: create new ones on your "
            "account page for your scripts.",
            fail_silently=True,  # a request without message storage (e.g. an API flow)
        )
