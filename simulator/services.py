"""Simulations: build, start/pause/resume/stop/reset, and the tick that steps and publishes."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from networks.selectors import NetworkInfo, network_get_by_slug
from networks.services import message_publish
from streaming.selectors import listeners_now

from .model import ModelParams, TrafficModel, _kernels, manhattan_grid, sample_net
from .model.topology import Topology as ModelTopology
from .models import Simulation, SimulationStatus, Topology
from .quotas import (
    STEP_OVERHEAD_CELLS,
    QuotaExceeded,
    SizeEstimate,
    check_built,
    check_running,
    quota_of,
)
from .quotas import simulation_check as _quota_check

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
        # Towns (issue 14): an uploaded town's stored topology, by id; never a server path.
        from .towns import town_topology

        return town_topology(options, dt=dt)  # short edges stretched to dt's CFL bound
    return manhattan_grid(int(options.get("rows", 4)), int(options.get("cols", 4)))


def build_model(simulation: Simulation, *, cache: bool = True) -> TrafficModel:
    """The simulation's model, restored from its saved state when it has one (always built;
    a tick uses :func:`model_for_tick`, which keeps the built model between ticks)."""
    _kernels.configure_cache(settings.SIMULATION_NUMBA_CACHE_DIR)
    topology = build_topology(simulation, cache=cache)
    params = ModelParams(**(simulation.model_options or {}))
    limit = settings.SIMULATION_MAX_CELLS
    if not simulation.state:
        return TrafficModel(topology, params, max_cells=limit)
    state = state_load(simulation.state)
    return TrafficModel.from_state(topology, state, params, max_cells=limit)


def state_load(data: bytes | memoryview) -> dict[str, object]:
    """A state saved by :func:`state_bytes`, as :meth:`TrafficModel.restore` takes it."""
    with np.load(io.BytesIO(data), allow_pickle=False) as saved:
        return {key: _from_npz(saved[key]) for key in saved.files}


def _from_npz(value: np.ndarray) -> object:
    # Scalars were stored as 0-d arrays; the layout string as a 0-d unicode array.
    return value.item() if value.ndim == 0 else value


def state_bytes(model: TrafficModel) -> bytes:
    """The model's state for the ``Simulation.state`` column: an ``.npz`` archive, deflated at
    level 1 (an 83 x 83 grid: ~40 ms against ~120 ms for ``np.savez_compressed``'s level 6, for
    ~8 % more bytes: it is written every tick). ``np.load`` reads both."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for key, value in model.state_dict().items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
    return buffer.getvalue()


# --- Built models kept between ticks ----------------------------------------------------------
#
# Building a model costs far more than loading a state into it (83 x 83 grid: ~0.5 s against
# milliseconds), so each worker process keeps the models of the simulations it ticked. A kept
# model is used only when the row still holds exactly what that process saved from it (same
# options, step and state bytes): a tick on another worker, a reset, a configuration change or a
# tick that failed before saving all rebuild from the row. Correctness never depends on the cache.


@dataclass
class _Kept:
    model: TrafficModel
    options: str  # _options_key of the configuration it was built from
    step: int
    digest: bytes  # of the state bytes it was saved as


class ModelCacheInfo(NamedTuple):
    hits: int
    misses: int
    builds: int
    models: int
    cells: int


