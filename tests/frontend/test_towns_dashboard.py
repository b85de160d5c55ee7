"""The dashboard's towns (issue 14): admins upload a SUMO network, see its import state and
warnings, and create a simulation on it; other organizations neither see nor pick it."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from simulator.models import Simulation, Town, TownStatus
from simulator.selectors import street_map
from tests.api.conftest import make_tenant

pytestmark = pytest.mark.django_db

ARTERIAL = (
    Path(__file__).resolve().parents[1] / "simulator" / "data" / "arterial.net.xml"
).read_bytes()


def browser_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_an_admin_uploads_a_town_and_runs_a_simulation_on_it(
    eager_celery, django_capture_on_commit_callbacks
):
    acme = make_tenant("acme")
    browser = browser_for(acme.admin)
    with django_capture_on_commit_callbacks(execute=True):
        response = browser.post(
            "/dashboard/acme/towns/",
            {"name": "arterial", "file": SimpleUploadedFile("arterial.net.xml", ARTERIAL)},
        )
    assert response["Location"] == "/dashboard/acme/simulations/"
    town = Town.objects.get(name="arterial")
    assert town.status == TownStatus.READY
    page = browser.get("/dashboard/acme/simulations/").content.decode()
    assert f'<tr data-town="{town.pk}">' in page and "badge-ok" in page
    assert "U-turn as their only connection" in page  # the import warning is shown

    response = browser.post(
        "/dashboard/acme/simulations/",
        {"name": "main street", "network": "acme-live", "topology": "sumo", "town": town.pk,
         "rows": 4, "cols": 4, "publish_interval_seconds": 2},
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[-2000:]
    simulation = Simulation.objects.get(name="main street")
    assert simulation.topology_options == {"town": town.pk}
    # The live view draws it at its junctions' coordinates (W west of E, N north of S).
    nodes = {n["id"]: n for n in street_map(network_id=acme.network.id)["nodes"]}
    assert nodes["W"]["x"] < nodes["J1"]["x"] < nodes["J2"]["x"] < nodes["E"]["x"]
    assert nodes["N1"]["y"] < nodes["J1"]["y"] < nodes["S1"]["y"]

    globex = make_tenant("globex")
    rival = browser_for(globex.owner)
    page = rival.get("/dashboard/globex/simulations/").content.decode()
    assert f'data-town="{town.pk}"' not in page
    response = rival.post(
        "/dashboard/globex/simulations/",
        {"name": "stolen", "network": "globex-live", "topology": "sumo", "town": town.pk,
         "rows": 4, "cols": 4, "publish_interval_seconds": 2},
    )  # fmt: skip
    assert response.status_code == 200 and not Simulation.objects.filter(name="stolen").exists()
    assert rival.post(f"/dashboard/globex/towns/{town.pk}/delete/").status_code == 404

    refused = browser.post(f"/dashboard/acme/towns/{town.pk}/delete/", follow=True)
    assert "Simulations run on this town (main street)" in refused.content.decode()
    assert Town.objects.filter(pk=town.pk).exists()


def test_members_cannot_upload_and_an_oversize_file_is_refused(settings):
    acme = make_tenant("acme")
    member = browser_for(acme.member)
    upload = {"file": SimpleUploadedFile("arterial.net.xml", ARTERIAL)}
    assert member.post("/dashboard/acme/towns/", upload).status_code == 403
    settings.TOWN_MAX_BYTES = 1000
    admin = browser_for(acme.admin)
    page = admin.post(
        "/dashboard/acme/towns/",
        {"file": SimpleUploadedFile("arterial.net.xml", ARTERIAL)},
        follow=True,
    ).content.decode()
    assert "at most 1,000 bytes" in page
    assert not Town.objects.exists()
