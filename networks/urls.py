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
