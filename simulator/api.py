"""REST API for an organization's simulations (``/api/v1/orgs/<org>/simulations/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from accounts.selectors import membership_get, membership_require
from networks.models import Network
from networks.selectors import networks_of

from .models import Simulation, SimulationStatus, Topology
from .output import EXTRAS
from .selectors import simulation_get_for_org, simulations_of
from .services import simulation_reset, simulation_set_status, simulation_validate

ACTIONS = {
    "start": SimulationStatus.RUNNING,
    "resume": SimulationStatus.RUNNING,
    "pause": SimulationStatus.PAUSED,
    "stop": SimulationStatus.STOPPED,
    "reset": None,
}


# A grid's side: 100 x 100 is already past SIMULATION_MAX_CELLS at the default 1 s step.
MAX_GRID_SIDE = 100
SUMO_SUFFIXES = (".net.xml", ".net.xml.gz")


class TopologyOptionsSerializer(serializers.Serializer):
    """What each topology takes: ``grid`` rows and cols, ``sumo`` a path; ``sample_net`` none."""

    rows = serializers.IntegerField(min_value=1, max_value=MAX_GRID_SIDE, required=False)
    cols = serializers.IntegerField(min_value=1, max_value=MAX_GRID_SIDE, required=False)
    path = serializers.CharField(
        max_length=255,
        required=False,
        help_text="A .net.xml or .net.xml.gz file in the server's SUMO directory "
        "(SIMULATION_SUMO_DIR), by name.",
    )

    def validate_path(self, value: str) -> str:
        """The file, resolved inside the operator's SUMO directory (nothing else is read)."""
        if not settings.SIMULATION_SUMO_DIR:
            raise serializers.ValidationError("This server offers no SUMO networks.")
        directory = Path(settings.SIMULATION_SUMO_DIR).resolve()
        candidate = (directory / value).resolve()
        try:
            found = (
                candidate.is_relative_to(directory)
                and candidate.name.endswith(SUMO_SUFFIXES)
                and candidate.is_file()  # a regular file: no FIFO, device or directory
            )
        except OSError:
            found = False
        if not found:
            raise serializers.ValidationError(
                "No such SUMO network in the server's SUMO directory (.net.xml or .net.xml.gz)."
            )
        return str(candidate)


class ModelOptionsSerializer(serializers.Serializer):
    """``ModelParams``: the numerical parameters of a run."""

    dt = serializers.FloatField(
        min_value=0.001, max_value=3600, required=False, help_text="Time step in seconds."
    )
    cells_per_street = serializers.IntegerField(
        min_value=1,
        max_value=settings.SIMULATION_MAX_CELLS,
        required=False,
        allow_null=True,
        help_text="Force this many cells on every street (default: as many as the CFL rule "
        "allows).",
    )
    signal_mode = serializers.ChoiceField(choices=["switching", "averaged"], required=False)
    backend = serializers.ChoiceField(choices=["auto", "numpy", "numba"], required=False)


class _OptionsField(serializers.JSONField):
    """A JSON object of known keys only, each checked by ``options_class``'s fields."""

    options_class: type[serializers.Serializer]

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise serializers.ValidationError("Expected an object.")
        options = self.options_class(data=data)
        unknown = sorted(set(data) - set(options.fields))
        if unknown:
            raise serializers.ValidationError(f"Unknown option(s): {', '.join(unknown)}.")
        if not options.is_valid():
            raise serializers.ValidationError(options.errors)
        return dict(options.validated_data)


@extend_schema_field(TopologyOptionsSerializer)
class TopologyOptionsField(_OptionsField):
    options_class = TopologyOptionsSerializer


@extend_schema_field(ModelOptionsSerializer)
class ModelOptionsField(_OptionsField):
    options_class = ModelOptionsSerializer


# Which topology takes which options (the others are refused, not ignored).
TOPOLOGY_OPTIONS = {Topology.SAMPLE_NET: set(), Topology.GRID: {"rows", "cols"}}


