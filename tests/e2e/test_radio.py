"""The radio end to end: real server processes, real WebSocket listeners, HTTP publishers."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.e2e

SAMPLE = {"state": {str(i): float(i) * 1.5 for i in range(13)}, "timestamp": "2026-11-27T10:00:00Z"}


async def publish(stack, body, key=None, server=0, path="/api/publish"):
    return await asyncio.to_thread(stack.publish, body, key, server, path)


async def next_frame(ws, wait=5.0):
    return await asyncio.wait_for(ws.recv(), wait)


async def assert_silent(ws, seconds=0.5):
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), seconds)


@pytest.mark.parametrize("listen_path", ["/ws/networks/sample_net/", "/macro/sample/"])
@pytest.mark.parametrize("publish_path", ["/api/publish", "/publish"])
async def test_listener_receives_exactly_the_published_data(stack, listen_path, publish_path):
    async with websockets.connect(stack.servers[0].ws + listen_path) as ws:
        status, receipt = await publish(
            stack, {"network": "sample_net", "data": SAMPLE}, stack.demo_key, path=publish_path
        )
        assert status == 200, receipt
        assert receipt["message"] == "OK"
        frame = await next_frame(ws)
    # The original listener parses the frame as the bare data object.
    assert json.loads(frame) == SAMPLE


async def test_every_listener_receives_and_other_networks_hear_nothing(stack):
    server = stack.servers[0].ws
    async with (
        websockets.connect(server + "/ws/networks/sample_net/") as first,
        websockets.connect(server + "/ws/networks/sample_net/") as second,
        websockets.connect(server + "/ws/networks/quiet-net/") as bystander,
    ):
        for step in range(3):
            status, _ = await publish(
                stack, {"network": "sample_net", "data": {"step": step}}, stack.demo_key
            )
            assert status == 200
        for ws in (first, second):
            assert [json.loads(await next_frame(ws)) for _ in range(3)] == [
                {"step": s} for s in range(3)
            ]
        await assert_silent(bystander)


async def test_rejected_publishes_reach_no_listener(stack):
    async with websockets.connect(stack.servers[0].ws + "/macro/sample/") as ws:
        rejected = [
            ({"network": "sample_net", "data": {"bad": "no key"}}, None, 400),
            ({"network": "sample_net", "data": {"bad": "wrong key"}}, "not-a-key", 400),
            ({"network": "sample_net", "data": ["not", "an", "object"]}, stack.demo_key, 400),
            ({"network": "sample_net"}, stack.demo_key, 400),
            ({"network": "rival-net", "data": {"bad": "other tenant"}}, stack.demo_key, 403),
            ({"network": "sample_net", "data": {"blob": "x" * 70_000}}, stack.demo_key, 413),
            (b"{not json", stack.demo_key, 400),
        ]
        for body, key, expected in rejected:
            status, answer = await publish(stack, body, key)
            assert status == expected, answer
            assert "error" in answer
        status, _ = await publish(
            stack, {"network": "sample_net", "data": {"good": True}}, stack.demo_key
        )
        assert status == 200
        # The first frame the listener sees is the one accepted publish.
        assert json.loads(await next_frame(ws)) == {"good": True}
        await assert_silent(ws, 0.3)


async def test_unknown_networks_refuse_the_handshake(stack):
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(stack.servers[0].ws + "/ws/networks/no-such-net/"):
            pass
    assert refused.value.response.status_code in (403, 404)


async def test_a_paid_network_closes_an_anonymous_listener_with_4401(stack):
    async with websockets.connect(stack.servers[0].ws + "/ws/networks/paid-net/") as ws:
        await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 4401


async def test_listeners_cannot_talk(stack):
    server = stack.servers[0].ws + "/ws/networks/sample_net/"
    async with websockets.connect(server) as talker, websockets.connect(server) as other:
        await talker.send(json.dumps({"state": {"0": 999}}))
        await assert_silent(other, 0.3)
        await assert_silent(talker, 0.1)
        # Talking on and on gets the talker disconnected (policy violation).
        for _ in range(30):
            await talker.send("spam")
        await asyncio.wait_for(talker.wait_closed(), 5)
        assert talker.close_code == 1008
        status, _ = await publish(
            stack, {"network": "sample_net", "data": {"after": 1}}, stack.demo_key
        )
        assert status == 200
        assert json.loads(await next_frame(other)) == {"after": 1}


async def test_rest_endpoint_publishes_to_listeners(stack):
    import urllib.request

    async with websockets.connect(stack.servers[0].ws + "/ws/networks/sample_net/") as ws:
        request = urllib.request.Request(  # noqa: S310
            stack.servers[0].http + "/api/v1/networks/sample_net/messages",
            data=json.dumps({"data": {"via": "rest"}}).encode(),
            headers={
                "Authorization": f"Bearer {stack.demo_key}",
                "Content-Type": "application/json",
            },
            method="POST",
        )
        response = await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
        assert response.status == 201
        assert json.loads(await next_frame(ws)) == {"via": "rest"}


async def test_sequence_numbers_increase_across_server_processes(stack):
    seqs = []
    for index in range(6):
        server = index % len(stack.servers)
        status, receipt = await publish(
            stack, {"network": "sample_net", "data": {"i": index}}, stack.demo_key, server
        )
        assert status == 200
        seqs.append(receipt["seq"])
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)


# The embedded default is one process by design; this is the production stack's promise.
@pytest.mark.parametrize("stack", ["production"], indirect=True)
async def test_a_message_published_on_one_process_reaches_listeners_on_every_process(stack):
    assert len(stack.servers) >= 2
    async with (
        websockets.connect(stack.servers[0].ws + "/ws/networks/sample_net/") as on_first,
        websockets.connect(stack.servers[1].ws + "/macro/sample/") as on_second,
    ):
        for server in (0, 1):
            status, _ = await publish(
                stack, {"network": "sample_net", "data": {"from": server}}, stack.demo_key, server
            )
            assert status == 200
        for ws in (on_first, on_second):
            received = [json.loads(await next_frame(ws)) for _ in range(2)]
            assert received == [{"from": 0}, {"from": 1}]


async def test_an_oversized_listener_frame_closes_the_listener_with_1009(stack):
    async with websockets.connect(stack.servers[0].ws + "/ws/networks/sample_net/") as ws:
        await ws.send("x" * 5000)
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1009
