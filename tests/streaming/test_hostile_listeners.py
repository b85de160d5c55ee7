"""Hostile and broken listeners: whatever ends a connection, it leaves nothing behind.

Issue: a consumer that failed after joining the fan-out hub (a ``?since=`` that ``int()``
refuses, a client that keeps talking, one that leaves mid-replay) never ran its disconnect
cleanup, so its outbox, occupancy count and connection slots stayed forever; a malformed
token was a 500; one address could open any number of listeners. The consumer now releases
what it holds however it ends; these tests drive it the way uvicorn does (see
:class:`UvicornRules`) and check the hub, occupancy and both kinds of connection slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from uvicorn.protocols.utils import ClientDisconnected

from billing.entitlement import (
    TokenExpired,
    TokenInvalid,
    _b64,
    _signature,
    mint_entitlement_token,
    read_entitlement_token,
)
from billing.services import subscription_grant
from katiedj.asgi import application
from networks.redis_clients import redis_client
from networks.selectors import network_get_by_slug
from networks.services import message_publish
from streaming import connection_limits
from streaming.fanout import hub
from streaming.occupancy import OccupancyReporter, occupancy_key
from streaming.occupancy import reporter as occupancy
from streaming.selectors import listeners_now
from tests.factories import NetworkFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

ADDRESS = "203.0.113.7"
needs_redis = pytest.mark.skipif(
    not os.environ.get("REDIS_URL"), reason="slots across processes live in Redis"
)


class UvicornRules:
    """The ASGI app as uvicorn runs it: nothing may follow ``websocket.close`` (uvicorn
    raises RuntimeError), and a send to a client that left raises ClientDisconnected
    (``client_leaves_after`` frames sent)."""

    def __init__(self, app, client_leaves_after: int | None = None) -> None:
        self.app = app
        self.client_leaves_after = client_leaves_after

    async def __call__(self, scope, receive, send):
        closed = False
        frames = 0

        async def checked_send(message):
            nonlocal closed, frames
            if closed:
                raise RuntimeError(
                    f"Unexpected ASGI message '{message['type']}', after sending 'websocket.close'."
                )
            if message["type"] == "websocket.close":
                closed = True
            elif message["type"] == "websocket.send":
                frames += 1
                if self.client_leaves_after is not None and frames > self.client_leaves_after:
                    raise ClientDisconnected
            await send(message)

        await self.app(scope, receive, checked_send)


def listener(
    path: str, *, address: str | None = ADDRESS, client_leaves_after: int | None = None, **kw
) -> WebsocketCommunicator:
    """A listener from ``address`` (``scope["client"]``, as uvicorn sets it)."""
    app = UvicornRules(application, client_leaves_after=client_leaves_after)
    communicator = WebsocketCommunicator(app, path, **kw)
    if address is not None:
        communicator.scope["client"] = (address, 50_000)
    return communicator


async def close_of(communicator: WebsocketCommunicator) -> tuple[int, str]:
    """The close the server sent next: (code, reason)."""
    message = await communicator.receive_output(timeout=3)
    assert message["type"] == "websocket.close", message
    return message.get("code"), message.get("reason", "")


async def refused(path: str, **kw) -> tuple[int, str]:
    """Connect, expect an accept followed by a close; returns the close, then hangs up."""
    communicator = listener(path, **kw)
    connected, _ = await communicator.connect(timeout=3)
    assert connected, "a refusal is accepted first, so the client can read the close code"
    try:
        return await close_of(communicator)
    finally:
        await communicator.disconnect(timeout=3)


async def wait_for(predicate, seconds: float = 3.0) -> bool:
    """Poll ``predicate`` (occupancy is written to Redis a moment after it changes)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # polling Redis: there is no event to wait on
        if await sync_to_async(predicate)():
            return True
        await asyncio.sleep(0.02)
    return await sync_to_async(predicate)()


