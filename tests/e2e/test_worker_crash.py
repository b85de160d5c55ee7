"""``kill -9`` of the Celery worker while it holds a Stripe webhook event, on the production
stack (PostgreSQL, a private Redis as broker, uvicorn, the local Stripe-compatible server).

The worker takes the event and is inside its re-read of Stripe, which never answers; it is
killed there. Stripe already had its 200 and will not send the event again, and the broker
keeps the message unacknowledged until its visibility timeout. A fresh worker with beat
starts: its sweep applies the stored event, and the subscriber hears the paid network.

``WORKER_CRASH_DEFAULT_SWEEP=1`` runs it with the documented sweep settings (to measure the
recovery time an operator gets); the test prints the time from the kill to access.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
from websockets.sync.client import connect

from tests.stripe_fake import FakeStripeProcess

from .harness import (
    REPO_ROOT,
    RedisServer,
    celery_worker,
    free_port,
    manage,
    post_signed_webhook,
    require_production_services,
    start_production_stack,
)

pytestmark = pytest.mark.e2e
WEBHOOK_SECRET = "whsec_worker_crash"
DEFAULT_SWEEP = os.environ.get("WORKER_CRASH_DEFAULT_SWEEP", "") == "1"
# Generous, and far below the broker's old one-hour redelivery.
RECOVERY_DEADLINE = 900.0 if DEFAULT_SWEEP else 120.0

CHECKOUT = """
from accounts.models import User
from billing.services import checkout_start, price_set
from networks.models import Network
network = Network.objects.get(slug="paid-net")
price_set(network=network, interval="month", amount=900)
user = User.objects.create(email="{email}")
print(checkout_start(user=user, network=network, interval="month",
                     success_url="http://x/ok", cancel_url="http://x/no"))
"""
ENTITLEMENT = """
from accounts.models import User
from billing.entitlement import mint_entitlement_token
token, _, slugs = mint_entitlement_token(user=User.objects.get(email="{email}"))
print(token, ",".join(slugs))
"""


class SilentStripe:
    """Accepts connections and reads requests but never answers: Stripe hanging mid-call."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.requests: list[bytes] = []
        self._connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self._connections.append(connection)
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        try:
            first = connection.recv(65536)
            if first:
                self.requests.append(first.split(b"\r\n", 1)[0])
            while connection.recv(65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self._listener.close()
        for connection in self._connections:
            connection.close()


def post_signed(url: str, event: dict) -> int:
    return post_signed_webhook(url, event, WEBHOOK_SECRET)


def wait_until(condition, timeout: float, what: str, log: Path | None = None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def scalar(database_url: str, query: str, *args: object) -> object:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(query, args).fetchone()
    return row[0] if row else None


@pytest.fixture
def crash_stack(tmp_path):
    """The stack on a Redis of its own (no other test's worker may take our messages)."""
    require_production_services()
    broker = RedisServer(free_port(), tmp_path)
    broker.start()
    silent = SilentStripe()
    sweep = (
        {} if DEFAULT_SWEEP else {"BILLING_SWEEP_SECONDS": "2", "BILLING_SWEEP_GRACE_SECONDS": "5"}
    )
    try:
        with FakeStripeProcess(webhook_secret=WEBHOOK_SECRET, auto_deliver=False) as fake:
            env = {
                "STRIPE_SECRET_KEY": "sk_test_crash",
                "STRIPE_API_BASE": fake.api_base,
                "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                **sweep,
            }
            stack = start_production_stack(
                tmp_path, processes=1, redis_url=broker.url, extra_env=env
            )
            try:
                yield stack, fake, silent, broker
            finally:
                stack.stop()
    finally:
        silent.close()
        broker.stop()


def test_a_webhook_held_by_a_killed_worker_is_applied_by_a_fresh_worker(crash_stack, tmp_path):
    stack, fake, silent, broker = crash_stack
    database = stack.env["DATABASE_URL"]
    email = f"crash-{uuid.uuid4().hex[:8]}@example.com"
    checkout_url = manage(stack.env, "shell", "-v", "0", "-c", CHECKOUT.format(email=email))
    subscription = fake.complete_checkout(checkout_url.strip().rsplit("/", 1)[-1])
    # One event only: nothing else queued may give the subscriber access.
    (event,) = fake.events("customer.subscription.created")

    # The first worker's Stripe never answers: it holds the event inside its re-read.
    held_log = tmp_path / "held-worker.log"
    held_env = {
        **stack.env,
        "STRIPE_API_BASE": silent.url,
        "STRIPE_TIMEOUT_SECONDS": "600",
        "STRIPE_NETWORK_RETRIES": "0",
    }
    with held_log.open("wb") as log:
        held = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "katiedj", "worker", "--pool", "solo",
             "-n", f"e2e-held-{uuid.uuid4().hex[:8]}@localhost", "--loglevel", "INFO"],
            cwd=REPO_ROOT, env=held_env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        assert post_signed(stack.servers[0].http + "/billing/webhook/", event) == 200
        wait_until(lambda: silent.requests, 60, "the worker to ask Stripe", held_log)
        assert subscription["id"].encode() in silent.requests[0]
    finally:
        held.send_signal(signal.SIGKILL)
        held.wait(timeout=10)
    killed = time.monotonic()

    with redis.Redis.from_url(broker.url) as client:
        assert client.hlen("unacked") == 1  # held, unacknowledged, by a worker that is gone
    applied = "SELECT processed_at FROM billing_webhookevent WHERE stripe_event_id = %s"
    assert scalar(database, applied, event["id"]) is None
    status = "SELECT status FROM billing_subscription WHERE stripe_subscription_id = %s"
    assert scalar(database, status, subscription["id"]) is None

    fresh_log = tmp_path / "fresh-worker.log"
    with celery_worker(stack.env, fresh_log, beat=True):
        wait_until(
            lambda: scalar(database, status, subscription["id"]) == "active",
            RECOVERY_DEADLINE, "the subscription to be applied", fresh_log,
        )  # fmt: skip
        print(f"\nsubscriber has access {time.monotonic() - killed:.1f} s after kill -9")
        wait_until(lambda: "never applied" in fresh_log.read_text(), 30, "the sweep's log line")
    assert scalar(database, applied, event["id"]) is not None

    token, slugs = manage(
        stack.env, "shell", "-v", "0", "-c", ENTITLEMENT.format(email=email)
    ).split()
    assert slugs == "paid-net"
    create_key = ["create_api_key", "--org", "katiedj-demo", "--network", "paid-net"]
    secret = manage(stack.env, *create_key, "--name", f"crash-{time.time_ns()}").strip()
    with connect(f"{stack.servers[0].ws}/ws/networks/paid-net/?token={token}") as listener:
        heard = None

        def hear() -> bool:
            nonlocal heard
            stack.publish({"network": "paid-net", "data": {"after": "crash"}}, secret)
            try:
                heard = json.loads(listener.recv(timeout=1))
            except TimeoutError:
                return False
            return True

        wait_until(hear, 20, "the subscriber to hear paid-net")
        assert heard == {"after": "crash"}
