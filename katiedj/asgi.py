"""ASGI entry point: HTTP goes to Django, WebSockets to the streaming consumers."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "katiedj.settings")

from django.conf import settings

from katiedj.secret_key import refuse_public_secret_key

# Every server (uvicorn from the Procfile or image, `manage.py serve`, runserver) loads this
# module: none may sign with the public development key.
refuse_public_secret_key(settings.SECRET_KEY)

# Build the Django app first: importing consumers needs the app registry ready.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from katiedj.middleware import RequestBodyDeadline  # noqa: E402
from networks.ingest import PublishApp, route_publish  # noqa: E402
from streaming.routing import websocket_urlpatterns  # noqa: E402
from streaming.security import listener_origin_validator  # noqa: E402
from streaming.views import metrics_app  # noqa: E402

publish_app = PublishApp()


async def http_application(scope, receive, send):  # type: ignore[no-untyped-def]
    """Publish requests go to the lean publish app, scrapes to the metrics app (neither
    waits behind Django's sync thread); everything else to Django."""
    if route_publish(scope["path"]):
        app = publish_app
    elif scope["path"] == "/metrics":
        app = metrics_app
    else:
        app = django_asgi_app
    await app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        # A body still arriving after REQUEST_BODY_TIMEOUT_SECONDS gets 408: slow senders
        # cannot hold connections and request tasks for as long as they like.
        "http": RequestBodyDeadline(http_application, settings.REQUEST_BODY_TIMEOUT_SECONDS),
        "websocket": listener_origin_validator(URLRouter(websocket_urlpatterns)),
    }
)
