"""The stand-alone generator through the real platform: a CLI process publishes the traffic model
over HTTP and a WebSocket listener on the original path receives every sample."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta

import pytest
import websockets

from .harness import REPO_ROOT

pytestmark = pytest.mark.e2e

STREETS = {str(i) for i in range(13)}


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
async def test_generator_cli_reaches_the_original_listener(stack):
    server = stack.servers[0]
    started = datetime.now(UTC) - timedelta(seconds=1)
    async with websockets.connect(server.ws + "/macro/sample/") as ws:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "simulator.generator",
            "--url",
            server.http,
            "--api-key",
            stack.demo_key,
            "--network",
            "sample_net",
            "--max-publishes",
            "3",
            "--interval",
            "0.2",
            "--steps-per-publish",
            "5",
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            frames = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(3)]
            out, err = await asyncio.wait_for(process.communicate(), 10)
        finally:
            if process.returncode is None:
                process.kill()
                await process.communicate()
    assert process.returncode == 0, err.decode()
    assert out == b""
    assert [frame["step"] for frame in frames] == [5, 10, 15]
    for frame in frames:
        assert set(frame) == {"state", "timestamp", "step", "sim_time"}
        assert set(frame["state"]) == STREETS
        # What the original listener does with a frame.
        assert all(isinstance(frame["state"][str(i)], float) for i in range(13))
        assert frame["sim_time"] == frame["step"] * 1.0
        stamped = datetime.fromisoformat(frame["timestamp"])
        assert frame["timestamp"].endswith("Z") and stamped.utcoffset() == timedelta(0)
        assert started <= stamped <= datetime.now(UTC)
    assert frames[0]["timestamp"] < frames[1]["timestamp"] < frames[2]["timestamp"]
    # Traffic has entered the network by step 15.
    assert sum(frames[-1]["state"].values()) > 0
