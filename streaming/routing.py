from django.conf import settings
from django.urls import path, re_path

from .consumers import NetworkListenerConsumer

websocket_urlpatterns = [
    re_path(r"^ws/networks/(?P<slug>[^/]+)/?$", NetworkListenerConsumer.as_asgi()),
    # The original Katie DJ listener path, fixed to the demo network.
    path(
        "macro/sample/",
        NetworkListenerConsumer.as_asgi(),
        kwargs={"slug": settings.DEMO_NETWORK_SLUG},
    ),
]
