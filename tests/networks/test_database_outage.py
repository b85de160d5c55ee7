"""A database that hangs or refuses cannot stall the publish path (issue 13).

Lookups run on a small pool of threads of their own, each caller waits a bounded time and
then gets DatabaseUnavailable, concurrent misses of one key share one load, and the shared
cache is read without waiting behind the database. Publishers get the documented 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from django.conf import settings
from django.db import OperationalError, connections

from katiedj import outages
from networks import lookup_cache
from networks.lookup_cache import DatabaseUnavailable, acached_lookup, adatabase_call

UNAVAILABLE = {"error": "Service unavailable, retry shortly", "code": "unavailable"}

# Lookup threads close stale connections first, which needs database access in tests.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_outages():
    outages.reset()
    yield
    outages.reset()


@pytest.fixture
def short_wait(settings):
    """Callers give up after 0.3 s (the default is a few seconds)."""
    settings.DATABASE_LOOKUP_TIMEOUT_SECONDS = 0.3


class HungDatabase:
    """Stand-ins for queries to a database that accepts and never answers, until released."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.started = 0

    def query(self, answer: object = "late") -> object:
        self.started += 1
        self.released.wait(10)
        return answer


@pytest.fixture
def hung() -> Iterator[HungDatabase]:
    database = HungDatabase()
    yield database
    database.released.set()  # frees the lookup threads for the next test


