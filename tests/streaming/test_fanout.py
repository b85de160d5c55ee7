"""The fan-out hub and each listener's outbox, with a socket whose buffer can fill up.

``Socket.send`` behaves like an ASGI server's: it returns at once while the transport is
writable and waits while it is not. The end-to-end counterparts, with real stalled TCP
sockets, are in ``tests/e2e/test_backpressure.py``.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from katiedj import metrics
from networks.accounting import Epoch
from networks.models import Backpressure
from networks.selectors import NetworkInfo
from streaming.fanout import FanoutHub, Outbox, start_eagerly

CONFLATE, DROP, DISCONNECT = Backpressure.CONFLATE, Backpressure.DROP, Backpressure.DISCONNECT
EPOCH = Epoch(id="1000", start=0)


class Socket:
    """A listener's socket: records frames; ``stall()`` makes sends wait until ``resume()``."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.writable = asyncio.Event()
        self.writable.set()
        self.sends_started = 0
        self.received = asyncio.Event()

    async def send(self, event: dict) -> None:
        self.sends_started += 1
        await self.writable.wait()
        self.frames.append(event["text"])
        self.received.set()

    def stall(self) -> None:
        self.writable.clear()

    def resume(self) -> None:
        self.writable.set()

    def seqs(self) -> list[int]:
        return [json.loads(f)["seq"] for f in self.frames if "seq" in json.loads(f)]

    def gaps(self) -> list[dict]:
        return [json.loads(f) for f in self.frames if json.loads(f).get("type") == "gap"]


def message(seq: int) -> dict:
    return {"type": "websocket.send", "text": json.dumps({"seq": seq})}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_send_that_does_not_wait_completes_without_a_task():
    socket = Socket()
    task = start_eagerly(socket.send(message(1)))
    assert task is None
    assert socket.frames == [json.dumps({"seq": 1})]


async def test_a_send_that_waits_finishes_in_a_task_once_the_socket_drains():
    socket = Socket()
    socket.stall()
    task = start_eagerly(socket.send(message(1)))
    assert task is not None and socket.frames == []
    socket.resume()
    await task
    assert socket.frames == [json.dumps({"seq": 1})]


async def test_a_send_still_waiting_when_its_task_first_runs_finishes_later():
    socket = Socket()
    socket.stall()
    first = start_eagerly(socket.send(message(1)))
    second = start_eagerly(socket.send(message(2)))
    await settle()  # both tasks run while the socket is still full
    assert not first.done() and socket.frames == []
    socket.resume()
    await asyncio.gather(first, second)
    assert socket.seqs() == [1, 2]


async def test_an_error_inside_a_waiting_send_reaches_its_task():
    gate = asyncio.Event()

    async def failing_send() -> None:
        await gate.wait()
        raise ConnectionResetError("peer went away")

    task = start_eagerly(failing_send())
    gate.set()
    with pytest.raises(ConnectionResetError):
        await task


async def test_a_listener_that_keeps_up_gets_every_message_in_order():
    socket = Socket()
    outbox = Outbox(send=socket.send)
    for seq in range(1, 101):
        outbox.offer(seq, message(seq))
    assert socket.seqs() == list(range(1, 101))
    assert outbox.delivered == 100


async def test_conflate_keeps_only_the_latest_message_for_a_stalled_listener():
    socket = Socket()
    outbox = Outbox(send=socket.send, policy=CONFLATE)
    outbox.offer(1, message(1))
    socket.stall()
    for seq in range(2, 12):  # 2 waits in the socket; 3..11 are held back
        outbox.offer(seq, message(seq))
    assert len(outbox.backlog) == 1  # memory stays bounded whatever the listener does
    socket.resume()
    await settle()
    assert socket.seqs() == [1, 2, 11]
    assert outbox.conflated == 8  # 3..10 were replaced by a newer sample
    assert socket.gaps() == []


async def test_drop_keeps_the_newest_and_reports_the_gap_before_them():
    socket = Socket()
    outbox = Outbox(send=socket.send, policy=DROP, buffer=3)
    outbox.offer(1, message(1))
    socket.stall()
    for seq in range(2, 12):  # 2 waits in the socket; 3..11 compete for 3 places
        outbox.offer(seq, message(seq))
    assert len(outbox.backlog) == 3
    socket.resume()
    await settle()
    assert socket.seqs() == [1, 2, 9, 10, 11]
    assert socket.gaps() == [{"type": "gap", "missed": 6, "from_seq": 3, "to_seq": 8}]
    assert outbox.dropped == 6
    # Caught up: the next message goes straight out again.
    outbox.offer(12, message(12))
    assert socket.seqs()[-1] == 12


