"""Sequence epochs: a numbering that goes back is announced, never silently skipped.

With Redis, a Redis server that did not number a network before (a restart, a failover to a
replica, a flush) starts a new epoch. These tests make Redis look like that by editing the
keys the way such an event leaves them; the end-to-end counterparts kill real Redis servers
(``tests/e2e/test_redis_failover.py``, ``tests/e2e/test_redis_outage.py``).
"""

from __future__ import annotations

import json
import os

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from katiedj.asgi import application
from networks import accounting
from networks.accounting import Epoch, first_missing_range, resume_position
from networks.selectors import network_get_by_slug
from networks.services import message_publish
from tests.factories import NetworkFactory

pytestmark = pytest.mark.django_db(transaction=True)

with_redis = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="epochs kept in Redis")

CURRENT = Epoch(id="2000", start=50)


@pytest.mark.parametrize(
    ("since", "epoch", "reset"),
    [
        (60, "2000", False),  # the current epoch, a seq handed out
        (60, None, False),  # no epoch given: the current one is assumed
        (40, "1000", False),  # the previous epoch, before where this one continues
        (50, "1000", False),
        (51, "1000", True),  # the previous epoch's tail this numbering does not have
        (10, "900", True),  # an epoch older than the previous one
        (81, "2000", True),  # never handed out
        (81, None, True),
    ],
)
def test_a_position_is_kept_only_while_it_is_one_of_the_current_numbering(since, epoch, reset):
    position = resume_position(
        current=CURRENT, previous="1000", newest=80, since=since, epoch=epoch
    )
    assert position.reset is reset
    assert position.since == (50 if reset else since)
    assert position.epoch == CURRENT


def test_what_history_no_longer_holds_is_named():
    assert first_missing_range(since=10, oldest=11, newest=20) is None
    assert first_missing_range(since=10, oldest=15, newest=20) == (11, 14)
    assert first_missing_range(since=10, oldest=None, newest=20) == (11, 20)  # nothing kept
    assert first_missing_range(since=20, oldest=None, newest=20) is None


async def publish(slug: str, count: int, start: int = 0) -> list:
    network = await sync_to_async(network_get_by_slug)(slug=slug)
    return [
        await sync_to_async(message_publish)(network=network, data={"n": start + i})
        for i in range(count)
    ]


async def frames(communicator, count: int) -> list[dict]:
    return [json.loads(await communicator.receive_from(timeout=3)) for _ in range(count)]


async def resume(slug: str, since: int, epoch: str | None = None) -> WebsocketCommunicator:
    query = f"?format=envelope&since={since}" + (f"&epoch={epoch}" if epoch else "")
    communicator = WebsocketCommunicator(application, f"/ws/networks/{slug}/{query}")
    assert (await communicator.connect())[0]
    return communicator


async def test_envelopes_carry_the_epoch_and_resuming_in_it_replays_without_reset():
    await sync_to_async(NetworkFactory)(slug="weather")
    sent = await publish("weather", 3)
    assert len({m.epoch for m in sent}) == 1 and sent[0].epoch
    listener = await resume("weather", sent[0].seq, sent[0].epoch)
    replayed = await frames(listener, 2)
    assert [(f["seq"], f["epoch"]) for f in replayed] == [(m.seq, m.epoch) for m in sent[1:]]
    assert await listener.receive_nothing(timeout=0.2)
    await listener.disconnect()


async def test_a_since_beyond_the_newest_seq_is_reset_then_everything_live_arrives():
    """Before epochs this listener lost every live message up to its since, silently."""
    await sync_to_async(NetworkFactory)(slug="weather")
    await publish("weather", 2)
    listener = await resume("weather", 500)
    reset = json.loads(await listener.receive_from(timeout=3))
    assert reset["type"] == "reset" and reset["seq"] == 0
    assert [f["data"]["n"] for f in await frames(listener, 2)] == [0, 1]  # from the start
    await publish("weather", 1, start=2)
    live = json.loads(await listener.receive_from(timeout=3))
    assert (live["data"], live["epoch"]) == ({"n": 2}, reset["epoch"])
    await listener.disconnect()


async def test_an_unknown_epoch_is_reset_to_the_current_numbering():
    await sync_to_async(NetworkFactory)(slug="weather")
    sent = await publish("weather", 3)
    listener = await resume("weather", 2, "1234")
    assert json.loads(await listener.receive_from(timeout=3)) == {
        "type": "reset",
        "epoch": sent[0].epoch,
        "seq": 0,
    }
    assert [f["seq"] for f in await frames(listener, 3)] == [m.seq for m in sent]
    await listener.disconnect()


async def test_an_epoch_that_is_no_epoch_id_is_a_bad_request():
    await sync_to_async(NetworkFactory)(slug="weather")
    listener = WebsocketCommunicator(application, "/ws/networks/weather/?since=1&epoch=%20x")
    assert (await listener.connect())[0]
    closed = await listener.receive_output(timeout=3)
    assert (closed["code"], closed["reason"]) == (
        4400,
        "bad request: epoch must be an epoch id from an envelope",
    )


