"""Simulations: a traffic model that Celery steps and that publishes on a network; towns:
the SUMO street networks providers upload for them."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from accounts.models import Organization
from accounts.validators import validate_no_control_characters
from networks.models import Network


class Topology(models.TextChoices):
    SAMPLE_NET = "sample_net", "The original 13-street demo network"
    GRID = "grid", "Manhattan grid"
    SUMO = "sumo", "Uploaded SUMO town"


class SimulationStatus(models.TextChoices):
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    STOPPED = "stopped", "Stopped"


class Simulation(models.Model):
    """A running (or paused) traffic model and where its samples go."""

    name = models.CharField(max_length=100)
    network = models.ForeignKey(Network, on_delete=models.CASCADE, related_name="simulations")
    topology = models.CharField(max_length=20, choices=Topology.choices, default=Topology.GRID)
    topology_options = models.JSONField(
        default=dict, blank=True, help_text='e.g. {"rows": 4, "cols": 4} or {"town": 12}'
    )
    model_options = models.JSONField(
        default=dict,
        blank=True,
        help_text='ModelParams, e.g. {"dt": 1.0, "signal_mode": "averaged"}',
    )
    steps_per_publish = models.PositiveIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(100_000)]
    )
    publish_interval_seconds = models.FloatField(
        default=1.0, validators=[MinValueValidator(0.2), MaxValueValidator(86_400)]
    )
    extras = models.JSONField(
        default=list, blank=True, help_text='Any of "flows", "signals", "queues"'
    )
    status = models.CharField(
        max_length=10, choices=SimulationStatus.choices, default=SimulationStatus.STOPPED
    )
    only_while_listened = models.BooleanField(
        default=False,
        help_text="Step only while the network has listeners (saves CPU; time stands still).",
    )
    # The model's saved state (np.savez bytes) after ``step`` steps; empty: start fresh.
    state = models.BinaryField(blank=True, default=b"", editable=False)
    step = models.PositiveBigIntegerField(default=0, editable=False)
    sim_time = models.FloatField(default=0.0, editable=False)
    last_tick_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} → {self.network} ({self.status})"

    @property
    def schedule_name(self) -> str:
        """The name of its Celery beat entry."""
        return f"simulation-{self.pk}"


class TownStatus(models.TextChoices):
    PROCESSING = "processing", "Processing"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


class Town(models.Model):
    """A SUMO street network uploaded by an organization (or, without one, offered to all by
    the operator), imported by a Celery task into a topology simulations can run on.

    Immutable once imported: a new file is a new town, so a simulation's town never changes
    under it (and per-process caches of built topologies stay valid).
    """

    organization = models.ForeignKey(
        Organization,
        on_delete=models.CASCADE,
        related_name="towns",
        null=True,
        blank=True,
        help_text="Empty: a built-in town the operator offers to every organization.",
    )
    name = models.CharField(max_length=100, validators=[validate_no_control_characters])
    file_name = models.CharField(max_length=255, blank=True)
    # The uploaded bytes (XML or gzip), kept so a better importer can read them again.
    source = models.BinaryField(editable=False)
    size_bytes = models.PositiveIntegerField(editable=False)
    status = models.CharField(
        max_length=12, choices=TownStatus.choices, default=TownStatus.PROCESSING
    )
    error = models.TextField(blank=True, help_text="Why the import failed.")
    warnings = models.JSONField(default=list, blank=True, editable=False)
    summary = models.JSONField(default=dict, blank=True, editable=False)
    # The imported network (simulator.model.serialize) and its junctions' coordinates.
    topology = models.JSONField(null=True, blank=True, editable=False)
    layout = models.JSONField(default=dict, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    imported_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name", "pk"]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"

    @property
    def builtin(self) -> bool:
        """Offered by the operator to every organization."""
        return self.organization_id is None
