"""``/metrics``: what operators scrape, and who may scrape it."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from katiedj import metrics
from katiedj.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def scrape(client: Client, **headers: str) -> list[tuple[str, dict[str, str], float]]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = []
    for line in response.content.decode().splitlines():
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not exposition format: {line!r}"
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        samples.append((match["name"], labels, float(match["value"])))
    return samples


def value(samples, name: str, **labels: str) -> float:
    found = [v for n, lab, v in samples if n == name and labels.items() <= lab.items()]
    assert len(found) == 1, f"{name} {labels}: {found}"
    return found[0]


def publish(publisher, key: str, slug: str, i: int):
    body = json.dumps({"network": slug, "data": {"i": i}})
    return publisher.post("/api/publish", data=body, headers={"API-KEY": key})


async def test_an_operator_sees_listeners_messages_deliveries_and_latencies(
    publisher, network, api_key
):
    metrics.current.reset()
    client = Client()  # REMOTE_ADDR 127.0.0.1: a loopback scraper
    before = await sync_to_async(scrape)(client)
    listener = WebsocketCommunicator(application, f"/ws/networks/{network.slug}/")
    assert (await listener.connect())[0]
    for i in range(3):
        response = await sync_to_async(publish)(publisher, api_key.secret, network.slug, i)
        assert response.status_code == 200
        await listener.receive_from(timeout=3)
    bad = await sync_to_async(publish)(publisher, "not-a-key", network.slug, 9)
    assert bad.status_code == 400

    async with asyncio.timeout(3):  # occupancy is written a moment later
        while True:
            after = await sync_to_async(scrape)(client)
            if value(after, "katiedj_listeners", network=network.slug) == 1:
                break
    await listener.disconnect()

    def published(samples):
        return value(samples, "katiedj_messages_published_total", network=network.slug)

    assert published(after) - published(before) == 3
    assert value(after, "katiedj_history_messages", network=network.slug) >= 3
    assert value(after, "katiedj_deliveries_total") == 3  # 3 messages x 1 listener
    assert value(after, "katiedj_messages_fanned_out_total") == 3
    assert value(after, "katiedj_publish_requests_total", status="200") == 3
    assert value(after, "katiedj_publish_requests_total", status="400") == 1
    assert value(after, "katiedj_publish_seconds_count") == 4
    assert value(after, "katiedj_publish_seconds_bucket", le="+Inf") == 4
    assert value(after, "katiedj_fanout_seconds_count") == 3
    assert value(after, "katiedj_listener_skipped_total", policy="drop") == 0


def test_metrics_are_refused_to_remote_clients_without_a_token(network):
    response = Client(REMOTE_ADDR="203.0.113.9").get("/metrics")
    assert response.status_code == 403
    assert b"METRICS_TOKEN" in response.content


def test_with_a_token_only_its_bearer_may_scrape(network, settings):
    settings.METRICS_TOKEN = "s3cret-scrape-token"
    remote = Client(REMOTE_ADDR="203.0.113.9")
    assert remote.get("/metrics").status_code == 401
    wrong = remote.get("/metrics", headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 401 and wrong["WWW-Authenticate"].startswith("Bearer")
    # Loopback is no longer enough once a token is configured.
    assert Client().get("/metrics").status_code == 401
    samples = scrape(remote, Authorization="Bearer s3cret-scrape-token")
    assert value(samples, "katiedj_listeners", network=network.slug) == 0
