"""Real processes for end-to-end tests: ASGI servers on the embedded or the production stack."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
POSTGRES_ADMIN_URL = os.environ.get(
    "E2E_POSTGRES_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
E2E_REDIS_URL = os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379/10")
DEMO_KEY = "e2e-demo-key-" + uuid.uuid4().hex
# Servers refuse the public development key; every process of a run shares this one (tokens
# minted by `manage.py shell` must verify on the servers).
SECRET_KEY = "e2e-secret-key-" + uuid.uuid4().hex + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    env.update(
        {"PYTHONUNBUFFERED": "1", "DEBUG": "true", "LOG_LEVEL": "WARNING", "SECRET_KEY": SECRET_KEY}
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def run_python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run this interpreter in the repository with ``env``; output captured, never raises."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def manage(env: dict[str, str], *args: str) -> str:
    result = run_python(env, "manage.py", *args)
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


@dataclass
class ServerProcess:
    """One ASGI server process, restartable on the same port."""

    command: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.http}/healthz", timeout=1) as response,  # noqa: S310
            ):
                if response.status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become ready:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Stack:
    """A running platform: its server processes, environment and demo key."""

    name: str
    env: dict[str, str]
    servers: list[ServerProcess]
    demo_key: str = DEMO_KEY
    cleanups: list = field(default_factory=list)

    def publish(
        self, body: object, key: str | None = None, server: int = 0, path: str = "/api/publish"
    ) -> tuple[int, dict]:
        """POST to the legacy publish path; returns (status, JSON body)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["API-KEY"] = key
        request = urllib.request.Request(  # noqa: S310
            self.servers[server].http + path, data=data, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        for cleanup in reversed(self.cleanups):
            cleanup()


def uvicorn_command(port: int) -> list[str]:
    """What platform/Procfile runs for ``web``, bound to loopback."""
    return [
        sys.executable, "-m", "uvicorn", "katiedj.asgi:application",
        "--host", "127.0.0.1", "--port", str(port), "--lifespan", "off",
        "--ws", "katiedj.ws_protocol:ListenerWebSocketProtocol",  # stalled peers are cut
        "--ws-max-size", "4096", "--ws-per-message-deflate", "false", "--no-access-log",
        "--forwarded-allow-ips", "",  # as the Procfile: no proxy is trusted by default
    ]  # fmt: skip


def _seed(env: dict[str, str]) -> None:
    """Networks every e2e test uses beside the demo's ``sample_net``."""
    manage(env, "create_network", "quiet-net", "--org", "katiedj-demo")
    manage(env, "create_network", "rival-net", "--org", "rival-corp")
    manage(env, "create_network", "paid-net", "--org", "katiedj-demo", "--paid")


def start_embedded_stack(tmp: Path, extra_env: dict[str, str] | None = None) -> Stack:
    """The embedded default exactly as ``make run`` starts it: ``manage.py serve``."""
    env = base_env()
    # The demo simulation would interleave its samples with the tests' own on sample_net.
    env.update({"KATIEDJ_VAR_DIR": str(tmp), "DEMO_API_KEY": DEMO_KEY, "DEMO_SIMULATION": "off"})
    env.update(extra_env or {})
    port = free_port()
    server = ServerProcess(
        [sys.executable, "manage.py", "serve", "--port", str(port)], env, port, tmp / "serve.log"
    )
    server.start(timeout=60)  # the first start migrates
    _seed(env)
    return Stack("embedded", env, [server])


def production_services_available() -> str | None:
    """None when PostgreSQL and Redis answer, else why not."""
    import psycopg
    import redis

    try:
        psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close()
    except psycopg.Error as error:
        return f"PostgreSQL unavailable at {POSTGRES_ADMIN_URL}: {error}"
    try:
        redis.Redis.from_url(E2E_REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as error:
        return f"Redis unavailable at {E2E_REDIS_URL}: {error}"
    return None


def require_production_services() -> None:
    """Skip (locally) or fail (CI, KATIEDJ_REQUIRE_SERVICES=1) when PostgreSQL/Redis are down."""
    import pytest

    missing = production_services_available()
    if missing is None:
        return
    if os.environ.get("CI", "").lower() == "true" or os.environ.get("KATIEDJ_REQUIRE_SERVICES"):
        pytest.fail(missing)
    pytest.skip(missing)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one stack; dropped afterwards."""
    import psycopg

    name = f"katiedj_e2e_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_production_stack(
    tmp: Path,
    processes: int = 2,
    redis_url: str = E2E_REDIS_URL,
    extra_env: dict[str, str] | None = None,
) -> Stack:
    """PostgreSQL + Redis channel layer, ``processes`` uvicorn servers sharing them."""
    database = postgres_database()
    database_url = database.__enter__()
    env = base_env()
    env.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": f"e2e{uuid.uuid4().hex[:8]}",
            "DEMO_API_KEY": DEMO_KEY,
            "KATIEDJ_VAR_DIR": str(tmp),
            **(extra_env or {}),
        }
    )
    stack = Stack("production", env, [])
    stack.cleanups.append(lambda: database.__exit__(None, None, None))
    try:
        manage(env, "migrate", "--noinput")
        manage(env, "bootstrap_demo")
        _seed(env)
        if env.get("DEBUG", "").lower() == "false":
            # As deployed: WhiteNoise serves the collected, hashed files (into KATIEDJ_VAR_DIR).
            manage(env, "collectstatic", "--noinput", "-v", "0")
        for index in range(processes):
            port = free_port()
            server = ServerProcess(uvicorn_command(port), env, port, tmp / f"web{index}.log")
            stack.servers.append(server)
            server.start()
    except Exception:
        stack.stop()
        raise
    return stack


@dataclass
class RedisServer:
    """A private redis-server process, to test what happens when Redis goes away."""

    port: int
    directory: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(redis.RedisError),
                redis.Redis(port=self.port, socket_connect_timeout=0.5) as client,
            ):
                if client.ping():
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@contextlib.contextmanager
def celery_worker(
    env: dict[str, str],
    log_path: Path,
    beat: bool = False,
    queues: str = "celery",
    pool: str = "solo",
) -> Iterator[None]:
    """A real Celery worker process (optionally with beat) for the duration of the block.

    ``queues``: what it consumes, as ``-Q`` (the Procfile's default worker: ``celery``; its
    simulations worker: ``simulations``). ``pool="prefork"`` (one child) enforces time limits,
    which the solo pool ignores.
    """
    command = [sys.executable, "-m", "celery", "-A", "katiedj", "worker", "--pool", pool,
               "-n", f"e2e-{uuid.uuid4().hex[:8]}@localhost", "--loglevel", "INFO"]  # fmt: skip
    command += ["-Q", queues] + (["--concurrency", "1"] if pool == "prefork" else [])
    if beat:
        command += ["--beat", "--schedule", str(log_path.with_suffix(".schedule"))]
    log = log_path.open("wb")
    worker = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()


@dataclass
class RedisSentinelCluster:
    """A Redis primary, one replica and three sentinels (quorum 2) on loopback free ports.

    Timeouts are short (``down_after_ms``, ``failover_timeout_ms``) so a failover completes in
    a few seconds. The replica authenticates to the primary as its own ACL user, so
    :meth:`cut_replication` can stop it from receiving writes (the "replica had not received"
    case) while the sentinels still see a healthy replica they may promote. Every file lives
    under ``directory``; :meth:`stop` kills every process.
    """

    directory: Path
    master_name: str = "katiedj-e2e"
    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000
    redis_ports: list[int] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)
    processes: dict[int, subprocess.Popen] = field(default_factory=dict)

    REPLICATION_USER = "replicator"
    REPLICATION_PASSWORD = "replicator-password"  # a loopback test cluster

    @property
    def sentinels(self) -> str:
        """The ``REDIS_SENTINELS`` value for this cluster."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def settings_env(self, db: int = 0) -> dict[str, str]:
        """The environment a stack needs to use this cluster through its sentinels."""
        return {
            "REDIS_SENTINELS": self.sentinels,
            "REDIS_SENTINEL_MASTER": self.master_name,
            "REDIS_URL": f"redis://{self.master_name}/{db}",
        }

    def start(self, timeout: float = 30.0) -> None:
        self.redis_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        primary, replica = self.redis_ports
        try:
            self._start_redis(primary, [])
            self._start_redis(replica, [f"replicaof 127.0.0.1 {primary}"])
            for port in self.sentinel_ports:
                self._start_sentinel(port, primary)
            self.wait_until_ready(timeout)
        except Exception:
            self.stop()
            raise

    def _start_redis(self, port: int, extra: list[str]) -> None:
        directory = self.directory / f"redis-{port}"
        directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {directory}",
            'save ""',
            "appendonly no",
            # The replica's link is the replication user's: disabling the user on the
            # primary stops replication and nothing else.
            f"user {self.REPLICATION_USER} on >{self.REPLICATION_PASSWORD} ~* &* +@all",
            f"masteruser {self.REPLICATION_USER}",
            f"masterauth {self.REPLICATION_PASSWORD}",
            *extra,
        ]
        self._spawn(port, directory / "redis.conf", lines, [])
        self._wait_for_ping(port)

    def _start_sentinel(self, port: int, primary: int) -> None:
        directory = self.directory / f"sentinel-{port}"
        directory.mkdir(parents=True, exist_ok=True)
        name = self.master_name
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {directory}",
            f"sentinel monitor {name} 127.0.0.1 {primary} 2",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        # A sentinel rewrites its configuration file: it must be its own and writable.
        self._spawn(port, directory / "sentinel.conf", lines, ["--sentinel"])
        self._wait_for_ping(port)

    def _spawn(self, port: int, conf: Path, lines: list[str], args: list[str]) -> None:
        conf.write_text("\n".join(lines) + "\n")
        log = (conf.parent / "log.txt").open("ab")
        self.processes[port] = subprocess.Popen(
            ["redis-server", str(conf), *args], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def _client(self, port: int) -> Any:
        import redis

        return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=1)

    def _wait_for_ping(self, port: int, timeout: float = 10.0) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[port].poll() is not None:
                raise RuntimeError(f"redis-server on {port} exited:\n{self.log_tail(port)}")
            with contextlib.suppress(redis.RedisError), self._client(port) as client:
                if client.ping():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on {port} did not answer:\n{self.log_tail(port)}")

    def log_tail(self, port: int, lines: int = 30) -> str:
        path = next(self.directory.glob(f"*-{port}/log.txt"), None)
        if path is None:
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def sentinel_view(self, port: int) -> dict[str, Any]:
        """``SENTINEL MASTER <name>`` as one sentinel sees it."""
        with self._client(port) as client:
            return client.sentinel_master(self.master_name)

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Until every sentinel knows the replica and the two other sentinels (a failover
        needs a majority of them to elect a leader) and the replica is in sync."""
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                views = [self.sentinel_view(port) for port in self.sentinel_ports]
                ready = all(
                    view["num-slaves"] == 1 and view["num-other-sentinels"] == 2 for view in views
                )
                with self._client(self.redis_ports[1]) as replica:
                    linked = replica.info("replication").get("master_link_status") == "up"
                if ready and linked:
                    return
            time.sleep(0.2)
        raise RuntimeError("the sentinels did not see the whole cluster in time")

    def master_port(self) -> int:
        """The primary's port according to the sentinels (a majority of them)."""
        import redis

        ports = []
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError), self._client(port) as client:
                address = client.sentinel_get_master_addr_by_name(self.master_name)
                if address:
                    ports.append(int(address[1]))
        best = max(set(ports), key=ports.count) if ports else None
        if best is None or ports.count(best) < 2:
            raise RuntimeError(f"the sentinels do not agree on a master: {ports}")
        return best

    def cut_replication(self) -> None:
        """Stop the replica from receiving the primary's writes; both stay up.

        The primary refuses the replication user from now on and drops its link: the replica
        keeps retrying (and failing) to authenticate, so writes acknowledged from now on exist
        on the primary only. Sentinels still promote the replica (its link has been down for
        less than ten times ``down_after_ms`` when the failover starts).
        """
        with self._client(self.master_port()) as primary:
            primary.acl_setuser(self.REPLICATION_USER, enabled=False)
            primary.client_kill_filter(user=self.REPLICATION_USER)

    def kill_primary(self) -> int:
        """``kill -9`` the current primary; returns the port it listened on."""
        port = self.master_port()
        process = self.processes[port]
        process.kill()
        process.wait()
        return port

    def wait_for_failover(self, old_port: int, timeout: float = 30.0) -> float:
        """Seconds until the sentinels name a new master that answers as one."""
        import redis

        started = time.monotonic()
        while time.monotonic() - started < timeout:
            with contextlib.suppress(redis.RedisError, RuntimeError):
                port = self.master_port()
                if port != old_port:
                    with self._client(port) as client:
                        if client.execute_command("ROLE")[0] == b"master":
                            return time.monotonic() - started
            time.sleep(0.05)
        raise RuntimeError("no failover within the timeout")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()
        self.processes.clear()


