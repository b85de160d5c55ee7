"""REST API for an organization's simulations (``/api/v1/orgs/<org>/simulations/``)."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from accounts.selectors import membership_get, membership_require
from networks.models import Network
from networks.selectors import networks_of

from .models import Simulation, SimulationStatus
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


class SimulationSerializer(serializers.ModelSerializer):
    network = serializers.SlugRelatedField(slug_field="slug", queryset=Network.objects.none())
    extras = serializers.ListField(
        child=serializers.ChoiceField(choices=sorted(EXTRAS)), required=False
    )

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
        try:
            simulation_validate(candidate)
        except (ValueError, KeyError, TypeError, OSError) as error:
            raise serializers.ValidationError({"topology": [str(error)]}) from None
        return attrs

    def _current(self) -> dict:
        if self.instance is None:
            return {}
        names = ["topology", "topology_options", "model_options", "network"]
        return {name: getattr(self.instance, name) for name in names}


class SimulationListView(generics.ListAPIView):
    """The organization's simulations (any member); create one, stopped (admins)."""

    serializer_class = SimulationSerializer

    def get_queryset(self) -> QuerySet[Simulation]:
        membership = membership_get(user=self.request.user, organization_slug=self.kwargs["org"])
        return simulations_of(organization_id=membership.organization_id)

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