async def assert_released(*networks, user=None, address: str = ADDRESS) -> None:
    """No outbox, group relay, occupancy count or connection slot is left for them."""
    for network in networks:
        assert hub.listener_counts().get(network.id, 0) == 0
        assert f"network.{network.id}" not in hub.relays
        assert occupancy.counts.get(network.id, 0) == 0
        if user is not None:
            held = await connection_limits.user_connections(user_id=user.id, network_id=network.id)
            assert held == 0
    if user is not None:
        assert f"user.{user.id}" not in hub.relays
    assert await connection_limits.address_connections(address) == 0
    ids = [network.id for network in networks]
    assert await wait_for(lambda: listeners_now(ids) == dict.fromkeys(ids, 0))


@pytest.fixture(autouse=True)
def clean_redis_state(settings):
    """Slots and occupancy in Redis outlive a test; start and end without any."""

    def wipe():
        if settings.REDIS_URL:
            client = redis_client()
            client.delete(occupancy_key())
            for pattern in ("conns", "addr-conns"):
                for key in client.scan_iter(f"{settings.REDIS_KEY_PREFIX}:{pattern}:*"):
                    client.delete(key)

    wipe()
    yield
    wipe()


@pytest.fixture
def free(db):
    return NetworkFactory(slug="free-net")


@pytest.fixture
def paid(db):
    return NetworkFactory(slug="paid-net", is_public=False)


@pytest.fixture
def subscriber(paid):
    user = UserFactory()
    subscription_grant(user=user, network=paid)
    return user


@pytest.fixture
def token(subscriber) -> str:
    return mint_entitlement_token(user=subscriber)[0]


async def publish(slug: str, data: dict) -> None:
    network = await sync_to_async(network_get_by_slug)(slug=slug)
    await sync_to_async(message_publish)(network=network, data=data)


# --- ?since= ----------------------------------------------------------------------------------

BAD_SINCE = {
    "superscript two (isdigit, int refuses)": "%C2%B2",
    "Arabic-Indic three": "%D9%A3",
    "4,301 digits (over int's digit limit)": "1" * 4301,
    "20 digits": "1" * 20,
    "int64 max + 1": str(2**63),
    "negative": "-1",
    "plus sign": "%2B5",
    "decimal": "1.5",
    "leading space": "%207",
    "hex": "0x10",
    "a word": "latest",
}


@pytest.mark.parametrize("since", BAD_SINCE.values(), ids=BAD_SINCE.keys())
async def test_a_since_that_is_not_a_sequence_number_is_closed_with_4400(free, since):
    code, reason = await refused(f"/ws/networks/free-net/?format=envelope&since={since}")
    assert code == 4400
    assert reason == "bad request: since must be a sequence number"
    await assert_released(free)


async def test_a_bad_since_on_a_paid_network_takes_no_slot_of_the_person(paid, subscriber, token):
    assert (await refused(f"/ws/networks/paid-net/?token={token}&since=%C2%B2"))[0] == 4400
    await assert_released(paid, user=subscriber)


@pytest.mark.parametrize("since", ["0", "0000000000000000007", str(2**63 - 1)])
async def test_since_takes_up_to_19_ascii_digits_within_int64(free, since):
    communicator = listener(f"/ws/networks/free-net/?format=envelope&since={since}")
    assert (await communicator.connect(timeout=3))[0]
    if int(since):
        # Nothing was published: a since past the newest seq is reset, not refused.
        reset = await communicator.receive_json_from(timeout=3)
        assert (reset["type"], reset["seq"]) == ("reset", 0)
    assert await communicator.receive_nothing(timeout=0.2)  # not closed
    await communicator.disconnect(timeout=3)
    await assert_released(free)


# --- Failures after joining the hub ---------------------------------------------------------


async def test_an_exception_after_joining_still_leaves_the_hub_and_frees_every_slot(
    paid, subscriber, token, monkeypatch
):
    async def history_unavailable(**kwargs):
        raise RuntimeError("history unavailable")

    monkeypatch.setattr("streaming.consumers.ahistory_since", history_unavailable)
    communicator = listener(f"/ws/networks/paid-net/?token={token}&since=0")
    assert (await communicator.connect(timeout=3))[0]
    with pytest.raises(RuntimeError, match="history unavailable"):
        await communicator.wait(timeout=3)  # unexpected failures still surface (and are logged)
    await assert_released(paid, user=subscriber)


