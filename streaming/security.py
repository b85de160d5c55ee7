"""Origin checks for WebSocket handshakes."""

from __future__ import annotations

from typing import Any
from urllib.parse import ParseResult

from channels.security.websocket import OriginValidator
from django.conf import settings


class ListenerOriginValidator(OriginValidator):
    """Refuse browser pages from foreign origins; let non-browser listeners in.

    Scripts and devices (the original listeners) send no ``Origin`` header, and a browser
    always does, so a missing header is not a cross-site request.
    """

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        if parsed_origin is None:
            return True
        return super().valid_origin(parsed_origin)


def listener_origin_validator(application: Any) -> ListenerOriginValidator:
    allowed = settings.WEBSOCKET_ALLOWED_ORIGINS or settings.ALLOWED_HOSTS
    return ListenerOriginValidator(application, allowed)
