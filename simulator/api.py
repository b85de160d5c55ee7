"""REST API for an organization's simulations (``/api/v1/orgs/<org>/simulations/``) and the
towns they run on (``/api/v1/orgs/<org>/towns/``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import exceptions, generics, serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from accounts.selectors import membership_get, membership_require
from accounts.validators import validate_no_control_characters
from katiedj.api import Conflict
from networks.models import Network
from networks.selectors import networks_of

from .models import Simulation, SimulationStatus, Topology, Town
from .output import EXTRAS
from .quotas import MAX_GRID_SIDE, QuotaExceeded, RunningLimitReached
from .selectors import simulation_get_for_org, simulations_of
from .services import (
    SETTINGS_FIELDS,
    simulation_check,
    simulation_create,
    simulation_problem,
    simulation_reset,
    simulation_set_status,
    simulation_update,
)
from .towns import (
    PATH_REFUSED,
    TownError,
    TownInUse,
    TownLimitReached,
    TownNotUsable,
    TownTooLarge,
    town_check_usable,
    town_delete,
    town_get_for_org,
    town_upload,
    towns_visible_to,
)

ACTIONS = {
    "start": SimulationStatus.RUNNING,
    "resume": SimulationStatus.RUNNING,
    "pause": SimulationStatus.PAUSED,
    "stop": SimulationStatus.STOPPED,
    "reset": None,
}


class QuotaRefused(exceptions.APIException):
    """A simulation past its organization's quota (docs/simulator.md, "Quotas")."""

    status_code = 400
    default_detail = "This simulation is past your organization's quota."
    default_code = "quota_exceeded"


class RunningQuotaRefused(QuotaRefused):
    """Starting it would run more simulations at once than the organization may: stop one."""

    status_code = 409


def _refused(error: QuotaExceeded) -> QuotaRefused:
    return (RunningQuotaRefused if isinstance(error, RunningLimitReached) else QuotaRefused)(
        str(error)
    )


class TopologyOptionsSerializer(serializers.Serializer):
    """What each topology takes: ``grid`` rows and cols, ``sumo`` a town; ``sample_net`` none."""

    rows = serializers.IntegerField(min_value=1, max_value=MAX_GRID_SIDE, required=False)
    cols = serializers.IntegerField(min_value=1, max_value=MAX_GRID_SIDE, required=False)
    town = serializers.IntegerField(
        min_value=1,
        max_value=2**63 - 1,
        required=False,
        help_text="The id of a ready town (GET /api/v1/orgs/{org}/towns/): one the "
        "organization uploaded, or a built-in one.",
    )


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

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        # A server path was accepted once (issue 14): say what replaced it, not "unknown".
        if isinstance(data, dict) and "path" in data:
            raise serializers.ValidationError(PATH_REFUSED)
        return super().to_internal_value(data)


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
        help_text='grid: {"rows": R, "cols": C} (1-100, default 4); sumo: {"town": ID} (an '
        "uploaded or built-in town, see /towns/); sample_net: {}.",
    )
    model_options = ModelOptionsField(required=False)
    problem = serializers.SerializerMethodField(
        help_text="Why a worker last stopped it (a model that cannot be built, its size past "
        "the quota, a tick past its time limit), or null; cleared when it starts again."
    )

    class Meta:
        model = Simulation
        # What a provider sets is the service's list (simulation_update), in its order.
        fields = [
            "id",
            *SETTINGS_FIELDS,
            "status",
            "step",
            "sim_time",
            "last_tick_at",
            "problem",
            "created_at",
        ]
        read_only_fields = ["status", "step", "sim_time", "last_tick_at", "created_at"]

    def get_problem(self, simulation: Simulation) -> str | None:
        return simulation_problem(simulation.pk) if simulation.pk else None

    def __init__(self, *args: object, organization_id: int | None = None, **kwargs: object):
        super().__init__(*args, **kwargs)
        self._organization_id = organization_id
        if organization_id is not None:
            # Only the organization's own networks can be chosen.
            self.fields["network"].queryset = networks_of(organization_id=organization_id)

    def validate(self, attrs: dict) -> dict:
        candidate = Simulation(**{**self._current(), **attrs})
        if "topology" in attrs or "topology_options" in attrs:
            _check_options_fit(candidate.topology, candidate.topology_options or {})
            _check_town(candidate, organization_id=self._organization_id)
        try:
            simulation_check(candidate)  # milliseconds: no model is built in a request
        except QuotaExceeded as error:
            raise _refused(error) from None
        except (ValueError, KeyError, TypeError, ArithmeticError) as error:
            raise serializers.ValidationError({"topology": [str(error)]}) from None
        return attrs

    def create(self, validated_data: dict) -> Simulation:
        data = dict(validated_data)
        network = data.pop("network")
        try:
            return simulation_create(network_id=network.pk, **data)
        except QuotaExceeded as error:
            raise _refused(error) from None

    def update(self, instance: Simulation, validated_data: dict) -> Simulation:
        try:
            return simulation_update(simulation=instance, changes=validated_data)
        except QuotaExceeded as error:
            raise _refused(error) from None

    def _current(self) -> dict:
        if self.instance is None:
            return {}
        names = ["topology", "topology_options", "model_options", "network", "steps_per_publish"]
        return {name: getattr(self.instance, name) for name in names}


