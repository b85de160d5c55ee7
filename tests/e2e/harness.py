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
def celery_worker(env: dict[str, str], log_path: Path, beat: bool = False) -> Iterator[None]:
    """A real Celery worker process (optionally with beat) for the duration of the block."""
    command = [sys.executable, "-m", "celery", "-A", "katiedj", "worker", "--pool", "solo",
               "-n", f"e2e-{uuid.uuid4().hex[:8]}@localhost", "--loglevel", "INFO"]  # fmt: skip
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
