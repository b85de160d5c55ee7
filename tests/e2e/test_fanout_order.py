"""Fan-out across server processes: every listener, on any process, gets every message once,
in sequence order, while several publishers post concurrently to different processes."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import websockets

from .harness import manage

pytestmark = pytest.mark.e2e

MESSAGES = 400
PUBLISHERS = 8


async def collect(ws, count: int) -> list[dict]:
    frames = []
    async with asyncio.timeout(30):
        while len(frames) < count:
            frames.append(json.loads(await ws.recv()))
    return frames


async def test_listeners_on_every_process_get_every_message_once_in_order(stack):
    slug = "ordered-net"
    manage(stack.env, "create_network", slug, "--org", "katiedj-demo")
    key = manage(stack.env, "create_api_key", "--org", "katiedj-demo", "--name", "order",
                 "--network", slug, "--rate-limit", "5000").strip().splitlines()[-1]  # fmt: skip
    urls = [f"{server.ws}/ws/networks/{slug}/?format=envelope" for server in stack.servers]
    listeners = [await websockets.connect(url) for url in urls for _ in range(2)]
    try:
        readers = [asyncio.create_task(collect(ws, MESSAGES)) for ws in listeners]

        def post(i: int) -> int:
            # Publishers alternate between the server processes.
            server = i % len(stack.servers)
            status, _ = stack.publish({"network": slug, "data": {"i": i}}, key, server=server)
            return status

        with ThreadPoolExecutor(PUBLISHERS) as pool:
            statuses = await asyncio.to_thread(lambda: list(pool.map(post, range(MESSAGES))))
        assert statuses == [200] * MESSAGES
        received = await asyncio.gather(*readers)
    finally:
        for ws in listeners:
            await ws.close()

    first_seq = received[0][0]["seq"]
    for frames in received:
        seqs = [f["seq"] for f in frames]
        assert seqs == list(range(first_seq, first_seq + MESSAGES))  # in order, no gap, no dup
        assert sorted(f["data"]["i"] for f in frames) == list(range(MESSAGES))  # each once
    # Every listener saw the same order, wherever it was connected.
    orders = {tuple(f["data"]["i"] for f in frames) for frames in received}
    assert len(orders) == 1
