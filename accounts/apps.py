from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and organizations"

    def ready(self) -> None:
        from . import receivers, schema  # noqa: F401  (connect signals; OpenAPI auth extension)
