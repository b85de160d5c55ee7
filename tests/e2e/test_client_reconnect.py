"""The Python listener client survives a restart of a real server and keeps receiving."""

from __future__ import annotations

import asyncio

import pytest
from katiedj_client import Listener

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
