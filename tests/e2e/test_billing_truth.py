"""Stripe is the source of truth, on the production stack: PostgreSQL, Redis, a uvicorn
process, two Celery workers and the local Stripe-compatible server.

A ``customer.subscription.deleted`` and a stale ``updated`` (active) event of the same
second reach the web server at the same moment; the two workers apply them concurrently.
Whatever the interleaving, the subscription ends up as Stripe has it: canceled.
"""

from __future__ import annotations

import copy
import os
import threading
import time

import psycopg
import pytest

from tests.stripe_fake import FakeStripeProcess

from .harness import (
    celery_worker,
    manage,
    post_signed_webhook,
    require_production_services,
    start_production_stack,
)

pytestmark = pytest.mark.e2e
WEBHOOK_SECRET = "whsec_truth"
# Each round is a fresh subscription raced once; BILLING_RACE_ROUNDS raises it to measure.
ROUNDS = int(os.environ.get("BILLING_RACE_ROUNDS", "4"))

CHECKOUTS = """
from accounts.models import User
from billing.services import checkout_start, price_set
from networks.models import Network
network = Network.objects.get(slug="paid-net")
price_set(network=network, interval="month", amount=900)
for n in range({rounds}):
    user = User.objects.create(email=f"racer-{{n}}-{stamp}@example.com")
    print(checkout_start(user=user, network=network, interval="month",
                         success_url="http://x/ok", cancel_url="http://x/no"))
"""


@pytest.fixture(scope="module")
def truth_stack(tmp_path_factory):
    require_production_services()
    tmp = tmp_path_factory.mktemp("truth")
    with FakeStripeProcess(webhook_secret=WEBHOOK_SECRET, auto_deliver=False) as fake:
        env = {
            "STRIPE_SECRET_KEY": "sk_test_truth",
            "STRIPE_API_BASE": fake.api_base,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        stack = start_production_stack(tmp, processes=1, extra_env=env)
        try:
            with (
                celery_worker(stack.env, tmp / "worker-a.log"),
                celery_worker(stack.env, tmp / "worker-b.log"),
            ):
                yield stack, fake
        finally:
            stack.stop()


def post_signed(url: str, event: dict) -> int:
    return post_signed_webhook(url, event, WEBHOOK_SECRET)


def post_at_once(url: str, events: list[dict]) -> list[int]:
    """POST every event from its own thread, released together; the statuses."""
    start = threading.Barrier(len(events))
    answers: list[int] = []

    def send(event: dict) -> None:
        start.wait()
        answers.append(post_signed(url, event))

    threads = [threading.Thread(target=send, args=(event,)) for event in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


def wait_for(database_url: str, query: str, args: tuple, want: object, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    value = None
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(query, args).fetchone()
            value = row[0] if row else None
            if value == want:
                return value
            time.sleep(0.1)
    return value


def test_same_second_events_applied_by_two_workers_end_in_stripes_state(truth_stack):
    stack, fake = truth_stack
    webhook = stack.servers[0].http + "/billing/webhook/"
    database = stack.env["DATABASE_URL"]
    status_of = "SELECT status FROM billing_subscription WHERE stripe_subscription_id = %s"
    urls = manage(
        stack.env, "shell", "-v", "0", "-c",
        CHECKOUTS.format(rounds=ROUNDS, stamp=time.time_ns()),
    ).split()  # fmt: skip
    assert len(urls) == ROUNDS
    finals = []
    for url in urls:
        seen = len(fake.events())
        subscription = fake.complete_checkout(url.rsplit("/", 1)[-1])
        created = next(e for e in fake.events()[seen:] if e["type"].startswith("customer.sub"))
        for event in fake.events()[seen:]:
            assert post_signed(webhook, event) == 200
        assert wait_for(database, status_of, (subscription["id"],), "active") == "active"

        fake.end(subscription["id"])
        deleted = fake.events("customer.subscription.deleted")[-1]
        stale = copy.deepcopy(created)
        stale.update(id=f"evt_stale{time.time_ns()}", type="customer.subscription.updated")
        stale["created"] = deleted["created"]
        assert post_at_once(webhook, [stale, deleted]) == [200, 200]
        processed = wait_for(
            database,
            "SELECT count(*) FROM billing_webhookevent "
            "WHERE stripe_event_id IN (%s, %s) AND processed_at IS NOT NULL",
            (stale["id"], deleted["id"]),
            2,
        )
        assert processed == 2
        finals.append(wait_for(database, status_of, (subscription["id"],), "canceled", 2.0))
    resurrected = finals.count("active")
    assert finals == ["canceled"] * ROUNDS, f"resurrected in {resurrected} of {ROUNDS} rounds"