class _ModelCache:
    """Least recently used models by simulation id, bounded by count and by total cells."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: OrderedDict[int, _Kept] = OrderedDict()
        self.hits = self.misses = self.builds = 0

    def take(self, key: int, options: str, step: int, digest: bytes) -> TrafficModel | None:
        """The kept model if it matches, removed from the cache either way: the caller steps it,
        and until it is saved again it no longer matches any row."""
        with self._lock:
            kept = self._kept.pop(key, None)
            if (
                kept is not None
                and kept.options == options
                and kept.step == step
                and kept.digest == digest
            ):
                self.hits += 1
                return kept.model
            self.misses += 1
            return None

    def put(self, key: int, kept: _Kept) -> None:
        max_models = settings.SIMULATION_MODEL_CACHE_MODELS
        max_cells = settings.SIMULATION_MODEL_CACHE_CELLS
        with self._lock:
            self._kept.pop(key, None)
            if max_models < 1 or kept.model.n_cells > max_cells:
                return  # too big to keep: it would evict everything else
            self._kept[key] = kept
            cells = sum(k.model.n_cells for k in self._kept.values())
            while len(self._kept) > max_models or cells > max_cells:
                _, evicted = self._kept.popitem(last=False)
                cells -= evicted.model.n_cells

    def count_build(self) -> None:
        with self._lock:
            self.builds += 1

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
            self.hits = self.misses = self.builds = 0

    def info(self) -> ModelCacheInfo:
        with self._lock:
            cells = sum(k.model.n_cells for k in self._kept.values())
            return ModelCacheInfo(self.hits, self.misses, self.builds, len(self._kept), cells)


_models = _ModelCache()


def _options_key(simulation: Simulation) -> str:
    """Everything besides the state that the built model depends on."""
    return json.dumps(
        [
            simulation.topology,
            simulation.topology_options or {},
            simulation.model_options or {},
            settings.SIMULATION_MAX_CELLS,
        ],
        sort_keys=True,
    )


def _digest(state: bytes | memoryview) -> bytes:
    return hashlib.blake2b(state, digest_size=16).digest()


def model_for_tick(simulation: Simulation) -> TrafficModel:
    """The simulation's model in the state its row holds: the one this process kept from its
    last tick when the row still holds what that tick saved, else built from the row.

    The caller owns the model: step it, save it to the row, then hand it back with
    :func:`model_saved`. A model never handed back is simply rebuilt next time.
    """
    if simulation.pk is not None and simulation.state:
        digest = _digest(simulation.state)
        model = _models.take(simulation.pk, _options_key(simulation), simulation.step, digest)
        if model is not None:
            return model
    _models.count_build()
    return build_model(simulation)


def model_saved(simulation: Simulation, model: TrafficModel) -> None:
    """Keep ``model`` for the simulation's next tick in this process. Call it once the tick has
    set ``simulation.state = state_bytes(model)`` and ``simulation.step``, and do not touch the
    model afterwards; nothing is kept unless the row's step is the model's."""
    if simulation.pk is None or not simulation.state or simulation.step != model.step_count:
        return
    kept = _Kept(model, _options_key(simulation), model.step_count, _digest(simulation.state))
    _models.put(simulation.pk, kept)


def model_cache_info() -> ModelCacheInfo:
    """Hits, misses and builds of :func:`model_for_tick` in this process, and what is kept."""
    return _models.info()


def model_cache_clear() -> None:
    """Forget every kept model (tests; memory pressure)."""
    _models.clear()


def simulation_validate(simulation: Simulation) -> None:
    """Build the model once: a bad topology or CFL violation fails here, with its message.

    Nothing is cached: what is only being checked (refused or not) takes no memory after.
    Slow and big for a big town: workers call it (:func:`simulation_build_check`); requests
    call :func:`simulation_check`, which builds nothing.
    """
    build_model(simulation, cache=False)


# --- Quotas, and why a worker stopped a simulation --------------------------------------------

BUILD_ERRORS = (ValueError, KeyError, TypeError, OSError, ArithmeticError)
"""What building a configuration the quick checks let through may still raise (a town that is
gone, a saved state that no longer fits its options): the simulation's fault, not a crash."""

PROBLEM_SECONDS = 30 * 24 * 3600


def simulation_check(simulation: Simulation) -> SizeEstimate | None:
    """Its organization's quota, checked in milliseconds without building the model.

    Raises ``QuotaExceeded`` or the model's ``ModelConfigError`` (both ``ValueError``); returns
    the model's size, or None when only a build can tell it (a town): see ``simulator.quotas``.
    """
    return _quota_check(simulation, quota_of(simulation))


def _problem_key(simulation_id: int) -> str:
    return f"simulator:problem:{simulation_id}"


def simulation_problem(simulation_id: int) -> str | None:
    """Why a worker last stopped the simulation (its model, its quota, its time limit), or None.

    Kept in the cache for 30 days, as the Simulation row has no column for it; starting the
    simulation again clears it.
    """
    try:
        return cache.get(_problem_key(simulation_id))
    except Exception:  # a note for the provider: a cache outage must not fail their page
        logger.warning("simulation %s: its problem could not be read", simulation_id)
        return None


def _problem_set(simulation_id: int, problem: str | None) -> None:
    try:
        if problem is None:
            cache.delete(_problem_key(simulation_id))
        else:
            cache.set(_problem_key(simulation_id), problem[:1000], PROBLEM_SECONDS)
    except Exception:  # the stop itself is in the database; the note is best effort
        logger.warning("simulation %s: its problem could not be recorded", simulation_id)


def simulation_halt(*, simulation_id: int, reason: str) -> bool:
    """Stop a simulation a worker cannot run (model, quota or time limit) and record why.

    Stops it when running or paused (a paused one would fail the same way once resumed);
    True when it was stopped now. Never waits for a tick (ticks hold no lock).
    """
    with transaction.atomic():
        stopped = Simulation.objects.filter(
            pk=simulation_id, status__in=[SimulationStatus.RUNNING, SimulationStatus.PAUSED]
        ).update(status=SimulationStatus.STOPPED, updated_at=timezone.now())
        if stopped:
            _sync_schedule(Simulation(pk=simulation_id, status=SimulationStatus.STOPPED))
    _problem_set(simulation_id, reason)
    logger.warning("simulation %s stopped: %s", simulation_id, reason)
    return bool(stopped)


