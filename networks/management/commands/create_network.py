from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.services import organization_get_or_create
from networks.models import Backpressure
from networks.services import network_create


class Command(BaseCommand):
    help = "Create a network owned by an organization (the organization is created if new)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="URL name of the network, e.g. city_traffic")
        parser.add_argument("--org", required=True, help="Organization slug")
        parser.add_argument("--name", default="", help="Display name (default: the slug)")
        parser.add_argument("--description", default="")
        parser.add_argument("--paid", action="store_true", help="Only entitled listeners")
        parser.add_argument(
            "--backpressure",
            choices=Backpressure.values,
            default=Backpressure.CONFLATE,
            help="What a listener that reads too slowly gets (default: conflate)",
        )
        parser.add_argument(
            "--history",
            type=int,
            default=1000,
            help="Recent messages kept for listeners who resume (default 1000)",
        )
        parser.add_argument(
            "--backpressure-buffer",
            type=int,
            default=100,
            help="Messages held for a lagging listener (drop and disconnect policies)",
        )

    def handle(self, *args: object, **options: object) -> None:
        organization, _ = organization_get_or_create(slug=str(options["org"]))
        try:
            network = network_create(
                organization=organization,
                slug=str(options["slug"]),
                name=str(options["name"]),
                description=str(options["description"]),
                is_public=not options["paid"],
                history_max_messages=options["history"],
                backpressure=options["backpressure"],
                backpressure_buffer=options["backpressure_buffer"],
            )
        except ValidationError as error:
            raise CommandError("; ".join(error.messages)) from None
        self.stdout.write(f"Created network {network.slug} for {organization.slug}.")
