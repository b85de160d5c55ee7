from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import Simulation, SimulationStatus, Town
from .services import simulation_reset, simulation_set_status


@admin.register(Simulation)
class SimulationAdmin(admin.ModelAdmin):
    list_display = ["name", "network", "topology", "status", "step", "sim_time", "last_tick_at"]
    list_filter = ["status", "topology"]
    readonly_fields = ["step", "sim_time", "last_tick_at"]
    actions = ["start", "pause", "stop", "reset"]

    def _set(self, request: HttpRequest, queryset: QuerySet[Simulation], status: str) -> None:
        for simulation in queryset:
            try:
                simulation_set_status(simulation=simulation, status=SimulationStatus(status))
            except ValueError as error:  # a bad topology or CFL violation
                self.message_user(request, f"{simulation}: {error}", level=messages.ERROR)

    @admin.action(description="Start / resume")
    def start(self, request: HttpRequest, queryset: QuerySet[Simulation]) -> None:
        self._set(request, queryset, SimulationStatus.RUNNING)

    @admin.action(description="Pause")
    def pause(self, request: HttpRequest, queryset: QuerySet[Simulation]) -> None:
        self._set(request, queryset, SimulationStatus.PAUSED)

    @admin.action(description="Stop")
    def stop(self, request: HttpRequest, queryset: QuerySet[Simulation]) -> None:
        self._set(request, queryset, SimulationStatus.STOPPED)

    @admin.action(description="Reset to step 0")
    def reset(self, request: HttpRequest, queryset: QuerySet[Simulation]) -> None:
        for simulation in queryset:
            simulation_reset(simulation=simulation)


@admin.register(Town)
class TownAdmin(admin.ModelAdmin):
    """Uploaded towns (read-only here: a new file is a new town); built-in ones have no
    organization (``manage.py town add``)."""

    list_display = ["name", "organization", "status", "size_bytes", "created_at", "imported_at"]
    list_filter = ["status"]
    fields = ["name", "organization", "file_name", "status", "error", "warnings", "summary"]
    readonly_fields = ["organization", "file_name", "status", "error", "warnings", "summary"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # uploads go through the API or `manage.py town add`, which import them