async def test_a_client_that_leaves_during_the_replay_frees_its_slots(paid, subscriber, token):
    for index in range(3):
        await publish("paid-net", {"i": index})
    communicator = listener(f"/ws/networks/paid-net/?token={token}&since=0", client_leaves_after=1)
    assert (await communicator.connect(timeout=3))[0]
    with pytest.raises(ClientDisconnected):
        await communicator.wait(timeout=3)
    await assert_released(paid, user=subscriber)


async def test_a_cancelled_listener_task_frees_its_slots(paid, subscriber, token):
    communicator = listener(f"/ws/networks/paid-net/?token={token}")
    assert (await communicator.connect(timeout=3))[0]
    assert hub.listener_counts()[paid.id] == 1
    communicator.future.cancel()  # what a server does to its tasks when it shuts down hard
    with contextlib.suppress(asyncio.CancelledError):
        await communicator.future
    await assert_released(paid, user=subscriber)


async def test_a_chatty_listener_is_closed_once_with_1008_and_released(paid, subscriber, token):
    communicator = listener(f"/ws/networks/paid-net/?token={token}")
    assert (await communicator.connect(timeout=3))[0]
    # Frames the client sent before it heard the close still reach the consumer.
    for index in range(30):
        await communicator.send_to(text_data=f"hello {index}")
    assert (await close_of(communicator))[0] == 1008
    assert await communicator.receive_nothing(timeout=0.2)  # one close, never a second one
    await communicator.disconnect(timeout=3)  # uvicorn's disconnect after the close
    await assert_released(paid, user=subscriber)
    # The person's slots are all free again.
    for _ in range(5):
        again = listener(f"/ws/networks/paid-net/?token={token}")
        assert (await again.connect(timeout=3))[0]
        assert await again.receive_nothing(timeout=0.05)
        await again.disconnect(timeout=3)


# --- Malformed entitlement tokens --------------------------------------------------------------

MALFORMED_PRESENTED = {
    "non-ASCII signature": "kdje.e30.%C3%A9",
    "non-ASCII payload": "kdje.%C3%A9.e30",
    "empty parts": "kdje..",
    "two parts": "kdje.e30",
    "four parts": "kdje.e30.e30.e30",
    "huge": "kdje." + "A" * 6000 + ".B",
    "NUL bytes": "kdje.%00.%00",
    "personal-token prefix, non-ASCII": "kdjp_%C3%A9",
}


@pytest.mark.parametrize("raw", MALFORMED_PRESENTED.values(), ids=MALFORMED_PRESENTED.keys())
async def test_a_malformed_token_is_refused_with_4401_not_a_500(paid, raw):
    assert (await refused(f"/ws/networks/paid-net/?token={raw}"))[0] == 4401
    await assert_released(paid)


async def test_a_non_ascii_bearer_header_is_refused_with_4401(paid):
    header = [(b"authorization", b"Bearer kdje.e30.\xe9\xff")]  # decoded as latin-1
    assert (await refused("/ws/networks/paid-net/", headers=header))[0] == 4401
    await assert_released(paid)


def signed(payload: str) -> str:
    """A token whose signature is right for ``payload``: what is inside must be checked too."""
    return f"kdje.{payload}.{_signature(payload)}"


def signed_body(body: bytes) -> str:
    return signed(_b64(body))