def simulation_build_check(*, simulation_id: int) -> bool:
    """Build the simulation's model once (in a worker, uncached) and check its size against
    the quota: a town's size is known only now. A refusal stops it and is recorded as its
    problem; True when it can run."""
    simulation = Simulation.objects.select_related("network").filter(pk=simulation_id).first()
    if simulation is None:
        return False
    try:
        model = build_model(simulation, cache=False)
        check_built(model, simulation, quota_of(simulation))
    except QuotaExceeded as error:
        simulation_halt(simulation_id=simulation_id, reason=str(error))
        return False
    except BUILD_ERRORS as error:
        simulation_halt(simulation_id=simulation_id, reason=f"Its model cannot be built: {error}")
        return False
    return True


def _build_check_later(simulation: Simulation) -> None:
    """Queue :func:`simulation_build_check` once the row is committed (a worker's job)."""
    from .tasks import simulation_build_check as task

    simulation_id = simulation.pk
    # robust: a broker outage must not turn a saved simulation into an error response.
    transaction.on_commit(lambda: task.delay(simulation_id), robust=True)


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
def simulation_set_status(
    *, simulation: Simulation, status: SimulationStatus, enforce_running_limit: bool = True
) -> Simulation:
    """Start/resume (running), pause (keeps its state), or stop (keeps state, unscheduled).

    Starting checks the organization's quota (``QuotaExceeded``; ``RunningLimitReached`` past
    the simulations it may run at once, unless ``enforce_running_limit=False``: an operator's
    choice) and the model's rules, building nothing: the first tick builds the model and stops
    the simulation, with the reason, if it cannot run. Never waits for a running tick, which
    then discards its result.
    """
    if status == SimulationStatus.RUNNING:
        quota = quota_of(simulation)
        _quota_check(simulation, quota)
        if enforce_running_limit:
            check_running(simulation, quota)
    simulation.status = status
    simulation.save(update_fields=["status", "updated_at"])
    _sync_schedule(simulation)
    if status == SimulationStatus.RUNNING:
        _problem_set(simulation.pk, None)
    return simulation


SETTINGS_FIELDS = (
    "name",
    "network",
    "topology",
    "topology_options",
    "model_options",
    "steps_per_publish",
    "publish_interval_seconds",
    "extras",
    "only_while_listened",
)
"""What :func:`simulation_update` may change (the rest is the tick's or the status's)."""


@transaction.atomic
def simulation_update(*, simulation: Simulation, changes: dict[str, object]) -> Simulation:
    """Change a simulation's settings, checked against its quota first (nothing is built).

    Only the changed columns are written, so a tick's saved state and step are never
    overwritten with what this caller read; a tick running meanwhile discards its result.
    A changed town is built by a worker right after (:func:`simulation_build_check`).
    """
    unknown = set(changes) - set(SETTINGS_FIELDS)
    if unknown:
        raise ValueError(f"Not a setting of a simulation: {', '.join(sorted(unknown))}.")
    for name, value in changes.items():
        setattr(simulation, name, value)
    simulation.full_clean(exclude=["state"], validate_unique=False)
    size = simulation_check(simulation)
    simulation.save(update_fields=[*changes, "updated_at"])
    _sync_schedule(simulation)  # a changed interval reaches beat
    if size is None and {"topology", "topology_options", "model_options"} & set(changes):
        _build_check_later(simulation)
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


_cpu_seconds = time.thread_time
"""The calling thread's CPU time: a tick's own, also where the embedded mode ticks in a thread
of the web process."""

STEP_CHUNK_CELL_UPDATES = 10_000_000
"""A tick steps in chunks of about this much work (~0.1 s), checking its CPU budget between."""


class TickOverBudget(Exception):
    """A tick used more CPU seconds than its organization's quota allows."""


def _lease_key(simulation_id: int) -> str:
    return f"simulator:tick:{simulation_id}"


