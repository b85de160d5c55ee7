"""Backpressure end to end: a real listener socket that stops reading, on a real server.

The stalled listener asks the kernel for a tiny receive buffer and lets its client queue at
most one frame, so the server's transport fills up after a few hundred KiB. Meanwhile a
healthy listener must get everything, the server must not keep what the stalled one cannot
take, and once it reads again it must see exactly what its network's policy promises.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from .harness import manage

pytestmark = pytest.mark.e2e

MESSAGES = 300
PAD = "x" * 48_000  # ~48 KB frames: 300 of them are ~14 MB, far past any socket buffer
_names = itertools.count()


def network_with_policy(stack, policy: str, buffer: int = 5) -> tuple[str, str]:
    """A fresh network with ``policy`` and a key allowed to publish to it fast.

    Its history is short: the embedded mode keeps history in the server's memory, and what
    is measured here is what the server keeps for a stalled listener."""
    slug = f"bp-{policy}-{next(_names)}"
    manage(stack.env, "create_network", slug, "--org", "katiedj-demo", "--backpressure", policy,
           "--backpressure-buffer", str(buffer), "--history", "10")  # fmt: skip
    key = manage(stack.env, "create_api_key", "--org", "katiedj-demo", "--name", slug,
                 "--network", slug, "--rate-limit", "1000").strip().splitlines()[-1]  # fmt: skip
    return slug, key


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def stalled_listener(server, slug: str):
    """A listener whose socket stops reading after the first frame."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    url = f"{server.ws}/ws/networks/{slug}/?format=envelope"
    return await websockets.connect(url, sock=sock, max_queue=1, ping_interval=None)


async def publish_all(stack, slug: str, key: str) -> None:
    for i in range(1, MESSAGES + 1):
        status, body = await asyncio.to_thread(
            stack.publish, {"network": slug, "data": {"i": i, "pad": PAD}}, key
        )
        assert status == 200, body


async def read_until(ws, last_seq: int, wait: float = 20.0) -> list[dict]:
    """Frames until message ``last_seq`` arrives (or the server closes the socket)."""
    frames: list[dict] = []
    async with asyncio.timeout(wait):
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                frame = json.loads(raw)
                frames.append(frame)
                if frame.get("seq") == last_seq:
                    break
    return frames


async def run_with_a_stalled_listener(stack, policy: str) -> tuple[list[dict], object, int]:
    """Publish MESSAGES while one listener stalls; return what it finally reads, its socket,
    and how much the server's memory grew."""
    slug, key = network_with_policy(stack, policy)
    server = stack.servers[0]
    async with websockets.connect(f"{server.ws}/ws/networks/{slug}/?format=envelope") as healthy:
        stalled = await stalled_listener(server, slug)
        rss_before = rss_kib(server.process.pid)
        reader = asyncio.create_task(read_until(healthy, MESSAGES))
        await publish_all(stack, slug, key)
        healthy_frames = await reader
        rss_growth = rss_kib(server.process.pid) - rss_before
        # The others were never held up: everything, in order, no gap.
        assert [f["seq"] for f in healthy_frames] == list(range(1, MESSAGES + 1))
        assert [f["data"]["i"] for f in healthy_frames] == list(range(1, MESSAGES + 1))
        frames = await read_until(stalled, MESSAGES)
        await stalled.close()
    return frames, stalled, rss_growth


def data_seqs(frames: list[dict]) -> list[int]:
    return [f["seq"] for f in frames if "seq" in f]


async def test_conflate_gives_a_stalled_listener_the_latest_sample(stack):
    frames, _, rss_growth = await run_with_a_stalled_listener(stack, "conflate")
    seqs = data_seqs(frames)
    assert seqs == sorted(seqs) and seqs[-1] == MESSAGES  # in order, ending with the latest
    assert len(seqs) < MESSAGES  # it skipped what it could not take
    assert not [f for f in frames if f.get("type") == "gap"]
    # 14 MB went past it; the server kept at most a few frames for it.
    assert rss_growth < 8 * 1024, f"server RSS grew {rss_growth} KiB"


async def test_drop_tells_a_stalled_listener_exactly_what_it_missed(stack):
    frames, _, rss_growth = await run_with_a_stalled_listener(stack, "drop")
    gaps = [f for f in frames if f.get("type") == "gap"]
    assert len(gaps) == 1, frames[:3]
    gap = gaps[0]
    before = data_seqs(frames[: frames.index(gap)])
    after = data_seqs(frames[frames.index(gap) + 1 :])
    assert before == list(range(1, len(before) + 1))  # what it got before stalling
    assert gap["from_seq"] == len(before) + 1 and gap["to_seq"] == MESSAGES - 5
    assert gap["missed"] == gap["to_seq"] - gap["from_seq"] + 1
    assert after == list(range(MESSAGES - 4, MESSAGES + 1))  # the buffer: the newest 5
    assert len(before) + gap["missed"] + len(after) == MESSAGES  # every message accounted for
    assert rss_growth < 8 * 1024, f"server RSS grew {rss_growth} KiB"


async def test_disconnect_closes_a_stalled_listener_with_4413(stack):
    frames, stalled, rss_growth = await run_with_a_stalled_listener(stack, "disconnect")
    seqs = data_seqs(frames)
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < MESSAGES
    assert stalled.close_code == 4413
    assert rss_growth < 8 * 1024, f"server RSS grew {rss_growth} KiB"