def _check_options_fit(topology: str, options: dict[str, Any]) -> None:
    """The options are the topology's own (a town is checked by ``_check_town``)."""
    if topology == Topology.SUMO:
        if set(options) != {"town"}:
            raise serializers.ValidationError(
                {"topology_options": ['A SUMO topology takes exactly {"town": ID}.']}
            )
        return
    extra = sorted(set(options) - TOPOLOGY_OPTIONS.get(topology, set()))
    if extra:
        raise serializers.ValidationError(
            {"topology_options": [f"Not options of {topology}: {', '.join(extra)}."]}
        )


# --- Towns (issue 14): which town a simulation names ------------------------------------------


def _check_town(candidate: Simulation, *, organization_id: int | None) -> None:
    """A SUMO simulation names a ready town of its organization (or a built-in one)."""
    if candidate.topology != Topology.SUMO or organization_id is None:
        return
    town_id = (candidate.topology_options or {})["town"]
    try:
        town_check_usable(organization_id=organization_id, town_id=town_id)
    except TownNotUsable as error:
        raise serializers.ValidationError({"topology_options": [str(error)]}) from None


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
        simulation = serializer.save()  # simulation_update: a changed interval reaches beat
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
                description="No such action, or the simulation cannot start as configured "
                '(code "quota_exceeded": past a quota of its organization)'
            ),
            409: OpenApiResponse(
                description='Code "quota_exceeded": the organization already runs as many '
                "simulations as it may (SIMULATION_MAX_RUNNING_PER_ORGANIZATION)"
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
        except QuotaExceeded as error:
            raise _refused(error) from None
        except ValueError as error:
            raise serializers.ValidationError({"topology": [str(error)]}) from None
        return Response(SimulationSerializer(simulation).data)


# --- Towns (issue 14): upload, list, read, delete ---------------------------------------------


class PayloadTooLarge(exceptions.APIException):
    status_code = 413
    default_detail = "The upload is over the size limit."
    default_code = "payload_too_large"


# Room for the multipart envelope and the name field around the file itself.
_MULTIPART_SLACK = 64 * 1024


class TownSerializer(serializers.ModelSerializer):
    builtin = serializers.BooleanField(
        read_only=True, help_text="Offered by the operator to every organization."
    )
    warnings = serializers.ListField(
        child=serializers.DictField(),
        read_only=True,
        help_text="What the import changed or guessed: {code, message, count, items} each, "
        "codes u_turn_exit, long_phase, never_green, no_phase, unreachable, no_way_out.",
    )
    summary = serializers.DictField(
        read_only=True,
        help_text="streets, junctions, signals, sources, exits, lane_km, cells (at 1 s).",
    )

    class Meta:
        model = Town
        fields = [
            "id",
            "name",
            "file_name",
            "builtin",
            "status",
            "error",
            "warnings",
            "summary",
            "size_bytes",
            "created_at",
            "imported_at",
        ]
        read_only_fields = fields


class TownUploadSerializer(serializers.Serializer):
    file = serializers.FileField(
        help_text="A SUMO .net.xml (or a gzip of one), at most TOWN_MAX_BYTES of XML."
    )
    name = serializers.CharField(
        max_length=100,
        required=False,
        validators=[validate_no_control_characters],
        help_text="Default: the file's name without .net.xml.",
    )


def _town_error(error: TownError) -> exceptions.APIException:
    if isinstance(error, TownTooLarge):
        return PayloadTooLarge(str(error))
    if isinstance(error, TownLimitReached | TownInUse):
        return Conflict(str(error))
    return serializers.ValidationError({"file": [str(error)]})


class TownListView(generics.ListAPIView):
    """The organization's towns and the built-in ones (any member); upload one (admins)."""

    serializer_class = TownSerializer
    parser_classes = [MultiPartParser]

    def get_queryset(self) -> QuerySet[Town]:
        membership = membership_get(user=self.request.user, organization_slug=self.kwargs["org"])
        return towns_visible_to(organization_id=membership.organization_id)

    @extend_schema(
        request={"multipart/form-data": TownUploadSerializer},
        responses={
            202: OpenApiResponse(
                TownSerializer, description="Stored; its import runs in a worker (poll it)"
            ),
            409: OpenApiResponse(description="The organization's towns are at their bounds"),
            413: OpenApiResponse(description="The file is over TOWN_MAX_BYTES"),
            415: OpenApiResponse(description="Not multipart/form-data"),
        },
    )
    def post(self, request: Request, org: str) -> Response:
        actor = membership_require(user=request.user, organization_slug=org, minimum=Role.ADMIN)
        declared = request.META.get("CONTENT_LENGTH") or "0"
        if declared.isdigit() and int(declared) > settings.TOWN_MAX_BYTES + _MULTIPART_SLACK:
            raise PayloadTooLarge(
                f"A town may have at most {settings.TOWN_MAX_BYTES:,} bytes (TOWN_MAX_BYTES)."
            )
        upload = TownUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        file = upload.validated_data["file"]
        if file.size > settings.TOWN_MAX_BYTES:  # not read in (it waits in a temp file)
            raise PayloadTooLarge(
                f"The file is {file.size:,} bytes; a town may have at most "
                f"{settings.TOWN_MAX_BYTES:,} (TOWN_MAX_BYTES)."
            )
        try:
            town = town_upload(
                organization_id=actor.organization_id,
                name=upload.validated_data.get("name", ""),
                file_name=file.name or "",
                data=file.read(),
            )
        except TownError as error:
            raise _town_error(error) from None
        return Response(TownSerializer(town).data, status=status.HTTP_202_ACCEPTED)


class TownDetailView(APIView):
    """One town: its import state, warnings and summary (any member); delete it (admins)."""

    serializer_class = TownSerializer

    def get(self, request: Request, org: str, town_id: int) -> Response:
        membership = membership_get(user=request.user, organization_slug=org)
        town = town_get_for_org(organization_id=membership.organization_id, town_id=town_id)
        return Response(TownSerializer(town).data)

    @extend_schema(
        responses={
            204: OpenApiResponse(description="Deleted"),
            409: OpenApiResponse(description="A simulation runs on it, or it is built in"),
        }
    )
    def delete(self, request: Request, org: str, town_id: int) -> Response:
        actor = membership_require(user=request.user, organization_slug=org, minimum=Role.ADMIN)
        town = town_get_for_org(organization_id=actor.organization_id, town_id=town_id)
        if town.builtin:
            raise Conflict("Built-in towns belong to the operator: they cannot be deleted here.")
        try:
            town_delete(town=town)
        except TownError as error:
            raise _town_error(error) from None
        return Response(status=status.HTTP_204_NO_CONTENT)
