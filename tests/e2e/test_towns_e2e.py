"""Towns on the production stack (issue 14): an upload through a real server is imported by a
real Celery worker over Redis (never in the request), and a simulation then runs on it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

from .harness import celery_worker, manage

pytestmark = pytest.mark.e2e

ARTERIAL = Path(__file__).resolve().parents[1] / "simulator" / "data" / "arterial.net.xml"

SETUP = """
from accounts.models import User
from accounts.services import organization_create, personal_token_create
from networks.services import network_create
owner = User.objects.create_user(email="{email}")
organization = organization_create(name="Towns {slug}", owner=owner, slug="{slug}")
network_create(organization=organization, slug="{slug}-net")
print(personal_token_create(user=owner, name="towns")[1])
"""


@pytest.mark.parametrize("stack", ["production"], indirect=True)
async def test_an_upload_is_imported_by_a_worker_and_a_simulation_runs_on_it(stack, tmp_path):
    slug = f"towns-{uuid.uuid4().hex[:8]}"
    shell = ["shell", "-v", "0", "-c", SETUP.format(email=f"{slug}@example.com", slug=slug)]
    token = (await asyncio.to_thread(manage, stack.env, *shell)).strip()
    api = f"{stack.servers[0].http}/api/v1/orgs/{slug}"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as client:
        files = {"file": ("arterial.net.xml", ARTERIAL.read_bytes(), "application/xml")}
        uploaded = await client.post(f"{api}/towns/", files=files, data={"name": "arterial"})
        assert uploaded.status_code == 202, uploaded.text
        town_id = uploaded.json()["id"]
        await asyncio.sleep(1.0)
        # No worker yet: the request only stored it.
        town = (await client.get(f"{api}/towns/{town_id}/")).json()
        assert town["status"] == "processing"
        # As platform/Procfile's `simulations` worker: that queue, a prefork child (time limits).
        log = tmp_path / "worker.log"
        with celery_worker(stack.env, log, queues="simulations", pool="prefork"):
            deadline = time.monotonic() + 60
            while town["status"] == "processing" and time.monotonic() < deadline:
                await asyncio.sleep(0.3)
                town = (await client.get(f"{api}/towns/{town_id}/")).json()
        assert town["status"] == "ready", (town, log.read_text()[-3000:])
        assert town["summary"]["exits"] == 6
        assert [w["code"] for w in town["warnings"]] == ["u_turn_exit"]
        body = {"name": "on-arterial", "network": f"{slug}-net", "topology": "sumo",
                "topology_options": {"town": town_id}}  # fmt: skip
        created = await client.post(f"{api}/simulations/", json=body)
        assert created.status_code == 201, created.text
        started = await client.post(f"{api}/simulations/{created.json()['id']}/start/")
        assert started.json()["status"] == "running", started.text
        refused = await client.post(
            f"{api}/simulations/",
            json={**body, "name": "path", "topology_options": {"path": "/etc/passwd"}},
        )
        assert refused.status_code == 400
        assert "not read from paths" in json.dumps(refused.json())
        await client.post(f"{api}/simulations/{created.json()['id']}/stop/")
