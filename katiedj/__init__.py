"""Django project wiring for KatieDJ: settings, URLs, ASGI and Celery apps."""

from .celery import app as celery_app

__all__ = ["celery_app"]
