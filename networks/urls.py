import re

from django.urls import path, re_path

from . import views

app_name = "networks"

legacy_urlpatterns = [
    # With or without a trailing slash: old generators used both.
    re_path(r"^api/publish/?$", views.publish_legacy, name="publish"),
    re_path(r"^publish/?$", views.publish_legacy, name="publish-alias"),
]

api_v1_urlpatterns = [
    path(
        "networks/<str:slug>/messages",
        views.PublishMessageView.as_view(),
        name="network-messages",
    ),
]


_PUBLISH_PATH = re.compile(r"^/(?:api/)?publish/?$|^/api/v1/networks/[^/]+/messages/?$")


def is_publish_path(path: str) -> bool:
    """True for the URLs served by the publish views (routed past the session middleware)."""
    return _PUBLISH_PATH.match(path) is not None
