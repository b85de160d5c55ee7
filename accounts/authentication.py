"""DRF authentication by personal token: ``Authorization: Bearer kdjp_…``."""

from __future__ import annotations

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from accounts.tokens import PERSONAL_TOKEN

from .models import User
from .selectors import personal_token_user


class PersonalTokenAuthentication(BaseAuthentication):
    """Scripts authenticate as their person with a personal token (no session, no CSRF)."""

    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[User, None] | None:
        parts = get_authorization_header(request).split()
        if len(parts) != 2 or parts[0].lower() != self.keyword:
            return None
        raw = parts[1].decode("latin-1")
        if not PERSONAL_TOKEN.claims(raw):
            return None  # not ours (e.g. a publisher key): let other schemes answer
        user = personal_token_user(raw_token=raw)
        if user is None:
            raise AuthenticationFailed("Invalid, expired or revoked personal token.")
        return user, None

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
