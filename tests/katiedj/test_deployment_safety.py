"""Deployment safety: forwarded headers, the secret key, secrets in logs, database
connections, slow bodies, HSTS and the Content-Security-Policy.

These run in-process or load the settings in a subprocess; the same defences against real
server processes are in ``tests/e2e/test_proxy_and_logs.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.harness import REPO_ROOT, run_python

PLATFORM = REPO_ROOT / "platform"
PERSONAL = "kdjp_" + "A1b2C3d4E5" * 3 + "Zz9Yy8"
ENTITLEMENT = "kdje.eyJ1IjoxLCJuIjpbMl19.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
PUBLISHER = "kdj_" + "Q" * 30 + "abc123"

SETTINGS_PROBE = """
import json, django
from django.conf import settings
django.setup()
db = settings.DATABASES["default"]
print(json.dumps({
    "secret_key": settings.SECRET_KEY,
    "forwarded_allow_ips": settings.FORWARDED_ALLOW_IPS,
    "conn_max_age": db["CONN_MAX_AGE"],
    "pool": db.get("OPTIONS", {}).get("pool"),
    "hsts_seconds": getattr(settings, "SECURE_HSTS_SECONDS", 0),
    "proxy_ssl_header": getattr(settings, "SECURE_PROXY_SSL_HEADER", None),
    "body_timeout": settings.REQUEST_BODY_TIMEOUT_SECONDS,
}, default=repr))  # the pool options hold a callback (reconnect_failed)
"""


def clean_env(**env: str) -> dict[str, str]:
    """This process's environment without anything the settings read, plus ``env``."""
    prefixes = ("DATABASE_", "REDIS_", "KATIEDJ_", "DEBUG", "SECRET_KEY", "FORWARDED_ALLOW")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    clean.update({"DJANGO_SETTINGS_MODULE": "katiedj.settings", **env})
    return clean


def probe_settings(**env: str) -> dict:
    result = run_python(clean_env(**env), "-c", SETTINGS_PROBE)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def web_command(path: Path) -> str:
    """The ``web`` command of the Procfile, or the Dockerfile's ``CMD`` shell line."""
    text = path.read_text()
    if path.name == "Procfile":
        return next(line[4:] for line in text.splitlines() if line.startswith("web:"))
    cmd = next(line for line in text.splitlines() if line.startswith("CMD "))
    return json.loads(cmd[4:])[-1]


# --- 1. Forwarded headers -----------------------------------------------------------------


def test_no_proxy_is_trusted_unless_configured():
    assert probe_settings()["forwarded_allow_ips"] == []
    trusted = probe_settings(FORWARDED_ALLOW_IPS="10.0.0.5, 10.1.0.0/16")
    assert trusted["forwarded_allow_ips"] == ["10.0.0.5", "10.1.0.0/16"]


@pytest.mark.parametrize("path", [PLATFORM / "Procfile", PLATFORM / "Dockerfile"])
def test_the_web_commands_trust_only_forwarded_allow_ips(path):
    command = web_command(path)
    # Unset, the list is empty: uvicorn's own default (loopback) must not apply.
    assert '--forwarded-allow-ips "${FORWARDED_ALLOW_IPS:-}"' in command
    assert "'*'" not in command and '"*"' not in command
    assert "--log-config katiedj/uvicorn_logging.json" in command


def test_compose_publishes_only_the_proxy():
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"proxy"}
    for port in services["proxy"]["ports"]:
        assert str(port).startswith("127.0.0.1:"), "the local stack is for this host only"
    proxy_ip = services["proxy"]["networks"]["front"]["ipv4_address"]
    web = services["web"]
    assert web["environment"]["FORWARDED_ALLOW_IPS"] == proxy_ip
    assert "front" in web["networks"]


@pytest.mark.parametrize("name", ["nginx.conf.sample", "nginx.compose.conf"])
def test_the_proxy_overwrites_forwarded_headers_and_drops_slow_clients(name):
    text = (PLATFORM / name).read_text()
    directives = [line.split("#")[0].strip() for line in text.splitlines()]
    active = "\n".join(d for d in directives if d)
    # Overwritten with what nginx saw, never appended to what the client claimed.
    assert "$proxy_add_x_forwarded_for" not in active
    assert active.count("proxy_pass ") == active.count(
        "proxy_set_header X-Forwarded-For $remote_addr;"
    )
    assert active.count("proxy_pass ") == active.count("proxy_set_header X-Forwarded-Proto")
    hosts = re.findall(r"proxy_set_header Host \$(?:http_)?host;", active)
    assert active.count("proxy_pass ") == len(hosts)
    for directive in ("client_header_timeout", "client_body_timeout", "limit_conn "):
        assert directive in active, directive


# --- 2. The secret key ----------------------------------------------------------------------


