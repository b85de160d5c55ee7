"""How allauth sends our people's emails (``ACCOUNT_ADAPTER``)."""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from django.core.mail import EmailMessage

from .emails import header_safe

# allauth's templates come before accounts' in INSTALLED_APPS, so ours cannot simply shadow
# theirs: these emails are rendered from accounts/templates/accounts/email/ instead.
OWN_EMAILS = {"account/email/password_reset_key": "accounts/email/password_reset_key"}


class AccountAdapter(DefaultAccountAdapter):
    def format_email_subject(self, subject: str) -> str:
        """The prefixed subject on one line: no text in it can start another header."""
        return header_safe(super().format_email_subject(subject))

    def render_mail(
        self,
        template_prefix: str,
        email: str | list[str],
        context: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> EmailMessage:
        template_prefix = OWN_EMAILS.get(template_prefix, template_prefix)
        return super().render_mail(template_prefix, email, context, headers)
