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


# What the API took before and answered with a 500 (or worse), found by fuzzing the schema.
HOSTILE_OPTIONS = [
    # PostgreSQL refuses \u0000 in jsonb (DataError); unknown keys were stored as they came.
    ({"topology_options": {"rows": 2, "cols": 2, "note": "a\u0000b"}}, "topology_options"),
    ({"model_options": {"dt": 1.0, "\u0000": 1}}, "model_options"),
    # Not objects: AttributeError ('list' object has no attribute 'get').
    ({"topology_options": [1, 2]}, "topology_options"),
    ({"model_options": "x"}, "model_options"),
    # int(2.5e300) rows: the server built a grid until it ran out of memory.
    ({"topology_options": {"rows": 2.5e300, "cols": 2}}, "topology_options"),
    ({"topology_options": {"rows": 1_000_000, "cols": 1_000_000}}, "topology_options"),
    # OverflowError: Python int too large to convert to C long.
    ({"model_options": {"cells_per_street": 1e20}}, "model_options"),
    ({"model_options": {"dt": 1e-300}}, "model_options"),
    # Any file on the server was read as XML (ParseError: a 500; /dev/zero: forever).
    ({"topology": "sumo", "topology_options": {"path": "/etc/passwd"}}, "topology_options"),
    ({"topology": "sumo", "topology_options": {"path": "/dev/zero"}}, "topology_options"),
    ({"topology": "sumo"}, "topology_options"),
    ({"topology": "sample_net", "topology_options": {"rows": 3}}, "topology_options"),
]


