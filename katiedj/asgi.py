"""ASGI entry point: HTTP goes to Django, WebSockets to the streaming consumers."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "katiedj.settings")

# Build the Django app first: importing consumers needs the app registry ready.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from streaming.routing import websocket_urlpatterns  # noqa: E402
from streaming.security import listener_origin_validator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": listener_origin_validator(URLRouter(websocket_urlpatterns)),
    }
)