def test_read_entitlement_token_refuses_anything_malformed_with_token_invalid(subscriber):
    valid = mint_entitlement_token(user=subscriber)[0]
    prefix, payload, signature = valid.split(".")
    unsigned = [
        "", "kdje", "kdje.", "kdje..", "kdje...", "kdje.e30.", "kdje..sig", ".e30.sig",
        "kdje.e30.é", "kdje.é.sig", "kdje.e30.sig\n", "kdje.\x00.\x00", "KDJE.e30.sig",
        f"{prefix}.{payload}.{signature}é", f"{prefix}.{payload}é.{signature}",
        f"{prefix}.{payload}.{signature[:-1]}", f"{prefix}.{payload}.{signature}=",
        f"{prefix}.{payload}==.{signature}", f" {valid}", f"{valid} ", valid.upper(),
        "kdje." + "A" * 100_000 + "." + signature, "kdje." + "é" * 10_000 + ".x",
        "kdjp_" + "x" * 36, "\ud800", "kdje.\ud800.\udfff",
    ]  # fmt: skip
    deep = b"[" * 5000 + b"]" * 5000
    signed_odd = [
        signed("A"),  # one base64 character: no byte
        signed("e30"),  # {}
        signed("!!!!"),  # not base64 at all
        signed_body(b"\xff\xfe\x00"),  # not UTF-8
        signed_body(b"[1, 2]"), signed_body(b'"u"'), signed_body(b"1"), signed_body(b"null"),
        signed_body(b"{}"), signed_body(b'{"u": 1}'), signed_body(deep),
        signed_body(b'{"u": "1", "n": [], "e": 0, "x": 9999999999}'),
        signed_body(b'{"u": true, "n": [], "e": 0, "x": 9999999999}'),
        signed_body(b'{"u": 1.5, "n": [], "e": 0, "x": 9999999999}'),
        signed_body(b'{"u": 1, "n": "123", "e": 0, "x": 9999999999}'),
        signed_body(b'{"u": 1, "n": {"1": 1}, "e": 0, "x": 9999999999}'),
        signed_body(b'{"u": 1, "n": ["7"], "e": 0, "x": 9999999999}'),
        signed_body(b'{"u": 1, "n": [], "e": "0", "x": 9999999999}'),
        signed_body(b'{"u": 1, "n": [], "e": 0, "x": "9999999999"}'),
        signed_body(b'{"u": 1, "n": [], "e": 0, "x": NaN}'),
        signed_body(b'{"u": 1, "n": [], "e": 0, "x": Infinity}'),
        signed_body(b'{"u": 1, "n": [], "e": 0, "x": 1e400}'),
        signed_body(b'{"u": 1, "n": [], "e": 0, "x": 1' + b"0" * 400 + b"}"),
        signed_body(b'{"u": 1' + b"0" * 5000 + b', "n": [], "e": 0, "x": 9999999999}'),
    ]  # fmt: skip
    for raw in [*unsigned, *signed_odd, None, b"kdje.e30.e30", 42]:
        with pytest.raises(TokenInvalid):
            read_entitlement_token(raw)
    # Each refusal is a fresh exception (never a shared instance carrying old tracebacks).
    errors = []
    for raw in ("kdje..", "kdje.é.x"):
        try:
            read_entitlement_token(raw)
        except TokenInvalid as error:
            errors.append(error)
    assert errors[0] is not errors[1]


def test_read_entitlement_token_still_reads_what_we_mint(subscriber, paid, settings):
    token = read_entitlement_token(mint_entitlement_token(user=subscriber)[0])
    assert (token.user_id, token.network_ids) == (subscriber.id, frozenset({paid.id}))
    assert read_entitlement_token(signed_body(b'{"u":1,"n":[3,4],"e":2,"x":9999999999}')).epoch == 2
    settings.ENTITLEMENT_TOKEN_SECONDS = -1
    with pytest.raises(TokenExpired):
        read_entitlement_token(mint_entitlement_token(user=subscriber)[0])


# --- Connections per client address ----------------------------------------------------------


async def test_connections_per_address_are_limited_across_networks_and_released(
    free, paid, subscriber, token, settings
):
    settings.LISTENER_CONNECTIONS_PER_ADDRESS = 3
    other_free = await sync_to_async(NetworkFactory)(slug="other-free")
    held = [
        listener("/ws/networks/free-net/"),
        listener("/ws/networks/other-free/"),
        listener(f"/ws/networks/paid-net/?token={token}"),
    ]
    for communicator in held:
        assert (await communicator.connect(timeout=3))[0]
    assert await connection_limits.address_connections(ADDRESS) == 3

    for path in ("/ws/networks/free-net/", f"/ws/networks/paid-net/?token={token}"):
        code, reason = await refused(path)
        assert (code, reason) == (4429, "too many connections from this address")
    # Another address is not affected.
    elsewhere = listener("/ws/networks/free-net/", address="198.51.100.20")
    assert (await elsewhere.connect(timeout=3))[0]
    assert await elsewhere.receive_nothing(timeout=0.05)
    await elsewhere.disconnect(timeout=3)

    await held.pop().disconnect(timeout=3)  # one closes: one may come in
    again = listener("/ws/networks/free-net/")
    assert (await again.connect(timeout=3))[0]
    assert await again.receive_nothing(timeout=0.05)
    for communicator in [*held, again]:
        await communicator.disconnect(timeout=3)
    await assert_released(free, other_free, paid, user=subscriber)
    await assert_released(free, address="198.51.100.20")


