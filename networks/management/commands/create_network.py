from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.services import organization_get_or_create
from networks.services import network_create


class Command(BaseCommand):
    help = "Create a network owned by an organization (the organization is created if new)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="URL name of the network, e.g. city_traffic")
        parser.add_argument("--org", required=True, help="Organization slug")
        parser.add_argument("--name", default="", help="Display name (default: the slug)")
        parser.add_argument("--description", default="")
        parser.add_argument("--paid", action="store_true", help="Only entitled listeners")

    def handle(self, *args: object, **options: object) -> None:
        organization, _ = organization_get_or_create(slug=str(options["org"]))
        try:
            network = network_create(
                organization=organization,
                slug=str(options["slug"]),
                name=str(options["name"]),
                description=str(options["description"]),
                is_public=not options["paid"],
            )
        except ValidationError as error:
            raise CommandError("; ".join(error.messages)) from None
        self.stdout.write(f"Created network {network.slug} for {organization.slug}.")
