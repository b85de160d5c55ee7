"""Simulations over the REST API: admins run them, members watch, other tenants see nothing."""

from __future__ import annotations

import pytest

from simulator.models import Simulation, SimulationStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def town(acme):
    return Simulation.objects.create(
        name="town", network=acme.network, topology="grid", topology_options={"rows": 2, "cols": 2}
    )


def test_an_admin_creates_starts_pauses_and_resets_a_simulation(acme, as_user):
    admin = as_user(acme.admin)
    created = admin.post(
        "/api/v1/orgs/acme/simulations/",
        {"name": "grid", "network": "acme-live", "topology": "grid",
         "topology_options": {"rows": 3, "cols": 3}, "publish_interval_seconds": 2},
        format="json",
    )  # fmt: skip
    assert created.status_code == 201, created.json()
    assert created.json()["status"] == "stopped"
    sim_id = created.json()["id"]
    started = admin.post(f"/api/v1/orgs/acme/simulations/{sim_id}/start/")
    assert started.json()["status"] == "running"
    paused = admin.post(f"/api/v1/orgs/acme/simulations/{sim_id}/pause/")
    assert paused.json()["status"] == "paused"
    reset = admin.post(f"/api/v1/orgs/acme/simulations/{sim_id}/reset/")
    assert reset.json()["step"] == 0
    bogus = admin.post(f"/api/v1/orgs/acme/simulations/{sim_id}/explode/")
    assert bogus.status_code == 400


def test_a_configuration_violating_cfl_is_refused_with_the_models_reason(acme, as_user):
    response = as_user(acme.admin).post(
        "/api/v1/orgs/acme/simulations/",
        {"name": "bad", "network": "acme-live", "topology": "grid",
         "model_options": {"dt": 60.0, "cells_per_street": 20}},
        format="json",
    )  # fmt: skip
    assert response.status_code == 400
    assert "topology" in response.json()["fields"]
    assert not Simulation.objects.filter(name="bad").exists()


def test_members_watch_but_cannot_run_simulations(acme, town, as_user):
    member = as_user(acme.member)
    assert member.get("/api/v1/orgs/acme/simulations/").json()["results"][0]["name"] == "town"
    assert member.post(f"/api/v1/orgs/acme/simulations/{town.pk}/start/").status_code == 403
    town.refresh_from_db()
    assert town.status == SimulationStatus.STOPPED


def test_another_tenant_sees_404_and_cannot_target_foreign_networks(acme, globex, town, as_user):
    attacker = as_user(globex.owner)
    assert attacker.get(f"/api/v1/orgs/acme/simulations/{town.pk}/").status_code == 404
    assert attacker.post(f"/api/v1/orgs/acme/simulations/{town.pk}/start/").status_code == 404
    assert attacker.get(f"/api/v1/orgs/globex/simulations/{town.pk}/").status_code == 404
    assert attacker.post(f"/api/v1/orgs/globex/simulations/{town.pk}/start/").status_code == 404
    hijack = attacker.post(
        "/api/v1/orgs/globex/simulations/",
        {"name": "hijack", "network": "acme-live", "topology": "sample_net"},
        format="json",
    )
    assert hijack.status_code == 400
    assert "network" in hijack.json()["fields"]
    town.refresh_from_db()
    assert town.status == SimulationStatus.STOPPED
