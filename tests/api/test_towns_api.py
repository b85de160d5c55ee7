"""Towns over the REST API (issue 14): providers upload SUMO networks, a worker imports them,
simulations name them by id; never a path on the server, never another tenant's town."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from simulator.models import Simulation, Town, TownStatus
from simulator.services import build_model
from tests.simulator.hostile_xml import BILLION_LAUGHS, EXTERNAL_ENTITY

pytestmark = pytest.mark.django_db

DATA = Path(__file__).resolve().parents[1] / "simulator" / "data"
ARTERIAL = (DATA / "arterial.net.xml").read_bytes()
CROSS = (DATA / "cross.net.xml").read_bytes()


def upload(client, data: bytes, name: str | None = None, file_name: str = "town.net.xml"):
    body = {"file": SimpleUploadedFile(file_name, data, content_type="application/xml")}
    if name is not None:
        body["name"] = name
    return client.post("/api/v1/orgs/acme/towns/", body, format="multipart")


@pytest.fixture
def imported(acme, as_user, eager_celery, django_capture_on_commit_callbacks):
    """``imported(data, name)`` → the town's API representation once its task has run."""
    admin = as_user(acme.admin)

    def run(data: bytes = ARTERIAL, name: str = "arterial") -> dict:
        with django_capture_on_commit_callbacks(execute=True):
            response = upload(admin, data, name)
        assert response.status_code == 202, response.content
        return admin.get(f"/api/v1/orgs/acme/towns/{response.json()['id']}/").json()

    return run


def sumo_simulation(client, org: str, network: str, options: dict, name: str = "on-town"):
    body = {"name": name, "network": network, "topology": "sumo", "topology_options": options}
    return client.post(f"/api/v1/orgs/{org}/simulations/", body, format="json")


# --------------------------------------------------------------------------- the import


def test_an_upload_is_processing_until_its_task_imports_it_then_ready(
    acme, as_user, eager_celery, django_capture_on_commit_callbacks
):
    admin = as_user(acme.admin)
    with django_capture_on_commit_callbacks() as queued:
        response = upload(admin, ARTERIAL, file_name="arterial.net.xml")
    assert response.status_code == 202, response.content
    town = response.json()
    assert town["status"] == "processing" and town["name"] == "arterial"
    assert town["size_bytes"] == len(ARTERIAL) and not town["builtin"]
    url = f"/api/v1/orgs/acme/towns/{town['id']}/"
    assert admin.get(url).json()["status"] == "processing"
    assert len(queued) == 1  # the import is queued once the upload is committed
    queued[0]()  # the real task (inline)
    town = admin.get(url).json()
    assert town["status"] == "ready", town
    assert town["error"] == ""
    assert town["summary"]["streets"] == 14 and town["summary"]["signals"] == 2
    assert town["summary"]["sources"] == 6 and town["summary"]["exits"] == 6
    assert {w["code"] for w in town["warnings"]} == {"u_turn_exit"}
    assert acme.member and as_user(acme.member).get(url).json()["status"] == "ready"


def test_a_simulation_runs_on_a_ready_town_by_id(acme, as_user, imported):
    town = imported(CROSS, "cross")
    assert town["status"] == "ready"
    admin = as_user(acme.admin)
    created = sumo_simulation(admin, "acme", "acme-live", {"town": town["id"]})
    assert created.status_code == 201, created.json()
    assert created.json()["topology_options"] == {"town": town["id"]}
    started = admin.post(f"/api/v1/orgs/acme/simulations/{created.json()['id']}/start/")
    assert started.json()["status"] == "running"
    simulation = Simulation.objects.get(pk=created.json()["id"])
    simulation.model_options = {"dt": 5.0}  # the 5 m feeder is stretched for a 5 s step
    model = build_model(simulation, cache=False)
    model.step(12)
    assert model.time == pytest.approx(60.0)
    assert model.totals()["arrived"] > 0


def test_absurd_signal_phases_are_shortened_and_reported(imported):
    town = imported(ARTERIAL.replace(b'duration="42"', b'duration="10000"'), "slow lights")
    assert town["status"] == "ready"
    (long_phase,) = [w for w in town["warnings"] if w["code"] == "long_phase"]
    assert long_phase["count"] == 4  # both programs, both green phases
    assert long_phase["items"][0] == "J1 phase 0: 10000 s → 300 s"


