from django.apps import AppConfig


class NetworksConfig(AppConfig):
    name = "networks"
    verbose_name = "Networks and publisher keys"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (connects cache invalidation)
