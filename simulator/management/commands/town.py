"""``manage.py town add FILE`` / ``town list``: towns from the operator's own files."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Organization
from simulator.models import Town
from simulator.towns import town_default_name, town_import


class Command(BaseCommand):
    help = (
        "Add a SUMO network as a built-in town every organization may use (or, with --org, as "
        "one organization's), imported at once; or list the towns."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["add", "list"])
        parser.add_argument("file", nargs="?", help="A .net.xml or .net.xml.gz file (add)")
        parser.add_argument("--name", default="", help="Default: the file's name")
        parser.add_argument("--org", default="", help="Organization slug (default: built in)")

    def handle(self, *args: object, **options: object) -> None:
        if options["action"] == "list":
            for town in Town.objects.select_related("organization").defer("source", "topology"):
                owner = town.organization.slug if town.organization else "(built in)"
                self.stdout.write(f"{town.pk}\t{town.name}\t{owner}\t{town.status}")
            return
        if not options["file"]:
            raise CommandError("Name the file to add.")
        path = Path(str(options["file"]))
        organization = None
        if options["org"]:
            organization = Organization.objects.filter(slug=options["org"]).first()
            if organization is None:
                raise CommandError(f"No organization {options['org']!r}.")
        try:
            data = path.read_bytes()
        except OSError as error:
            raise CommandError(f"Cannot read {path}: {error.strerror}") from None
        # The same import as an upload's (same limits), run here rather than in a worker.
        town = Town.objects.create(
            organization=organization,
            name=str(options["name"]) or town_default_name(path.name),
            file_name=path.name,
            source=data,
            size_bytes=len(data),
        )
        town_import(town_id=town.pk)
        town.refresh_from_db()
        if town.error:
            raise CommandError(f"Town {town.pk} ({town.name}) failed: {town.error}")
        notes = "; ".join(w["message"] for w in town.warnings) or "no warnings"
        self.stdout.write(f"Town {town.pk} ({town.name}): {town.status}. {notes}")
