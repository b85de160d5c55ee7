from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from networks.models import Network
from simulator.models import Simulation, SimulationStatus, Topology
from simulator.services import (
    simulation_create,
    simulation_problem,
    simulation_reset,
    simulation_set_status,
)

ACTIONS = {
    "start": SimulationStatus.RUNNING,
    "resume": SimulationStatus.RUNNING,
    "pause": SimulationStatus.PAUSED,
    "stop": SimulationStatus.STOPPED,
}


class Command(BaseCommand):
    help = (
        "Create, start, pause, resume, stop or reset a traffic simulation; or list them. "
        "Creating and starting check the organization's quotas like the API does."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["create", "list", "reset", *ACTIONS])
        parser.add_argument("name", nargs="?", help="Simulation name")
        parser.add_argument("--network", help="Network slug to publish on (create)")
        parser.add_argument(
            "--topology", choices=[Topology.GRID, Topology.SAMPLE_NET], default=Topology.GRID
        )
        parser.add_argument("--rows", type=int, default=4)
        parser.add_argument("--cols", type=int, default=4)
        parser.add_argument("--interval", type=float, default=1.0, help="Seconds between samples")
        parser.add_argument("--steps-per-publish", type=int, default=1)
        parser.add_argument(
            "--ignore-running-limit",
            action="store_true",
            help="start/resume: run it even if its organization already runs "
            "SIMULATION_MAX_RUNNING_PER_ORGANIZATION simulations (the operator's call; the "
            "size and time quotas still apply).",
        )

    def handle(self, *args: object, **options: object) -> None:
        action, name = options["action"], options["name"]
        if action == "list":
            for simulation in Simulation.objects.select_related("network").defer("state"):
                problem = simulation_problem(simulation.pk) or ""
                columns = [simulation.name, simulation.network.slug, simulation.status,
                           f"step {simulation.step}", problem]  # fmt: skip
                self.stdout.write("\t".join(columns))
            return
        if not name:
            raise CommandError("Name the simulation.")
        if action == "create":
            self._create(name, options)
            return
        simulation = Simulation.objects.filter(name=name).select_related("network").first()
        if simulation is None:
            raise CommandError(f"No simulation named {name!r}.")
        try:
            if action == "reset":
                simulation_reset(simulation=simulation)
            else:
                simulation_set_status(
                    simulation=simulation,
                    status=ACTIONS[action],
                    enforce_running_limit=not options["ignore_running_limit"],
                )
        except ValueError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"{simulation.name}: {simulation.status}, step {simulation.step}")

    def _create(self, name: str, options: dict) -> None:
        network = Network.objects.filter(slug=options["network"]).first()
        if network is None:
            raise CommandError(f"No network {options['network']!r}.")
        grid = options["topology"] == Topology.GRID
        try:
            simulation = simulation_create(
                network_id=network.pk,
                name=name,
                topology=options["topology"],
                topology_options={"rows": options["rows"], "cols": options["cols"]} if grid else {},
                publish_interval_seconds=options["interval"],
                steps_per_publish=options["steps_per_publish"],
            )
        except ValidationError as error:
            raise CommandError("; ".join(error.messages)) from None
        except ValueError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"Created {simulation} (start it with: simulation start {name!r})")