async def test_history_over_http_says_when_a_position_was_reset(publisher):
    await sync_to_async(NetworkFactory)(slug="weather")
    sent = await publish("weather", 2)
    url = "/api/v1/networks/weather/messages"
    same = await sync_to_async(publisher.get)(f"{url}?since=1&epoch={sent[0].epoch}")
    body = same.json()
    assert (body["epoch"], body["reset"]) == (sent[0].epoch, None)
    assert [m["seq"] for m in body["messages"]] == [2]
    moved = (await sync_to_async(publisher.get)(f"{url}?since=1&epoch=999")).json()
    assert moved["reset"] == {"epoch": sent[0].epoch, "seq": 0}
    assert [m["seq"] for m in moved["messages"]] == [1, 2]
    assert (await sync_to_async(publisher.get)(f"{url}?epoch=a%20b")).status_code == 400


# --- Redis: what a restart, a failover or a flush leaves -----------------------------------


def redis_keys(network_id: int) -> dict[str, str]:
    return {
        "epoch": accounting.epoch_key(network_id),
        "seq": accounting.redis_key("seq", network_id),
        "history": accounting.history_key(network_id),
    }


@with_redis
async def test_a_failover_to_a_replica_that_lagged_resets_listeners_past_its_numbering():
    from networks.redis_clients import redis_client

    network = await sync_to_async(NetworkFactory)(slug="weather")
    sent = await publish("weather", 5)
    old_epoch = sent[0].epoch
    keys = redis_keys(network.id)
    # The replica had seqs 1..3 when it took over; another server numbered them.
    client = redis_client()
    kept = client.xrange(keys["history"], "-", "3-0")
    client.delete(keys["history"])
    for entry_id, fields in kept:
        client.xadd(keys["history"], fields, id=entry_id)
    client.set(keys["seq"], 3)
    client.hset(keys["epoch"], "server", "the-old-primary")
    client.script_flush()  # a replica never got the primary's scripts

    behind = await resume("weather", 2, old_epoch)  # saw only what the replica has: fine
    assert [(f["seq"], f["epoch"]) for f in await frames(behind, 1)] == [(3, old_epoch)]
    ahead = await resume("weather", 5, old_epoch)  # saw 4 and 5, which are gone
    reset = json.loads(await ahead.receive_from(timeout=3))
    assert reset["type"] == "reset" and reset["epoch"] != old_epoch and reset["seq"] == 3

    after = await publish("weather", 2, start=100)
    assert [(m.seq, m.epoch) for m in after] == [(4, reset["epoch"]), (5, reset["epoch"])]
    for listener in (behind, ahead):
        got = await frames(listener, 2)
        assert [(f["seq"], f["data"]["n"]) for f in got] == [(4, 100), (5, 101)]
        await listener.disconnect()


@with_redis
async def test_a_restart_that_kept_everything_starts_an_epoch_without_resetting_anyone():
    from networks.redis_clients import redis_client

    network = await sync_to_async(NetworkFactory)(slug="weather")
    sent = await publish("weather", 3)
    redis_client().hset(redis_keys(network.id)["epoch"], "server", "before-the-restart")
    redis_client().script_flush()  # a restarted server starts with no scripts
    after = await publish("weather", 1, start=3)
    assert after[0].epoch != sent[0].epoch and after[0].seq == 4
    listener = await resume("weather", 3, sent[0].epoch)  # the old epoch, all of it kept
    replayed = await frames(listener, 1)
    assert [(f["seq"], f["epoch"]) for f in replayed] == [(4, after[0].epoch)]
    await listener.disconnect()


@with_redis
async def test_a_flushed_redis_numbers_from_one_in_a_new_epoch_and_says_so():
    from networks.redis_clients import redis_client

    network = await sync_to_async(NetworkFactory)(slug="weather")
    sent = await publish("weather", 4)
    redis_client().delete(*redis_keys(network.id).values())
    again = await publish("weather", 1, start=10)
    assert again[0].seq == 1 and again[0].epoch != sent[0].epoch
    listener = await resume("weather", 4, sent[0].epoch)
    assert json.loads(await listener.receive_from(timeout=3)) == {
        "type": "reset",
        "epoch": again[0].epoch,
        "seq": 0,
    }
    assert [f["data"]["n"] for f in await frames(listener, 1)] == [10]
    await listener.disconnect()


@with_redis
async def test_a_server_that_ran_the_script_before_is_trusted_without_asking_its_identity():
    """Reading Redis's identity costs a third of the publish script: only a first run asks."""
    from networks.redis_clients import redis_client

    network = await sync_to_async(NetworkFactory)(slug="weather")
    sent = await publish("weather", 1)
    redis_client().hset(redis_keys(network.id)["epoch"], "server", "someone-else")
    assert (await publish("weather", 1))[0].epoch == sent[0].epoch  # not asked
    redis_client().script_flush()
    assert (await publish("weather", 1))[0].epoch != sent[0].epoch  # a first run: asked


@with_redis
async def test_numbering_never_falls_below_the_history_it_continues():
    from networks.redis_clients import redis_client

    network = await sync_to_async(NetworkFactory)(slug="weather")
    await publish("weather", 3)
    keys = redis_keys(network.id)
    redis_client().delete(keys["seq"], keys["epoch"])  # the counter lost, the stream kept
    after = await publish("weather", 1)
    assert after[0].seq == 4  # not 1: the stream would refuse it, and 1..3 exist