async def eventually(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait until ``predicate()`` holds: lookup threads start in their own time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("it never happened")


async def stuck(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_hung_lookup_does_not_hold_up_another(hung):
    waiting = asyncio.ensure_future(adatabase_call(hung.query))
    await asyncio.sleep(0.05)
    assert await asyncio.wait_for(adatabase_call(lambda: "fast"), 2) == "fast"
    await stuck([waiting])


async def test_a_caller_waits_a_bounded_time_then_gets_database_unavailable(hung, short_wait):
    with pytest.raises(DatabaseUnavailable):
        await asyncio.wait_for(adatabase_call(hung.query), 5)


async def test_a_lookup_everyone_gave_up_on_never_runs(hung, short_wait):
    """Abandoned lookups queued behind a hung database would delay recovery: once the
    database answers, the threads would first work through everything strangers asked."""
    stuck_threads = [asyncio.ensure_future(adatabase_call(hung.query))
                     for _ in range(settings.DATABASE_LOOKUP_THREADS)]  # fmt: skip
    await eventually(lambda: hung.started == settings.DATABASE_LOOKUP_THREADS)
    ran = threading.Event()
    with pytest.raises(DatabaseUnavailable):
        await acached_lookup("publish:apikey:abandoned", ran.set)
    with pytest.raises(DatabaseUnavailable):
        await adatabase_call(ran.set)
    hung.released.set()
    await asyncio.gather(*stuck_threads, return_exceptions=True)
    assert await asyncio.wait_for(adatabase_call(lambda: "free again"), 2) == "free again"
    assert not ran.is_set()


async def test_past_a_bounded_queue_callers_are_refused_at_once(hung):
    threads = settings.DATABASE_LOOKUP_THREADS
    callers = [asyncio.ensure_future(adatabase_call(hung.query)) for _ in range(threads * 65)]
    await eventually(lambda: len(lookup_cache._outstanding) >= threads * 64)
    with pytest.raises(DatabaseUnavailable, match="too many database lookups waiting"):
        await adatabase_call(lambda: "never queued")
    await stuck(callers)


async def test_every_caller_gets_its_own_exception(hung, short_wait):
    errors = await asyncio.gather(
        *(acached_lookup("publish:apikey:shared-miss", hung.query) for _ in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(error, DatabaseUnavailable) for error in errors), errors
    assert len({id(error) for error in errors}) == 5, "never one instance raised in many places"


async def test_concurrent_misses_of_one_key_share_one_load():
    loads = 0
    gate = threading.Event()

    def load() -> str:
        nonlocal loads
        loads += 1
        gate.wait(5)
        return "the row"

    lookups = [asyncio.ensure_future(acached_lookup("publish:network:popular", load))]
    await asyncio.sleep(0.05)
    lookups += [asyncio.ensure_future(acached_lookup("publish:network:popular", load))
                for _ in range(19)]  # fmt: skip
    await asyncio.sleep(0.05)
    gate.set()
    assert await asyncio.gather(*lookups) == ["the row"] * 20
    assert loads == 1


async def test_a_flood_of_one_unknown_key_takes_one_thread(hung):
    flood = [asyncio.ensure_future(acached_lookup("publish:apikey:guess", hung.query))
             for _ in range(50)]  # fmt: skip
    await eventually(lambda: hung.started > 0)
    await asyncio.sleep(0.2)  # time for any second load to start, were there one
    assert hung.started == 1, hung.started
    assert await asyncio.wait_for(acached_lookup("publish:network:other", lambda: "ok"), 2) == "ok"
    await stuck(flood)


async def test_the_shared_cache_answers_while_every_lookup_thread_is_stuck(hung):
    stuck_threads = [asyncio.ensure_future(adatabase_call(hung.query))
                     for _ in range(settings.DATABASE_LOOKUP_THREADS + 2)]  # fmt: skip
    await asyncio.sleep(0.1)
    lookup_cache.lookup_cache().set("publish:network:cached", "from the shared tier", 60)

    def must_not_load() -> str:
        raise AssertionError("the shared tier has it")

    answer = await asyncio.wait_for(acached_lookup("publish:network:cached", must_not_load), 2)
    assert answer == "from the shared tier"
    await stuck(stuck_threads)


async def test_database_errors_become_database_unavailable():
    def refused() -> None:
        raise OperationalError("connection refused")

    with pytest.raises(DatabaseUnavailable) as raised:
        await adatabase_call(refused)
    assert isinstance(raised.value.__cause__, OperationalError)


async def test_a_failed_lookup_is_not_remembered_as_a_missing_row():
    def refused() -> None:
        raise OperationalError("connection refused")

    with pytest.raises(DatabaseUnavailable):
        await acached_lookup("publish:apikey:later-valid", refused)
    assert await acached_lookup("publish:apikey:later-valid", lambda: "valid") == "valid"


async def test_a_missing_row_is_remembered_for_30_seconds():
    assert await acached_lookup("publish:apikey:unknown", lambda: None) is None
    lookup_cache._local.clear()  # another process: only the shared tier knows

    def must_not_load() -> None:
        raise AssertionError("the miss is cached")

    assert await acached_lookup("publish:apikey:unknown", must_not_load) is None
    assert lookup_cache._MISS_TTL_SECONDS == 30


async def test_lookup_threads_give_their_connections_back():
    used = []

    def query() -> int:
        connection = connections["default"]
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            used.append(connection)
            return cursor.fetchone()[0]

    answers = await asyncio.gather(
        *(adatabase_call(query) for _ in range(3 * settings.DATABASE_LOOKUP_THREADS))
    )
    assert answers == [1] * (3 * settings.DATABASE_LOOKUP_THREADS)
    if connections["default"].vendor != "sqlite":  # Django never closes in-memory SQLite
        assert all(connection.connection is None for connection in used)


# --- The publish endpoints ------------------------------------------------------------------


def publish(publisher, key: str, slug: str, path: str = "/api/publish"):
    body = json.dumps({"network": slug, "data": {"v": 1}})
    return publisher.post(path, data=body, headers={"API-KEY": key})


def refuse(*args, **kwargs):
    raise OperationalError('connection to server at "127.0.0.1", port 5432 failed: refused')


def outage_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/publish", "/api/v1/networks/city-traffic/messages"])
def test_a_publish_that_needs_the_database_gets_503_while_it_is_down(
    publisher, network, monkeypatch, caplog, path
):
    monkeypatch.setattr("networks.selectors._load_publisher_key", refuse)
    for attempt in range(3):
        response = publish(publisher, f"guess-{attempt}", network.slug, path)
        assert response.status_code == 503
        assert response.json() == UNAVAILABLE
        assert response.headers["retry-after"] == "1"
    logged = outage_lines(caplog)
    assert len(logged) == 1, [r.getMessage() for r in logged]  # once, not per request
    assert logged[0].exc_info is None and "guess-" not in caplog.text


@pytest.mark.django_db
def test_an_uncached_network_while_the_database_is_down_is_503(
    publisher, api_key, network, monkeypatch
):
    assert publish(publisher, api_key.secret, network.slug).status_code == 200
    monkeypatch.setattr("networks.selectors._load_network", refuse)
    response = publish(publisher, api_key.secret, "not-cached-yet")
    assert (response.status_code, response.json()) == (503, UNAVAILABLE)
    assert response.headers["retry-after"] == "1"
    # The key and network it has seen are cached: that publisher carries on.
    assert publish(publisher, api_key.secret, network.slug).status_code == 200


@pytest.mark.django_db
def test_reading_history_while_the_database_is_down_is_503(publisher, network, monkeypatch):
    monkeypatch.setattr("networks.selectors._load_network", refuse)
    response = publisher.get(f"/api/v1/networks/{network.slug}/messages")
    assert (response.status_code, response.json()) == (503, UNAVAILABLE)
    assert response.headers["retry-after"] == "1"


@pytest.mark.django_db
def test_a_redis_outage_is_logged_once_not_per_publish(
    publisher, api_key, network, monkeypatch, caplog
):
    async def redis_down(**kwargs):
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr("networks.ingest.publish_request", redis_down)
    for _ in range(3):
        response = publish(publisher, api_key.secret, network.slug)
        assert (response.status_code, response.json()) == (503, UNAVAILABLE)
        assert response.headers["retry-after"] == "1"
    logged = outage_lines(caplog)
    assert len(logged) == 1 and logged[0].exc_info is None, [r.getMessage() for r in logged]
    assert api_key.secret not in caplog.text
    monkeypatch.undo()
    caplog.clear()
    caplog.set_level(logging.INFO, logger="katiedj.outages")
    assert publish(publisher, api_key.secret, network.slug).status_code == 200
    assert "redis reachable again" in caplog.text
