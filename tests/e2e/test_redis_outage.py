"""A dropped Redis connection: publishers get a clear 503, nothing half-done, then recovery."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
import websockets

from .harness import RedisServer, free_port, require_production_services, start_production_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def private_redis_stack(tmp_path_factory):
    """One server process on a Redis of its own, which the tests stop and start."""
    require_production_services()
    tmp_path = tmp_path_factory.mktemp("redis-outage")
    redis_server = RedisServer(free_port(), tmp_path)
    redis_server.start()
    stack = start_production_stack(tmp_path, processes=1, redis_url=redis_server.url)
    yield stack, redis_server
    stack.stop()
    redis_server.stop()


def publish(stack, data):
    return stack.publish({"network": "sample_net", "data": data}, stack.demo_key)


async def test_publish_answers_503_while_redis_is_down_and_recovers(private_redis_stack):
    stack, redis_server = private_redis_stack
    assert publish(stack, {"n": 1})[0] == 200

    redis_server.stop()
    status, answer = await asyncio.to_thread(publish, stack, {"n": 2})
    assert status == 503
    assert answer == {"error": "Service unavailable, retry shortly", "code": "unavailable"}

    redis_server.start()
    # The server reconnects by itself; a generator that retries gets through.
    deadline = time.monotonic() + 15
    while (status := (await asyncio.to_thread(publish, stack, {"n": 3}))[0]) != 200:
        assert status == 503
        assert time.monotonic() < deadline, "publishing did not recover after Redis returned"
        await asyncio.sleep(0.2)

    # New listeners hear what is published after the outage.
    async with websockets.connect(stack.servers[0].ws + "/ws/networks/sample_net/") as ws:
        assert (await asyncio.to_thread(publish, stack, {"n": 4}))[0] == 200
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"n": 4}


async def test_a_listener_connected_through_the_outage_hears_later_messages(private_redis_stack):
    stack, redis_server = private_redis_stack
    async with websockets.connect(stack.servers[0].ws + "/ws/networks/sample_net/") as ws:
        assert (await asyncio.to_thread(publish, stack, {"n": 1}))[0] == 200
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"n": 1}
        redis_server.stop()
        await asyncio.sleep(0.5)
        redis_server.start()
        deadline = time.monotonic() + 20
        frames: list[dict] = []
        while {"n": 2} not in frames:
            status, _ = await asyncio.to_thread(publish, stack, {"n": 2})
            if status == 200:
                with contextlib.suppress(TimeoutError):
                    while True:
                        frames.append(json.loads(await asyncio.wait_for(ws.recv(), 1)))
            assert time.monotonic() < deadline, "the listener never heard from the network again"
            await asyncio.sleep(0.2)
        # This Redis kept nothing: numbering starts again at 1, and the listener, which had
        # seen seq 1 of the old numbering, is told before the new seq 1 arrives.
        reset = frames[frames.index({"n": 2}) - 1]
        assert (reset["type"], reset["seq"]) == ("reset", 0)
