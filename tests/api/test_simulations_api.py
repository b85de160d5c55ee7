"""Simulations over the REST API: admins run them, members watch, other tenants see nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

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


SUMO_TOWN = Path(__file__).resolve().parents[1] / "simulator" / "data" / "cross.net.xml"

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
    # Within each bound, but a model of 1.7 million cells: refused by the model's limit.
    ({"topology_options": {"rows": 3, "cols": 3}, "model_options": {"dt": 0.001}}, "topology"),
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


def test_a_sumo_network_is_a_file_of_the_operators_directory(acme, as_user, settings, tmp_path):
    admin = as_user(acme.admin)

    def create(path: str):
        body = {"name": "sumo", "network": "acme-live", "topology": "sumo",
                "topology_options": {"path": path}, "model_options": {"dt": 5.0}}  # fmt: skip
        return admin.post("/api/v1/orgs/acme/simulations/", body, format="json")

    settings.SIMULATION_SUMO_DIR = ""
    assert create("cross.net.xml").status_code == 400  # no directory: no SUMO through the API
    settings.SIMULATION_SUMO_DIR = str(tmp_path)
    shutil.copy(SUMO_TOWN, tmp_path / "cross.net.xml")
    (tmp_path / "passwd.net.xml").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "outside.txt").write_text("<net/>")
    for refused in ("../cross.net.xml", str(SUMO_TOWN), "outside.txt", "missing.net.xml"):
        response = create(refused)
        assert response.status_code == 400, refused
        assert "topology_options" in response.json()["fields"]
    # In the directory but not a network: the model's reason, not a 500 (was a ParseError).
    not_xml = create("passwd.net.xml")
    assert not_xml.status_code == 400
    assert "not a SUMO network" in str(not_xml.json()["fields"])
    created = create("cross.net.xml")
    assert created.status_code == 201, created.json()
    assert created.json()["topology_options"] == {"path": str(tmp_path / "cross.net.xml")}
