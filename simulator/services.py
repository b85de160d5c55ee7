"""Simulations: build, start/pause/resume/stop/reset, and the tick that steps and publishes."""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta
from functools import lru_cache

import numpy as np
from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from networks.selectors import network_get_by_slug
from networks.services import message_publish
from streaming.selectors import listeners_now

from .model import ModelParams, TrafficModel, load_sumo_net, manhattan_grid, sample_net
from .model.topology import Topology as ModelTopology
from .models import Simulation, SimulationStatus, Topology

logger = logging.getLogger(__name__)
TICK_TASK = "simulator.tasks.simulation_tick"


def build_topology(simulation: Simulation, *, cache: bool = True) -> ModelTopology:
    """The simulation's street network; built once per process (topologies are not mutated).

    ``cache=False`` builds it without keeping it: a configuration that is only being checked
    must not pin a topology (tens of MB for a large grid) in the process's cache.
    """
    dt = float((simulation.model_options or {}).get("dt", ModelParams.dt))
    options = json.dumps(simulation.topology_options or {}, sort_keys=True)
    build = _topology if cache else _topology.__wrapped__
    return build(simulation.topology, options, dt)


@lru_cache(maxsize=32)
def _topology(kind: str, options_json: str, dt: float) -> ModelTopology:
    # Every tick rebuilds the model: a SUMO file must not be parsed again each time.
    options = json.loads(options_json)
    if kind == Topology.SAMPLE_NET:
        return sample_net()
    if kind == Topology.SUMO:
        return load_sumo_net(options["path"], dt=dt)  # short edges stretched to dt's CFL bound
    return manhattan_grid(int(options.get("rows", 4)), int(options.get("cols", 4)))


def build_model(simulation: Simulation, *, cache: bool = True) -> TrafficModel:
    """The simulation's model, restored from its saved state when it has one."""
    topology = build_topology(simulation, cache=cache)
    params = ModelParams(**(simulation.model_options or {}))
    limit = settings.SIMULATION_MAX_CELLS
    if not simulation.state:
        return TrafficModel(topology, params, max_cells=limit)
    with np.load(io.BytesIO(bytes(simulation.state)), allow_pickle=False) as saved:
        state = {key: _from_npz(saved[key]) for key in saved.files}
    return TrafficModel.from_state(topology, state, params, max_cells=limit)


def _from_npz(value: np.ndarray) -> object:
    # Scalars were stored as 0-d arrays; the layout string as a 0-d unicode array.
    return value.item() if value.ndim == 0 else value


def _to_bytes(model: TrafficModel) -> bytes:
    buffer = io.BytesIO()
    state = {k: np.asarray(v) for k, v in model.state_dict().items()}
    np.savez_compressed(buffer, **state)
    return buffer.getvalue()


def simulation_validate(simulation: Simulation) -> None:
    """Build the model once: a bad topology or CFL violation fails here, with its message.

    Nothing is cached: what the API is asked to check (refused or not) takes no memory after.
    """
    build_model(simulation, cache=False)


# --- Scheduling -------------------------------------------------------------------------------


def _sync_schedule(simulation: Simulation) -> None:
    """Mirror the simulation into Celery beat's database schedule (production only)."""
    if not settings.REDIS_URL:
        return  # embedded mode: katiedj.periodic reads running simulations directly
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    if simulation.status == SimulationStatus.STOPPED:
        PeriodicTask.objects.filter(name=simulation.schedule_name).delete()
        return
    # Beat's resolution is about a second: shorter intervals run every second.
    interval, _ = IntervalSchedule.objects.get_or_create(
        every=max(1, round(simulation.publish_interval_seconds)), period=IntervalSchedule.SECONDS
    )
    PeriodicTask.objects.update_or_create(
        name=simulation.schedule_name,
        defaults={
            "task": TICK_TASK,
            "interval": interval,
            "args": json.dumps([simulation.pk]),
            "enabled": simulation.status == SimulationStatus.RUNNING,
            # A tick that waited longer than its interval is useless: the next one is coming.
            "expire_seconds": max(1, round(simulation.publish_interval_seconds)),
        },
    )


