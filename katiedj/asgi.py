"""ASGI entry point: HTTP goes to Django, WebSockets to the streaming consumers."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "katiedj.settings")

# Build the Django app first: importing consumers needs the app registry ready.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from networks.ingest import PublishApp, route_publish  # noqa: E402
from streaming.routing import websocket_urlpatterns  # noqa: E402
from streaming.security import listener_origin_validator  # noqa: E402

publish_app = PublishApp()


async def http_application(scope, receive, send):  # type: ignore[no-untyped-def]
    """Publish requests go to the lean publish app; everything else to Django."""
    app = publish_app if route_publish(scope["path"]) else django_asgi_app
    await app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_application,
        "websocket": listener_origin_validator(URLRouter(websocket_urlpatterns)),
    }
)
