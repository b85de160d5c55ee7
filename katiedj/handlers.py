"""A lean Django ASGI handler for the publish hot path.

Under ASGI, every classic Django middleware hook runs in a worker thread (a thread hop each
way); with the full stack that cost ~8 ms per request here, more than the publish itself.
Publish requests carry their own credential and need no session, user, CSRF or messages, so
they go through a handler built with ``PUBLISH_MIDDLEWARE`` only. Same views, same URLconf.
"""

from __future__ import annotations

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler


class PublishASGIHandler(ASGIHandler):
    """Django's ASGI handler, built with ``settings.PUBLISH_MIDDLEWARE``."""

    def load_middleware(self, is_async: bool = False) -> None:
        full_stack = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.PUBLISH_MIDDLEWARE
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = full_stack
