"""Stripe webhooks: verified, stored once, applied in order of Stripe's clock, not arrival."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from billing.models import Customer, Price, Subscription, SubscriptionStatus, WebhookEvent
from tests.factories import NetworkFactory, UserFactory

pytestmark = pytest.mark.django_db
SECRET = "whsec_test_secret"


@pytest.fixture(autouse=True)
def _webhook_secret(settings):
    settings.STRIPE_WEBHOOK_SECRET = SECRET


def sign(payload: bytes, secret: str = SECRET, at: int | None = None) -> str:
    at = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def subscription_event(event_id, created, status, user, network, price, period_end=None):
    period_end = period_end or int(time.time()) + 30 * 86400
    return {
        "id": event_id,
        "object": "event",
        "type": "customer.subscription.updated",
        "created": created,
        "api_version": "2026-10-28.endive",
        "livemode": False,
        "data": {
            "object": {
                "id": "sub_123",
                "object": "subscription",
                "status": status,
                "customer": "cus_123",
                "cancel_at_period_end": False,
                "metadata": {"user_id": str(user.pk), "network_id": str(network.pk)},
                "items": {
                    "object": "list",
                    "data": [
                        {"price": {"id": price.stripe_price_id}, "current_period_end": period_end}
                    ],
                },
            }
        },
    }


@pytest.fixture
def paid_setup(db):
    user = UserFactory(email="payer@example.com")
    network = NetworkFactory(slug="premium", is_public=False)
    price = Price.objects.create(
        network=network,
        interval="month",
        amount=900,
        stripe_price_id="price_123",
        stripe_product_id="prod_1",
    )
    Customer.objects.create(user=user, stripe_customer_id="cus_123")
    return user, network, price


def post(client, body: bytes, signature: str | None):
    headers = {"Stripe-Signature": signature} if signature is not None else {}
    return client.post(
        "/billing/webhook/", data=body, content_type="application/json", headers=headers
    )


@pytest.mark.parametrize(
    "signature",
    [None, "t=1,v1=deadbeef", "garbage", "WRONG_SECRET", "STALE"],
)
def test_unsigned_wrongly_signed_and_stale_events_are_refused(client, paid_setup, signature):
    user, network, price = paid_setup
    body = json.dumps(
        subscription_event("evt_1", int(time.time()), "active", user, network, price)
    ).encode()
    if signature == "WRONG_SECRET":
        signature = sign(body, secret="whsec_other")
    elif signature == "STALE":
        signature = sign(body, at=int(time.time()) - 3600)
    response = post(client, body, signature)
    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()
    assert not Subscription.objects.exists()


def test_a_signed_event_is_stored_and_applied_once(
    client, paid_setup, eager_celery, django_capture_on_commit_callbacks
):
    user, network, price = paid_setup
    body = json.dumps(
        subscription_event("evt_1", int(time.time()), "active", user, network, price)
    ).encode()
    with django_capture_on_commit_callbacks(execute=True):
        first = post(client, body, sign(body))
    assert first.status_code == 200 and first.json() == {"status": "accepted"}
    subscription = Subscription.objects.get()
    assert (subscription.user, subscription.network, subscription.status) == (
        user,
        network,
        "active",
    )
    assert subscription.current_period_end > timezone.now() + timedelta(days=29)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        replay = post(client, body, sign(body))
    assert replay.status_code == 200 and replay.json() == {"status": "duplicate"}
    assert callbacks == []  # nothing queued for a replay
    assert WebhookEvent.objects.count() == 1


def test_an_older_event_never_overwrites_a_newer_state(
    client, paid_setup, eager_celery, django_capture_on_commit_callbacks
):
    user, network, price = paid_setup
    now = int(time.time())
    newer = json.dumps(
        subscription_event("evt_new", now, "canceled", user, network, price)
    ).encode()
    older = json.dumps(
        subscription_event("evt_old", now - 60, "active", user, network, price)
    ).encode()
    with django_capture_on_commit_callbacks(execute=True):
        post(client, newer, sign(newer))
        post(client, older, sign(older))
    assert Subscription.objects.get().status == SubscriptionStatus.CANCELED
    assert WebhookEvent.objects.filter(processed_at__isnull=False).count() == 2


def test_unknown_event_types_are_acknowledged_and_ignored(
    client, paid_setup, eager_celery, django_capture_on_commit_callbacks
):
    event = {"id": "evt_x", "object": "event", "type": "customer.tax_id.created"}
    event.update({"created": int(time.time()), "data": {"object": {"id": "txi_1"}}})
    body = json.dumps(event).encode()
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, body, sign(body))
    assert response.status_code == 200
    assert WebhookEvent.objects.get().processed_at is not None
    assert not Subscription.objects.exists()


def test_losing_the_subscription_voids_tokens_and_past_due_starts_the_grace_clock(
    client, paid_setup, eager_celery, django_capture_on_commit_callbacks
):
    user, network, price = paid_setup
    now = int(time.time())
    events = [
        subscription_event("evt_a", now - 30, "active", user, network, price),
        subscription_event("evt_b", now - 20, "past_due", user, network, price),
    ]
    with django_capture_on_commit_callbacks(execute=True):
        for event in events:
            body = json.dumps(event).encode()
            post(client, body, sign(body))
    subscription = Subscription.objects.get()
    assert subscription.status == "past_due" and subscription.past_due_since is not None
    epoch_before = type(user).objects.get(pk=user.pk).entitlement_epoch
    deleted = subscription_event("evt_c", now - 10, "canceled", user, network, price)
    deleted["type"] = "customer.subscription.deleted"
    body = json.dumps(deleted).encode()
    with django_capture_on_commit_callbacks(execute=True):
        post(client, body, sign(body))
    assert type(user).objects.get(pk=user.pk).entitlement_epoch == epoch_before + 1
