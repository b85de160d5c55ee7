"""Simulations as a tenant-safe service (issue 14): quotas checked before anything is built,
ticks bounded in CPU and wall time on their own queue, and stop/pause never waiting for one."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django.core.management import CommandError, call_command
from django.db import connection, connections

from simulator import services
from simulator.model import CFLViolationError, TrafficModel
from simulator.models import Simulation, SimulationStatus, Topology
from simulator.quotas import QuotaExceeded, estimate_size, quota_for, simulation_check
from simulator.services import (
    simulation_problem,
    simulation_reset,
    simulation_set_status,
    simulation_tick,
)
from tests.factories import NetworkFactory

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def network(db):
    return NetworkFactory(slug="city")


def running(network, **fields) -> Simulation:
    defaults = {"name": "town", "topology": Topology.GRID,
                "topology_options": {"rows": 2, "cols": 2}, "steps_per_publish": 3}  # fmt: skip
    return Simulation.objects.create(
        network=network, status=SimulationStatus.RUNNING, **{**defaults, **fields}
    )


# --- The estimate is the model's own count ---------------------------------------------------


@pytest.mark.parametrize(
    ("topology", "options", "model_options"),
    [
        (Topology.GRID, {"rows": 1, "cols": 1}, {}),
        (Topology.GRID, {"rows": 3, "cols": 7}, {}),
        (Topology.GRID, {"rows": 5, "cols": 2}, {"dt": 0.25}),
        (Topology.GRID, {"rows": 4, "cols": 4}, {"dt": 15.0}),
        (Topology.GRID, {"rows": 2, "cols": 3}, {"dt": 1.0, "cells_per_street": 7}),
        (Topology.GRID, {}, {"dt": 2.0, "signal_mode": "averaged"}),
        (Topology.SAMPLE_NET, {}, {}),
        (Topology.SAMPLE_NET, {}, {"dt": 0.1}),
        (Topology.SAMPLE_NET, {}, {"cells_per_street": 2}),
    ],
)
def test_the_estimate_matches_the_built_model(topology, options, model_options):
    simulation = Simulation(
        topology=topology, topology_options=options, model_options=model_options
    )
    estimate = estimate_size(simulation, quota_for(organization_id=None))
    model = services.build_model(simulation, cache=False)
    assert (estimate.cells, estimate.streets) == (model.n_cells, len(model.street_ids))


def test_a_forced_cell_count_past_the_cfl_bound_is_the_models_refusal():
    simulation = Simulation(
        topology=Topology.GRID, model_options={"dt": 60.0, "cells_per_street": 20}
    )
    with pytest.raises(CFLViolationError, match="CFL"):
        estimate_size(simulation, quota_for(organization_id=None))


def test_a_sumo_network_is_sized_only_by_building_it():
    simulation = Simulation(topology=Topology.SUMO, topology_options={"town": 1})
    assert simulation_check(simulation, quota_for(organization_id=None)) is None


# --- manage.py simulation goes through the same checks --------------------------------------


@pytest.mark.django_db
def test_the_command_creates_through_the_service_and_its_quotas(network):
    with pytest.raises(CommandError, match=r"limit is 1,000,000"):
        call_command("simulation", "create", "huge", "--network", "city", "--rows", "90",
                     "--cols", "90")  # fmt: skip
    with pytest.raises(CommandError, match="steps per publish"):
        call_command("simulation", "create", "busy", "--network", "city",
                     "--steps-per-publish", "100000")  # fmt: skip
    assert not Simulation.objects.exists()
    call_command("simulation", "create", "fine", "--network", "city", "--rows", "3",
                 "--steps-per-publish", "5")  # fmt: skip
    assert Simulation.objects.get(name="fine").steps_per_publish == 5


@pytest.mark.django_db
def test_an_operator_may_start_past_the_running_limit_explicitly(network, settings):
    settings.SIMULATION_MAX_RUNNING_PER_ORGANIZATION = 1
    running(network, name="first")
    Simulation.objects.create(name="second", network=network, topology=Topology.SAMPLE_NET)
    with pytest.raises(CommandError, match="already runs 1"):
        call_command("simulation", "start", "second")
    call_command("simulation", "start", "second", "--ignore-running-limit")
    assert Simulation.objects.get(name="second").status == SimulationStatus.RUNNING


# --- A tick has a CPU budget and time limits; a refused build stops its simulation ----------


@pytest.mark.django_db
def test_a_tick_over_its_cpu_budget_is_discarded_and_its_simulation_stopped(network, monkeypatch):
    simulation = running(network)
    clock = iter([0.0, 1000.0, 2000.0, 3000.0])
    monkeypatch.setattr(services, "_cpu_seconds", lambda: next(clock))
    assert simulation_tick(simulation_id=simulation.pk) is None
    simulation.refresh_from_db()
    assert simulation.status == SimulationStatus.STOPPED
    assert simulation.step == 0 and bytes(simulation.state) == b""
    assert "CPU" in simulation_problem(simulation.pk)


@pytest.mark.django_db
def test_the_soft_time_limit_stops_the_simulation_and_discards_the_tick(network, monkeypatch):
    from simulator.tasks import simulation_tick as task

    simulation = running(network)

    def overrun(self, n=1):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(TrafficModel, "step", overrun)
    task.apply(args=[simulation.pk])
    simulation.refresh_from_db()
    assert simulation.status == SimulationStatus.STOPPED and simulation.step == 0
    assert "time limit" in simulation_problem(simulation.pk)


@pytest.mark.django_db
def test_a_tick_killed_at_its_hard_time_limit_stops_its_simulation(network):
    from simulator.tasks import simulation_tick as task

    simulation = running(network)
    # What the worker's parent process calls once it has killed the child running the tick.
    task.on_failure(TimeLimitExceeded(30), "task-id", (simulation.pk,), {}, None)
    simulation.refresh_from_db()
    assert simulation.status == SimulationStatus.STOPPED
    assert "time limit" in simulation_problem(simulation.pk)


@pytest.mark.django_db
def test_a_model_that_cannot_be_built_stops_its_simulation_with_the_reason(network):
    # A town that is gone (its size, and whether it runs, only a build in a worker can tell).
    simulation = running(network, topology=Topology.SUMO, topology_options={"town": 999_999})
    assert simulation_tick(simulation_id=simulation.pk) is None
    simulation.refresh_from_db()
    assert simulation.status == SimulationStatus.STOPPED
    assert "cannot be built" in simulation_problem(simulation.pk)
    assert "999999" in simulation_problem(simulation.pk)
    # Starting again clears the old reason (the next tick records a new one if it fails).
    simulation_set_status(simulation=simulation, status=SimulationStatus.RUNNING)
    assert simulation_problem(simulation.pk) is None


@pytest.mark.django_db
def test_a_town_is_built_by_a_worker_after_it_is_created(
    network, eager_celery, django_capture_on_commit_callbacks
):
    from simulator.services import simulation_create

    with django_capture_on_commit_callbacks(execute=True) as queued:
        simulation = simulation_create(
            network_id=network.pk, name="gone", topology=Topology.SUMO,
            topology_options={"town": 999_999},
        )  # fmt: skip
    assert len(queued) == 1  # the build check, queued for the simulations worker
    simulation.refresh_from_db()
    assert simulation.status == SimulationStatus.STOPPED
    assert "cannot be built" in simulation_problem(simulation.pk)


@pytest.mark.django_db
def test_a_lowered_quota_stops_a_running_simulation_at_its_next_tick(network, settings):
    simulation = running(network, steps_per_publish=100)
    settings.SIMULATION_MAX_CELL_UPDATES_PER_TICK = 1_000_000
    assert simulation_tick(simulation_id=simulation.pk) is None
    simulation.refresh_from_db()
    assert simulation.status == SimulationStatus.STOPPED
    assert "per tick" in simulation_problem(simulation.pk)


def test_ticks_have_their_own_queue_and_time_limits(settings):
    from katiedj.celery import app
    from simulator.tasks import simulation_build_check
    from simulator.tasks import simulation_tick as task

    router = app.amqp.router
    for name in (task.name, simulation_build_check.name):
        assert router.route({}, name)["queue"].name == "simulations"
    assert router.route({}, "billing.tasks.process_webhook_event")["queue"].name == "celery"
    assert task.soft_time_limit == settings.SIMULATION_TICK_SOFT_TIME_LIMIT
    assert settings.SIMULATION_TICK_SOFT_TIME_LIMIT >= settings.SIMULATION_MAX_TICK_CPU_SECONDS
    assert task.time_limit > task.soft_time_limit


def test_deployments_run_a_worker_for_the_simulations_queue_alone():
    """The default worker (webhooks, sweeps) never takes a tick; another worker takes them."""
    procfile = (REPO / "platform" / "Procfile").read_text()
    compose = (REPO / "docker-compose.yml").read_text()
    for text in (procfile, compose):
        workers = [line for line in text.splitlines() if re.search(r"celery.+worker", line)]
        queues = [re.search(r'-Q"?,? "?([\w,]+)', line) for line in workers]
        assert all(queues), workers  # every worker names its queues
        names = [set(q.group(1).split(",")) for q in queues]
        assert {"simulations"} in names, workers
        assert all(n == {"simulations"} or "simulations" not in n for n in names), workers


# --- stop, pause and reset never wait for a running tick -------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("action", ["stop", "pause", "reset"])
def test_a_change_made_during_a_tick_returns_at_once_and_the_tick_is_discarded(
    network, monkeypatch, action
):
    if connection.vendor == "sqlite":
        pytest.skip("row locks need PostgreSQL (SQLite locks the whole database)")
    simulation = running(network)
    stepping, release = threading.Event(), threading.Event()
    published: list[dict] = []
    monkeypatch.setattr(services, "message_publish", lambda **kw: published.append(kw))
    real_step = TrafficModel.step

    def held_step(self, n=1):
        stepping.set()
        release.wait(60)
        real_step(self, n)

    monkeypatch.setattr(TrafficModel, "step", held_step)
    outcome: dict[str, object] = {}

    def tick() -> None:
        try:
            outcome["tick"] = simulation_tick(simulation_id=simulation.pk)
        finally:
            connections.close_all()

    def change() -> None:
        try:
            row = Simulation.objects.get(pk=simulation.pk)
            if action == "reset":
                simulation_reset(simulation=row)
            else:
                status = {"stop": SimulationStatus.STOPPED, "pause": SimulationStatus.PAUSED}
                simulation_set_status(simulation=row, status=status[action])
            outcome["changed_while_stepping"] = not release.is_set()
        finally:
            connections.close_all()

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        assert stepping.wait(30), "the tick never started stepping"
        # A duplicate of the tick gives up at once instead of queueing behind it.
        assert simulation_tick(simulation_id=simulation.pk) is None
        changer = threading.Thread(target=change)
        changer.start()
        changer.join(20)  # a generous deadline, not a measurement: it must not need the tick
        returned_first = not changer.is_alive()
    finally:
        release.set()
        ticker.join(60)
    changer.join(60)
    assert returned_first and outcome["changed_while_stepping"] is True
    assert outcome["tick"] is None  # its result was discarded
    simulation.refresh_from_db()
    assert simulation.step == 0 and bytes(simulation.state) == b""
    assert published == []
    expected = {"stop": "stopped", "pause": "paused", "reset": "running"}[action]
    assert simulation.status == expected


@pytest.mark.django_db
def test_a_tick_that_finds_its_row_unchanged_saves_and_publishes(
    network, monkeypatch, django_capture_on_commit_callbacks
):
    published: list[dict] = []
    monkeypatch.setattr(services, "message_publish", lambda **kw: published.append(kw))
    simulation = running(network)
    with django_capture_on_commit_callbacks(execute=True):
        assert simulation_tick(simulation_id=simulation.pk) == 3
    simulation.refresh_from_db()
    assert simulation.step == 3 and simulation.last_tick_at is not None
    assert [p["data"]["step"] for p in published] == [3]


def test_an_estimate_refuses_a_grid_side_past_the_bound():
    with pytest.raises(QuotaExceeded, match="at most 100 rows"):
        estimate_size(
            Simulation(topology=Topology.GRID, topology_options={"rows": 101, "cols": 1}),
            quota_for(organization_id=None),
        )
