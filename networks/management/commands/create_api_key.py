from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Organization
from networks.models import Network
from networks.services import api_key_create


class Command(BaseCommand):
    help = "Create a publisher key for some of an organization's networks; prints it once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="Organization slug")
        parser.add_argument("--name", required=True, help="What the key is for")
        parser.add_argument(
            "--network", action="append", required=True, help="Network slug (repeatable)"
        )
        parser.add_argument(
            "--rate-limit",
            type=int,
            default=None,
            help="Messages per second (burst twice that); default PUBLISH_RATE_PER_SECOND",
        )
        parser.add_argument(
            "--key", default=None, help="Import this exact string (e.g. an original Katie DJ key)"
        )

    def handle(self, *args: object, **options: object) -> None:
        organization = Organization.objects.filter(slug=options["org"]).first()
        if organization is None:
            raise CommandError(f"No organization with slug {options['org']!r}.")
        slugs = set(options["network"])  # type: ignore[arg-type]
        networks = list(Network.objects.filter(organization=organization, slug__in=slugs))
        missing = slugs - {n.slug for n in networks}
        if missing:
            raise CommandError(
                f"{organization.slug} has no network(s): {', '.join(sorted(missing))}"
            )
        try:
            api_key, secret = api_key_create(
                organization=organization,
                name=str(options["name"]),
                networks=networks,
                raw_key=options["key"],  # type: ignore[arg-type]
                rate_limit_per_second=options["rate_limit"],  # type: ignore[arg-type]
            )
        except ValueError as error:
            raise CommandError(str(error)) from None
        self.stderr.write(f"Created key {api_key.prefix}… ({api_key.name}). It is shown only once:")
        self.stdout.write(secret)
