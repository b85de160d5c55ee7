from django.core.management.base import BaseCommand, CommandError, CommandParser

from networks.models import Network
from simulator.models import Simulation, SimulationStatus, Topology
from simulator.services import simulation_reset, simulation_set_status

ACTIONS = {
    "start": SimulationStatus.RUNNING,
    "resume": SimulationStatus.RUNNING,
    "pause": SimulationStatus.PAUSED,
    "stop": SimulationStatus.STOPPED,
}


class Command(BaseCommand):
    help = "Create, start, pause, resume, stop or reset a traffic simulation; or list them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["create", "list", "reset", *ACTIONS])
        parser.add_argument("name", nargs="?", help="Simulation name")
        parser.add_argument("--network", help="Network slug to publish on (create)")
        parser.add_argument("--topology", choices=Topology.values, default=Topology.GRID)
        parser.add_argument("--rows", type=int, default=4)
        parser.add_argument("--cols", type=int, default=4)
        parser.add_argument("--interval", type=float, default=1.0, help="Seconds between samples")
        parser.add_argument("--steps-per-publish", type=int, default=1)

    def handle(self, *args: object, **options: object) -> None:
        action, name = options["action"], options["name"]
        if action == "list":
            for simulation in Simulation.objects.select_related("network"):
                self.stdout.write(f"{simulation.name}\t{simulation.network.slug}\t"
                                  f"{simulation.status}\tstep {simulation.step}")  # fmt: skip
            return
        if not name:
            raise CommandError("Name the simulation.")
        if action == "create":
            network = Network.objects.filter(slug=options["network"]).first()
            if network is None:
                raise CommandError(f"No network {options['network']!r}.")
            simulation = Simulation.objects.create(
                name=name,
                network=network,
                topology=options["topology"],
                topology_options={"rows": options["rows"], "cols": options["cols"]},
                publish_interval_seconds=options["interval"],
                steps_per_publish=options["steps_per_publish"],
            )
            self.stdout.write(f"Created {simulation} (start it with: simulation start {name!r})")
            return
        simulation = Simulation.objects.filter(name=name).first()
        if simulation is None:
            raise CommandError(f"No simulation named {name!r}.")
        try:
            if action == "reset":
                simulation_reset(simulation=simulation)
            else:
                simulation_set_status(simulation=simulation, status=ACTIONS[action])
        except ValueError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"{simulation.name}: {simulation.status}, step {simulation.step}")
