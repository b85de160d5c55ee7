"""The stand-alone generator: run the traffic model here and publish every sample over HTTP.

This is what any third-party generator does (the original Katie DJ's ``radio_publish`` loop),
made robust::

    python -m simulator.generator --url http://127.0.0.1:8000 --api-key KEY --network sample_net

Every ``--interval`` seconds it advances the model ``--steps-per-publish`` steps and POSTs
``{"network": ..., "data": <sample>}`` (see :mod:`simulator.output`) to ``/api/publish`` with the
``API-KEY`` header, over one keep-alive connection. The ticks are scheduled by the clock, so a
slow publish does not make the run drift; when it falls a whole interval behind it skips the
missed ticks instead of bursting.

Failures:

- 5xx, 408, 429, connection errors and timeouts are retried with capped exponential backoff and
  jitter, never earlier than the server's ``Retry-After``. The same sample is re-sent: the model
  does not advance while a sample is undelivered.
- Any other answer (400 bad key or body, 403 not allowed on this network, 409 archived network,
  413 too large, ...) stops the run with a one-line message and exit status 2.
- Ctrl-C and SIGTERM stop it quietly with exit status 0.

:func:`run_generator` is the loop itself, with the clock, the sleep and the publish callable
injectable; :func:`main` is the command line. No Django here.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import http.client
import json
import logging
import math
import random
import re
import signal
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from simulator.model import ModelParams, TrafficModel, load_sumo_net, manhattan_grid, sample_net
from simulator.model.errors import ModelConfigError, TopologyError
from simulator.model.topology import Topology
from simulator.output import parse_extras, sample_payload

logger = logging.getLogger("simulator.generator")

EXIT_OK = 0
EXIT_REJECTED = 2
"""The server refused the samples (or the command line / model setup is wrong): do not retry."""

RETRYABLE_STATUSES = frozenset({408, 425, 429})
"""Client-error statuses worth retrying; every 5xx is retried too."""

USER_AGENT = "katiedj-generator/1"

Publish = Callable[[dict[str, Any]], Mapping[str, Any] | None]
"""Delivers one sample; returns the server's receipt, raises :class:`PublishError` on failure."""


# --------------------------------------------------------------------------- errors


class PublishError(Exception):
    """A sample could not be delivered."""


