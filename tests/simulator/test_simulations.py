"""Simulations as a service: ticks step the model, publish samples, and never double-step."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.management import CommandError, call_command

from katiedj.asgi import application
from simulator.models import Simulation, SimulationStatus, Topology
from simulator.services import simulation_reset, simulation_set_status, simulation_tick
from tests.factories import NetworkFactory


@pytest.fixture
def sample(db):
    network = NetworkFactory(slug="sample_net")
    return Simulation.objects.create(
        name="demo",
        network=network,
        topology=Topology.SAMPLE_NET,
        status=SimulationStatus.RUNNING,
        publish_interval_seconds=1.0,
        steps_per_publish=5,
    )


@pytest.mark.django_db
def test_a_tick_steps_saves_and_a_duplicate_does_not_double_step(sample):
    assert simulation_tick(simulation_id=sample.pk) == 5
    # The same tick delivered twice (or late, within half an interval) does nothing.
    assert simulation_tick(simulation_id=sample.pk) is None
    sample.refresh_from_db()
    assert sample.step == 5 and sample.sim_time == pytest.approx(5 * 1.0)
    assert len(bytes(sample.state)) > 0


@pytest.mark.django_db
def test_state_survives_between_ticks_exactly(sample):
    from simulator.services import build_model

    simulation_tick(simulation_id=sample.pk)
    Simulation.objects.filter(pk=sample.pk).update(last_tick_at=None)
    simulation_tick(simulation_id=sample.pk)
    sample.refresh_from_db()
    restored = build_model(sample)
    # The same 10 steps in one go give bit-identical densities.
    straight = build_model(Simulation(topology=Topology.SAMPLE_NET))
    straight.step(10)
    assert restored.step_count == 10
    assert restored.densities() == straight.densities()


@pytest.mark.django_db
def test_paused_and_stopped_simulations_do_not_tick(sample):
    simulation_set_status(simulation=sample, status=SimulationStatus.PAUSED)
    assert simulation_tick(simulation_id=sample.pk) is None
    simulation_set_status(simulation=sample, status=SimulationStatus.RUNNING)
    assert simulation_tick(simulation_id=sample.pk) == 5
    simulation_reset(simulation=sample)
    sample.refresh_from_db()
    assert sample.step == 0 and bytes(sample.state) == b""


@pytest.mark.django_db
def test_starting_a_broken_configuration_is_refused_with_its_reason(sample):
    broken = Simulation.objects.create(
        name="broken",
        network=sample.network,
        topology=Topology.GRID,
        model_options={"dt": 60.0, "cells_per_street": 20},
    )
    with pytest.raises(ValueError, match=r"CFL|cell"):
        simulation_set_status(simulation=broken, status=SimulationStatus.RUNNING)
    broken.refresh_from_db()
    assert broken.status == SimulationStatus.STOPPED


@pytest.mark.django_db(transaction=True)
async def test_a_tick_publishes_the_original_sample_shape_to_listeners(sample):
    communicator = WebsocketCommunicator(application, "/macro/sample/")
    assert (await communicator.connect())[0]
    await sync_to_async(simulation_tick)(simulation_id=sample.pk)
    frame = json.loads(await communicator.receive_from(timeout=5))
    assert sorted(frame["state"], key=int) == [str(i) for i in range(13)]
    assert frame["step"] == 5 and frame["timestamp"].endswith("Z")
    await communicator.disconnect()
    from django.db import connections

    await sync_to_async(connections.close_all)()


@pytest.mark.django_db
def test_the_management_command(sample):
    call_command("simulation", "create", "town", "--network", "sample_net", "--rows", "3")
    town = Simulation.objects.get(name="town")
    assert town.topology_options == {"rows": 3, "cols": 4}
    call_command("simulation", "start", "town")
    town.refresh_from_db()
    assert town.status == SimulationStatus.RUNNING
    call_command("simulation", "pause", "town")
    town.refresh_from_db()
    assert town.status == SimulationStatus.PAUSED
    with pytest.raises(CommandError, match="No simulation"):
        call_command("simulation", "start", "nope")


@pytest.mark.django_db
def test_production_scheduling_mirrors_status_into_celery_beat(sample, settings):
    from django_celery_beat.models import PeriodicTask

    settings.REDIS_URL = "redis://127.0.0.1:6379/9"
    simulation_set_status(simulation=sample, status=SimulationStatus.RUNNING)
    entry = PeriodicTask.objects.get(name=sample.schedule_name)
    assert entry.enabled and entry.task == "simulator.tasks.simulation_tick"
    assert json.loads(entry.args) == [sample.pk]
    simulation_set_status(simulation=sample, status=SimulationStatus.PAUSED)
    assert not PeriodicTask.objects.get(name=sample.schedule_name).enabled
    simulation_set_status(simulation=sample, status=SimulationStatus.STOPPED)
    assert not PeriodicTask.objects.filter(name=sample.schedule_name).exists()


@pytest.mark.django_db
def test_the_embedded_runner_ticks_running_simulations_when_due(sample):
    from katiedj.periodic import run_due_simulations

    last_run: dict[int, float] = {}
    assert run_due_simulations(last_run, 1000.0) == [sample.pk]
    assert run_due_simulations(last_run, 1000.5) == []
    sample.refresh_from_db()
    assert sample.step == 5


@pytest.mark.django_db(transaction=True)
async def test_a_listened_only_simulation_waits_for_its_first_listener(sample):
    from streaming.selectors import listeners_now

    sample.only_while_listened = True
    await sample.asave(update_fields=["only_while_listened"])
    assert await sync_to_async(simulation_tick)(simulation_id=sample.pk) is None  # nobody

    communicator = WebsocketCommunicator(application, "/macro/sample/")
    assert (await communicator.connect())[0]
    async with asyncio.timeout(3):  # occupancy is written a moment after the connect
        while True:
            if (await sync_to_async(listeners_now)([sample.network_id]))[sample.network_id]:
                break
            await asyncio.sleep(0.02)
    assert await sync_to_async(simulation_tick)(simulation_id=sample.pk) == 5
    assert json.loads(await communicator.receive_from(timeout=5))["step"] == 5
    await communicator.disconnect()
    from django.db import connections

    await sync_to_async(connections.close_all)()


@pytest.mark.django_db
def test_a_sumo_town_is_built_for_the_simulations_time_step():
    """Short SUMO edges are stretched for ``model_options["dt"]``, so a coarse step still runs."""
    from pathlib import Path

    from simulator.models import Town
    from simulator.services import build_model
    from simulator.towns import town_import

    data = (Path(__file__).resolve().parent / "data" / "cross.net.xml").read_bytes()
    town = Town.objects.create(name="cross", source=data, size_bytes=len(data))
    assert town_import(town_id=town.pk) == "ready"
    simulation = Simulation(
        topology=Topology.SUMO, topology_options={"town": town.pk}, model_options={"dt": 5.0}
    )
    model = build_model(simulation)
    model.step(2)
    assert model.time == pytest.approx(10.0)


def test_checking_a_configuration_keeps_no_topology_in_the_cache():
    """The API checks every configuration it is sent by building it: were those topologies
    cached (32 of them, ~70 MB for a 100 x 100 grid), a few requests would pin gigabytes."""
    from simulator.model import ModelConfigError
    from simulator.services import _topology, simulation_validate

    _topology.cache_clear()
    simulation_validate(Simulation(topology=Topology.GRID, topology_options={"rows": 3, "cols": 3}))
    with pytest.raises(ModelConfigError):  # refused after its topology was built
        simulation_validate(
            Simulation(
                topology=Topology.GRID,
                topology_options={"rows": 3, "cols": 3},
                model_options={"dt": 0.001},
            )
        )
    assert _topology.cache_info().currsize == 0
