"""The flagship generator through real processes: simulations publish on their own."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from .harness import celery_worker, manage, start_embedded_stack

pytestmark = pytest.mark.e2e
# Ticks go to their own queue (platform/Procfile's `simulations` worker); one worker takes both.
BOTH_QUEUES = "celery,simulations"


async def frames(url: str, count: int, within: float) -> list[dict]:
    received = []
    async with websockets.connect(url) as ws, asyncio.timeout(within):
        while len(received) < count:
            received.append(json.loads(await ws.recv()))
    return received


async def test_make_run_has_sample_net_simulating_from_the_first_start(tmp_path):
    stack = await asyncio.to_thread(start_embedded_stack, tmp_path, {"DEMO_SIMULATION": "on"})
    try:
        samples = await frames(stack.servers[0].ws + "/macro/sample/", 2, 20)
    finally:
        await asyncio.to_thread(stack.stop)
    for sample in samples:
        assert sorted(sample["state"], key=int) == [str(i) for i in range(13)]
        assert all(isinstance(v, float | int) and v >= 0 for v in sample["state"].values())
        assert sample["timestamp"].endswith("Z")
    assert samples[1]["step"] > samples[0]["step"]


@pytest.mark.parametrize("stack", ["production"], indirect=True)
async def test_beat_and_a_worker_step_a_simulation_and_a_restart_resumes_without_gaps(
    stack, tmp_path
):
    network = "quiet-net"
    await asyncio.to_thread(
        manage, stack.env, "simulation", "create", "e2e-town", "--network", network,
        "--rows", "2", "--cols", "2", "--interval", "1",
    )  # fmt: skip
    await asyncio.to_thread(manage, stack.env, "simulation", "start", "e2e-town")
    steps: list[int] = []
    try:
        async with websockets.connect(stack.servers[1].ws + f"/ws/networks/{network}/") as ws:

            async def collect(count: int) -> None:
                async with asyncio.timeout(40):
                    target = len(steps) + count
                    while len(steps) < target:
                        sample = json.loads(await ws.recv())
                        assert len(sample["state"]) > 8
                        steps.append(sample["step"])

            with celery_worker(stack.env, tmp_path / "worker1.log", True, BOTH_QUEUES):
                await collect(3)
            # The worker (and its beat) is gone; a new one resumes from the saved step.
            with celery_worker(stack.env, tmp_path / "worker2.log", True, BOTH_QUEUES):
                await collect(3)
    finally:
        await asyncio.to_thread(manage, stack.env, "simulation", "stop", "e2e-town")
    # Consecutive steps, in order: no gap and no duplicate across the restart.
    assert steps == list(range(steps[0], steps[0] + len(steps))), steps