def simulation_tick(*, simulation_id: int) -> int | None:
    """Advance a running simulation by ``steps_per_publish`` steps and publish one sample.

    Nothing is locked while it steps, so stop, pause, reset and edits never wait for a tick:
    it reads the row, steps outside any transaction, and writes back only if the row is still
    running at the step and version it read (an optimistic update). A tick whose simulation
    was stopped, paused, reset or changed meanwhile discards its result. A tick arriving within
    half an interval of the previous one, or while another tick of the simulation is stepping
    (a lease in the cache, for as long as a tick may live), is dropped: the model never
    double-steps and samples go out in step order. A model that cannot be built or is past the
    quota, or a tick past its CPU seconds, stops the simulation with the reason
    (:func:`simulation_problem`). Returns the new step, or None when nothing was saved.
    """
    simulation = Simulation.objects.select_related("network").filter(pk=simulation_id).first()
    if simulation is None or simulation.status != SimulationStatus.RUNNING:
        return None
    too_soon = timedelta(seconds=simulation.publish_interval_seconds / 2)
    if simulation.last_tick_at and timezone.now() - simulation.last_tick_at < too_soon:
        return None
    network = network_get_by_slug(slug=simulation.network.slug)
    if network is None or network.archived:
        return None
    if simulation.only_while_listened and not listeners_now([network.id])[network.id]:
        return None  # nobody listens: the model waits (occupancy, across processes)
    lease = _lease_key(simulation_id)
    if not cache.add(lease, 1, timeout=math.ceil(settings.SIMULATION_TICK_TIME_LIMIT)):
        return None  # another tick of it is stepping
    try:
        return _tick(simulation, network)
    finally:
        cache.delete(lease)


def _tick(simulation: Simulation, network: NetworkInfo) -> int | None:
    quota = quota_of(simulation)
    read = {"step": simulation.step, "updated_at": simulation.updated_at}
    try:
        model = model_for_tick(simulation)
        check_built(model, simulation, quota)  # a town's size is known only now
        _step_within(model, simulation.steps_per_publish, quota.max_tick_cpu_seconds)
    except (QuotaExceeded, TickOverBudget) as error:
        simulation_halt(simulation_id=simulation.pk, reason=str(error))
        return None
    except BUILD_ERRORS as error:
        simulation_halt(simulation_id=simulation.pk, reason=f"Its model cannot be built: {error}")
        return None
    from .output import sample_payload

    payload = sample_payload(model, extras=frozenset(simulation.extras or []))
    state = state_bytes(model)
    with transaction.atomic():
        saved = Simulation.objects.filter(
            pk=simulation.pk, status=SimulationStatus.RUNNING, **read
        ).update(
            state=state,
            step=model.step_count,
            sim_time=model.time,
            # Measured from the end of this tick: a duplicate queued behind a slow tick is dropped.
            last_tick_at=timezone.now(),
        )
        if not saved:
            return None  # stopped, paused, reset or changed while it stepped: discarded
        # Published once the new state is committed: a crash before the commit rolls the
        # step back (the next tick redoes it), so a sample is never sent for a lost step.
        transaction.on_commit(lambda: message_publish(network=network, data=payload))
    simulation.state, simulation.step = state, model.step_count
    model_saved(simulation, model)
    return model.step_count


def _step_within(model: TrafficModel, steps: int, cpu_seconds: float) -> None:
    """Step ``steps`` times, in chunks; :class:`TickOverBudget` once the stepping has used more
    than ``cpu_seconds`` of CPU. Bounds a tick where Celery's time limits do not reach (the
    embedded mode's in-process ticks) and long before they do (they are wall-clock)."""
    started = _cpu_seconds()
    chunk = max(1, STEP_CHUNK_CELL_UPDATES // (model.n_cells + STEP_OVERHEAD_CELLS))
    done = 0
    while done < steps:
        count = min(chunk, steps - done)
        model.step(count)
        done += count
        used = _cpu_seconds() - started
        if used > cpu_seconds:
            raise TickOverBudget(
                f"A tick used more than its {cpu_seconds:g} CPU seconds ({done:,} of {steps:,} "
                f"steps in {used:.1f} s) and was discarded: publish fewer steps per sample, or "
                f"use a smaller town or a longer time step."
            )


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
    topology: str = Topology.GRID,
    topology_options: dict | None = None,
    model_options: dict | None = None,
    steps_per_publish: int = 1,
    publish_interval_seconds: float = 1.0,
    extras: list[str] | None = None,
    only_while_listened: bool = False,
) -> Simulation:
    """A new, stopped simulation, checked against its organization's quota and the model's
    rules in milliseconds (nothing is built: ``QuotaExceeded``, ``ModelConfigError`` or
    Django's ``ValidationError``). A town, which only a build can size, is built by a worker
    right after (:func:`simulation_build_check`), which records a refusal as its problem."""
    simulation = Simulation(
        name=name,
        network_id=network_id,
        topology=topology,
        topology_options=topology_options or {},
        model_options=model_options or {},
        steps_per_publish=steps_per_publish,
        publish_interval_seconds=publish_interval_seconds,
        extras=extras or [],
        only_while_listened=only_while_listened,
        status=SimulationStatus.STOPPED,
    )
    simulation.full_clean()
    with transaction.atomic():
        size = simulation_check(simulation)
        simulation.save()
        if size is None:
            _build_check_later(simulation)
    return simulation
