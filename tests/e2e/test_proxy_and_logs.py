"""Deployment safety against real server processes, started exactly as deployed: the
Procfile's ``web`` command, the Dockerfile's ``CMD`` and ``make run``'s ``manage.py serve``.

Forwarded headers count only from ``FORWARDED_ALLOW_IPS``; tokens never reach the logs;
``make run`` keeps a secret key of its own; a burst of page loads holds no more PostgreSQL
connections than the pool's size; slow request bodies are answered 408 within the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import websockets

from .harness import (
    DEMO_KEY,
    POSTGRES_ADMIN_URL,
    REPO_ROOT,
    ServerProcess,
    base_env,
    free_port,
    manage,
    postgres_database,
    require_production_services,
    start_embedded_stack,
)

pytestmark = pytest.mark.e2e

PERSONAL = "kdjp_" + "S3cr3tT0k3n" * 2 + "abcdefgh" + "Q1w2E3"
ENTITLEMENT = "kdje.eyJ1Ijo0MiwibiI6WzFdfQ.bm90LWEtcmVhbC1zaWduYXR1cmU"
SPOOFED = "203.0.113.7"  # TEST-NET-3: nobody's address


def web_command(name: str) -> str:
    """The Procfile's ``web`` command or the Dockerfile's ``CMD`` shell line, as written."""
    text = (REPO_ROOT / "platform" / name).read_text()
    if name == "Procfile":
        return next(line[4:] for line in text.splitlines() if line.startswith("web:"))
    return json.loads(next(line for line in text.splitlines() if line.startswith("CMD "))[4:])[-1]


@dataclass
class DeployedServer(ServerProcess):
    """A server started by a deployment file's shell command, listening on ``host``."""

    host: str = "127.0.0.1"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://{self.host}:{self.port}"


def deployed(name: str, env: dict[str, str], log: Path, host: str = "127.0.0.1") -> DeployedServer:
    """Start ``name``'s web command (Procfile or Dockerfile) bound to ``host``, not 0.0.0.0."""
    command = web_command(name)
    assert "--host 0.0.0.0" in command
    command = command.replace("--host 0.0.0.0", f"--host {host}")
    port = free_port()
    env = {**env, "PORT": str(port), "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
    server = DeployedServer(["sh", "-c", "exec " + command], env, port, log, host=host)
    server.start()
    return server


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    """The status and the response headers (names in lower case)."""
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}


@pytest.fixture(scope="module")
def embedded_env(tmp_path_factory) -> dict[str, str]:
    """A migrated SQLite database with the demo, for web commands run against it."""
    var = tmp_path_factory.mktemp("deployed")
    env = base_env()
    env.update({"KATIEDJ_VAR_DIR": str(var), "DEMO_API_KEY": DEMO_KEY, "DEMO_SIMULATION": "off"})
    env.pop("FORWARDED_ALLOW_IPS", None)
    manage(env, "migrate", "--noinput")
    manage(env, "bootstrap_demo")
    return env


