"""Occupancy: listeners per network across processes, and the occupied / vacated events."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from katiedj.asgi import application
from networks.redis_clients import async_redis_client, redis_client
from streaming.occupancy import OccupancyReporter, events_channel, occupancy_changed, occupancy_key
from streaming.selectors import listeners_now
from tests.factories import NetworkFactory

needs_redis = pytest.mark.skipif(
    not os.environ.get("REDIS_URL"), reason="occupancy across processes lives in Redis"
)


@pytest.fixture
def events():
    """Occupancy events announced in this process, as (network id, listeners, occupied)."""
    seen: list[tuple[int, int, bool]] = []

    def receiver(sender, network_id, listeners, occupied, **kwargs):
        seen.append((network_id, listeners, occupied))

    occupancy_changed.connect(receiver)
    yield seen
    occupancy_changed.disconnect(receiver)


@pytest.fixture
def clean_occupancy(settings):
    if settings.REDIS_URL:
        redis_client().delete(occupancy_key())
    yield
    if settings.REDIS_URL:
        redis_client().delete(occupancy_key())


async def wait_for(predicate) -> None:
    """Poll ``predicate`` for up to 3 s (counts are written a moment after they change)."""
    async with asyncio.timeout(3):
        while True:  # polling Redis: there is no event to wait on
            if await sync_to_async(predicate)():
                return
            await asyncio.sleep(0.02)


@pytest.mark.django_db(transaction=True)
async def test_listeners_now_follows_connects_and_disconnects(clean_occupancy, events):
    network = await sync_to_async(NetworkFactory)(slug="busy")
    quiet = await sync_to_async(NetworkFactory)(slug="quiet")
    first = WebsocketCommunicator(application, "/ws/networks/busy/")
    second = WebsocketCommunicator(application, "/ws/networks/busy/")
    assert (await first.connect())[0] and (await second.connect())[0]

    await wait_for(lambda: listeners_now([network.id, quiet.id]) == {network.id: 2, quiet.id: 0})
    # Occupied once, not once per listener (with Redis both connects may be written at once).
    assert [(n, occupied) for n, _, occupied in events] == [(network.id, True)]

    await first.disconnect()
    await wait_for(lambda: listeners_now([network.id])[network.id] == 1)
    await second.disconnect()
    await wait_for(lambda: listeners_now([network.id])[network.id] == 0)
    assert [(n, occupied) for n, _, occupied in events] == [(network.id, True), (network.id, False)]


@needs_redis
async def test_processes_add_up_and_only_the_crossing_process_announces(clean_occupancy, events):
    web1, web2 = OccupancyReporter("web-1"), OccupancyReporter("web-2")
    pubsub = async_redis_client().pubsub()
    await pubsub.subscribe(events_channel())
    try:
        web1.note(41, 2)
        await web1.flush()
        web2.note(41, 3)
        await web2.flush()
        assert await sync_to_async(listeners_now)([41]) == {41: 5}
        web1.note(41, 0)
        await web1.flush()
        web2.note(41, 0)
        await web2.flush()
        assert await sync_to_async(listeners_now)([41]) == {41: 0}

        published = []
        async with asyncio.timeout(3):
            while len(published) < 2:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message:
                    published.append(json.loads(message["data"]))
    finally:
        await pubsub.aclose()
    # web-1 took it from 0 to 2; web-2 took it from 3 to 0.
    assert events == [(41, 2, True), (41, 0, False)]
    assert published == [
        {"event": "occupied", "network_id": 41, "listeners": 2},
        {"event": "vacated", "network_id": 41, "listeners": 0},
    ]


@needs_redis
async def test_a_process_that_stops_reporting_is_forgotten(clean_occupancy):
    crashed = OccupancyReporter("web-crashed", ttl=0.2)
    alive = OccupancyReporter("web-alive")
    crashed.note(42, 4)
    await crashed.flush()
    alive.note(42, 1)
    await alive.flush()
    assert await sync_to_async(listeners_now)([42]) == {42: 5}
    await asyncio.sleep(0.3)  # the crashed process never refreshes its count
    assert await sync_to_async(listeners_now)([42]) == {42: 1}