async def test_disconnect_closes_a_listener_that_falls_a_buffer_behind():
    socket = Socket()
    too_slow: list[bool] = []
    outbox = Outbox(
        send=socket.send, policy=DISCONNECT, buffer=3, on_too_slow=lambda: too_slow.append(True)
    )
    outbox.offer(1, message(1))
    socket.stall()
    for seq in range(2, 6):  # 2 waits; 3, 4, 5 fill the buffer
        outbox.offer(seq, message(seq))
    assert too_slow == []
    outbox.offer(6, message(6))
    assert too_slow == [True]
    for seq in range(7, 20):
        outbox.offer(seq, message(seq))
    assert too_slow == [True]  # told once
    assert len(outbox.backlog) == 0  # nothing more is kept for it


async def test_live_messages_wait_for_the_replay_and_skip_what_it_sent():
    socket = Socket()
    outbox = Outbox(send=socket.send, policy=CONFLATE)
    outbox.begin_replay()
    for seq in (5, 6, 7):  # live while history is being sent: none may be conflated away
        outbox.offer(seq, message(seq))
    assert socket.frames == []
    outbox.end_replay(last_replayed=6)  # the replay reached 6
    assert socket.seqs() == [7]


def control(kind: str = "reset") -> dict:
    return {"type": "websocket.send", "text": json.dumps({"type": kind})}


def kinds(socket: Socket) -> list:
    """Each frame's seq, or its type for a control frame."""
    return [json.loads(f).get("seq", json.loads(f).get("type")) for f in socket.frames]


@pytest.mark.parametrize("policy", [CONFLATE, DROP])
async def test_a_reset_frame_is_never_skipped_by_a_lagging_listeners_policy(policy):
    socket = Socket()
    outbox = Outbox(send=socket.send, policy=policy, buffer=2)
    outbox.offer(1, message(1))
    socket.stall()
    for seq in range(2, 6):
        outbox.offer(seq, message(seq))
    outbox.offer_control(control())
    for seq in range(3, 9):  # the new numbering, held behind the reset
        outbox.offer(seq, message(seq))
    socket.resume()
    await settle()
    received = kinds(socket)
    assert "reset" in received
    after_reset = received[received.index("reset") + 1 :]
    assert after_reset and after_reset[-1] == 8  # the newest of the new numbering arrives


async def test_after_a_reset_live_seqs_are_not_skipped_as_already_replayed():
    socket = Socket()
    outbox = Outbox(send=socket.send)
    outbox.begin_replay()
    outbox.end_replay(last_replayed=10)  # the replay reached 10 of the old numbering
    outbox.offer_control(control())
    outbox.offer(3, message(3))  # the new numbering's 3 is news, not a duplicate
    assert kinds(socket) == ["reset", 3]


def network(network_id: int = 1) -> NetworkInfo:
    return NetworkInfo(id=network_id, slug=f"net-{network_id}", organization_id=1, is_public=True)


async def test_one_stalled_listener_does_not_hold_up_the_others(settings):
    settings.REDIS_URL = ""
    hub = FanoutHub()
    fast, stalled = Socket(), Socket()
    fast_box, stalled_box = Outbox(send=fast.send), Outbox(send=stalled.send, policy=DROP, buffer=2)
    await hub.join(network(), fast_box)
    await hub.join(network(), stalled_box)
    stalled.stall()
    for seq in range(1, 51):
        hub.deliver(1, seq, EPOCH, "2026-11-27T00:00:00Z", json.dumps({"seq": seq}), 0.0)
    assert fast.seqs() == list(range(1, 51))
    assert stalled.frames == [] and len(stalled_box.backlog) == 2
    stalled.resume()
    await settle()
    assert stalled.gaps() == [{"type": "gap", "missed": 47, "from_seq": 2, "to_seq": 48}]
    assert stalled.seqs() == [1, 49, 50]
    await hub.leave(1, fast_box)
    await hub.leave(1, stalled_box)


