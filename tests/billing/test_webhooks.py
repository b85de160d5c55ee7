"""Stripe webhooks: verified, stored once, and only a prompt to re-read Stripe.

Whatever order events come in, and whatever they say, the mirror ends up with the state
Stripe has when the last one is handled.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import threading
import time

import pytest
from celery.exceptions import Retry
from django.db import connection, connections
from django.test import Client

from billing.models import Subscription, SubscriptionStatus, WebhookEvent
from billing.services import customer_for, price_set
from billing.tasks import backoff_seconds, process_webhook_event
from tests.factories import NetworkFactory, UserFactory

from .conftest import WEBHOOK_SECRET, deliver_all, post_event, session_id_of, start_checkout

pytestmark = pytest.mark.django_db


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    at = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def post_raw(client, body: bytes, signature: str | None):
    headers = {"Stripe-Signature": signature} if signature is not None else {}
    return client.post(
        "/billing/webhook/", data=body, content_type="application/json", headers=headers
    )


@pytest.fixture
def subscribed(stripe_on, client, eager_celery, django_capture_on_commit_callbacks):
    """A listener who paid for ``premium`` on the fake, every event delivered and applied."""
    listener = UserFactory(email="payer@example.com")
    network = NetworkFactory(slug="premium", is_public=False)
    price_set(network=network, interval="month", amount=900)
    url = start_checkout(listener, network)
    stripe_subscription = stripe_on.complete_checkout(session_id_of(url))
    with django_capture_on_commit_callbacks(execute=True):
        assert set(deliver_all(stripe_on, client)) == {200}
    return listener, network, stripe_subscription


@pytest.mark.parametrize(
    "signature",
    [None, "t=1,v1=deadbeef", "garbage", "WRONG_SECRET", "STALE"],
)
def test_unsigned_wrongly_signed_and_stale_events_are_refused(client, settings, signature):
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    body = json.dumps({"id": "evt_1", "type": "customer.subscription.updated"}).encode()
    if signature == "WRONG_SECRET":
        signature = sign(body, secret="whsec_other")
    elif signature == "STALE":
        signature = sign(body, at=int(time.time()) - 3600)
    response = post_raw(client, body, signature)
    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2, 3]",
        b'{"type": "customer.subscription.updated", "created": 1, "data": {"object": {}}}',
        b'{"id": "evt_1", "type": "invoice.paid", "created": 1}',
        b'{"id": "evt_1", "type": "invoice.paid", "created": "soon", "data": {"object": {}}}',
        b"not json at all",
        b"\xff\xfe",
    ],
)
def test_signed_but_malformed_payloads_are_a_400_not_a_500(client, settings, body):
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    response = post_raw(client, body, sign(body))
    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()


def test_a_signed_event_is_stored_and_applied_once(
    subscribed, stripe_on, client, django_capture_on_commit_callbacks
):
    listener, network, stripe_subscription = subscribed
    row = Subscription.objects.get()
    assert (row.user, row.network, row.status) == (listener, network, "active")
    assert row.stripe_subscription_id == stripe_subscription["id"]
    assert row.price is not None and row.price.amount == 900
    event = stripe_on.events("customer.subscription.created")[0]
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        replay = post_event(client, event)
    assert replay.status_code == 200 and replay.json() == {"status": "duplicate"}
    assert callbacks == []  # nothing queued for a replay
    assert WebhookEvent.objects.filter(stripe_event_id=event["id"]).count() == 1


def _same_second_pair(stripe_on, stripe_subscription) -> tuple[dict, dict]:
    """A ``deleted`` event and an ``updated``(active) one carrying the same created second."""
    updated = copy.deepcopy(stripe_on.events("customer.subscription.created")[0])
    stripe_on.end(stripe_subscription["id"])
    deleted = stripe_on.events("customer.subscription.deleted")[0]
    updated.update(id="evt_sameSecondActive", type="customer.subscription.updated")
    updated["created"] = deleted["created"]
    assert updated["data"]["object"]["status"] == "active"
    return deleted, updated


@pytest.mark.parametrize("order", ["deleted first", "updated first"])
def test_same_second_events_end_in_the_state_stripe_has_in_either_order(
    subscribed, stripe_on, client, django_capture_on_commit_callbacks, order
):
    _, _, stripe_subscription = subscribed
    deleted, updated = _same_second_pair(stripe_on, stripe_subscription)
    events = [deleted, updated] if order == "deleted first" else [updated, deleted]
    with django_capture_on_commit_callbacks(execute=True):
        for event in events:
            assert post_event(client, event).status_code == 200
    assert Subscription.objects.get().status == SubscriptionStatus.CANCELED


@pytest.mark.django_db(transaction=True)
def test_same_second_events_applied_concurrently_end_in_stripes_state(
    stripe_on, eager_celery, settings
):
    """Two requests at once (each applying its event inline, as two workers would)."""
    if connection.vendor == "sqlite":
        pytest.skip("concurrent writers need PostgreSQL (SQLite locks the whole database)")
    listener = UserFactory(email="racer@example.com")
    network = NetworkFactory(slug="premium", is_public=False)
    price_set(network=network, interval="month", amount=900)
    url = start_checkout(listener, network)
    stripe_subscription = stripe_on.complete_checkout(session_id_of(url))
    for event in stripe_on.events():
        assert post_event(Client(), event).status_code == 200
    assert Subscription.objects.get().status == "active"
    deleted, updated = _same_second_pair(stripe_on, stripe_subscription)
    start = threading.Barrier(2)

    def send(event: dict) -> None:
        try:
            start.wait()
            post_event(Client(), event)
        finally:
            connections.close_all()  # this thread's own connection

    threads = [threading.Thread(target=send, args=(e,)) for e in (updated, deleted)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert Subscription.objects.get().status == SubscriptionStatus.CANCELED


def test_an_event_saying_active_cannot_resurrect_what_stripe_cancelled(
    subscribed, stripe_on, client, django_capture_on_commit_callbacks
):
    _, _, stripe_subscription = subscribed
    stale = copy.deepcopy(stripe_on.events("customer.subscription.created")[0])
    stripe_on.end(stripe_subscription["id"])  # its event never reaches us
    stale.update(id="evt_staleButNewer", type="customer.subscription.updated")
    stale["created"] = int(time.time()) + 5
    with django_capture_on_commit_callbacks(execute=True):
        assert post_event(client, stale).status_code == 200
    assert Subscription.objects.get().status == SubscriptionStatus.CANCELED


def test_unknown_event_types_are_acknowledged_and_ignored(
    stripe_on, client, eager_celery, django_capture_on_commit_callbacks
):
    event = {"id": "evt_x", "object": "event", "type": "customer.tax_id.created"}
    event.update({"created": int(time.time()), "data": {"object": {"id": "txi_1"}}})
    with django_capture_on_commit_callbacks(execute=True):
        response = post_event(client, event)
    assert response.status_code == 200
    assert WebhookEvent.objects.get().processed_at is not None
    assert not Subscription.objects.exists()


def test_an_event_about_someone_elses_customer_is_recorded_and_not_retried(
    stripe_on, client, eager_celery, django_capture_on_commit_callbacks
):
    event = {
        "id": "evt_foreign",
        "type": "customer.subscription.updated",
        "created": int(time.time()),
        "data": {"object": {"id": "sub_foreign", "customer": "cus_notours", "status": "active"}},
    }
    with django_capture_on_commit_callbacks(execute=True):
        assert post_event(client, event).status_code == 200
    row = WebhookEvent.objects.get()
    assert row.processed_at is None and "NotOurs" in row.error
    assert not Subscription.objects.exists()


def test_stripe_down_while_applying_retries_with_growing_backoff(
    subscribed, stripe_on, settings, caplog
):
    listener, _, stripe_subscription = subscribed
    stripe_on.fail_payment(stripe_subscription["id"])
    event = stripe_on.events("customer.subscription.updated")[-1]
    row = WebhookEvent.objects.create(
        stripe_event_id=event["id"], type=event["type"], created="2026-01-01T00:00:00Z",
        payload=event,
    )  # fmt: skip
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens there
    with pytest.raises(Retry) as retried:
        process_webhook_event.apply(args=[row.pk], throw=True)
    assert 0 <= retried.value.when <= 5  # the first retry comes within 5 s
    assert "retry 1/8" in caplog.text
    row.refresh_from_db()
    assert row.processed_at is None and "StripeUnavailable" in row.error
    # Stripe is back: the retry applies the state Stripe has now.
    settings.STRIPE_API_BASE = stripe_on.api_base
    assert process_webhook_event.apply(args=[row.pk]).get() == "subscription synced"
    assert Subscription.objects.get(user=listener).status == SubscriptionStatus.PAST_DUE


def test_backoff_grows_exponentially_up_to_a_cap():
    ceilings = [max(backoff_seconds(n) for _ in range(200)) for n in range(12)]
    assert ceilings[0] <= 5 and 5 < ceilings[3] <= 40
    assert all(c <= 600 for c in ceilings) and ceilings[-1] > 300


def test_a_checkout_whose_first_events_race_makes_one_row(
    stripe_on, client, eager_celery, django_capture_on_commit_callbacks
):
    """created, checkout.session.completed and invoice.paid all name the new subscription."""
    listener = UserFactory()
    network = NetworkFactory(is_public=False)
    price_set(network=network, interval="month", amount=900)
    customer_for(user=listener)
    url = start_checkout(listener, network)
    stripe_on.complete_checkout(session_id_of(url))
    with django_capture_on_commit_callbacks(execute=True):
        for event in reversed(stripe_on.events()):
            assert post_event(client, event).status_code == 200
    assert Subscription.objects.filter(user=listener).count() == 1


def test_a_subscription_stripe_does_not_know_is_recorded_and_not_retried(
    subscribed, stripe_on, client, django_capture_on_commit_callbacks
):
    event = copy.deepcopy(stripe_on.events("customer.subscription.created")[0])
    event.update(id="evt_ghost", type="customer.subscription.updated")
    event["data"]["object"]["id"] = "sub_ghost"  # ours by customer, unknown to Stripe (404)
    with django_capture_on_commit_callbacks(execute=True):
        assert post_event(client, event).status_code == 200
    row = WebhookEvent.objects.get(stripe_event_id="evt_ghost")
    assert row.processed_at is None and "StripeRejected" in row.error


def test_reconciliation_retries_while_stripe_is_down(stripe_on, settings):
    from billing.tasks import reconcile_subscriptions

    settings.STRIPE_API_BASE = "http://127.0.0.1:9"
    with pytest.raises(Retry):
        reconcile_subscriptions.apply(throw=True)
    settings.STRIPE_API_BASE = stripe_on.api_base
    assert reconcile_subscriptions.apply().get() == 0