class SimulationSerializer(serializers.ModelSerializer):
    network = serializers.SlugRelatedField(slug_field="slug", queryset=Network.objects.none())
    extras = serializers.ListField(
        child=serializers.ChoiceField(choices=sorted(EXTRAS)), required=False
    )
    topology_options = TopologyOptionsField(
        required=False,
        help_text='grid: {"rows": R, "cols": C} (1-100, default 4); sumo: {"path": NAME}; '
        "sample_net: {}.",
    )
    model_options = ModelOptionsField(required=False)

    class Meta:
        model = Simulation
        fields = [
            "id",
            "name",
            "network",
            "topology",
            "topology_options",
            "model_options",
            "steps_per_publish",
            "publish_interval_seconds",
            "extras",
            "only_while_listened",
            "status",
            "step",
            "sim_time",
            "last_tick_at",
            "created_at",
        ]
        read_only_fields = ["status", "step", "sim_time", "last_tick_at", "created_at"]

    def __init__(self, *args: object, organization_id: int | None = None, **kwargs: object):
        super().__init__(*args, **kwargs)
        if organization_id is not None:
            # Only the organization's own networks can be chosen.
            self.fields["network"].queryset = networks_of(organization_id=organization_id)

    def validate(self, attrs: dict) -> dict:
        candidate = Simulation(**{**self._current(), **attrs})
        if "topology" in attrs or "topology_options" in attrs:
            _check_options_fit(candidate.topology, candidate.topology_options or {})
        try:
            simulation_validate(candidate)
        except (ValueError, KeyError, TypeError, OSError, ArithmeticError) as error:
            raise serializers.ValidationError({"topology": [str(error)]}) from None
        return attrs

    def _current(self) -> dict:
        if self.instance is None:
            return {}
        names = ["topology", "topology_options", "model_options", "network"]
        return {name: getattr(self.instance, name) for name in names}


def _check_options_fit(topology: str, options: dict[str, Any]) -> None:
    """The options are the topology's own (a path given here was checked by its field)."""
    if topology == Topology.SUMO:
        if set(options) != {"path"}:
            raise serializers.ValidationError(
                {"topology_options": ['A SUMO topology takes exactly {"path": NAME}.']}
            )
        return
    extra = sorted(set(options) - TOPOLOGY_OPTIONS.get(topology, set()))
    if extra:
        raise serializers.ValidationError(
            {"topology_options": [f"Not options of {topology}: {', '.join(extra)}."]}
        )


class SimulationListView(generics.ListAPIView):
    """The organization's simulations (any member); create one, stopped (admins)."""

    serializer_class = SimulationSerializer

    def get_queryset(self) -> QuerySet[Simulation]:
        membership = membership_get(user=self.request.user, organization_slug=self.kwargs["org"])
        return simulations_of(organization_id=membership.organization_id)

    @extend_schema(responses={201: SimulationSerializer})
    def post(self, request: Request, org: str) -> Response:
        actor = membership_require(user=request.user, organization_slug=org, minimum=Role.ADMIN)
        serializer = SimulationSerializer(data=request.data, organization_id=actor.organization_id)
        serializer.is_valid(raise_exception=True)
        simulation = serializer.save()
        return Response(SimulationSerializer(simulation).data, status=status.HTTP_201_CREATED)


class SimulationDetailView(APIView):
    """One simulation: read (any member), change its parameters (admins)."""

    serializer_class = SimulationSerializer

    def get(self, request: Request, org: str, simulation_id: int) -> Response:
        membership = membership_get(user=request.user, organization_slug=org)
        simulation = simulation_get_for_org(
            organization_id=membership.organization_id, simulation_id=simulation_id
        )
        return Response(SimulationSerializer(simulation).data)

    def patch(self, request: Request, org: str, simulation_id: int) -> Response:
        actor = membership_require(user=request.user, organization_slug=org, minimum=Role.ADMIN)
        simulation = simulation_get_for_org(
            organization_id=actor.organization_id, simulation_id=simulation_id
        )
        serializer = SimulationSerializer(
            simulation, data=request.data, partial=True, organization_id=actor.organization_id
        )
        serializer.is_valid(raise_exception=True)
        simulation = serializer.save()
        # A changed interval must reach the beat schedule.
        simulation_set_status(simulation=simulation, status=SimulationStatus(simulation.status))
        return Response(SimulationSerializer(simulation).data)


class SimulationActionView(APIView):
    """``start``, ``pause``, ``resume``, ``stop`` or ``reset`` a simulation (admins)."""

    serializer_class = SimulationSerializer

    @extend_schema(
        operation_id="v1_orgs_simulations_action",
        request=None,
        parameters=[OpenApiParameter("action", str, "path", enum=list(ACTIONS))],
        responses={
            200: SimulationSerializer,
            400: OpenApiResponse(
                description="No such action, or the simulation cannot start as configured"
            ),
        },
    )
    def post(self, request: Request, org: str, simulation_id: int, action: str) -> Response:
        actor = membership_require(user=request.user, organization_slug=org, minimum=Role.ADMIN)
        simulation = simulation_get_for_org(
            organization_id=actor.organization_id, simulation_id=simulation_id
        )
        if action not in ACTIONS:
            raise serializers.ValidationError({"action": [f"One of: {', '.join(ACTIONS)}"]})
        try:
            if ACTIONS[action] is None:
                simulation_reset(simulation=simulation)
            else:
                simulation_set_status(simulation=simulation, status=ACTIONS[action])
        except ValueError as error:
            raise serializers.ValidationError({"topology": [str(error)]}) from None
        return Response(SimulationSerializer(simulation).data)