async def test_the_envelope_is_built_once_per_message_for_all_who_asked(settings):
    settings.REDIS_URL = ""
    hub = FanoutHub()
    bare, first, second = Socket(), Socket(), Socket()
    boxes = [Outbox(send=bare.send), Outbox(send=first.send, envelope=True)]
    boxes.append(Outbox(send=second.send, envelope=True))
    for box in boxes:
        await hub.join(network(), box)
    hub.deliver(1, 7, EPOCH, "2026-11-27T00:00:00.000001Z", '{"v":1}', 0.0)
    assert bare.frames == ['{"v":1}']
    envelope = json.loads(first.frames[0])
    assert envelope["seq"] == 7 and envelope["network"] == "net-1"
    assert envelope["epoch"] == "1000"
    assert envelope["ts"] == "2026-11-27T00:00:00.000001Z" and envelope["data"] == {"v": 1}
    assert first.frames[0] is second.frames[0]  # the same string object: encoded once


async def test_leaving_ends_delivery_and_the_counts_follow(settings):
    settings.REDIS_URL = ""
    metrics.current.reset()
    hub = FanoutHub()
    socket = Socket()
    box = Outbox(send=socket.send)
    await hub.join(network(3), box)
    assert hub.listener_counts() == {3: 1}
    assert metrics.current.connections[3] == 1
    await hub.leave(3, box)
    hub.deliver(3, 1, EPOCH, "2026-11-27T00:00:00Z", "{}", 0.0)
    assert socket.frames == []
    assert hub.listener_counts() == {}
    assert metrics.current.connections[3] == 0


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="the subscription is Redis's")
@pytest.mark.django_db(transaction=True)
async def test_a_malformed_message_on_the_channel_does_not_end_the_subscription():
    from asgiref.sync import sync_to_async
    from channels.testing import WebsocketCommunicator
    from django.db import connections

    from katiedj.asgi import application
    from networks.accounting import fanout_channel
    from networks.redis_clients import async_redis_client
    from networks.selectors import network_get_by_slug
    from networks.services import message_publish
    from tests.factories import NetworkFactory

    network = await sync_to_async(NetworkFactory)(slug="sturdy")
    listener = WebsocketCommunicator(application, "/ws/networks/sturdy/")
    assert (await listener.connect())[0]
    await async_redis_client().publish(fanout_channel(network.id), b"not a message")
    info = await sync_to_async(network_get_by_slug)(slug="sturdy")
    await sync_to_async(message_publish)(network=info, data={"still": "here"})
    assert json.loads(await listener.receive_from(timeout=3)) == {"still": "here"}
    await listener.disconnect()
    await sync_to_async(connections.close_all)()


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="the subscription is Redis's")
async def test_a_listener_reconnecting_while_the_last_one_leaves_stays_subscribed():
    from asgiref.sync import sync_to_async

    from networks.services import message_publish

    hub = FanoutHub()
    info = NetworkInfo(id=987_001, slug="reconnecting", organization_id=1, is_public=True)
    socket = Socket()
    box = Outbox(send=socket.send)
    await hub.join(info, box)
    for _ in range(20):  # the old connection leaves while the new one joins, concurrently
        socket, previous = Socket(), box
        box = Outbox(send=socket.send)
        await asyncio.gather(hub.leave(info.id, previous), hub.join(info, box))
    await sync_to_async(message_publish)(network=info, data={"after": "races"})
    await asyncio.wait_for(socket.received.wait(), 3)
    assert json.loads(socket.frames[-1]) == {"after": "races"}
    await hub.leave(info.id, box)


@pytest.mark.django_db(transaction=True)
async def test_group_events_reach_listeners_through_the_hub_which_forgets_empty_groups():
    from asgiref.sync import sync_to_async
    from channels.layers import get_channel_layer
    from channels.testing import WebsocketCommunicator
    from django.db import connections

    from katiedj.asgi import application
    from streaming.fanout import hub
    from tests.factories import NetworkFactory

    network = await sync_to_async(NetworkFactory)(slug="closing-soon")
    await sync_to_async(NetworkFactory)(slug="staying-open")
    before = (set(hub.relays), set(hub.networks))
    closing = WebsocketCommunicator(application, "/ws/networks/closing-soon/")
    staying = WebsocketCommunicator(application, "/ws/networks/staying-open/")
    assert (await closing.connect())[0] and (await staying.connect())[0]
    assert f"network.{network.id}" in hub.relays  # one member per group per process

    # An admin message to one network's group, as network_archive sends it.
    await get_channel_layer().group_send(f"network.{network.id}", {"type": "network.archived"})
    closed = await closing.receive_output(timeout=3)
    assert (closed["type"], closed["code"]) == ("websocket.close", 4410)
    assert await staying.receive_nothing(timeout=0.3)

    await closing.disconnect()
    await staying.disconnect()
    # Nothing left behind (earlier tests may leave communicators open: compare with before).
    assert (set(hub.relays), set(hub.networks)) == before
    await sync_to_async(connections.close_all)()