def test_a_generated_secret_key_is_kept_private_and_reused(tmp_path):
    from katiedj.secret_key import DEV_SECRET_KEY, ensure_secret_key, read_secret_key

    assert read_secret_key(tmp_path) == ""
    first = ensure_secret_key(tmp_path)
    assert len(first) >= 50 and first != DEV_SECRET_KEY
    assert ensure_secret_key(tmp_path) == first
    assert read_secret_key(tmp_path) == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
    assert ensure_secret_key(tmp_path / "other") != first


def test_the_settings_use_the_generated_key(tmp_path):
    (tmp_path / "secret_key").write_text("k" * 60 + "\n")
    assert probe_settings(KATIEDJ_VAR_DIR=str(tmp_path))["secret_key"] == "k" * 60
    explicit = probe_settings(KATIEDJ_VAR_DIR=str(tmp_path), SECRET_KEY="e" * 60)
    assert explicit["secret_key"] == "e" * 60


@pytest.mark.parametrize("debug", ["true", "false"])
def test_the_server_refuses_the_public_development_key(tmp_path, debug):
    from django.conf import settings

    env = clean_env(DEBUG=debug, KATIEDJ_VAR_DIR=str(tmp_path))
    if debug == "false":
        env["SECRET_KEY"] = settings.DEV_SECRET_KEY  # set on purpose: refused all the same
    result = run_python(env, "-c", "import katiedj.asgi")
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr
    assert "django-insecure" not in result.stderr  # the message never repeats a key


def test_the_server_starts_with_the_generated_key(tmp_path):
    (tmp_path / "secret_key").write_text("g" * 60 + "\n")
    env = clean_env(DEBUG="true", KATIEDJ_VAR_DIR=str(tmp_path))
    result = run_python(env, "-c", "import katiedj.asgi")
    assert result.returncode == 0, result.stderr


# --- 3. Secrets in logs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        (
            f'127.0.0.1:5 - "GET /ws/networks/x/?token={ENTITLEMENT}&since=4 HTTP/1.1" 101',
            "since=4",
        ),
        (f'"GET /api/v1/networks/?access_token={PERSONAL} HTTP/1.1" 200', "/api/v1/networks/"),
        (f'"WebSocket /macro/sample/?format=envelope&TOKEN={PERSONAL}" [accepted]', "format="),
        (f"revoked {PUBLISHER} and {PERSONAL} and {ENTITLEMENT}", "revoked"),
    ],
)
def test_secrets_are_redacted_from_log_lines(line, kept):
    from katiedj.log_redaction import redact

    redacted = redact(line)
    for secret in (PERSONAL, ENTITLEMENT, PUBLISHER, "c2lnbmF0dXJl", "A1b2C3d4E5"):
        assert secret not in redacted
    assert kept in redacted
    assert "[redacted]" in redacted


def test_display_prefixes_are_not_secrets():
    from katiedj.log_redaction import redact

    line = "key kdj_AbCd1234 revoked; GET /docs/?q=token HTTP/1.1"
    assert redact(line) == line


def test_the_redacting_filter_rewrites_access_log_arguments():
    import logging

    from katiedj.log_redaction import RedactSecrets

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:9", "GET", f"/ws/networks/x/?token={PERSONAL}", "1.1", 101), None,
    )  # fmt: skip
    assert RedactSecrets().filter(record) is True
    assert record.args[2] == "/ws/networks/x/?token=[redacted]"
    assert record.args[4] == 101  # the access formatter needs its numbers back
    assert PERSONAL not in record.getMessage()