class RetryablePublishError(PublishError):
    """Delivery failed for a reason that may go away: retry the same sample later."""

    def __init__(
        self, reason: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


class PublishRejected(PublishError):
    """The server refused the sample (bad key, not allowed, archived network, too large...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"publish rejected with HTTP {status}: {message}")
        self.status = status
        self.message = message


class _Terminated(BaseException):
    """Raised from the SIGTERM handler to unwind like Ctrl-C."""


# --------------------------------------------------------------------------- backoff


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter, floored by the server's ``Retry-After``.

    Attempt ``k`` (1-based) waits between half and all of ``min(cap, base · 2^(k-1))``;
    with a ``Retry-After`` it waits at least that long (itself capped at ``max_retry_after``).
    """

    base: float = 0.5
    cap: float = 30.0
    max_retry_after: float = 300.0
    rng: Callable[[], float] = random.random

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        exponential = min(self.cap, self.base * 2.0 ** min(max(attempt - 1, 0), 32))
        delay = exponential * (0.5 + 0.5 * self.rng())
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


# --------------------------------------------------------------------------- the loop


@dataclass
class RunStats:
    """What a run did."""

    published: int = 0
    retries: int = 0
    skipped_ticks: int = 0
    last_step: int | None = None
    last_seq: Any = None


def _deliver(
    payload: dict[str, Any],
    publish: Publish,
    sleep: Callable[[float], None],
    backoff: Backoff,
    stats: RunStats,
) -> Mapping[str, Any] | None:
    """Publish ``payload`` until it is accepted; :class:`PublishRejected` propagates."""
    attempt = 0
    while True:
        try:
            receipt = publish(payload)
        except RetryablePublishError as error:
            attempt += 1
            stats.retries += 1
            delay = backoff.delay(attempt, error.retry_after)
            # The first failure of an outage is worth a warning; the rest is progress.
            log = logger.warning if attempt == 1 else logger.info
            log(
                "step %s not delivered (%s); retry %d in %.1f s",
                payload["step"],
                error,
                attempt,
                delay,
            )
            sleep(delay)
            continue
        if attempt:
            logger.warning("step %s delivered after %d retries", payload["step"], attempt)
        return receipt


def run_generator(
    model: TrafficModel,
    publish: Publish,
    *,
    steps_per_publish: int = 1,
    interval: float = 1.0,
    max_publishes: int | None = None,
    extras: frozenset[str] = frozenset(),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    backoff: Backoff | None = None,
    log_every: float = 60.0,
) -> RunStats:
    """Advance ``model`` and publish a sample every ``interval`` seconds of ``clock``.

    Each tick steps the model ``steps_per_publish`` times and hands the sample to ``publish``
    until it is accepted (retrying per ``backoff``, the model standing still meanwhile). Stops
    after ``max_publishes`` samples (``None``: never); raises :class:`PublishRejected` when the
    server refuses a sample. Tick ``k`` is due at ``start + k · interval``.
    """
    if steps_per_publish < 1:
        raise ValueError(f"steps_per_publish must be ≥ 1, got {steps_per_publish}")
    if not (math.isfinite(interval) and interval >= 0):
        raise ValueError(f"interval must be a finite number of seconds ≥ 0, got {interval}")
    if max_publishes is not None and max_publishes < 0:
        raise ValueError(f"max_publishes must be ≥ 0, got {max_publishes}")
    backoff = backoff or Backoff()
    stats = RunStats()
    due = clock()
    last_report = due
    while max_publishes is None or stats.published < max_publishes:
        model.step(steps_per_publish)
        payload = sample_payload(model, extras=extras)
        receipt = _deliver(payload, publish, sleep, backoff, stats)
        stats.published += 1
        stats.last_step = payload["step"]
        stats.last_seq = (receipt or {}).get("seq")
        now = clock()
        if stats.published == 1:
            logger.info("first sample published: step %s (seq %s)", stats.last_step, stats.last_seq)
        elif now - last_report >= log_every:
            logger.info(
                "%d samples published, last step %s (seq %s), %d retries",
                stats.published,
                stats.last_step,
                stats.last_seq,
                stats.retries,
            )
            last_report = now
        if max_publishes is not None and stats.published >= max_publishes:
            break
        if interval == 0:
            continue
        due += interval
        late = now - due
        if late > interval:
            missed = math.floor(late / interval)
            due += missed * interval
            stats.skipped_ticks += missed
            logger.info("%.1f s behind schedule: skipping %d tick(s)", late, missed)
        if due > now:
            sleep(due - now)
    return stats


# --------------------------------------------------------------------------- HTTP


def _describe(error: BaseException, timeout: float) -> str:
    if isinstance(error, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _error_text(raw: bytes, reason: str) -> str:
    """The server's explanation as one line: the JSON ``error`` (or ``detail``), else the body."""
    text = raw.decode("utf-8", errors="replace").strip()
    with contextlib.suppress(ValueError):
        body = json.loads(text)
        if isinstance(body, dict):
            for key in ("error", "detail", "message"):
                if key in body:
                    value = body[key]
                    text = value if isinstance(value, str) else json.dumps(value)
                    break
    text = " ".join(text.split())
    if len(text) > 300:
        text = text[:297] + "..."
    return text or reason or "no explanation given"


class HttpPublisher:
    """POSTs samples to a KatieDJ publish endpoint over one keep-alive connection.

    Call it with a sample; it returns the receipt (``{"message": "OK", "seq": ...}``) or raises
    :class:`RetryablePublishError` / :class:`PublishRejected`. Use it as a context manager (or
    call :meth:`close`) to close the connection.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        network: str,
        *,
        publish_path: str = "/api/publish",
        timeout: float = 10.0,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--url must be an http:// or https:// address, not {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.path = parts.path.rstrip("/") + "/" + publish_path.lstrip("/")
        self.network = network
        self.timeout = timeout
        self.headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "API-KEY": api_key,
            "User-Agent": USER_AGENT,
        }
        self._connection: http.client.HTTPConnection | None = None

    def __enter__(self) -> HttpPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if self.scheme == "https":
                self._connection = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                self._connection = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout
                )
        return self._connection

    def _post(self, body: bytes) -> tuple[http.client.HTTPResponse, bytes]:
        for attempt in (1, 2):
            reused = self._connection is not None
            connection = self._connect()
            try:
                connection.request("POST", self.path, body=body, headers=self.headers)
                response = connection.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as error:
                self.close()
                # A kept-alive connection the server closed while we were idle: reconnect once
                # straight away rather than backing off.
                stale = reused and isinstance(error, ConnectionResetError | BrokenPipeError)
                if stale and attempt == 1:
                    logger.debug("kept-alive connection was closed by the server; reconnecting")
                    continue
                raise RetryablePublishError(_describe(error, self.timeout)) from error
            if response.will_close:
                self.close()
            return response, raw
        raise AssertionError("unreachable")  # pragma: no cover

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(
            {"network": self.network, "data": data}, separators=(",", ":"), allow_nan=False
        ).encode()
        response, raw = self._post(body)
        status = response.status
        if 200 <= status < 300:
            try:
                receipt = json.loads(raw) if raw.strip() else {}
            except ValueError:
                receipt = {}
            return receipt if isinstance(receipt, dict) else {}
        message = _error_text(raw, response.reason)
        if status >= 500 or status in RETRYABLE_STATUSES:
            raise RetryablePublishError(
                f"HTTP {status}: {message}",
                status=status,
                retry_after=parse_retry_after(response.getheader("Retry-After")),
            )
        raise PublishRejected(status, message)


# --------------------------------------------------------------------------- command line


@dataclass(frozen=True)
class TopologySpec:
    """A parsed ``--topology``: ``sample_net``, ``grid:ROWSxCOLS`` or ``sumo:PATH``."""

    kind: str
    rows: int = 0
    cols: int = 0
    path: str = ""

    def build(self, dt: float) -> Topology:
        if self.kind == "grid":
            return manhattan_grid(self.rows, self.cols)
        if self.kind == "sumo":
            return load_sumo_net(self.path, dt=dt)
        return sample_net()


def topology_spec(text: str) -> TopologySpec:
    """argparse type of ``--topology``."""
    kind, _, argument = text.partition(":")
    if kind == "sample_net" and not argument:
        return TopologySpec("sample_net")
    if kind == "grid":
        if not argument:
            return TopologySpec("grid", 4, 4)
        size = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", argument)  # noqa: RUF001
        if size and int(size[1]) >= 1 and int(size[2]) >= 1:
            return TopologySpec("grid", int(size[1]), int(size[2]))
    if kind == "sumo" and argument:
        return TopologySpec("sumo", path=argument)
    raise argparse.ArgumentTypeError(
        f"{text!r}: expected sample_net, grid:ROWSxCOLS (e.g. grid:4x4) or sumo:PATH"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be ≥ 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number ≥ 0")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _extras(text: str) -> frozenset[str]:
    try:
        return parse_extras(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.generator",
        description="Run a traffic simulation locally and publish every sample to a KatieDJ "
        "network over HTTP.",
    )
    parser.add_argument(
        "--url", required=True, help="base URL of the platform, e.g. http://127.0.0.1:8000"
    )
    parser.add_argument("--api-key", required=True, help="publisher API key of the network")
    parser.add_argument("--network", required=True, help="slug of the network to publish on")
    parser.add_argument(
        "--topology",
        type=topology_spec,
        default=TopologySpec("sample_net"),
        metavar="sample_net|grid:ROWSxCOLS|sumo:PATH",
        help="street network to simulate (default: sample_net, streets '0'..'12')",
    )
    parser.add_argument("--dt", type=float, default=1.0, help="model time step, s (default 1)")
    parser.add_argument(
        "--interval", type=_seconds, default=1.0, help="seconds between publishes (default 1)"
    )
    parser.add_argument(
        "--steps-per-publish", type=_positive_int, default=1, help="model steps per sample"
    )
    parser.add_argument(
        "--max-publishes", type=_positive_int, default=None, help="stop after N samples"
    )
    parser.add_argument(
        "--extras",
        type=_extras,
        default=frozenset(),
        metavar="flows,signals,queues",
        help="optional sample keys, comma-separated",
    )
    parser.add_argument(
        "--publish-path", default="/api/publish", help="publish endpoint (default /api/publish)"
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=10.0,
        help="HTTP timeout per request, s (default 10)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="-v: progress, -vv: debug"
    )
    return parser


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While active, SIGTERM unwinds the stack like Ctrl-C (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _stderr_logging(verbosity: int) -> Iterator[None]:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s generator %(levelname)s: %(message)s"))
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _fail(message: str) -> int:
    print(f"generator: {message}", file=sys.stderr)
    return EXIT_REJECTED


def _run(args: argparse.Namespace) -> int:
    try:
        params = ModelParams(dt=args.dt)
        model = TrafficModel(args.topology.build(args.dt), params)
    except (ModelConfigError, TopologyError, OSError, ValueError) as error:
        return _fail(f"cannot build the model: {error}")
    logger.info(
        "simulating %s (%d streets, %d cells, dt %g s), publishing to %s at %s%s",
        model.topology.name,
        len(model.street_ids),
        model.n_cells,
        params.dt,
        args.network,
        args.url,
        args.publish_path,
    )
    try:
        publisher = HttpPublisher(
            args.url,
            args.api_key,
            args.network,
            publish_path=args.publish_path,
            timeout=args.timeout,
        )
    except ValueError as error:
        return _fail(str(error))
    with publisher:
        try:
            stats = run_generator(
                model,
                publisher,
                steps_per_publish=args.steps_per_publish,
                interval=args.interval,
                max_publishes=args.max_publishes,
                extras=args.extras,
            )
        except PublishRejected as error:
            return _fail(str(error))
    logger.info(
        "done: %d samples published, last step %s, %d retries",
        stats.published,
        stats.last_step,
        stats.retries,
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (0 done or interrupted, 2 refused)."""
    args = build_parser().parse_args(argv)
    with _stderr_logging(args.verbose):
        try:
            with _sigterm_unwinds():
                return _run(args)
        except (KeyboardInterrupt, _Terminated):
            logger.info("interrupted")
            return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