def envelopes(socket: Socket) -> list[dict]:
    return [json.loads(f) for f in socket.frames]


async def test_a_numbering_that_goes_back_is_announced_to_connected_listeners(settings):
    """A failover to a replica that had seen up to seq 3 while listeners saw 5."""
    settings.REDIS_URL = ""
    hub = FanoutHub()
    socket = Socket()
    box = Outbox(send=socket.send, envelope=True)
    await hub.join(network(), box)
    old = Epoch(id="1000", start=0)
    for seq in range(1, 6):
        hub.deliver(1, seq, old, "2026-11-27T00:00:00Z", "{}", 0.0)
    new = Epoch(id="2000", start=3)
    hub.deliver(1, 4, new, "2026-11-27T00:00:01Z", '{"after":"reset"}', 0.0)
    for _ in range(50):
        if len(socket.frames) >= 7:
            break
        await asyncio.sleep(0.01)
    frames = envelopes(socket)
    assert [f.get("seq") for f in frames[:5]] == [1, 2, 3, 4, 5]
    assert frames[5] == {"type": "reset", "epoch": "2000", "seq": 3}
    assert (frames[6]["seq"], frames[6]["epoch"], frames[6]["data"]) == (
        4,
        "2000",
        {"after": "reset"},
    )
    hub.deliver(1, 5, new, "2026-11-27T00:00:02Z", "{}", 0.0)  # not a duplicate any more
    assert envelopes(socket)[-1]["seq"] == 5 and envelopes(socket)[-1]["epoch"] == "2000"
    await hub.leave(1, box)


async def test_a_new_epoch_that_continues_where_listeners_are_needs_no_reset(settings):
    """A Redis restart with its append-only file: a new epoch, nothing lost."""
    settings.REDIS_URL = ""
    hub = FanoutHub()
    socket = Socket()
    box = Outbox(send=socket.send, envelope=True)
    await hub.join(network(), box)
    for seq in range(1, 4):
        hub.deliver(1, seq, Epoch(id="1000", start=0), "2026-11-27T00:00:00Z", "{}", 0.0)
    hub.deliver(1, 4, Epoch(id="2000", start=3), "2026-11-27T00:00:00Z", "{}", 0.0)
    frames = envelopes(socket)
    assert [f.get("seq") for f in frames] == [1, 2, 3, 4]
    assert frames[-1]["epoch"] == "2000"
    await hub.leave(1, box)


async def test_a_listener_that_resumed_into_the_new_epoch_is_not_reset_again(settings):
    """It connected after the numbering went back, before its server process noticed."""
    settings.REDIS_URL = ""
    hub = FanoutHub()
    old_socket, new_socket = Socket(), Socket()
    old_box = Outbox(send=old_socket.send, envelope=True)
    new_box = Outbox(send=new_socket.send, envelope=True)
    await hub.join(network(), old_box)
    for seq in range(1, 6):
        hub.deliver(1, seq, Epoch(id="1000", start=0), "2026-11-27T00:00:00Z", "{}", 0.0)
    await hub.join(network(), new_box)
    new_box.begin_replay()
    new_box.epoch = "2000"  # its ?since= replay already placed it in the new numbering
    new_box.end_replay(last_replayed=4)
    hub.deliver(1, 5, Epoch(id="2000", start=3), "2026-11-27T00:00:01Z", "{}", 0.0)
    for _ in range(50):
        if len(old_socket.frames) >= 7:
            break
        await asyncio.sleep(0.01)
    assert envelopes(old_socket)[5]["type"] == "reset"
    assert [(f["seq"], f["epoch"]) for f in envelopes(new_socket)] == [(5, "2000")]
    await hub.leave(1, old_box)
    await hub.leave(1, new_box)