class PostgresProxy:
    """A TCP proxy in front of PostgreSQL that a test switches between three states:

    - ``restore()``: forward both ways (the initial state);
    - ``hang()``: a database that accepts and never answers: new connections are accepted and
      held, and nothing more is relayed on open ones (what they send waits in the proxy);
    - ``refuse()``: nothing listens on the port (connects are refused) and every open
      connection is reset, as when PostgreSQL is down.

    ``restore()`` after a hang relays what was held, as a database that wakes up answers its
    clients. It runs an event loop in a daemon thread of the test process.
    """

    def __init__(self, upstream_host: str = "127.0.0.1", upstream_port: int = 5432) -> None:
        import asyncio
        import threading

        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.state = "stopped"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Any = None
        self._flowing: Any = None
        self._connections: set[Any] = set()  # the tasks serving client connections

    def url(self, database_url: str) -> str:
        """``database_url`` with its host and port replaced by the proxy's."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(database_url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    def hang(self) -> None:
        self._call(self._hang())

    def refuse(self) -> None:
        self._call(self._refuse())

    def restore(self) -> None:
        self._call(self._restore())

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._refuse())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
        self.state = "stopped"

    def _call(self, coroutine: Any) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _start(self) -> None:
        import asyncio

        self._flowing = asyncio.Event()
        await self._restore()

    async def _listen(self) -> None:
        import asyncio

        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )

    async def _hang(self) -> None:
        self._flowing.clear()
        self.state = "hung"

    async def _refuse(self) -> None:
        import asyncio

        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._flowing.set()
        self.state = "refusing"

    async def _restore(self) -> None:
        if self._server is None:
            await self._listen()
        self._flowing.set()
        self.state = "forwarding"

    async def _serve(self, client_reader: Any, client_writer: Any) -> None:
        import asyncio

        task = asyncio.current_task()
        self._connections.add(task)
        upstream_writer = None
        try:
            await self._flowing.wait()  # hung: held before PostgreSQL ever hears of it
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            await asyncio.gather(
                self._pump(client_reader, upstream_writer),
                self._pump(upstream_reader, client_writer),
            )
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.transport.abort()  # a reset, as a dead server's connections get
            self._connections.discard(task)

    async def _pump(self, reader: Any, writer: Any) -> None:
        while data := await reader.read(65536):
            await self._flowing.wait()  # hung: what arrives waits here, unanswered
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


def post_signed_webhook(url: str, event: dict, secret: str) -> int:
    """POST a Stripe event to the platform's webhook as Stripe would: signed with ``secret``."""
    from tests.stripe_fake import sign_payload

    body = json.dumps(event).encode()
    request = urllib.request.Request(  # noqa: S310
        url,
        data=body,
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": sign_payload(body, secret),
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return response.status
