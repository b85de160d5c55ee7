"""A hung, then refused, PostgreSQL behind a proxy (issue 13): publishers whose key and
network are cached carry on, strangers get the documented 503 or close 1013, /metrics says
the database is down, and publishing that needs the database recovers once it is back."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import pytest
import websockets

from .harness import (
    PostgresProxy,
    RedisServer,
    ServerProcess,
    free_port,
    manage,
    require_production_services,
    start_production_stack,
    uvicorn_command,
)

pytestmark = pytest.mark.e2e

UNAVAILABLE = {"error": "Service unavailable, retry shortly", "code": "unavailable"}
# How long the database stays refused at least (seconds): raise it to measure recovery after
# a longer outage, e.g. E2E_DATABASE_REFUSED_SECONDS=60 (docs/operations.md).
REFUSED_SECONDS = float(os.environ.get("E2E_DATABASE_REFUSED_SECONDS", "") or 0)
# uvicorn's own lines per WebSocket handshake and connection: per request by design.
PER_CONNECTION = re.compile(r'"WebSocket /ws/|connection (open|closed)|\[accepted\]')


# Blocking calls run here: the default executor has CPUs + 4 threads (6 on the test host),
# fewer than the strangers, the generator, the scrapes and a portal page need at once.
_CLIENTS = concurrent.futures.ThreadPoolExecutor(max_workers=32)
T = TypeVar("T")


async def off_loop(function: Callable[..., T], *args: object) -> T:
    return await asyncio.get_running_loop().run_in_executor(_CLIENTS, partial(function, *args))


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    """One uvicorn process that reaches PostgreSQL through a proxy the test controls, and a
    valid key nobody has used yet (so no process has it cached)."""
    require_production_services()
    tmp_path = tmp_path_factory.mktemp("database-outage")
    proxy = PostgresProxy()
    proxy.start()
    stack = start_production_stack(tmp_path, processes=0)
    try:
        fresh_key = manage(stack.env, "create_api_key", "--org", "katiedj-demo",
                           "--name", "after-the-outage", "--network", "sample_net",
                           ).strip().splitlines()[-1]  # fmt: skip
        env = {**stack.env, "DATABASE_URL": proxy.url(stack.env["DATABASE_URL"])}
        port = free_port()
        server = ServerProcess(uvicorn_command(port), env, port, tmp_path / "web0.log")
        stack.servers.append(server)
        server.start()
        yield stack, proxy, fresh_key
    finally:
        stack.stop()
        proxy.stop()


def post(stack, key: str, data: object) -> tuple[int, dict, str | None]:
    """(status, JSON body, Retry-After) of a legacy publish to sample_net."""
    request = urllib.request.Request(  # noqa: S310
        stack.servers[0].http + "/api/publish",
        data=json.dumps({"network": "sample_net", "data": data}).encode(),
        headers={"Content-Type": "application/json", "API-KEY": key},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:  # noqa: S310
            return response.status, json.loads(response.read()), response.headers["Retry-After"]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}"), error.headers["Retry-After"]


def service_up(stack, service: str = "database") -> str | None:
    """``katiedj_<service>_up`` from /metrics, which must answer 200 whatever is down."""
    with urllib.request.urlopen(stack.servers[0].http + "/metrics", timeout=20) as response:  # noqa: S310
        assert response.status == 200
        text = response.read().decode()
    match = re.search(rf"^katiedj_{service}_up\{{[^}}]*\}} (\d)$", text, re.MULTILINE)
    return match[1] if match else None


def portal_page(stack, path: str) -> int | None:
    """A page of the portal (Django's views, not the hot path): its status, None if none."""
    try:
        with urllib.request.urlopen(stack.servers[0].http + path, timeout=60) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


class Stranger:
    """Anyone: unknown API keys and unknown networks, as fast as the answers come."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.publishes: list[tuple[int, dict, str | None]] = []
        self.waits: list[float] = []  # seconds each refused publish took
        self.closes: list[int | None] = []

    async def publish_unknown_keys(self) -> None:
        while True:
            key = f"stranger-{uuid.uuid4().hex}"
            started = time.monotonic()
            self.publishes.append(await off_loop(post, self.stack, key, {"x": 1}))
            self.waits.append(time.monotonic() - started)

    async def connect_unknown_networks(self) -> None:
        while True:
            url = f"{self.stack.servers[0].ws}/ws/networks/nowhere-{uuid.uuid4().hex[:12]}/"
            try:
                async with websockets.connect(url, open_timeout=20) as ws:
                    with contextlib.suppress(websockets.ConnectionClosed):
                        await asyncio.wait_for(ws.recv(), 20)
                    self.closes.append(ws.close_code)
            except websockets.InvalidStatus as refused:  # 403: the network does not exist
                self.closes.append(refused.response.status_code)


async def test_a_hung_or_refused_database_stalls_no_cached_publisher(proxied):
    stack, proxy, fresh_key = proxied
    log = stack.servers[0].log_path
    sent = 0
    cached_latencies: list[float] = []

    async def publish_known() -> None:
        """The demo generator: its key and network are cached, so it needs no database."""
        nonlocal sent
        sent += 1
        started = time.monotonic()
        status, _, _ = await off_loop(post, stack, stack.demo_key, {"n": sent})
        cached_latencies.append(time.monotonic() - started)
        assert status == 200, f"a cached publisher was refused: {status}"
        frame = json.loads(await asyncio.wait_for(listener.recv(), 20))
        assert frame == {"n": sent}

    async with websockets.connect(stack.servers[0].ws + "/ws/networks/sample_net/") as listener:
        await publish_known()  # warms the caches
        log_before = log.read_text(errors="replace").count("\n")

        proxy.hang()
        stranger = Stranger(stack)
        tasks = [asyncio.ensure_future(stranger.publish_unknown_keys()) for _ in range(4)]
        tasks += [asyncio.ensure_future(stranger.connect_unknown_networks()) for _ in range(2)]
        hang_started = time.monotonic()
        hung_publishes = 0
        while len(stranger.publishes) < 8 or len(stranger.closes) < 2:
            await publish_known()
            hung_publishes += 1
            await asyncio.sleep(0.05)
            assert time.monotonic() - hang_started < 120, "the strangers never got an answer"
        assert {status for status, _, _ in stranger.publishes} == {503}
        assert all(body == UNAVAILABLE and retry == "1" for _, body, retry in stranger.publishes)
        assert set(stranger.closes) == {1013}, stranger.closes
        # A portal page waits on the hung database in Django's thread: /metrics must not.
        portal_asked = time.monotonic()
        portal = asyncio.ensure_future(off_loop(portal_page, stack, "/networks/"))
        await asyncio.sleep(0.5)
        assert await off_loop(service_up, stack) == "0"

        hung_waits = max(stranger.waits)
        proxy.refuse()
        refused = time.monotonic()
        stranger.publishes.clear()
        stranger.waits.clear()
        while len(stranger.publishes) < 8 or time.monotonic() - refused < REFUSED_SECONDS:
            await publish_known()
            await asyncio.sleep(0.05)
        assert all(
            (status, body, retry) == (503, UNAVAILABLE, "1")
            for status, body, retry in stranger.publishes
        ), stranger.publishes
        refused_for = time.monotonic() - refused
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

        proxy.restore()
        restored = time.monotonic()
        while (status := (await off_loop(post, stack, fresh_key, {"new": 1}))[0]) != 200:
            assert status == 503
            assert time.monotonic() - restored < 120, "publishing never recovered"
            await asyncio.sleep(0.1)
        recovery = time.monotonic() - restored
        assert json.loads(await asyncio.wait_for(listener.recv(), 20)) == {"new": 1}
        while await off_loop(service_up, stack) != "1":
            assert time.monotonic() - restored < 120, "/metrics never saw the database again"
            await asyncio.sleep(0.2)
        await publish_known()
        portal_status = await portal  # Django's view: it waited on the database all along
        portal_seconds = time.monotonic() - portal_asked

    outage_lines = log.read_text(errors="replace").splitlines()[log_before:]
    printed = [line for line in outage_lines if not PER_CONNECTION.search(line)]
    outages = [line for line in printed if "katiedj.outages" in line]
    print(f"\n{hung_publishes} cached publishes during the hang, all accepted (slowest of all "
          f"{max(cached_latencies) * 1000:.0f} ms); strangers' 503s took at most "
          f"{hung_waits:.1f} s hung, {max(stranger.waits):.1f} s refused "
          f"({len(stranger.publishes)} in {refused_for:.0f} s); a portal page asked during "
          f"the hang answered {portal_status} after {portal_seconds:.0f} s; publishing with an "
          f"uncached key recovered {recovery:.1f} s after the database came back; the "
          f"outage logged:\n" + "\n".join(outages))  # fmt: skip
    # One line when the database goes and one when it is back, never a traceback per
    # request; the portal page's 500 is Django's own error report.
    assert [line.split("katiedj.outages: ")[1][:20] for line in outages] == [
        "database unavailable",
        "database reachable a",
    ]
    errors = [line for line in printed if "Internal Server Error" in line]
    assert all(line.endswith("/networks/") for line in errors), errors
    hot_paths = ("ingest.py", "consumers.py", "lookup_cache.py", "streaming/views.py")
    assert not [line for line in printed if any(path in line for path in hot_paths)]


async def test_metrics_and_publishers_while_redis_is_down(tmp_path):
    """/metrics answered 500 while Redis was down, and each 503 logged a traceback."""
    require_production_services()
    redis_server = RedisServer(free_port(), tmp_path)
    redis_server.start()
    stack = start_production_stack(tmp_path, processes=1, redis_url=redis_server.url)
    try:
        assert post(stack, stack.demo_key, {"n": 1})[0] == 200
        assert await off_loop(service_up, stack, "redis") == "1"
        redis_server.stop()
        for n in range(5):
            assert post(stack, stack.demo_key, {"n": n})[:2] == (503, UNAVAILABLE)
        assert await off_loop(service_up, stack, "redis") == "0"
        assert await off_loop(service_up, stack, "database") == "1"
        redis_server.start()
        deadline = time.monotonic() + 60
        while post(stack, stack.demo_key, {"n": 9})[0] != 200:
            assert time.monotonic() < deadline, "publishing never recovered"
            await asyncio.sleep(0.2)
        assert await off_loop(service_up, stack, "redis") == "1"
    finally:
        stack.stop()
        redis_server.stop()
    text = stack.servers[0].log_path.read_text(errors="replace")
    assert "Traceback" not in text
    assert text.count("redis unavailable") == 1 and text.count("redis reachable again") == 1
