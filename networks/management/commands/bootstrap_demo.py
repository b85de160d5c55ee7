import json
import shlex

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from networks.demo import demo_bootstrap


class Command(BaseCommand):
    help = "Create (idempotently) the demo organization, sample_net and its publisher key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.PORT)

    def handle(self, *args: object, **options: object) -> None:
        try:
            setup = demo_bootstrap(
                key_file=settings.VAR_DIR / "demo_api_key", demo_key=settings.DEMO_API_KEY
            )
        except ValueError as error:
            raise CommandError(str(error)) from None
        base = f"{options['host']}:{options['port']}"
        slug = setup.network.slug
        sample = {"state": {"0": 12.5, "1": 40.0}, "timestamp": "2026-01-01T00:00:00Z"}
        body = json.dumps({"network": slug, "data": sample})
        status = "created" if setup.created else "reused"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"KatieDJ demo ({status}): network {slug!r}",
                    f"  demo publisher key: {setup.api_key}",
                    "",
                    "Listen (any WebSocket client; the Python client is in clients/python):",
                    f"  katiedj-listen ws://{base}/ws/networks/{slug}/",
                    f"  katiedj-listen ws://{base}/macro/sample/      (the original path)",
                    "",
                    "Publish:",
                    f"  curl -sS -X POST http://{base}/api/publish \\",
                    f"       -H {shlex.quote('API-KEY: ' + setup.api_key)} \\",
                    "       -H 'Content-Type: application/json' \\",
                    f"       -d {shlex.quote(body)}",
                    "",
                ]
            )
        )