@pytest.mark.parametrize(("changes", "field"), HOSTILE_OPTIONS)
def test_options_are_checked_before_any_model_is_built(acme, as_user, changes, field):
    body = {"name": "hostile", "network": "acme-live", "topology": "grid", **changes}
    response = as_user(acme.admin).post("/api/v1/orgs/acme/simulations/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["fields"], response.json()
    assert not Simulation.objects.filter(name="hostile").exists()


# Server paths are refused outright; towns are uploaded: tests/api/test_towns_api.py.


# --- Quotas (issue 14): refused in milliseconds, before any model is built ----------------------


@pytest.fixture
def nothing_built(monkeypatch):
    """Fail the test if a request builds a model or a full topology (the quota check may only
    probe a handful of streets)."""
    import simulator.services

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built inside the request")

    monkeypatch.setattr(simulator.services, "build_model", refuse)
    monkeypatch.setattr(simulator.services, "build_topology", refuse)


OVERSIZE = [
    # 90 x 90 at dt = 1 s: 32,760 streets of 36 cells, past 10^6 cells (was built: 400 MB).
    ({"topology_options": {"rows": 90, "cols": 90}}, "cells"),
    # The runaway: ~14 minutes of CPU a tick.
    ({"steps_per_publish": 100_000, "model_options": {"dt": 0.001}}, "time step"),
    ({"steps_per_publish": 100_000}, "steps per publish"),
    ({"model_options": {"dt": 0.01}}, "time step"),
    # Within the cell limit, but 3,600 steps of 101,088 cells a tick (~4 s of CPU each).
    ({"topology_options": {"rows": 26, "cols": 26}, "steps_per_publish": 3600}, "per tick"),
    # A forced cell count: a 4 x 4 grid's 80 streets x 100,000 cells.
    ({"model_options": {"cells_per_street": 100_000}}, "cells"),
    ({"topology": "sample_net", "model_options": {"cells_per_street": 200_000}}, "cells"),
]


@pytest.mark.parametrize(("changes", "says"), OVERSIZE)
def test_oversize_or_absurd_simulations_are_refused_with_the_quota_they_break(
    acme, as_user, nothing_built, changes, says
):
    body = {"name": "huge", "network": "acme-live", "topology": "grid", **changes}
    response = as_user(acme.admin).post("/api/v1/orgs/acme/simulations/", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "quota_exceeded", response.json()
    assert says in response.json()["error"]
    assert not Simulation.objects.filter(name="huge").exists()


def test_a_change_past_the_quota_is_refused_and_the_simulation_kept(
    acme, town, as_user, nothing_built
):
    response = as_user(acme.admin).patch(
        f"/api/v1/orgs/acme/simulations/{town.pk}/",
        {"topology_options": {"rows": 95, "cols": 95}},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["code"] == "quota_exceeded"
    town.refresh_from_db()
    assert town.topology_options == {"rows": 2, "cols": 2}


def test_a_simulation_within_the_quota_is_created_and_started_without_a_build(
    acme, as_user, nothing_built
):
    admin = as_user(acme.admin)
    body = {"name": "ok", "network": "acme-live", "topology": "grid",
            "topology_options": {"rows": 50, "cols": 50}, "steps_per_publish": 10}  # fmt: skip
    created = admin.post("/api/v1/orgs/acme/simulations/", body, format="json")
    assert created.status_code == 201, created.json()
    started = admin.post(f"/api/v1/orgs/acme/simulations/{created.json()['id']}/start/")
    assert started.status_code == 200 and started.json()["status"] == "running"
    assert started.json()["problem"] is None


def test_a_simulation_named_with_its_network_alone_is_the_default_grid(acme, as_user):
    body = {"name": "plain", "network": "acme-live"}  # found by the fuzzer: it was a 500
    created = as_user(acme.admin).post("/api/v1/orgs/acme/simulations/", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["topology"] == "grid" and created.json()["problem"] is None


def test_quotas_follow_the_settings(acme, as_user, settings, nothing_built):
    settings.SIMULATION_MAX_CELLS = 10_000
    body = {"name": "small", "network": "acme-live", "topology": "grid",
            "topology_options": {"rows": 9, "cols": 9}}  # fmt: skip
    refused = as_user(acme.admin).post("/api/v1/orgs/acme/simulations/", body, format="json")
    assert refused.status_code == 400 and "10,000" in refused.json()["error"]
    body["topology_options"] = {"rows": 8, "cols": 8}  # 10,368 cells at dt = 1 s; 5,184 at 2 s
    body["model_options"] = {"dt": 2.0}
    accepted = as_user(acme.admin).post("/api/v1/orgs/acme/simulations/", body, format="json")
    assert accepted.status_code == 201


def _simulations(tenant, count: int) -> list[Simulation]:
    return [
        Simulation.objects.create(name=f"{tenant.slug}-{n}", network=tenant.network,
                                  topology="grid", topology_options={"rows": 2, "cols": 2})
        for n in range(count)
    ]  # fmt: skip


def test_an_organization_runs_at_most_its_quota_and_others_are_unaffected(
    acme, globex, as_user, settings
):
    settings.SIMULATION_MAX_RUNNING_PER_ORGANIZATION = 2
    first, second, third = _simulations(acme, 3)
    admin = as_user(acme.admin)

    def act(simulation: Simulation, action: str):
        return admin.post(f"/api/v1/orgs/acme/simulations/{simulation.pk}/{action}/")

    assert act(first, "start").status_code == 200
    assert act(second, "start").status_code == 200
    assert act(first, "start").status_code == 200  # already running: still within its place
    refused = act(third, "start")
    assert refused.status_code == 409, refused.content
    assert refused.json()["code"] == "quota_exceeded"
    assert "2 simulation(s)" in refused.json()["error"]
    third.refresh_from_db()
    assert third.status == SimulationStatus.STOPPED
    # Another organization's simulations are not counted against it.
    (foreign,) = _simulations(globex, 1)
    started = as_user(globex.admin).post(f"/api/v1/orgs/globex/simulations/{foreign.pk}/start/")
    assert started.status_code == 200
    # A paused simulation uses no worker: pausing one frees its place.
    assert act(second, "pause").status_code == 200
    assert act(third, "start").status_code == 200
    assert act(second, "resume").status_code == 409
