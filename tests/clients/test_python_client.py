"""Tests for the katiedj-client listener SDK and CLI against real websockets servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from katiedj_client import Listener, ListenerRejected, backoff_delays
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

FAST = {"min_backoff": 0.05, "max_backoff": 0.2}
TIMEOUT = 5.0

ConnectHook = Callable[[ServerConnection, int], Awaitable[None]]
RequestHook = Callable[[ServerConnection, Request, int], Response | None]


class BroadcastServer:
    """A real websockets server on 127.0.0.1 whose frames the test chooses."""

    def __init__(
        self, *, on_request: RequestHook | None = None, on_connect: ConnectHook | None = None
    ) -> None:
        self.on_request = on_request
        self.on_connect = on_connect
        self.port = 0
        self.requests = 0
        self.connections = 0
        self.auth_headers: list[str | None] = []
        self.close_codes: list[int | None] = []
        self.clients: set[ServerConnection] = set()
        self._server: Server | None = None

    async def start(self, port: int = 0) -> None:
        # A connect attempt during downtime can, rarely, grab the freed port as its own source
        # port (TCP self-connect), so rebinding the same port gets a few tries.
        for _ in range(50):
            try:
                self._server = await serve(
                    self._handler, "127.0.0.1", port, process_request=self._process_request
                )
                break
            except OSError:
                if port == 0:
                    raise
                await asyncio.sleep(0.02)
        else:
            raise RuntimeError(f"cannot rebind port {port}")
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def url(self, path: str = "/ws/networks/demo/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.requests += 1
        self.auth_headers.append(request.headers.get("Authorization"))
        if self.on_request is not None:
            return self.on_request(connection, request, self.requests)
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        self.clients.add(ws)
        try:
            if self.on_connect is not None:
                await self.on_connect(ws, self.connections)
            await ws.wait_closed()
        finally:
            self.clients.discard(ws)
            self.close_codes.append(ws.protocol.close_code)

    async def wait_for_clients(self, count: int = 1) -> None:
        await until(lambda: len(self.clients) >= count)

    async def broadcast(self, *frames: str) -> None:
        for ws in list(self.clients):
            for frame in frames:
                await ws.send(frame)


async def until(predicate: Callable[[], bool], interval: float = 0.01) -> None:
    """Poll ``predicate``; callers bound the wait with asyncio.timeout."""
    # Polling on purpose: the state watched (Listener.connected, server counters) has no event.
    while not predicate():  # noqa: ASYNC110
        await asyncio.sleep(interval)


async def take(listener: Listener, count: int) -> list[Any]:
    received: list[Any] = []
    async for message in listener:
        received.append(message)
        if len(received) == count:
            break
    return received


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # websockets honours *_proxy variables; a proxy must never sit between us and 127.0.0.1.
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


@pytest.fixture
async def server() -> AsyncIterator[BroadcastServer]:
    srv = BroadcastServer()
    await srv.start()
    yield srv
    await srv.stop()


def dumps(obj: Any) -> str:
    return json.dumps(obj)


# -- iterator -------------------------------------------------------------------------------


async def test_iterator_yields_parsed_frames_in_order_and_skips_non_json(
    server: BroadcastServer, caplog: pytest.LogCaptureFixture
) -> None:
    sent = [{"seq": 1, "value": 1.5}, {"seq": 2, "tags": ["a", "b"]}, [1, 2, 3], {"seq": 4}]
    listener = Listener(server.url(), **FAST)
    caplog.set_level(logging.WARNING, logger="katiedj_client")
    async with asyncio.timeout(TIMEOUT):
        consumer = asyncio.create_task(take(listener, len(sent)))
        await server.wait_for_clients()
        await until(lambda: listener.connected)
        await server.broadcast(
            dumps(sent[0]), "this is not json", dumps(sent[1]), dumps(sent[2]), dumps(sent[3])
        )
        received = await consumer
        assert received == sent
        assert listener.reconnects == 0
        await listener.aclose()
        assert not listener.connected
        await until(lambda: server.close_codes == [1000])
    skipped = [r for r in caplog.records if "non-JSON" in r.getMessage()]
    assert len(skipped) == 1
    assert skipped[0].levelno == logging.WARNING
    assert server.connections == 1


async def test_token_is_sent_as_bearer_header(server: BroadcastServer) -> None:
    async with asyncio.timeout(TIMEOUT), Listener(server.url(), token="s3cret", **FAST) as lst:
        consumer = asyncio.create_task(take(lst, 1))
        await server.wait_for_clients()
        await server.broadcast(dumps({"ok": True}))
        assert await consumer == [{"ok": True}]
    assert server.auth_headers == ["Bearer s3cret"]


async def test_no_authorization_header_without_token(server: BroadcastServer) -> None:
    async with asyncio.timeout(TIMEOUT), Listener(server.url(), **FAST) as listener:
        consumer = asyncio.create_task(take(listener, 1))
        await server.wait_for_clients()
        await server.broadcast(dumps({}))
        await consumer
    assert server.auth_headers == [None]


async def test_run_invokes_sync_and_async_callbacks(server: BroadcastServer) -> None:
    sync_seen: list[Any] = []
    async_seen: list[Any] = []

    async def async_callback(message: Any) -> None:
        await asyncio.sleep(0)
        async_seen.append(message)

    first = Listener(server.url(), **FAST)
    second = Listener(server.url(), **FAST)
    async with asyncio.timeout(TIMEOUT):
        tasks = [
            asyncio.create_task(first.run(sync_seen.append)),
            asyncio.create_task(second.run(async_callback)),
        ]
        await server.wait_for_clients(2)
        await server.broadcast(dumps({"n": 1}), dumps({"n": 2}))
        await until(lambda: len(sync_seen) == 2 and len(async_seen) == 2)
        first.stop()
        second.stop()
        assert await asyncio.gather(*tasks) == [None, None]
    assert sync_seen == async_seen == [{"n": 1}, {"n": 2}]


async def test_aclose_from_another_task_ends_iteration(server: BroadcastServer) -> None:
    listener = Listener(server.url(), **FAST)
    seen: list[Any] = []
    async with asyncio.timeout(TIMEOUT):
        consumer = asyncio.create_task(listener.run(seen.append))
        await until(lambda: listener.connected)
        await listener.aclose()  # the consumer is blocked waiting for a frame right now
        await consumer
        assert not listener.connected
        await until(lambda: server.close_codes == [1000])
    assert seen == []


async def test_aclose_while_consumer_is_busy_in_a_callback(server: BroadcastServer) -> None:
    listener = Listener(server.url(), **FAST)
    entered, release = asyncio.Event(), asyncio.Event()
    seen: list[Any] = []

    async def slow(message: Any) -> None:
        seen.append(message)
        entered.set()
        await release.wait()

    async with asyncio.timeout(TIMEOUT):
        consumer = asyncio.create_task(listener.run(slow))
        await server.wait_for_clients()
        await server.broadcast(dumps({"n": 1}), dumps({"n": 2}))
        await entered.wait()
        await listener.aclose()  # must not fight the consumer task over the generator
        assert not listener.connected
        await until(lambda: server.close_codes == [1000])
        release.set()
        await consumer  # ends normally, without the frame that was still queued
    assert seen == [{"n": 1}]


async def test_aclose_after_consumer_broke_out_of_loop(server: BroadcastServer) -> None:
    listener = Listener(server.url(), **FAST)
    broke_out, finish = asyncio.Event(), asyncio.Event()

    async def consume_one_then_linger() -> Any:
        first = None
        async for message in listener:
            first = message
            break
        broke_out.set()
        await finish.wait()  # the task stays alive but never resumes the iterator
        return first

    async with asyncio.timeout(TIMEOUT):
        consumer = asyncio.create_task(consume_one_then_linger())
        await server.wait_for_clients()
        await server.broadcast(dumps({"only": 1}))
        await broke_out.wait()
        await listener.aclose()
        await until(lambda: server.close_codes == [1000])
        finish.set()
        assert await consumer == {"only": 1}


async def test_aclose_inside_loop_body_ends_iteration(server: BroadcastServer) -> None:
    async def send_two() -> None:
        await server.wait_for_clients()
        await server.broadcast(dumps({"n": 1}), dumps({"n": 2}))

    listener = Listener(server.url(), **FAST)
    seen: list[Any] = []
    async with asyncio.timeout(TIMEOUT):
        sender = asyncio.create_task(send_two())
        async for message in listener:
            seen.append(message)
            await listener.aclose()
        await sender
        await until(lambda: server.close_codes == [1000])
    assert seen == [{"n": 1}]


async def test_callback_error_propagates_and_closes(server: BroadcastServer) -> None:
    def explode(message: Any) -> None:
        raise ValueError(f"bad sample {message}")

    listener = Listener(server.url(), **FAST)
    async with asyncio.timeout(TIMEOUT):
        consumer = asyncio.create_task(listener.run(explode))
        await server.wait_for_clients()
        await server.broadcast(dumps({"n": 1}))
        with pytest.raises(ValueError, match="bad sample"):
            await consumer
        assert not listener.connected
        await until(lambda: len(server.close_codes) == 1)


async def test_stop_from_another_thread_while_reconnecting() -> None:
    down = BroadcastServer()
    await down.start()
    url = down.url()
    await down.stop()  # nothing listens there any more: the listener keeps retrying
    listener = Listener(url, **FAST)
    async with asyncio.timeout(TIMEOUT):
        consumer = asyncio.create_task(listener.run(lambda message: None))
        await asyncio.sleep(0.3)
        assert not consumer.done()
        await asyncio.get_running_loop().run_in_executor(None, listener.stop)
        await consumer
    assert listener.reconnects == 0


async def test_stopped_listener_stays_stopped(server: BroadcastServer) -> None:
    listener = Listener(server.url(), **FAST)
    listener.stop()
    async with asyncio.timeout(TIMEOUT):
        assert [m async for m in listener] == []
    assert server.requests == 0


# -- reconnect ------------------------------------------------------------------------------


async def test_reconnects_after_server_restart_on_same_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="katiedj_client")
    srv = BroadcastServer()
    await srv.start()
    port = srv.port
    listener = Listener(srv.url(), **FAST)
    received: asyncio.Queue[Any] = asyncio.Queue()
    consumer = asyncio.create_task(listener.run(received.put_nowait))
    try:
        async with asyncio.timeout(TIMEOUT):
            await srv.wait_for_clients()
            before = [{"phase": "before", "n": n} for n in range(3)]
            await srv.broadcast(*map(dumps, before))
            assert [await received.get() for _ in before] == before

            await srv.stop()
            await until(lambda: not listener.connected)
            await asyncio.sleep(0.3)  # long enough for refused attempts to back off
            await srv.start(port)
            assert srv.port == port

            await srv.wait_for_clients()
            after = [{"phase": "after", "n": n} for n in range(3)]
            await srv.broadcast(*map(dumps, after))
            assert [await received.get() for _ in after] == after
            assert listener.connected
            listener.stop()
            await consumer
    finally:
        consumer.cancel()
        await srv.stop()
    assert listener.reconnects >= 1
    assert received.empty()
    assert any("cannot connect" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("code", [1011, 4413])  # an internal error; "you read too slowly"
async def test_non_fatal_close_code_reconnects(code: int) -> None:
    async def flaky(ws: ServerConnection, nth: int) -> None:
        if nth == 1:
            await ws.close(code, "closing")

    srv = BroadcastServer(on_connect=flaky)
    await srv.start()
    try:
        async with asyncio.timeout(TIMEOUT), Listener(srv.url(), **FAST) as listener:
            consumer = asyncio.create_task(take(listener, 1))
            await until(lambda: srv.connections == 2 and len(srv.clients) == 1)
            await srv.broadcast(dumps({"after": "reconnect"}))
            assert await consumer == [{"after": "reconnect"}]
            assert listener.reconnects == 1
    finally:
        await srv.stop()


async def test_retryable_http_status_is_retried() -> None:
    def unavailable_twice(conn: ServerConnection, req: Request, nth: int) -> Response | None:
        return conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "warming up\n") if nth <= 2 else None

    srv = BroadcastServer(on_request=unavailable_twice)
    await srv.start()
    try:
        async with asyncio.timeout(TIMEOUT), Listener(srv.url(), **FAST) as listener:
            consumer = asyncio.create_task(take(listener, 1))
            await srv.wait_for_clients()
            await srv.broadcast(dumps({"up": True}))
            assert await consumer == [{"up": True}]
    finally:
        await srv.stop()
    assert srv.requests == 3
    # Failed handshakes are not reconnects: the first successful connection is the first one.
    assert listener.reconnects == 0


# -- fatal rejections -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN, 404])
async def test_rejected_handshake_raises_without_retry(status: int) -> None:
    def reject(conn: ServerConnection, req: Request, nth: int) -> Response:
        return conn.respond(status, "no such network\n")

    srv = BroadcastServer(on_request=reject)
    await srv.start()
    listener = Listener(srv.url("/ws/networks/missing/"), **FAST)
    try:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ListenerRejected) as info:
                async for _ in listener:
                    pytest.fail("no message expected")
            # Had it retried, more requests would arrive within a few backoff periods.
            await asyncio.sleep(0.3)
    finally:
        await srv.stop()
    assert info.value.status_or_code == status
    assert str(int(status)) in info.value.reason
    assert "no such network" in info.value.reason
    assert srv.requests == 1
    assert not listener.connected


@pytest.mark.parametrize("code", [4401, 4403, 4408])
async def test_fatal_close_code_raises_without_retry(code: int) -> None:
    async def refuse(ws: ServerConnection, nth: int) -> None:
        await ws.close(code, "not entitled")

    srv = BroadcastServer(on_connect=refuse)
    await srv.start()
    listener = Listener(srv.url(), **FAST)
    try:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ListenerRejected) as info:
                await listener.run(lambda message: None)
            await asyncio.sleep(0.3)
    finally:
        await srv.stop()
    assert info.value.status_or_code == code
    assert info.value.reason == "not entitled"
    assert srv.connections == 1
    assert not listener.connected


async def test_fatal_close_after_messages_delivers_them_first() -> None:
    async def send_then_revoke(ws: ServerConnection, nth: int) -> None:
        await ws.send(dumps({"n": 1}))
        await ws.close(4403, "subscription ended")

    srv = BroadcastServer(on_connect=send_then_revoke)
    await srv.start()
    seen: list[Any] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ListenerRejected, match="subscription ended"):
                await Listener(srv.url(), **FAST).run(seen.append)
    finally:
        await srv.stop()
    assert seen == [{"n": 1}]


def test_invalid_arguments_fail_fast() -> None:
    with pytest.raises(ValueError, match="min_backoff"):
        Listener("ws://127.0.0.1:1/", min_backoff=0)
    with pytest.raises(ValueError, match="max_backoff"):
        Listener("ws://127.0.0.1:1/", min_backoff=2, max_backoff=1)
    with pytest.raises(Exception, match="isn't a valid URI"):
        Listener("http://127.0.0.1:1/")


# -- backoff --------------------------------------------------------------------------------


def test_backoff_delays_full_jitter_within_capped_bounds() -> None:
    min_backoff, max_backoff = 0.05, 2.0
    delays = backoff_delays(min_backoff, max_backoff, rng=random.Random(1234))
    observed = [next(delays) for _ in range(200)]
    for k, delay in enumerate(observed):
        assert 0 <= delay <= min(max_backoff, min_backoff * 2**k)
    # Same seed, same formula, computed independently: the generator is exactly that formula.
    twin = random.Random(1234)
    expected = [twin.uniform(0, min(max_backoff, min_backoff * 2**k)) for k in range(200)]
    assert observed == expected
    # The cap is reached (0.05 * 2**6 > 2.0) and then holds even after many attempts.
    assert max(observed) <= max_backoff
    assert max(observed[6:]) > max_backoff / 2


def test_backoff_delays_survive_very_long_outages() -> None:
    delays = backoff_delays(0.5, 30.0, rng=random.Random(7))
    for _ in range(5000):  # 2**5000 would overflow a float
        assert 0 <= next(delays) <= 30.0


class _Ceiling:
    """An rng that always returns the upper bound, exposing the ceiling sequence."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_delays_ceiling_doubles_then_caps() -> None:
    delays = backoff_delays(0.5, 3.0, rng=_Ceiling())
    assert [next(delays) for _ in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_backoff_delays_validate_bounds() -> None:
    with pytest.raises(ValueError):
        next(backoff_delays(0, 1))
    with pytest.raises(ValueError):
        next(backoff_delays(1, 0.5))


# -- CLI ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run ``python -m katiedj_client ARGS`` (the installed package); kill it if left running."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and k != "KATIEDJ_TOKEN"
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "katiedj_client",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=base | (env or {}),
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cli_connected(server: BroadcastServer, proc: asyncio.subprocess.Process) -> None:
    """Wait for the CLI to connect, failing fast (with its stderr) if it exits instead."""
    connected = asyncio.create_task(server.wait_for_clients())
    exited = asyncio.create_task(proc.wait())
    try:
        await asyncio.wait({connected, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (connected, exited):
            task.cancel()
        await asyncio.wait({connected, exited})
    if not connected.done() or connected.cancelled():
        code, out, err = await finish(proc)
        pytest.fail(f"katiedj-listen exited with {code} before connecting: {err or out}")


async def test_cli_appends_count_messages_to_file(server: BroadcastServer, tmp_path: Path) -> None:
    out_file = tmp_path / "samples.jsonl"
    out_file.write_text('{"old":true}\n')
    sent = [{"seq": 1, "temp": 21.5}, {"seq": 2, "unicode": "héllo"}, {"seq": 3, "nested": {}}]
    async with (
        asyncio.timeout(TIMEOUT * 2),
        cli(server.url(), "--count", "3", "--out", str(out_file), cwd=tmp_path) as proc,
    ):
        await cli_connected(server, proc)
        await server.broadcast("garbage", *map(dumps, sent), dumps({"seq": 4}))
        code, out, err = await finish(proc)
    assert (code, out) == (0, "")
    assert "skipping non-JSON frame" in err  # logged to stderr, never mixed into the data
    lines = out_file.read_text(encoding="utf-8").splitlines()
    assert lines[0] == '{"old":true}'
    assert [json.loads(line) for line in lines[1:]] == sent
    assert lines[1] == '{"seq":1,"temp":21.5}'  # compact separators


async def test_cli_prints_json_lines_to_stdout(server: BroadcastServer, tmp_path: Path) -> None:
    sent = [{"a": 1}, {"b": [1, 2]}]
    async with (
        asyncio.timeout(TIMEOUT * 2),
        cli(server.url(), "--count", "2", "--token", "t0k", cwd=tmp_path) as proc,
    ):
        await cli_connected(server, proc)
        await server.broadcast(*map(dumps, sent))
        code, out, err = await finish(proc)
    assert (code, err) == (0, "")
    assert out.splitlines() == ['{"a":1}', '{"b":[1,2]}']
    assert server.auth_headers == ["Bearer t0k"]


async def test_cli_reads_token_from_environment(server: BroadcastServer, tmp_path: Path) -> None:
    async with (
        asyncio.timeout(TIMEOUT * 2),
        cli(server.url(), "--count", "1", cwd=tmp_path, env={"KATIEDJ_TOKEN": "from-env"}) as proc,
    ):
        await cli_connected(server, proc)
        await server.broadcast(dumps({"a": 1}))
        code, _, err = await finish(proc)
    assert (code, err) == (0, "")
    assert server.auth_headers == ["Bearer from-env"]


async def test_cli_exits_2_when_rejected(tmp_path: Path) -> None:
    srv = BroadcastServer(
        on_request=lambda conn, req, nth: conn.respond(HTTPStatus.NOT_FOUND, "unknown network\n")
    )
    await srv.start()
    try:
        async with (
            asyncio.timeout(TIMEOUT * 2),
            cli(srv.url("/ws/networks/nope/"), cwd=tmp_path) as proc,
        ):
            code, out, err = await finish(proc)
    finally:
        await srv.stop()
    assert code == 2, err
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "404" in err
    assert "unknown network" in err
    assert srv.requests == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_cli_interrupt_exits_0_quietly(
    server: BroadcastServer, tmp_path: Path, signum: int
) -> None:
    async with asyncio.timeout(30), cli(server.url(), cwd=tmp_path) as proc:
        await cli_connected(server, proc)
        await server.broadcast(dumps({"x": 1}))
        assert proc.stdout is not None
        # Once a line is out, the CLI is inside its event loop: the signal hits the listener.
        assert await proc.stdout.readline() == b'{"x":1}\n'
        proc.send_signal(signum)
        code, out, err = await finish(proc)
        await until(lambda: not server.clients)
    assert (code, out, err) == (0, "", "")


async def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    async with asyncio.timeout(TIMEOUT * 2):
        async with cli("http://example.invalid/", cwd=tmp_path) as proc:
            code, _, err = await finish(proc)
        assert code == 2
        assert "valid URI" in err
        async with cli("ws://127.0.0.1:1/", "--count", "0", cwd=tmp_path) as proc:
            code, _, err = await finish(proc)
        assert code == 2
        assert "--count" in err


async def test_cli_unwritable_output_exits_1(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "out.jsonl"
    async with (
        asyncio.timeout(TIMEOUT * 2),
        cli("ws://127.0.0.1:1/", "--out", str(target), cwd=tmp_path) as proc,
    ):
        code, out, err = await finish(proc)
    assert (code, out) == (1, "")
    assert err.startswith("katiedj-listen: cannot open ")
    assert len(err.splitlines()) == 1


# -- resuming across a reset numbering --------------------------------------------------------


async def test_resume_follows_a_reset_and_reconnects_from_the_new_numbering() -> None:
    paths: list[str] = []

    def record(connection: ServerConnection, request: Request, nth: int) -> Response | None:
        paths.append(request.path)
        return None

    async def stream(ws: ServerConnection, nth: int) -> None:
        if nth == 1:
            await ws.send(dumps({"seq": 7, "epoch": "100", "ts": "t", "data": {"n": 7}}))
            # A Redis failover lost seqs past 5: the server says so, then the new numbering.
            await ws.send(dumps({"type": "reset", "epoch": "200", "seq": 5}))
            await ws.send(dumps({"seq": 6, "epoch": "200", "ts": "t", "data": {"n": 60}}))
            await ws.close(1012, "restarting")

    srv = BroadcastServer(on_request=record, on_connect=stream)
    await srv.start()
    try:
        async with asyncio.timeout(TIMEOUT), Listener(srv.url(), resume=True, **FAST) as listener:
            received: list[Any] = []
            consumer = asyncio.create_task(listener.run(received.append))
            await until(lambda: len(paths) == 2)
            listener.stop()
            await consumer
            assert received == [{"n": 7}, {"n": 60}]
            assert (listener.resets, listener.last_seq, listener.last_epoch) == (1, 6, "200")
    finally:
        await srv.stop()
    assert paths[0].endswith("?format=envelope")
    assert paths[1].endswith("?format=envelope&since=6&epoch=200")


def test_the_backoff_stays_inside_the_history_the_listener_resumes_from() -> None:
    listener = Listener("ws://127.0.0.1:9/ws/networks/x/", resume=True, max_backoff=30.0)
    assert listener.backoff_ceiling() == 30.0  # nothing known about the history yet
    listener.history_messages = 100
    listener._rate._rate = 100.0  # 100 messages a second: the history spans 1 s
    assert listener.backoff_ceiling() == pytest.approx(0.5)  # min_backoff: never lower
    listener.history_messages = 10_000  # spans 100 s: a quarter of it
    assert listener.backoff_ceiling() == pytest.approx(25.0)
    listener.history_seconds = 60.0  # but messages older than a minute are gone
    assert listener.backoff_ceiling() == pytest.approx(15.0)
    assert Listener("ws://127.0.0.1:9/x", max_backoff=30.0).backoff_ceiling() == 30.0
