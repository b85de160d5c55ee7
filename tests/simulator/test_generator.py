"""The stand-alone generator: the sample it publishes, and its publish loop against a real local
HTTP server that answers with scripted statuses (no Django, no database)."""

from __future__ import annotations

import http.server
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from simulator.generator import (
    Backoff,
    HttpPublisher,
    PublishRejected,
    RetryablePublishError,
    main,
    parse_retry_after,
    run_generator,
    topology_spec,
)
from simulator.model import ModelParams, TrafficModel, manhattan_grid, sample_net
from simulator.output import EXTRAS, parse_extras, sample_payload, utc_timestamp

REPO_ROOT = Path(__file__).resolve().parents[2]
STREETS = [str(i) for i in range(13)]
BASE_KEYS = {"state", "timestamp", "step", "sim_time"}
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def make_model() -> TrafficModel:
    return TrafficModel(sample_net(), ModelParams(backend="numpy"))


# --------------------------------------------------------------------------- a scripted server


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # None: the platform's receipt {"message": "OK", "seq": n}
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    client: tuple[str, int]


class ScriptedServer:
    """A real HTTP/1.1 (keep-alive) server on 127.0.0.1 answering POSTs with scripted replies;
    once the script runs out it accepts everything."""

    def __init__(
        self, replies: list[Reply] | None = None, port: int = 0, idle_timeout: float = 5.0
    ) -> None:
        self.replies = list(replies or [])
        self.received: list[Received] = []
        self.seq = 0
        self.lock = threading.Lock()
        self.arrived = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = idle_timeout  # the server closes a kept-alive connection idle this long

            def do_POST(self) -> None:
                server.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = False  # server_close() joins the connection threads
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        raw = handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
        with self.lock:
            self.received.append(
                Received(
                    handler.path, dict(handler.headers), json.loads(raw), handler.client_address
                )
            )
            reply = self.replies.pop(0) if self.replies else Reply()
            body = reply.body
            if body is None and reply.status == 200:
                self.seq += 1
                body = {"message": "OK", "seq": self.seq}
        self.arrived.set()
        if reply.delay:
            time.sleep(reply.delay)
        data = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        try:
            handler.send_response(reply.status)
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the client gave up (a timeout test)
            handler.close_connection = True

    def samples(self) -> list[dict[str, Any]]:
        return [r.body["data"] for r in self.received]

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return
            time.sleep(0.02)
        raise AssertionError(f"only {len(self.received)} of {count} requests arrived")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def serve() -> Iterator:
    started: list[ScriptedServer] = []

    def start(
        replies: list[Reply] | None = None, port: int = 0, idle_timeout: float = 5.0
    ) -> ScriptedServer:
        server = ScriptedServer(replies, port, idle_timeout)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


