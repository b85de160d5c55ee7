from django.core.management.base import BaseCommand, CommandError, CommandParser

from networks.models import ApiKey
from networks.services import api_key_revoke


class Command(BaseCommand):
    help = "Revoke a publisher key, named by its display prefix (e.g. kdj_AbCd1234)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix")
        parser.add_argument("--org", required=True, help="Organization slug")

    def handle(self, *args: object, **options: object) -> None:
        matches = list(
            ApiKey.objects.filter(
                organization__slug=options["org"], prefix=options["prefix"], revoked_at__isnull=True
            )
        )
        if len(matches) != 1:
            raise CommandError(f"{len(matches)} active keys match; name exactly one.")
        api_key_revoke(api_key=matches[0])
        self.stdout.write(f"Revoked {matches[0]}.")
