"""Simulations: a traffic model that Celery steps and that publishes on a network."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from networks.models import Network


class Topology(models.TextChoices):
    SAMPLE_NET = "sample_net", "The original 13-street demo network"
    GRID = "grid", "Manhattan grid"
    SUMO = "sumo", "SUMO .net.xml file"


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
        default=dict, blank=True, help_text='e.g. {"rows": 4, "cols": 4} or {"path": "…"}'
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