class Recorder:
    """An injected sleep that records the delays and sleeps not at all."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def no_jitter() -> Backoff:
    return Backoff(rng=lambda: 1.0)  # every delay is the full exponential one


# --------------------------------------------------------------------------- the sample


def test_sample_has_the_original_shape_with_rounded_densities():
    model = make_model()
    model.step(120)
    before = datetime.now(UTC) - timedelta(seconds=1)
    sample = sample_payload(model)
    assert set(sample) == BASE_KEYS
    assert list(sample["state"]) == STREETS
    raw = model.densities()
    assert any(value != round(value, 3) for value in raw.values())  # rounding did something
    for street, value in sample["state"].items():
        assert type(value) is float
        assert value == round(raw[street], 3)
    assert sample["step"] == 120 and type(sample["step"]) is int
    assert sample["sim_time"] == 120.0 and type(sample["sim_time"]) is float
    assert ISO_Z.match(sample["timestamp"])
    stamped = datetime.fromisoformat(sample["timestamp"])
    assert stamped.utcoffset() == timedelta(0)
    assert before <= stamped <= datetime.now(UTC) + timedelta(seconds=1)
    # It survives JSON unchanged, and the original listener's reads work.
    assert json.loads(json.dumps(sample, allow_nan=False)) == sample
    assert [float(sample["state"][str(i)]) for i in range(13)]


def test_sample_extras_are_added_only_when_asked():
    model = TrafficModel(manhattan_grid(2, 2), ModelParams(backend="numpy"))
    model.step(30)
    assert set(sample_payload(model, extras=frozenset())) == BASE_KEYS
    sample = sample_payload(model, extras=EXTRAS)
    assert set(sample) == BASE_KEYS | {"flows", "signals", "queues"}
    assert list(sample["flows"]) == model.street_ids
    assert sample["flows"] == {k: round(v, 3) for k, v in model.flows().items()}
    assert sample["signals"] and set(sample["signals"]) <= set(model.street_ids)
    assert all(v in (0.0, 1.0) or 0 < v < 1 for v in sample["signals"].values())
    assert sample["queues"] == {k: round(v, 3) for k, v in model.queue_lengths().items()}
    assert set(sample_payload(model, extras=frozenset({"queues"}))) == BASE_KEYS | {"queues"}
    with pytest.raises(ValueError, match="unknown extra"):
        sample_payload(model, extras=frozenset({"speeds"}))


def test_extras_parse_and_timestamps_are_utc_with_z():
    assert parse_extras("flows, queues,") == frozenset({"flows", "queues"})
    assert parse_extras(None) == frozenset()
    with pytest.raises(ValueError, match="choose from flows, queues, signals"):
        parse_extras("flows,colour")
    moment = datetime(2026, 11, 27, 11, 0, 0, 123456, tzinfo=UTC)
    assert utc_timestamp(moment) == "2026-11-27T11:00:00.123Z"
    local = moment.astimezone(datetime.now().astimezone().tzinfo)
    assert utc_timestamp(local) == "2026-11-27T11:00:00.123Z"


# --------------------------------------------------------------------------- backoff, schedule


def test_backoff_doubles_with_jitter_up_to_the_cap_and_honours_retry_after():
    full = no_jitter()
    assert [full.delay(k) for k in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    half = Backoff(rng=lambda: 0.0)
    assert [half.delay(k) for k in (1, 2, 10)] == [0.25, 0.5, 15]
    assert full.delay(1, retry_after=7) == 7  # never earlier than the server asked
    assert full.delay(8, retry_after=2) == 30  # nor earlier than the backoff
    assert full.delay(1, retry_after=10_000) == 300  # a silly Retry-After is capped
    assert full.delay(10_000) == 30


def test_retry_after_is_read_as_seconds_or_an_http_date():
    now = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert parse_retry_after("5", now) == 5
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("-3", now) == 0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=12), usegmt=True), now) == 12
    assert parse_retry_after(format_datetime(now - timedelta(seconds=12), usegmt=True), now) == 0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("nan", now) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_ticks_follow_the_clock_and_do_not_drift():
    clock = FakeClock()
    sent_at: list[float] = []

    def slow_publish(sample):
        sent_at.append(clock.now)
        clock.now += 0.3  # the request takes 0.3 s
        return {"seq": len(sent_at)}

    stats = run_generator(
        make_model(), slow_publish, interval=1.0, max_publishes=5, clock=clock, sleep=clock.sleep
    )
    assert sent_at == pytest.approx([1000.0, 1001.0, 1002.0, 1003.0, 1004.0])
    assert clock.sleeps == pytest.approx([0.7] * 4)  # no sleep after the last publish
    assert stats.published == 5 and stats.last_seq == 5 and stats.last_step == 5


def test_a_run_far_behind_schedule_skips_the_missed_ticks_instead_of_bursting():
    clock = FakeClock()
    sent_at: list[float] = []

    def publish(sample):
        sent_at.append(clock.now)
        if len(sent_at) == 2:
            clock.now += 3.5  # one very slow request
        return {}

    stats = run_generator(
        make_model(), publish, interval=1.0, max_publishes=4, clock=clock, sleep=clock.sleep
    )
    # Ticks at 1002 and 1003 are skipped; 1004 goes out at once (late), 1005 is on time again.
    assert sent_at == pytest.approx([1000.0, 1001.0, 1004.5, 1005.0])
    assert stats.skipped_ticks == 2


def test_bad_loop_arguments_are_refused():
    with pytest.raises(ValueError, match="steps_per_publish"):
        run_generator(make_model(), lambda s: {}, steps_per_publish=0)
    with pytest.raises(ValueError, match="interval"):
        run_generator(make_model(), lambda s: {}, interval=-1)


# --------------------------------------------------------------------------- the real HTTP loop


def run_against(server_url: str, *, model=None, sleep=None, timeout=5.0, **options):
    model = model or make_model()
    sleep = sleep or Recorder()
    with HttpPublisher(server_url, "the-key", "sample_net", timeout=timeout) as publisher:
        stats = run_generator(
            model, publisher, sleep=sleep, backoff=options.pop("backoff", no_jitter()), **options
        )
    return model, stats


def test_publishes_the_sample_with_the_key_on_one_kept_alive_connection(serve):
    server = serve()
    model, stats = run_against(server.url, max_publishes=4, interval=0.01, steps_per_publish=3)
    assert stats.published == 4 and stats.retries == 0 and stats.last_seq == 4
    assert model.step_count == 12
    assert [s["step"] for s in server.samples()] == [3, 6, 9, 12]
    first = server.received[0]
    assert first.path == "/api/publish"
    assert first.headers["API-KEY"] == "the-key"
    assert first.headers["Content-Type"] == "application/json"
    assert first.body["network"] == "sample_net"
    assert list(first.body["data"]["state"]) == STREETS
    assert len({r.client for r in server.received}) == 1  # keep-alive


def test_a_connection_the_server_closed_while_idle_is_reopened_at_once(serve, caplog):
    caplog.set_level(logging.DEBUG, logger="simulator.generator")
    server = serve(idle_timeout=0.1)
    sleep = Recorder()
    with HttpPublisher(server.url, "k", "sample_net") as publisher:
        stats = run_generator(
            make_model(),
            publisher,
            max_publishes=3,
            interval=0.3,
            sleep=lambda seconds: (sleep(seconds), time.sleep(seconds)),
        )
    assert stats.retries == 0 and stats.published == 3
    assert len(sleep.delays) == 2  # only the ticks' sleeps: no backoff
    assert len({r.client for r in server.received}) == 3  # a fresh connection each time
    assert (
        caplog.messages.count("kept-alive connection was closed by the server; reconnecting") == 2
    )


def test_a_503_is_retried_with_the_same_sample_and_the_model_waits(serve):
    server = serve([Reply(503, {"error": "Redis is down"}, {"Retry-After": "1"}), Reply(200)])
    sleep = Recorder()
    model, stats = run_against(
        server.url, sleep=sleep, max_publishes=2, interval=0.5, steps_per_publish=2
    )
    samples = server.samples()
    assert len(samples) == 3
    assert samples[0] == samples[1]  # re-sent as is, timestamp included
    assert [s["step"] for s in samples] == [2, 2, 4]
    assert model.step_count == 4  # not advanced for the failed attempt
    assert stats.retries == 1
    assert sleep.delays[0] == 1.0  # Retry-After (above the 0.5 s first backoff)


def test_a_429_waits_as_long_as_retry_after_says(serve):
    server = serve([Reply(429, {"error": "slow down"}, {"Retry-After": "7"})] * 2)
    sleep = Recorder()
    _, stats = run_against(server.url, sleep=sleep, max_publishes=1)
    assert sleep.delays == [7.0, 7.0]
    assert stats.retries == 2 and stats.published == 1
    assert len(server.samples()) == 3 and len({json.dumps(s) for s in server.samples()}) == 1


def test_server_errors_back_off_exponentially(serve):
    server = serve([Reply(500, b"<html>oops</html>"), Reply(502), Reply(504), Reply(503)])
    sleep = Recorder()
    _, stats = run_against(server.url, sleep=sleep, max_publishes=1)
    assert sleep.delays == [0.5, 1.0, 2.0, 4.0]
    assert stats.retries == 4 and len(server.received) == 5


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, "Invalid API key."),
        (403, "This key may not publish to network 'sample_net'."),
        (409, "Network 'sample_net' is archived."),
        (413, "Sample too large (70000 bytes, limit 65536)."),
    ],
)
def test_a_refusal_stops_the_loop_with_the_server_text(serve, status, error):
    server = serve([Reply(status, {"error": error})])
    sleep = Recorder()
    model = make_model()
    with pytest.raises(PublishRejected) as refused:
        run_against(server.url, model=model, sleep=sleep, max_publishes=5)
    assert refused.value.status == status
    assert refused.value.message == error
    assert str(refused.value) == f"publish rejected with HTTP {status}: {error}"
    assert sleep.delays == [] and len(server.received) == 1 and model.step_count == 1


def test_a_refusal_through_main_exits_2_with_one_line_on_stderr(serve, capsys):
    server = serve([Reply(400, {"error": "Invalid API key."})])
    code = main(["--url", server.url, "--api-key", "wrong", "--network", "sample_net"])
    assert code == 2
    err = capsys.readouterr().err
    assert err == "generator: publish rejected with HTTP 400: Invalid API key.\n"


def test_connection_refused_is_retried_until_the_server_comes_up(serve):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    delays: list[float] = []
    started: list[ScriptedServer] = []

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 2:  # after two refused attempts the server starts
            started.append(serve(port=port))

    _, stats = run_against(f"http://127.0.0.1:{port}", sleep=sleep, max_publishes=2, interval=0.01)
    assert stats.retries == 2 and stats.published == 2
    assert delays[:2] == [0.5, 1.0]
    assert [s["step"] for s in started[0].samples()] == [1, 2]


def test_a_timeout_is_retried(serve):
    server = serve([Reply(200, delay=0.5), Reply(200)])
    sleep = Recorder()
    _, stats = run_against(server.url, sleep=sleep, timeout=0.2, max_publishes=1)
    assert stats.retries == 1 and stats.published == 1
    assert len(server.received) == 2
    assert server.samples()[0] == server.samples()[1]


def test_the_publisher_reports_errors_as_retryable_or_rejected(serve):
    server = serve(
        [Reply(503, {"error": "Service unavailable."}, {"Retry-After": "3"}), Reply(404, b"")]
    )
    with HttpPublisher(server.url + "/", "k", "n", publish_path="publish") as publisher:
        with pytest.raises(RetryablePublishError) as retry:
            publisher({"x": 1})
        assert retry.value.status == 503 and retry.value.retry_after == 3
        assert str(retry.value) == "HTTP 503: Service unavailable."
        with pytest.raises(PublishRejected, match="HTTP 404: Not Found"):
            publisher({"x": 2})
        assert publisher({"x": 3}) == {"message": "OK", "seq": 1}
    assert [r.path for r in server.received] == ["/publish"] * 3
    with pytest.raises(ValueError, match="http:// or https://"):
        HttpPublisher("ftp://example.com", "k", "n")


def test_a_url_with_a_path_prefix_keeps_it(serve):
    server = serve()
    with HttpPublisher(server.url + "/katiedj", "k", "n") as publisher:
        publisher({"x": 1})
    assert server.received[0].path == "/katiedj/api/publish"


def test_topology_specs_parse():
    assert topology_spec("sample_net").kind == "sample_net"
    grid = topology_spec("grid:3x5")
    assert (grid.kind, grid.rows, grid.cols) == ("grid", 3, 5)
    assert len(grid.build(1.0).streets) == len(manhattan_grid(3, 5).streets)
    assert topology_spec("sumo:nets/town.net.xml").path == "nets/town.net.xml"
    for bad in ("grid:0x3", "grid:3", "sumo:", "berlin", "sample_net:2"):
        with pytest.raises(Exception, match="expected sample_net"):
            topology_spec(bad)


def test_bad_command_lines_exit_2(capsys):
    base = ["--url", "http://127.0.0.1:9", "--api-key", "k", "--network", "n"]
    for extra in (["--topology", "grid:0x0"], ["--extras", "speeds"], ["--interval", "-1"]):
        with pytest.raises(SystemExit) as exited:
            main(base + extra)
        assert exited.value.code == 2
    assert "unknown extra(s) speeds" in capsys.readouterr().err
    missing = str(REPO_ROOT / "tests" / "simulator" / "data" / "missing.net.xml")
    assert main([*base, "--topology", f"sumo:{missing}"]) == 2
    assert capsys.readouterr().err.startswith("generator: cannot build the model:")


# --------------------------------------------------------------------------- the CLI process


def cli(url: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "simulator.generator",
        "--url",
        url,
        "--api-key",
        "cli-key",
        "--network",
        "sample_net",
        *args,
    ]


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli(url, *args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def test_cli_publishes_three_samples_and_exits_0(serve):
    server = serve([Reply(503, {"error": "busy"}, {"Retry-After": "0"})])
    result = run_cli(server.url, "--max-publishes", "3", "--interval", "0.05", "--extras", "queues")
    assert result.returncode == 0, result.stderr
    samples = server.samples()
    assert [s["step"] for s in samples] == [1, 1, 2, 3]
    assert all(list(s["state"]) == STREETS and "queues" in s for s in samples)
    assert server.received[0].headers["API-KEY"] == "cli-key"
    assert "not delivered" in result.stderr  # the first failure is a warning
    assert result.stdout == ""


def test_cli_refused_with_403_exits_2_with_the_message(serve):
    error = "This API key may not publish to network 'sample_net'."
    server = serve([Reply(403, {"error": error})])
    result = run_cli(server.url, "--interval", "0.05")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"generator: publish rejected with HTTP 403: {error}"
    ]
    assert len(server.received) == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_stops_quietly_on_sigterm_and_ctrl_c(serve, signum):
    server = serve()
    process = subprocess.Popen(
        cli(server.url, "--interval", "60"),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        server.wait_for(1)
        time.sleep(0.2)  # into the sleep between ticks
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)  # generous: a loaded machine is slow
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert (out, err) == ("", "")
