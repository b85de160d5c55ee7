"""The listener consumer in-process, on whichever channel layer the settings configure."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from katiedj.asgi import application
from networks.selectors import network_get_by_slug
from networks.services import message_publish
from tests.factories import NetworkFactory

pytestmark = pytest.mark.django_db(transaction=True)


async def publish(slug: str, data: dict) -> None:
    network = await sync_to_async(network_get_by_slug)(slug=slug)
    await sync_to_async(message_publish)(network=network, data=data)


async def test_a_listener_hears_what_is_published_to_its_network():
    await sync_to_async(NetworkFactory)(slug="weather")
    communicator = WebsocketCommunicator(application, "/ws/networks/weather/")
    connected, _ = await communicator.connect()
    assert connected
    await publish("weather", {"temp": 21.5, "unit": "°C"})
    frame = await communicator.receive_from(timeout=3)
    assert json.loads(frame) == {"temp": 21.5, "unit": "°C"}
    await communicator.disconnect()


async def test_the_original_path_listens_to_sample_net():
    await sync_to_async(NetworkFactory)(slug="sample_net")
    communicator = WebsocketCommunicator(application, "/macro/sample/")
    connected, _ = await communicator.connect()
    assert connected
    await publish("sample_net", {"state": {"0": 3.0}})
    assert json.loads(await communicator.receive_from(timeout=3)) == {"state": {"0": 3.0}}
    await communicator.disconnect()


async def test_unknown_networks_are_refused_before_accept():
    communicator = WebsocketCommunicator(application, "/ws/networks/unknown/")
    connected, _ = await communicator.connect()
    assert not connected


async def test_a_browser_page_from_a_foreign_origin_is_refused():
    await sync_to_async(NetworkFactory)(slug="weather")
    foreign = WebsocketCommunicator(
        application, "/ws/networks/weather/", headers=[(b"origin", b"https://evil.example")]
    )
    assert (await foreign.connect())[0] is False
    local = WebsocketCommunicator(
        application, "/ws/networks/weather/", headers=[(b"origin", b"http://localhost:8000")]
    )
    assert (await local.connect())[0] is True
    await local.disconnect()


async def test_archiving_a_network_closes_its_listeners_and_refuses_new_ones():
    from networks.models import Network
    from networks.services import network_archive

    await sync_to_async(NetworkFactory)(slug="weather")
    communicator = WebsocketCommunicator(application, "/ws/networks/weather/")
    assert (await communicator.connect())[0]
    network = await sync_to_async(Network.objects.get)(slug="weather")
    await sync_to_async(network_archive)(network=network)
    closed = await communicator.receive_output(timeout=3)
    assert (closed["type"], closed["code"]) == ("websocket.close", 4410)
    late = WebsocketCommunicator(application, "/ws/networks/weather/")
    assert (await late.connect())[0] is False


async def test_the_envelope_format_adds_sequence_time_and_network():
    await sync_to_async(NetworkFactory)(slug="weather")
    bare = WebsocketCommunicator(application, "/ws/networks/weather/")
    enveloped = WebsocketCommunicator(application, "/ws/networks/weather/?format=envelope")
    assert (await bare.connect())[0] and (await enveloped.connect())[0]
    await publish("weather", {"temp": 3})
    await publish("weather", {"temp": 4})
    assert json.loads(await bare.receive_from(timeout=3)) == {"temp": 3}
    first = json.loads(await enveloped.receive_from(timeout=3))
    second = json.loads(await enveloped.receive_from(timeout=3))
    assert first["data"] == {"temp": 3} and second["data"] == {"temp": 4}
    assert first["network"] == "weather"
    assert second["seq"] == first["seq"] + 1
    assert first["ts"].endswith("Z")
    await bare.disconnect()
    await enveloped.disconnect()


async def test_since_replays_what_was_missed_then_goes_live_without_duplicates():
    await sync_to_async(NetworkFactory)(slug="weather")
    for index in range(5):
        await publish("weather", {"i": index})
    # The first publish got some seq s; resume after the second one.
    probe = WebsocketCommunicator(application, "/ws/networks/weather/?format=envelope&since=0")
    assert (await probe.connect())[0]
    seqs = [json.loads(await probe.receive_from(timeout=3))["seq"] for _ in range(5)]
    await probe.disconnect()
    assert seqs == list(range(seqs[0], seqs[0] + 5))

    resumed = WebsocketCommunicator(
        application, f"/ws/networks/weather/?format=envelope&since={seqs[1]}"
    )
    assert (await resumed.connect())[0]
    await publish("weather", {"i": 5})
    received = [json.loads(await resumed.receive_from(timeout=3)) for _ in range(4)]
    assert [m["data"]["i"] for m in received] == [2, 3, 4, 5]
    assert [m["seq"] for m in received] == list(range(seqs[2], seqs[2] + 4))
    assert await resumed.receive_nothing(timeout=0.3)
    await resumed.disconnect()


async def test_a_since_older_than_the_history_gets_a_gap_frame_with_the_count():
    await sync_to_async(NetworkFactory)(slug="weather", history_max_messages=3)
    for index in range(6):
        await publish("weather", {"i": index})
    probe = WebsocketCommunicator(application, "/ws/networks/weather/?format=envelope&since=0")
    assert (await probe.connect())[0]
    gap = json.loads(await probe.receive_from(timeout=3))
    kept = [json.loads(await probe.receive_from(timeout=3)) for _ in range(3)]
    await probe.disconnect()
    # Six published, three kept: seqs 1-3 are gone and said so, 4-6 are replayed.
    assert gap == {"type": "gap", "missed": 3, "from_seq": 1, "to_seq": 3}
    assert [m["seq"] for m in kept] == [4, 5, 6]
    assert [m["data"]["i"] for m in kept] == [3, 4, 5]