async def test_a_refused_connection_frees_its_address_slot_before_the_client_answers(
    free, paid, settings
):
    settings.LISTENER_CONNECTIONS_PER_ADDRESS = 1
    refused_one = listener("/ws/networks/paid-net/?token=kdje.e30.%C3%A9")
    assert (await refused_one.connect(timeout=3))[0]
    assert (await close_of(refused_one))[0] == 4401
    # The refused client has not answered the close yet: its slot is free all the same.
    admitted = listener("/ws/networks/free-net/")
    assert (await admitted.connect(timeout=3))[0]
    assert await admitted.receive_nothing(timeout=0.05)
    await admitted.disconnect(timeout=3)
    await refused_one.disconnect(timeout=3)
    await assert_released(free, paid)


async def test_ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4(free, settings):
    settings.LISTENER_CONNECTIONS_PER_ADDRESS = 2
    held = [listener("/ws/networks/free-net/", address=a) for a in ("2001:db8::1", "2001:db8::2")]
    held.append(listener("/ws/networks/free-net/", address="2001:db8:0:1::1"))
    held += [listener("/ws/networks/free-net/", address="203.0.113.9") for _ in range(2)]
    for communicator in held:
        assert (await communicator.connect(timeout=3))[0]
        assert await communicator.receive_nothing(timeout=0.02)
    assert (await refused("/ws/networks/free-net/", address="2001:db8::ffff"))[0] == 4429
    assert (await refused("/ws/networks/free-net/", address="::ffff:203.0.113.9"))[0] == 4429
    for communicator in held:
        await communicator.disconnect(timeout=3)
    for address in ("2001:db8::1", "2001:db8:0:1::1", "203.0.113.9"):
        await assert_released(free, address=address)


async def test_no_limit_when_set_to_0_or_when_the_server_gives_no_address(free, settings):
    settings.LISTENER_CONNECTIONS_PER_ADDRESS = 1
    anonymous = [listener("/ws/networks/free-net/", address=None) for _ in range(3)]
    settings_off = []
    for communicator in anonymous:
        assert (await communicator.connect(timeout=3))[0]
        assert await communicator.receive_nothing(timeout=0.02)
    settings.LISTENER_CONNECTIONS_PER_ADDRESS = 0
    for _ in range(3):
        communicator = listener("/ws/networks/free-net/")
        assert (await communicator.connect(timeout=3))[0]
        assert await communicator.receive_nothing(timeout=0.02)
        settings_off.append(communicator)
    for communicator in [*anonymous, *settings_off]:
        await communicator.disconnect(timeout=3)
    await assert_released(free)


@needs_redis
async def test_a_dead_process_address_slots_age_out_and_live_ones_are_renewed(
    free, settings, monkeypatch
):
    monkeypatch.setattr(connection_limits, "ADDRESS_STALE_SECONDS", 1.0)
    monkeypatch.setattr(connection_limits, "ADDRESS_REFRESH_SECONDS", 0.2)
    settings.LISTENER_CONNECTIONS_PER_ADDRESS = 2
    # A process that died holding a connection from this address, 0.5 s ago.
    key = f"{settings.REDIS_KEY_PREFIX}:addr-conns:{ADDRESS}"
    await sync_to_async(redis_client().zadd)(key, {"dead-process-connection": time.time() - 0.5})
    live = listener("/ws/networks/free-net/")
    assert (await live.connect(timeout=3))[0]
    assert (await refused("/ws/networks/free-net/"))[0] == 4429
    await asyncio.sleep(1.2)  # the dead one is forgotten; the live one was renewed meanwhile
    assert await connection_limits.address_connections(ADDRESS) == 1
    second = listener("/ws/networks/free-net/")
    assert (await second.connect(timeout=3))[0]
    assert await second.receive_nothing(timeout=0.05)
    assert (await refused("/ws/networks/free-net/"))[0] == 4429
    await live.disconnect(timeout=3)
    await second.disconnect(timeout=3)
    await assert_released(free)


