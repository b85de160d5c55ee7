"""Reconnecting WebSocket listener for KatieDJ broadcasts."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any, Protocol, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State
from websockets.uri import parse_uri

__all__ = ["FATAL_HTTP_STATUSES", "Listener", "ListenerRejected", "backoff_delays"]

logger = logging.getLogger("katiedj_client")

# Statuses that mean "this URL/credential will never work"; anything else (502 while a proxy
# restarts, 503 during a deploy, ...) is worth retrying.
FATAL_HTTP_STATUSES = frozenset({401, 403, 404})

# The server uses 44xx close codes for authentication/entitlement decisions. 4408 (token
# expired) is retried after a refresh when the listener holds a personal token; 4413 (read
# too slowly on a "disconnect" network) is retried, resuming from the last seq if resume=True.
_FATAL_CLOSE_CODES = range(4400, 4500)

PERSONAL_TOKEN_PREFIX = "kdjp_"
CLOSE_TOKEN_EXPIRED = 4408
CLOSE_TOO_SLOW = 4413

# Bounds how long stop()/aclose() can hang on a server that never answers our close frame.
_CLOSE_TIMEOUT = 3.0


class _Uniform(Protocol):
    def uniform(self, a: float, b: float, /) -> float: ...


class ListenerRejected(Exception):
    """The server refused this listener; retrying would not help.

    ``status_or_code`` is the HTTP status of a rejected handshake (401/403/404) or the
    WebSocket close code (4400-4499) sent by the server.
    """

    def __init__(self, reason: str, status_or_code: int) -> None:
        super().__init__(reason, status_or_code)
        self.reason = reason
        self.status_or_code = status_or_code

    def __str__(self) -> str:
        return f"{self.reason} ({self.status_or_code})"


def backoff_delays(
    min_backoff: float, max_backoff: float, rng: _Uniform = random
) -> Iterator[float]:
    """Yield endless reconnect delays: exponential growth capped at ``max_backoff``, full jitter.

    The k-th delay (k from 0) is ``rng.uniform(0, min(max_backoff, min_backoff * 2**k))``.
    """
    if min_backoff <= 0:
        raise ValueError("min_backoff must be > 0")
    if max_backoff < min_backoff:
        raise ValueError("max_backoff must be >= min_backoff")
    ceiling = min_backoff
    while True:
        yield rng.uniform(0, ceiling)
        # Doubling a float (rather than computing 2**k) cannot overflow on long outages.
        ceiling = min(max_backoff, ceiling * 2)


class _RateMeter:
    """Messages per second, smoothed over about the last minute."""

    WINDOW_SECONDS = 60.0

    def __init__(self) -> None:
        self._rate = 0.0
        self._last: float | None = None

    def tick(self) -> None:
        now = time.monotonic()
        if self._last is not None:
            elapsed = max(now - self._last, 1e-6)
            weight = min(1.0, elapsed / self.WINDOW_SECONDS)
            self._rate += weight * (1.0 / elapsed - self._rate)
        self._last = now

    def per_second(self) -> float:
        return self._rate


class _Stopped(Exception):
    """Internal signal: stop() was called while waiting."""


class Listener:
    """Receive KatieDJ samples from a WebSocket URL, reconnecting until stopped.

    Iterate with ``async for message in listener`` or call ``await listener.run(callback)``.
    One consumer at a time; a stopped listener stays stopped.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
        open_timeout: float = 10.0,
        resume: bool = False,
    ) -> None:
        parse_uri(url)  # fail fast on a malformed URL instead of retrying it forever
        # Validates the backoff bounds eagerly, for the same reason.
        next(backoff_delays(min_backoff, max_backoff))
        self.url = url
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        # A personal token (kdjp_…) is exchanged for short-lived entitlement tokens, refreshed
        # before they expire and whenever the server says one expired (close 4408).
        self._personal_token = token if token and token.startswith(PERSONAL_TOKEN_PREFIX) else None
        self._headers = {"Authorization": f"Bearer {token}"} if token else None
        self._entitlement: tuple[str, float] | None = None
        # resume=True: ask for the envelope format, remember the last sequence number, and
        # reconnect with ?since= so nothing published while disconnected is missed.
        self.resume = resume
        self.last_seq: int | None = None
        self.last_epoch: str | None = None  # the numbering last_seq belongs to
        self.missed = 0  # messages the server's history no longer had (gap frames)
        # Times the server said the numbering was reset (a Redis restart or failover lost
        # what this listener had seen): messages of the old numbering past last_seq are gone.
        self.resets = 0
        # What the network's history keeps (handshake headers) and the rate messages arrive
        # at: reconnecting later than the history reaches back would lose messages.
        self.history_messages: int | None = None
        self.history_seconds: float | None = None
        self._rate = _RateMeter()

        self.reconnects = 0
        self._connections = 0
        self._ws: ClientConnection | None = None
        self._stop_requested = False
        self._stop_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._agen: AsyncGenerator[Any, None] | None = None
        self._iterating = False
        self._at_yield = False
        self._consumer: asyncio.Task[Any] | None = None
        self._finished: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"<Listener {self.url} connected={self.connected} reconnects={self.reconnects}>"

    @property
    def connected(self) -> bool:
        """True while a WebSocket connection is open."""
        return self._ws is not None and self._ws.state is State.OPEN

    # -- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the listener to finish; iteration ends promptly and cleanly. Thread-safe."""
        self._stop_requested = True
        loop, event = self._loop, self._stop_event
        if loop is None or event is None:
            return  # not iterating yet: the flag alone is enough
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            # asyncio.Event is not thread-safe: hand the wake-up to the listener's own loop.
            with contextlib.suppress(RuntimeError):  # that loop is already closed
                loop.call_soon_threadsafe(event.set)

    async def aclose(self) -> None:
        """Stop, and return once the connection is closed and no message will be yielded."""
        self.stop()
        agen, finished = self._agen, self._finished
        if agen is None or finished is None or finished.is_set():
            return
        if not self._at_yield:
            # The consumer is inside the generator, which stop() is waking up right now.
            await finished.wait()
            return
        consumer = self._consumer
        if consumer is None or consumer is asyncio.current_task() or consumer.done():
            # Nobody else can resume the generator, so finalising it here is race-free.
            await agen.aclose()
        elif self._ws is not None:
            # The consumer task may resume the generator at any moment, and finalising a
            # generator from two tasks at once fails; closing the socket is enough: the next
            # resume sees the stop flag and returns.
            await self._ws.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- consuming ----------------------------------------------------------------------------

    def __aiter__(self) -> AsyncGenerator[Any, None]:
        agen = self._messages()
        if not self._iterating:
            self._agen = agen
        return agen

    async def run(self, callback: Callable[[Any], Awaitable[object] | object]) -> None:
        """Call ``callback(message)`` for every message until stopped; awaits async callbacks."""
        agen = self.__aiter__()
        try:
            async for message in agen:
                result = callback(message)
                if inspect.isawaitable(result):
                    await result
        finally:
            await agen.aclose()

    async def _messages(self) -> AsyncGenerator[Any, None]:
        if self._iterating:
            raise RuntimeError("this Listener is already being iterated")
        self._iterating = True
        self._consumer = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._finished = asyncio.Event()
        if self._stop_requested:
            self._stop_event.set()
        stopper = asyncio.ensure_future(self._stop_event.wait())
        delays = backoff_delays(self.min_backoff, self.max_backoff)
        try:
            while not self._stop_requested:
                try:
                    ws = await self._race(self._open(), stopper)
                except _Stopped:
                    return
                except InvalidStatus as exc:
                    status = exc.response.status_code
                    if status in FATAL_HTTP_STATUSES:
                        raise ListenerRejected(_status_reason(exc), status) from exc
                    logger.warning("handshake with %s failed: HTTP %d", self.url, status)
                except (OSError, TimeoutError, InvalidHandshake) as exc:
                    logger.warning("cannot connect to %s: %s", self.url, _describe(exc))
                else:
                    delays = backoff_delays(self.min_backoff, self.max_backoff)
                    # aclosing: the connection must close now, not whenever the GC finalises
                    # an abandoned inner generator.
                    async with contextlib.aclosing(self._consume(ws, stopper)) as messages:
                        async for message in messages:
                            self._at_yield = True
                            try:
                                yield message
                            finally:
                                self._at_yield = False
                                self._consumer = asyncio.current_task()
                            if self._stop_requested:
                                return
                if self._stop_requested:
                    return
                delay = min(next(delays), self.backoff_ceiling())
                logger.info("reconnecting to %s in %.2fs", self.url, delay)
                await asyncio.wait({stopper}, timeout=delay)
        finally:
            self._stop_requested = True
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper
            self._iterating = False
            self._finished.set()

    async def _open(self) -> ClientConnection:
        headers = self._headers
        if self._personal_token is not None:
            headers = {"Authorization": f"Bearer {await self._entitlement_token()}"}
        return await connect(
            self._connect_url(),
            additional_headers=headers,
            open_timeout=self.open_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=_CLOSE_TIMEOUT,
        )

    async def _consume(
        self, ws: ClientConnection, stopper: asyncio.Future[Any]
    ) -> AsyncGenerator[Any, None]:
        """Yield parsed messages from one connection until it drops or stop() is called."""
        self._ws = ws
        self._read_history_headers(ws)
        self._connections += 1
        if self._connections > 1:
            self.reconnects += 1
        logger.info("connected to %s", self.url)
        try:
            while True:
                try:
                    raw = await self._race(ws.recv(), stopper)
                except _Stopped:
                    return
                except ConnectionClosed as exc:
                    rcvd = exc.rcvd
                    if (
                        rcvd is not None
                        and rcvd.code == CLOSE_TOKEN_EXPIRED
                        and self._personal_token
                    ):
                        logger.info("entitlement token expired; refreshing it")
                        self._entitlement = None
                        return
                    if rcvd is not None and rcvd.code == CLOSE_TOO_SLOW:
                        logger.warning("%s: closed for reading too slowly; reconnecting", self.url)
                        return
                    if rcvd is not None and rcvd.code in _FATAL_CLOSE_CODES:
                        reason = rcvd.reason or "closed by server"
                        raise ListenerRejected(reason, rcvd.code) from exc
                    logger.warning("connection to %s lost: %s", self.url, _describe(exc))
                    return
                try:
                    message = json.loads(raw)
                except ValueError:
                    logger.warning("skipping non-JSON frame from %s: %.80r", self.url, raw)
                    continue
                if self.resume and isinstance(message, dict):
                    if message.get("type") == "gap":
                        self.missed += int(message.get("missed", 0))
                        logger.warning("%s: %s message(s) no longer in history", self.url,
                                       message.get("missed"))  # fmt: skip
                        continue
                    if message.get("type") == "reset" and "data" not in message:
                        self.resets += 1
                        self.last_seq = int(message["seq"])
                        self.last_epoch = str(message["epoch"])
                        logger.warning("%s: the numbering was reset (epoch %s, after seq %s)",
                                       self.url, message["epoch"], message["seq"])  # fmt: skip
                        continue
                    if "seq" in message and "data" in message:
                        self.last_seq = int(message["seq"])
                        self.last_epoch = message.get("epoch") or self.last_epoch
                        self._rate.tick()
                        message = message["data"]
                yield message
        finally:
            self._ws = None
            await ws.close()

    def backoff_ceiling(self) -> float:
        """The longest reconnect delay that still resumes inside the network's history: a
        quarter of the time the history spans at the rate messages arrived, never below
        ``min_backoff`` nor above ``max_backoff``."""
        if not self.resume:
            return self.max_backoff
        spans = []
        rate = self._rate.per_second()
        if self.history_messages and rate:
            spans.append(self.history_messages / rate)
        if self.history_seconds:
            spans.append(self.history_seconds)
        if not spans:
            return self.max_backoff
        return max(self.min_backoff, min(self.max_backoff, min(spans) / 4))

    def _connect_url(self) -> str:
        if not self.resume:
            return self.url
        parts = urllib.parse.urlsplit(self.url)
        query = urllib.parse.parse_qsl(parts.query)
        query = [(k, v) for k, v in query if k not in ("format", "since", "epoch")]
        query.append(("format", "envelope"))
        if self.last_seq is not None:
            query.append(("since", str(self.last_seq)))
            if self.last_epoch:
                query.append(("epoch", self.last_epoch))
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

    def _read_history_headers(self, ws: ClientConnection) -> None:
        headers = ws.response.headers if ws.response is not None else {}
        with contextlib.suppress(TypeError, ValueError):
            self.history_messages = int(headers.get("KatieDJ-History-Messages", ""))
        with contextlib.suppress(TypeError, ValueError):
            self.history_seconds = float(headers.get("KatieDJ-History-Seconds", "")) or None

    async def _entitlement_token(self) -> str:
        """A cached entitlement token with at least a minute left, else a freshly minted one."""
        if self._entitlement is not None and self._entitlement[1] - time.time() > 60:
            return self._entitlement[0]
        assert self._personal_token is not None
        token, expires_at = await asyncio.to_thread(
            exchange_personal_token, self.url, self._personal_token, self.open_timeout
        )
        self._entitlement = (token, expires_at)
        return token

    @staticmethod
    async def _race(aw: Awaitable[Any], stopper: asyncio.Future[Any]) -> Any:
        """Await ``aw`` unless stop() fires first, in which case raise _Stopped."""
        task = asyncio.ensure_future(aw)
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                # Let the cancellation finish so no half-open socket or pending task lingers.
                await asyncio.wait({task})
        if task.cancelled():
            raise _Stopped
        return task.result()


def token_endpoint(ws_url: str) -> str:
    """``ws(s)://host[:port]/…`` → ``http(s)://host[:port]/api/v1/entitlements/token``."""
    parts = urllib.parse.urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}[parts.scheme]
    return urllib.parse.urlunsplit((scheme, parts.netloc, "/api/v1/entitlements/token", "", ""))


def exchange_personal_token(ws_url: str, personal_token: str, timeout: float) -> tuple[str, float]:
    """POST the personal token to the token endpoint; returns (token, expiry epoch seconds)."""
    request = urllib.request.Request(
        token_endpoint(ws_url),
        method="POST",
        headers={"Authorization": f"Bearer {personal_token}", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise ListenerRejected("personal token refused", error.code) from error
        raise OSError(f"token endpoint answered HTTP {error.code}") from error
    expires = datetime.fromisoformat(body["expires_at"]).timestamp()
    return body["token"], expires


def _status_reason(exc: InvalidStatus) -> str:
    response = exc.response
    body = response.body.decode("utf-8", "replace").strip() if response.body else ""
    text = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    return f"handshake rejected: {text}" + (f": {body[:200]}" if body else "")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
