"""A database that hangs or refuses: listeners are told to retry, /metrics still answers."""

from __future__ import annotations

import re
import threading

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import OperationalError
from django.test import Client

from katiedj import outages
from katiedj.asgi import application
from tests.factories import NetworkFactory

pytestmark = pytest.mark.django_db(transaction=True)

TRY_AGAIN_LATER = (1013, "service unavailable, retry shortly")


@pytest.fixture(autouse=True)
def _fresh_outages():
    outages.reset()
    yield
    outages.reset()


def refuse(*args, **kwargs):
    raise OperationalError('connection to server at "127.0.0.1", port 5432 failed: refused')


async def close_of(path: str) -> tuple[int, str]:
    """Connect to ``path``; expect an accept followed by a close, and return the close."""
    communicator = WebsocketCommunicator(application, path)
    connected, _ = await communicator.connect(timeout=5)
    assert connected, "accepted first, so the client can read why it is closed"
    message = await communicator.receive_output(timeout=5)
    assert message["type"] == "websocket.close", message
    await communicator.disconnect(timeout=3)
    return message["code"], message.get("reason", "")


async def test_a_listener_of_an_uncached_network_is_told_to_retry(monkeypatch):
    monkeypatch.setattr("networks.selectors._load_network", refuse)
    assert await close_of("/ws/networks/not-cached-yet/") == TRY_AGAIN_LATER


async def test_a_hung_database_closes_the_handshake_after_a_bounded_wait(monkeypatch, settings):
    settings.DATABASE_LOOKUP_TIMEOUT_SECONDS = 0.3
    released = threading.Event()
    monkeypatch.setattr("networks.selectors._load_network", lambda slug: released.wait(10))
    try:
        assert await close_of("/ws/networks/hung/") == TRY_AGAIN_LATER
    finally:
        released.set()


async def test_a_personal_token_that_cannot_be_exchanged_is_told_to_retry(monkeypatch):
    await sync_to_async(NetworkFactory)(slug="premium", is_public=False)
    monkeypatch.setattr("streaming.consumers.exchange_personal_token", refuse)
    token = "kdjp_" + "x" * 36
    assert await close_of(f"/ws/networks/premium/?token={token}") == TRY_AGAIN_LATER


async def test_a_cached_network_still_admits_listeners(monkeypatch):
    await sync_to_async(NetworkFactory)(slug="weather")
    communicator = WebsocketCommunicator(application, "/ws/networks/weather/")
    assert (await communicator.connect(timeout=5))[0]
    await communicator.disconnect()
    monkeypatch.setattr("networks.selectors._load_network", refuse)
    communicator = WebsocketCommunicator(application, "/ws/networks/weather/")
    assert (await communicator.connect(timeout=5))[0]
    assert await communicator.receive_nothing(timeout=0.2)
    await communicator.disconnect()


# --- /metrics ----------------------------------------------------------------------------------


def scrape() -> str:
    response = Client().get("/metrics")
    assert response.status_code == 200, response.content
    return response.content.decode()


def gauge(text: str, name: str) -> float | None:
    match = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else None


def test_metrics_report_the_database_and_redis_up(network):
    text = scrape()
    assert gauge(text, "katiedj_database_up") == 1
    assert 'katiedj_listeners{network="city-traffic"} 0' in text


def test_metrics_degrade_while_the_database_is_down(network, monkeypatch):
    monkeypatch.setattr("streaming.selectors._live_networks", refuse)
    text = scrape()
    assert gauge(text, "katiedj_database_up") == 0
    assert "city-traffic" not in text  # the network list comes from the database
    assert gauge(text, "katiedj_process_listeners") is not None  # this process's part is there
    assert "# TYPE katiedj_publish_seconds histogram" in text


def test_metrics_degrade_while_the_database_hangs(network, monkeypatch, settings):
    settings.DATABASE_LOOKUP_TIMEOUT_SECONDS = 0.3
    released = threading.Event()
    monkeypatch.setattr("streaming.selectors._live_networks", lambda: released.wait(10))
    try:
        assert gauge(scrape(), "katiedj_database_up") == 0
    finally:
        released.set()


def test_metrics_degrade_while_redis_is_down(network, monkeypatch, settings):
    def redis_down(network_ids):
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    settings.REDIS_URL = settings.REDIS_URL or "redis://127.0.0.1:1/0"  # never dialled here
    monkeypatch.setattr("streaming.selectors._stream_figures", redis_down)
    text = scrape()
    assert gauge(text, "katiedj_redis_up") == 0
    assert gauge(text, "katiedj_database_up") == 1
    assert "city-traffic" not in text  # listeners and history live in Redis
    assert gauge(text, "katiedj_process_listeners") is not None  # earlier tests may hold some


def test_servers_answer_scrapes_below_django(network, publisher, monkeypatch, settings):
    """uvicorn's path: not through Django's views, which run on asgiref's one sync thread
    (a portal page waiting on a hung database holds it)."""
    response = publisher.get("/metrics")  # from 127.0.0.1
    assert response.status_code == 200
    assert "x-frame-options" not in response.headers  # no Django middleware ran
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert gauge(response.text, "katiedj_database_up") == 1
    settings.METRICS_TOKEN = "s3cret-scrape-token"
    refused = publisher.get("/metrics")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    allowed = publisher.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-token"})
    assert gauge(allowed.text, "katiedj_database_up") == 1

    settings.DATABASE_LOOKUP_TIMEOUT_SECONDS = 0.3
    released = threading.Event()
    monkeypatch.setattr("streaming.selectors._live_networks", lambda: released.wait(10))
    try:
        hung = publisher.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-token"})
        assert gauge(hung.text, "katiedj_database_up") == 0
    finally:
        released.set()
