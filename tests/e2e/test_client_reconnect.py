"""The Python listener client survives a restart of a real server and keeps receiving."""

from __future__ import annotations

import asyncio

import pytest
from katiedj_client import Listener

from .harness import manage

pytestmark = pytest.mark.e2e


async def publish_until_heard(stack, heard: asyncio.Queue, marker: str):
    """Publish ``marker`` repeatedly until the listener reports it: it may be reconnecting."""
    async with asyncio.timeout(15):
        while True:
            status, _ = await asyncio.to_thread(
                stack.publish, {"network": "sample_net", "data": {"marker": marker}}, stack.demo_key
            )
            assert status == 200
            try:
                while True:
                    message = await asyncio.wait_for(heard.get(), 0.3)
                    if message.get("marker") == marker:
                        return
            except TimeoutError:
                continue


async def test_listener_client_reconnects_after_the_server_restarts(stack):
    server = stack.servers[0]
    listener = Listener(server.ws + "/macro/sample/", min_backoff=0.05, max_backoff=0.5)
    heard: asyncio.Queue = asyncio.Queue()

    async def consume():
        async for message in listener:
            await heard.put(message)

    consumer = asyncio.create_task(consume())
    try:
        await publish_until_heard(stack, heard, "before-restart")
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        await publish_until_heard(stack, heard, "after-restart")
        assert listener.reconnects >= 1
        assert listener.connected
    finally:
        await listener.aclose()
        # Closing the listener ends the iteration: the consumer finishes on its own.
        await asyncio.wait_for(consumer, 5)


@pytest.mark.parametrize("stack", ["production"], indirect=True)
async def test_a_resuming_client_gets_what_was_published_while_it_was_away(stack):
    """Its server process restarts; meanwhile the other process takes publishes."""
    server = stack.servers[0]
    listener = Listener(
        server.ws + "/ws/networks/quiet-net/", resume=True, min_backoff=0.05, max_backoff=0.3
    )
    key = await asyncio.to_thread(
        manage, stack.env, "create_api_key", "--org", "katiedj-demo", "--name", "resume",
        "--network", "quiet-net",
    )  # fmt: skip
    key = key.strip()
    heard: asyncio.Queue = asyncio.Queue()

    async def consume():
        async for message in listener:
            await heard.put(message)

    def publish(i: int, on: int) -> int:
        return stack.publish({"network": "quiet-net", "data": {"i": i}}, key, on)[0]

    consumer = asyncio.create_task(consume())
    try:
        async with asyncio.timeout(30):
            while not listener.connected:  # noqa: ASYNC110 (the client exposes a flag, no event)
                await asyncio.sleep(0.05)
            assert await asyncio.to_thread(publish, 0, 0) == 200
            assert await heard.get() == {"i": 0}
            await asyncio.to_thread(server.stop)
            for i in (1, 2, 3):  # published while the listener's server is down
                assert await asyncio.to_thread(publish, i, 1) == 200
            await asyncio.to_thread(server.start)
            got = [await heard.get() for _ in range(3)]
            assert got == [{"i": 1}, {"i": 2}, {"i": 3}]
            assert await asyncio.to_thread(publish, 4, 1) == 200
            assert await heard.get() == {"i": 4}
        assert listener.missed == 0 and heard.empty()
        assert listener.resets == 0 and listener.last_epoch  # one numbering throughout
        # The handshake told it what quiet-net's history keeps (the defaults).
        assert (listener.history_messages, listener.history_seconds) == (1000, 86400)
    finally:
        await listener.aclose()
        await asyncio.wait_for(consumer, 5)
