from django.apps import AppConfig


class KatieDJConfig(AppConfig):
    """The wiring package is an app only to host project-wide management commands."""

    name = "katiedj"
    verbose_name = "KatieDJ"