def test_uvicorn_log_config_redacts_every_uvicorn_handler():
    config = json.loads((REPO_ROOT / "katiedj" / "uvicorn_logging.json").read_text())
    for handler in config["handlers"].values():
        assert "redact_secrets" in handler.get("filters", [])
    assert config["filters"]["redact_secrets"]["()"] == "katiedj.log_redaction.RedactSecrets"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_listen_cli_never_prints_the_token():
    url = f"ws://127.0.0.1:{closed_port()}/ws/networks/paid-net/?token={PERSONAL}&since=3"
    process = subprocess.Popen(
        [sys.executable, "-m", "katiedj_client", url, "-v"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(2.5)  # long enough to fail to connect and log the retry
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    assert "/ws/networks/paid-net/?token=[redacted]&since=3" in stderr
    assert PERSONAL not in stderr


# --- 4. Database connections ----------------------------------------------------------------


def test_postgresql_connections_come_from_a_bounded_pool():
    url = "postgres://u:p@db.internal:5432/katiedj"
    loaded = probe_settings(DATABASE_URL=url)
    assert loaded["conn_max_age"] == 0
    assert loaded["pool"]["min_size"] >= 1
    assert loaded["pool"]["max_size"] >= loaded["pool"]["min_size"]
    sized = probe_settings(DATABASE_URL=url, DATABASE_POOL_MIN_SIZE="1", DATABASE_POOL_MAX_SIZE="3")
    assert (sized["pool"]["min_size"], sized["pool"]["max_size"]) == (1, 3)
    # Behind PgBouncer (transaction pooling), the process keeps no pool of its own.
    assert probe_settings(DATABASE_URL=url, DATABASE_POOL_MAX_SIZE="0")["pool"] is None


def test_sqlite_has_no_pool_and_no_persistent_connections():
    loaded = probe_settings()
    assert loaded["pool"] is None
    assert loaded["conn_max_age"] == 0


def test_persistent_connections_and_a_pool_are_refused_together():
    env = clean_env(DATABASE_URL="postgres://u:p@db:5432/k", DATABASE_CONN_MAX_AGE="60")
    result = run_python(env, "-c", SETTINGS_PROBE)
    assert result.returncode != 0
    assert "DATABASE_POOL_MAX_SIZE=0" in result.stderr


# --- 5. Slow request bodies -------------------------------------------------------------


class SlowClient:
    """An ASGI ``receive`` sending a body in parts ``gap`` seconds apart; an incomplete
    client then goes quiet."""

    def __init__(self, parts: list[bytes], gap: float, complete: bool = True) -> None:
        self.parts, self.gap, self.complete = list(parts), gap, complete
        self.received = 0
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        if not self.parts:
            await asyncio.sleep(3600)
        if self.received:
            await asyncio.sleep(self.gap)
        self.received += 1
        part = self.parts.pop(0)
        more = bool(self.parts) or not self.complete
        return {"type": "http.request", "body": part, "more_body": more}

    async def send(self, message: dict) -> None:
        self.sent.append(message)


async def read_all(receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def test_a_body_that_does_not_arrive_in_time_is_answered_408():
    from katiedj.middleware import RequestBodyDeadline

    async def app(scope, receive, send):
        await read_all(receive)
        raise AssertionError("the body never completes")

    client = SlowClient([b"{", b"}"], gap=0.3, complete=False)
    app_with_deadline = RequestBodyDeadline(app, seconds=0.5)
    started = time.monotonic()
    await app_with_deadline({"type": "http", "method": "POST"}, client.receive, client.send)
    assert time.monotonic() - started < 1.5
    start = client.sent[0]
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    assert json.loads(client.sent[1]["body"])["code"] == "request_timeout"


async def test_a_timely_body_and_a_long_response_are_untouched():
    from katiedj.middleware import RequestBodyDeadline

    async def app(scope, receive, send):
        body = await read_all(receive)
        await asyncio.sleep(0.4)  # the view may take longer than the body's deadline
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    client = SlowClient([b'{"a":', b"1}"], gap=0.05)
    await RequestBodyDeadline(app, seconds=0.2)({"type": "http"}, client.receive, client.send)
    assert client.sent[0]["status"] == 200
    assert client.sent[1]["body"] == b'{"a":1}'


async def test_the_deadline_leaves_websockets_alone():
    from katiedj.middleware import RequestBodyDeadline

    seen = []

    async def app(scope, receive, send):
        seen.append(await receive())

    client = SlowClient([b"x"], gap=0.3)
    await RequestBodyDeadline(app, seconds=0.1)({"type": "websocket"}, client.receive, client.send)
    assert seen and not client.sent


# --- 6. HSTS and Content-Security-Policy ------------------------------------------------------


def test_hsts_in_production_with_https_decided_by_trusted_proxies_only():
    loaded = probe_settings(DEBUG="false", SECRET_KEY="s" * 60)
    assert loaded["hsts_seconds"] >= 31536000
    # Django would believe X-Forwarded-Proto from anyone; uvicorn applies it only from
    # FORWARDED_ALLOW_IPS (tested against a real server in tests/e2e/test_proxy_and_logs.py).
    assert loaded["proxy_ssl_header"] is None
    assert probe_settings()["hsts_seconds"] == 0


def csp(response) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    directives = [part.split() for part in policy.split(";") if part.strip()]
    return {name: values for name, *values in directives}


@pytest.mark.django_db
def test_pages_carry_a_content_security_policy_without_inline_script(client):
    policy = csp(client.get("/"))
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" in policy["style-src"]  # style="…" attributes; never scripts
    assert policy["connect-src"] == ["'self'", "ws://testserver"]
    assert policy["form-action"] == [
        "'self'", "https://checkout.stripe.com", "https://billing.stripe.com",
    ]  # fmt: skip
    secure = csp(client.get("/", secure=True))
    assert secure["connect-src"] == ["'self'", "wss://testserver"]


@pytest.mark.django_db
def test_checkout_redirects_to_the_configured_stripe_are_allowed(client, settings):
    settings.STRIPE_API_BASE = "http://127.0.0.1:41234/v1"
    assert "http://127.0.0.1:41234" in csp(client.get("/"))["form-action"]


def test_the_portal_templates_have_no_inline_script_or_handlers():
    inline_script = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*application/(?:ld\+)?json)[^>]*>")
    handler = re.compile(r"<[^>]*\son[a-z]+\s*=", re.S)
    found = []
    for template in (REPO_ROOT / "frontend" / "templates").rglob("*.html"):
        text = template.read_text()
        found += [f"{template.name}: inline script" for _ in inline_script.finditer(text)]
        found += [f"{template.name}: on* handler" for _ in handler.finditer(text)]
    assert found == []