@transaction.atomic
def simulation_set_status(*, simulation: Simulation, status: SimulationStatus) -> Simulation:
    """Start/resume (running), pause (keeps its state), or stop (keeps state, unscheduled)."""
    if status == SimulationStatus.RUNNING:
        simulation_validate(simulation)
    simulation.status = status
    simulation.save(update_fields=["status", "updated_at"])
    _sync_schedule(simulation)
    return simulation


@transaction.atomic
def simulation_reset(*, simulation: Simulation) -> Simulation:
    """Back to step 0 and an empty town (its status is unchanged)."""
    simulation.state = b""
    simulation.step = 0
    simulation.sim_time = 0.0
    simulation.save(update_fields=["state", "step", "sim_time", "updated_at"])
    return simulation


# --- The tick ---------------------------------------------------------------------------------


def simulation_tick(*, simulation_id: int) -> int | None:
    """Advance a running simulation by ``steps_per_publish`` steps and publish one sample.

    Idempotent against duplicated or late tasks: the row is locked (a concurrent tick gives
    up at once), and a tick arriving within half an interval of the previous one is dropped,
    so the model never double-steps and samples go out in step order. Returns the new step,
    or None when nothing was done.
    """
    with transaction.atomic():
        try:
            simulation = (
                Simulation.objects.select_for_update(nowait=True)
                .select_related("network")
                .filter(pk=simulation_id)
                .first()
            )
        except DatabaseError:
            return None  # another tick holds the lock
        if simulation is None or simulation.status != SimulationStatus.RUNNING:
            return None
        now = timezone.now()
        too_soon = timedelta(seconds=simulation.publish_interval_seconds / 2)
        if simulation.last_tick_at and now - simulation.last_tick_at < too_soon:
            return None
        network = network_get_by_slug(slug=simulation.network.slug)
        if network is None or network.archived:
            return None
        if simulation.only_while_listened and not listeners_now([network.id])[network.id]:
            return None  # nobody listens: the model waits (occupancy, across processes)
        from .output import sample_payload

        model = build_model(simulation)
        model.step(simulation.steps_per_publish)
        payload = sample_payload(model, extras=frozenset(simulation.extras or []))
        simulation.state = _to_bytes(model)
        simulation.step = model.step_count
        simulation.sim_time = model.time
        # Measured from the end of this tick: a duplicate queued behind a slow tick is dropped.
        simulation.last_tick_at = timezone.now()
        simulation.save(update_fields=["state", "step", "sim_time", "last_tick_at"])
        # Published once the new state is committed: a crash before the commit rolls the
        # step back (the next tick redoes it), so a sample is never sent for a lost step.
        transaction.on_commit(lambda: message_publish(network=network, data=payload))
    return simulation.step


def demo_simulation_ensure(*, network_slug: str) -> Simulation:
    """The embedded default's sample_net simulation, created running on first start."""
    from networks.models import Network

    simulation, _ = Simulation.objects.get_or_create(
        name="sample_net demo",
        defaults={
            "network": Network.objects.get(slug=network_slug),
            "topology": Topology.SAMPLE_NET,
            "publish_interval_seconds": 1.0,
            "status": SimulationStatus.RUNNING,
        },
    )
    return simulation


def simulations_due(last_run: dict[int, float], now: float) -> list[int]:
    """Running simulations whose interval has passed since ``last_run`` (embedded runner)."""
    due = []
    running = Simulation.objects.filter(status=SimulationStatus.RUNNING)
    for simulation_id, interval in running.values_list("id", "publish_interval_seconds"):
        if now - last_run.get(simulation_id, 0.0) >= interval:
            last_run[simulation_id] = now
            due.append(simulation_id)
    return due


def simulation_create(
    *,
    network_id: int,
    name: str,
    topology: str,
    topology_options: dict | None = None,
    publish_interval_seconds: float = 1.0,
) -> Simulation:
    """A new, stopped simulation; the model is built once first so a bad town fails here."""
    simulation = Simulation(
        name=name,
        network_id=network_id,
        topology=topology,
        topology_options=topology_options or {},
        publish_interval_seconds=publish_interval_seconds,
        status=SimulationStatus.STOPPED,
    )
    simulation.full_clean()
    simulation_validate(simulation)
    simulation.save()
    return simulation