def non_loopback_ipv4() -> str | None:
    """This host's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = sock.getsockname()[0]
    return None if address.startswith("127.") else address


# --- Forwarded headers and HSTS -------------------------------------------------------------


def test_the_procfile_server_ignores_forwarded_headers_by_default(embedded_env, tmp_path):
    server = deployed("Procfile", embedded_env, tmp_path / "web.log")
    try:
        # Django sees the peer (loopback), not the address the client claims to be.
        assert get(server.http + "/metrics", {"X-Forwarded-For": SPOOFED})[0] == 200
        # Nor does a client's claim of https turn anything on.
        status, headers = get(server.http + "/healthz", {"X-Forwarded-Proto": "https"})
        assert status == 200 and "strict-transport-security" not in headers
        assert headers["content-security-policy"]  # the check above reads real headers
    finally:
        server.stop()


def test_a_trusted_proxy_sets_the_client_address_and_https(embedded_env, tmp_path):
    env = {
        **embedded_env,
        "FORWARDED_ALLOW_IPS": "127.0.0.1",
        "DEBUG": "false",
        "SECRET_KEY": uuid.uuid4().hex * 2,
    }
    server = deployed("Procfile", env, tmp_path / "web.log")
    try:
        assert get(server.http + "/metrics", {"X-Forwarded-For": SPOOFED})[0] == 403
        status, headers = get(server.http + "/healthz", {"X-Forwarded-Proto": "https"})
        assert status == 200
        assert headers["strict-transport-security"].startswith("max-age=31536000")
        assert "wss://" in headers["content-security-policy"]
        assert "strict-transport-security" not in get(server.http + "/healthz")[1]
    finally:
        server.stop()


def test_the_image_command_believes_no_client_claiming_loopback(embedded_env, tmp_path):
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("no non-loopback IPv4 address to connect from")
    env = {**embedded_env, "ALLOWED_HOSTS": address}
    server = deployed("Dockerfile", env, tmp_path / "web.log", host=address)
    try:
        # The peer is this host's public address: /metrics is not theirs to read, whatever
        # X-Forwarded-For says.
        assert get(server.http + "/metrics", {"X-Forwarded-For": "127.0.0.1"})[0] == 403
    finally:
        server.stop()


# --- Tokens never reach the logs ----------------------------------------------------------------


async def request_with_tokens(server) -> None:
    """What listeners and scripts do with tokens in URLs (refused or not, it gets logged)."""
    await asyncio.to_thread(get, f"{server.http}/healthz?token={PERSONAL}")
    await asyncio.to_thread(get, f"{server.http}/api/v1/networks/?access_token={PERSONAL}")
    for url in (
        f"{server.ws}/ws/networks/paid-net/?token={ENTITLEMENT}&format=envelope",
        f"{server.ws}/ws/networks/sample_net/?token={PERSONAL}",
    ):
        with contextlib.suppress(Exception):
            async with websockets.connect(url, open_timeout=5) as ws:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.recv(), 0.5)


def assert_redacted(log: str) -> None:
    assert "/healthz?token=[redacted]" in log, log
    assert "/ws/networks/sample_net/?token=[redacted]" in log, log
    for secret in (PERSONAL, ENTITLEMENT, "S3cr3tT0k3n", "bm90LWEtcmVhbC1zaWduYXR1cmU"):
        assert secret not in log


async def test_the_procfile_server_logs_no_token(embedded_env, tmp_path):
    server = deployed("Procfile", embedded_env, tmp_path / "web.log")
    try:
        await request_with_tokens(server)
        await asyncio.sleep(0.3)
    finally:
        server.stop()
    assert_redacted(server.log_path.read_text())


async def test_make_run_keeps_its_own_secret_key_trusts_no_proxy_and_logs_no_token(tmp_path):
    env = {"LOG_LEVEL": "INFO", "SECRET_KEY": ""}
    stack = start_embedded_stack(tmp_path, env)
    try:
        key_file = tmp_path / "secret_key"
        key = key_file.read_text().strip()
        assert len(key) >= 50 and "insecure" not in key
        assert key_file.stat().st_mode & 0o077 == 0
        server = stack.servers[0]
        assert get(server.http + "/metrics", {"X-Forwarded-For": SPOOFED})[0] == 200
        await request_with_tokens(server)
        await asyncio.sleep(0.3)
        # Restarted, it keeps the key: sessions and tokens survive a restart.
        server.stop()
        server.start(timeout=60)
        assert key_file.read_text().strip() == key
    finally:
        stack.stop()
    log = server.log_path.read_text()
    assert_redacted(log)
    assert key not in log


# --- Database connections: a bounded pool per process -----------------------------------


def backend_count(database: str) -> int:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        return conn.execute(query, (database,)).fetchone()[0]


def test_a_burst_of_page_loads_holds_at_most_the_pool(tmp_path):
    require_production_services()
    pool_size = 4
    with postgres_database() as database_url:
        name = database_url.rsplit("/", 1)[1]
        env = base_env()
        env.pop("FORWARDED_ALLOW_IPS", None)
        env.update(
            {
                "DATABASE_URL": database_url,
                "KATIEDJ_VAR_DIR": str(tmp_path),
                "DEMO_API_KEY": DEMO_KEY,
                "DATABASE_POOL_MAX_SIZE": str(pool_size),
            }
        )
        manage(env, "migrate", "--noinput")
        manage(env, "bootstrap_demo")
        server = deployed("Procfile", env, tmp_path / "web.log")
        peak, done = [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], backend_count(name))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            pages = ["/", "/networks/", "/networks/sample_net/", "/docs/"] * 16
            with ThreadPoolExecutor(max_workers=8) as pool:
                statuses = list(pool.map(lambda path: get(server.http + path)[0], pages))
            time.sleep(0.5)
            after = backend_count(name)
        finally:
            done.set()
            sampler.join()
            server.stop()
        assert statuses == [200] * len(pages)
        assert peak[0] <= pool_size, f"{peak[0]} connections at the peak"
        assert after <= pool_size, f"{after} connections after the burst"


# --- Slow request bodies ----------------------------------------------------------------


async def slow_body(host: str, port: int, path: str, headers: str) -> tuple[bytes, float]:
    """Send a request's headers, then its body one byte every 0.4 s; the status line and
    when it came."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: 1000\r\n{headers}\r\n".encode()
    )
    started = time.monotonic()

    async def trickle() -> None:
        with contextlib.suppress(OSError):
            while True:
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.4)

    trickling = asyncio.create_task(trickle())
    try:
        line = await asyncio.wait_for(reader.readline(), 8)
    except TimeoutError:
        line = b""
    finally:
        trickling.cancel()
        writer.close()
    return line, time.monotonic() - started


async def test_slow_bodies_are_answered_408_within_the_deadline(embedded_env, tmp_path):
    env = {**embedded_env, "REQUEST_BODY_TIMEOUT_SECONDS": "2"}
    server = deployed("Procfile", env, tmp_path / "web.log")
    try:
        publish = ("/api/publish", f"API-KEY: {DEMO_KEY}\r\n")
        login = ("/accounts/login/", "")
        clients = [publish] * 10 + [login] * 10
        results = await asyncio.gather(
            *(slow_body("127.0.0.1", server.port, path, extra) for path, extra in clients)
        )
        # Everyone else is still served meanwhile.
        assert (await asyncio.to_thread(get, server.http + "/healthz"))[0] == 200
    finally:
        server.stop()
    statuses = [re.match(rb"HTTP/1.1 (\d+)", line)[1] if line else b"none" for line, _ in results]
    assert statuses == [b"408"] * len(clients)
    assert max(elapsed for _, elapsed in results) < 4.0