@needs_redis
async def test_occupancy_is_still_written_after_a_loop_closed_with_a_write_pending():
    """A listener released while its event loop shuts down schedules an occupancy write that
    never runs; the next change, on another loop, must still be written."""
    reporter = OccupancyReporter("web-stale-loop")

    def change_then_close_the_loop():
        loop = asyncio.new_event_loop()

        async def change():
            reporter.note(43, 1)

        loop.run_until_complete(change())
        loop.run_until_complete(asyncio.sleep(0))  # the write waits out its 0.1 s
        loop.close()

    await asyncio.to_thread(change_then_close_the_loop)
    try:
        reporter.note(43, 2)
        assert await wait_for(lambda: listeners_now([43]) == {43: 2})
    finally:
        reporter.note(43, 0)
        await reporter.flush()
        gc.collect()  # the stale loop's tasks say "destroyed but pending" now, not at exit


# --- A bounded soak ---------------------------------------------------------------------------


async def test_a_soak_of_hostile_and_ordinary_listeners_leaves_nothing_behind(
    free, paid, subscriber, token, settings
):
    """300 connect / fail / disconnect cycles of every kind above through the ASGI app."""
    settings.LISTENER_CONNECTIONS_PER_ADDRESS = 8
    for index in range(3):
        await publish("free-net", {"i": index})
        await publish("paid-net", {"i": index})

    async def ordinary(path):
        communicator = listener(path)
        assert (await communicator.connect(timeout=3))[0]
        await communicator.disconnect(timeout=3)
        return "ok"

    async def refusal(path):
        return (await refused(path))[0]

    async def chatty(path):
        communicator = listener(path)
        assert (await communicator.connect(timeout=3))[0]
        for index in range(25):
            await communicator.send_to(text_data=str(index))
        code = (await close_of(communicator))[0]
        await communicator.disconnect(timeout=3)
        return code

    async def leaves_during_replay(path):
        communicator = listener(path, client_leaves_after=1)
        assert (await communicator.connect(timeout=3))[0]
        with pytest.raises(ClientDisconnected):
            await communicator.wait(timeout=3)
        return "left"

    async def crowd(path):
        # The address's limit is reached: the next one is refused, then all leave.
        held = [listener(path) for _ in range(8)]
        for communicator in held:
            assert (await communicator.connect(timeout=3))[0]
        code = (await refused(path))[0]
        for communicator in held:
            await communicator.disconnect(timeout=3)
        return code

    paid_path = f"/ws/networks/paid-net/?token={token}"
    cycles = [
        (ordinary, "/ws/networks/free-net/", "ok"),
        (ordinary, paid_path + "&since=1&format=envelope", "ok"),
        (refusal, "/ws/networks/free-net/?since=%C2%B2", 4400),
        (refusal, "/ws/networks/free-net/?since=" + "9" * 4301, 4400),
        (refusal, paid_path + "&since=-1", 4400),
        (refusal, "/ws/networks/paid-net/?token=kdje.e30.%C3%A9", 4401),
        (refusal, "/ws/networks/paid-net/", 4401),
        (chatty, "/ws/networks/free-net/", 1008),
        (chatty, paid_path, 1008),
        (leaves_during_replay, paid_path + "&since=0", "left"),
        (leaves_during_replay, "/ws/networks/free-net/?since=0", "left"),
        (crowd, "/ws/networks/free-net/", 4429),
    ]
    for cycle in range(300):
        run, path, expected = cycles[cycle % len(cycles)]
        assert await run(path) == expected, (cycle, path)

    await assert_released(free, paid, user=subscriber)