@pytest.mark.parametrize("bomb", [BILLION_LAUGHS, EXTERNAL_ENTITY])
def test_an_xml_bomb_fails_its_import_without_being_expanded(imported, bomb):
    town = imported(bomb, "bomb")
    assert town["status"] == "failed"
    assert "DTD or entities" in town["error"]
    assert "root:" not in town["error"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"<html><body/></html>", "root element <html>"),
        (b"<net></net>", "no street"),
        (gzip.compress(b"<net>" + b" " * 200_000 + b"</net>"), "more than 100,000 bytes"),
    ],
)
def test_a_file_that_is_no_usable_network_fails_with_its_reason(imported, settings, data, reason):
    settings.TOWN_MAX_BYTES = 100_000
    town = imported(data, "broken")
    assert town["status"] == "failed"
    assert reason in town["error"]


def test_a_town_past_the_cell_limit_fails_with_the_limit(imported, settings):
    settings.SIMULATION_MAX_CELLS = 50
    town = imported(ARTERIAL, "too big")
    assert town["status"] == "failed"
    assert "more than 50 cells" in town["error"]


# --------------------------------------------------------------------------- what is refused


def test_an_oversize_upload_is_refused_with_413_and_nothing_stored(acme, as_user, settings):
    settings.TOWN_MAX_BYTES = 10_000
    admin = as_user(acme.admin)
    response = upload(admin, ARTERIAL)  # ~14 kB: past the limit, within the multipart slack
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    # Far past it: refused on its Content-Length, before the body is parsed.
    response = upload(admin, b"<net>" + b" " * 200_000 + b"</net>")
    assert response.status_code == 413
    assert not Town.objects.exists()


def test_what_is_not_xml_or_a_multipart_upload_is_a_400_or_415(acme, as_user):
    admin = as_user(acme.admin)
    response = upload(admin, b"root:x:0:0:root:/root:/bin/bash\n")
    assert response.status_code == 400
    assert "file" in response.json()["fields"]
    assert upload(admin, b"").status_code == 400  # an empty file
    as_json = admin.post("/api/v1/orgs/acme/towns/", {"file": "x"}, format="json")
    assert as_json.status_code == 415
    assert not Town.objects.exists()


def test_an_organizations_towns_are_bounded_in_count_and_bytes(acme, as_user, settings):
    admin = as_user(acme.admin)
    settings.TOWNS_PER_ORGANIZATION = 1
    assert upload(admin, CROSS).status_code == 202
    refused = upload(admin, CROSS)
    assert refused.status_code == 409
    assert "TOWNS_PER_ORGANIZATION" in refused.json()["error"]
    settings.TOWNS_PER_ORGANIZATION = 10
    settings.TOWN_BYTES_PER_ORGANIZATION = 2 * len(CROSS) - 1
    refused = upload(admin, CROSS)
    assert refused.status_code == 409
    assert "TOWN_BYTES_PER_ORGANIZATION" in refused.json()["error"]
    assert Town.objects.count() == 1


def test_members_see_towns_but_only_admins_upload_and_delete(acme, as_user, imported):
    town = imported()
    member = as_user(acme.member)
    assert [t["id"] for t in member.get("/api/v1/orgs/acme/towns/").json()["results"]] == [
        town["id"]
    ]
    assert upload(member, CROSS).status_code == 403
    assert member.delete(f"/api/v1/orgs/acme/towns/{town['id']}/").status_code == 403


@pytest.mark.parametrize(
    "options",
    [
        {"path": "/etc/passwd"},
        {"path": "cross.net.xml"},
        {"path": "../../var/katiedj.sqlite3"},
        {"town": 1, "path": "cross.net.xml"},
    ],
)
def test_a_server_path_is_refused_with_a_clear_400(acme, as_user, options):
    admin = as_user(acme.admin)
    response = sumo_simulation(admin, "acme", "acme-live", options)
    assert response.status_code == 400
    (message,) = response.json()["fields"]["topology_options"]
    assert "not read from paths on the server" in message and "town" in message
    grid = Simulation.objects.create(name="grid", network=acme.network, topology="grid")
    changed = admin.patch(
        f"/api/v1/orgs/acme/simulations/{grid.pk}/",
        {"topology": "sumo", "topology_options": options},
        format="json",
    )
    assert changed.status_code == 400
    assert "not read from paths" in str(changed.json()["fields"])
    assert not Simulation.objects.filter(topology="sumo").exists()


def test_a_stored_path_cannot_run_either(acme):
    """A simulation saved with a path before towns (or by staff) is refused when it starts."""
    from simulator.services import simulation_validate

    simulation = Simulation(
        network=acme.network, topology="sumo", topology_options={"path": str(DATA / "x")}
    )
    with pytest.raises(ValueError, match="not read from paths on the server"):
        simulation_validate(simulation)


