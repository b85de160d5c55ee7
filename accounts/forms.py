"""Forms of accounts' own pages."""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import get_adapter
from django.contrib.admin.forms import AdminAuthenticationForm


class AdminLoginForm(AdminAuthenticationForm):
    """The admin's login, authenticated the way allauth authenticates the site's login.

    allauth's adapter counts failed attempts per address and per client IP
    (``ACCOUNT_RATE_LIMITS["login_failed"]``) under the same keys as ``/accounts/login/``,
    so guesses cannot be spread over both forms, and refuses even the right password while
    those are spent. Staff log in with their email and password, verified address or not.
    """

    def clean(self) -> dict[str, Any]:
        email = (self.cleaned_data.get("username") or "").strip().lower()
        password = self.cleaned_data.get("password")
        if email and password:
            # Raises "Too many failed login attempts" once a limit is reached.
            self.user_cache = get_adapter(self.request).authenticate(
                self.request, email=email, password=password
            )
            if self.user_cache is None:
                raise self.get_invalid_login_error()
            self.confirm_login_allowed(self.user_cache)
        return self.cleaned_data