def test_a_town_not_ready_cannot_be_named(
    acme, as_user, imported, django_capture_on_commit_callbacks
):
    admin = as_user(acme.admin)
    with django_capture_on_commit_callbacks():  # the import never runs
        processing = upload(admin, CROSS).json()
    response = sumo_simulation(admin, "acme", "acme-live", {"town": processing["id"]})
    assert response.status_code == 400
    assert "still being imported" in str(response.json()["fields"]["topology_options"])
    failed = imported(b"<html/>", "failed")
    response = sumo_simulation(admin, "acme", "acme-live", {"town": failed["id"]})
    assert response.status_code == 400
    assert "could not be imported" in str(response.json()["fields"]["topology_options"])


# --------------------------------------------------------------------------- tenants


def test_another_tenant_can_neither_see_nor_use_nor_delete_a_town(acme, globex, as_user, imported):
    town = imported()
    attacker = as_user(globex.owner)
    for url in (
        f"/api/v1/orgs/globex/towns/{town['id']}/",
        f"/api/v1/orgs/acme/towns/{town['id']}/",
    ):
        assert attacker.get(url).status_code == 404
        assert attacker.delete(url).status_code == 404
    assert attacker.get("/api/v1/orgs/globex/towns/").json()["results"] == []
    assert attacker.get("/api/v1/orgs/acme/towns/").status_code == 404
    hijack = sumo_simulation(attacker, "globex", "globex-live", {"town": town["id"]})
    assert hijack.status_code == 400
    # The same answer as for a town that does not exist: nothing tells it is someone's.
    missing = sumo_simulation(attacker, "globex", "globex-live", {"town": town["id"] + 1000})
    assert hijack.json()["fields"]["topology_options"] == [
        f"No town {town['id']} in this organization."
    ]
    assert missing.json()["fields"]["topology_options"] == [
        f"No town {town['id'] + 1000} in this organization."
    ]
    assert Town.objects.get(pk=town["id"]).status == TownStatus.READY


def test_a_built_in_town_is_offered_to_every_organization(acme, globex, as_user):
    from simulator.towns import town_import

    builtin = Town.objects.create(name="Cross", source=CROSS, size_bytes=len(CROSS))
    assert town_import(town_id=builtin.pk) == "ready"
    for tenant in (acme, globex):
        client = as_user(tenant.owner)
        listed = client.get(f"/api/v1/orgs/{tenant.slug}/towns/").json()["results"]
        assert [(t["id"], t["builtin"]) for t in listed] == [(builtin.pk, True)]
        response = sumo_simulation(client, tenant.slug, f"{tenant.slug}-live", {"town": builtin.pk})
        assert response.status_code == 201, response.json()
    refused = as_user(acme.owner).delete(f"/api/v1/orgs/acme/towns/{builtin.pk}/")
    assert refused.status_code == 409


def test_a_town_in_use_is_not_deleted(acme, as_user, imported):
    admin = as_user(acme.admin)
    town = imported(CROSS, "cross")
    created = sumo_simulation(admin, "acme", "acme-live", {"town": town["id"]})
    url = f"/api/v1/orgs/acme/towns/{town['id']}/"
    refused = admin.delete(url)
    assert refused.status_code == 409
    assert "on-town" in refused.json()["error"]
    admin.patch(
        f"/api/v1/orgs/acme/simulations/{created.json()['id']}/",
        {"topology": "grid", "topology_options": {}},
        format="json",
    )
    assert admin.delete(url).status_code == 204
    assert admin.get(url).status_code == 404


def test_a_hostile_file_name_is_stored_without_control_characters(acme, as_user):
    # PostgreSQL refuses NUL in text. Django's upload parser drops it; the service does too,
    # for callers that are not uploads (manage.py town add).
    response = upload(as_user(acme.admin), CROSS, file_name="ev\x00il\x1b.net.xml")
    assert response.status_code == 202, response.content
    assert response.json()["name"] == "evil"
    assert "\x00" not in response.json()["file_name"]
    from simulator.towns import town_upload

    town = town_upload(
        organization_id=acme.organization.id, name="", file_name="a\x00b.net.xml", data=CROSS
    )
    town.refresh_from_db()
    assert (town.name, town.file_name) == ("ab", "ab.net.xml")


def test_a_real_city_fits_the_default_limit_and_imports(imported):
    """SUMO's Berlin OSM import (5.4 MB, 740 car streets, 21 signals) as shipped."""
    import importlib.util

    spec = importlib.util.find_spec("sumo")
    if spec is None or spec.origin is None:
        pytest.skip("eclipse-sumo is not installed: no real network to upload")
    berlin = Path(spec.origin).parent / "tools" / "game" / "DRT" / "osm.net.xml"
    if not berlin.exists():
        pytest.skip("this eclipse-sumo has no DRT/osm.net.xml")
    town = imported(berlin.read_bytes(), "Berlin")
    assert town["status"] == "ready", town["error"]
    assert town["summary"]["streets"] == 740 and town["summary"]["signals"] >= 15
    assert {w["code"] for w in town["warnings"]} >= {"u_turn_exit"}
