"""Prices, checkout and webhooks through the real ``stripe`` library, against the local fake."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client

from billing.entitlement import mint_entitlement_token
from billing.models import Price, Subscription
from billing.services import checkout_start, portal_url, price_set
from billing.sync import subscriptions_reconcile
from tests.factories import NetworkFactory, UserFactory

from .conftest import deliver_all, start_checkout

pytestmark = pytest.mark.django_db


def test_a_price_change_creates_a_new_stripe_price_and_retires_the_old(stripe_on):
    network = NetworkFactory(slug="premium", name="Premium feed", is_public=False)
    first = price_set(network=network, interval="month", amount=900)
    assert first.stripe_price_id.startswith("price_") and first.stripe_product_id.startswith(
        "prod_"
    )
    same = price_set(network=network, interval="month", amount=900)
    assert same.pk == first.pk  # nothing changed, nothing created
    second = price_set(network=network, interval="month", amount=1200)
    first.refresh_from_db()
    assert not first.active and second.active
    assert second.stripe_product_id == first.stripe_product_id
    assert second.stripe_price_id != first.stripe_price_id
    yearly = price_set(network=network, interval="year", amount=9900)
    assert Price.objects.filter(network=network, active=True).count() == 2
    assert yearly.interval == "year"


def test_checkout_webhooks_and_cancellation_drive_entitlement(
    stripe_on, client, eager_celery, django_capture_on_commit_callbacks
):
    listener = UserFactory(email="listener@example.com")
    network = NetworkFactory(slug="premium", is_public=False)
    price_set(network=network, interval="month", amount=900)
    url = checkout_start(
        user=listener,
        network=network,
        interval="month",
        success_url="http://testserver/ok?session_id={CHECKOUT_SESSION_ID}",
        cancel_url="http://testserver/cancel",
    )
    session_id = urlsplit(url).path.rsplit("/", 1)[-1]
    # The customer is reused for a second checkout.
    start_checkout(listener, network)
    assert listener.stripe_customer.stripe_customer_id.startswith("cus_")

    stripe_subscription = stripe_on.complete_checkout(session_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert set(deliver_all(stripe_on, client)) == {200}
    subscription = Subscription.objects.get(user=listener)
    assert subscription.status == "active"
    assert subscription.stripe_subscription_id == stripe_subscription["id"]
    assert mint_entitlement_token(user=listener)[2] == ["premium"]

    # Replaying every event changes nothing.
    count = len(stripe_on.events())
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        deliver_all(stripe_on, client)
    assert callbacks == []

    stripe_on.fail_payment(stripe_subscription["id"])
    with django_capture_on_commit_callbacks(execute=True):
        deliver_all(stripe_on, client, since=count)
    subscription.refresh_from_db()
    assert subscription.status == "past_due" and subscription.past_due_since is not None
    assert mint_entitlement_token(user=listener)[2] == ["premium"]  # within the grace period

    count = len(stripe_on.events())
    stripe_on.end(stripe_subscription["id"])
    with django_capture_on_commit_callbacks(execute=True):
        deliver_all(stripe_on, client, since=count)
    subscription.refresh_from_db()
    assert subscription.status == "canceled"
    assert mint_entitlement_token(user=listener)[2] == []


def test_reconciliation_repairs_a_missed_webhook(stripe_on):
    listener = UserFactory(email="missed@example.com")
    network = NetworkFactory(slug="premium", is_public=False)
    price_set(network=network, interval="month", amount=900)
    url = start_checkout(listener, network)
    stripe_on.complete_checkout(urlsplit(url).path.rsplit("/", 1)[-1])
    assert not Subscription.objects.exists()  # every webhook was lost
    assert subscriptions_reconcile() == 1
    assert Subscription.objects.get(user=listener).status == "active"


def test_the_customer_portal_link(stripe_on):
    listener = UserFactory(email="portal@example.com")
    network = NetworkFactory(slug="premium", is_public=False)
    price_set(network=network, interval="month", amount=900)
    start_checkout(listener, network)
    url = portal_url(user=listener, return_url="http://testserver/dashboard/")
    assert url.startswith(stripe_on.api_base)


def test_the_subscribe_button_sends_the_listener_to_checkout(stripe_on):
    listener = UserFactory(email="buyer@example.com")
    network = NetworkFactory(slug="premium", is_public=False)
    price_set(network=network, interval="month", amount=900)
    browser = Client()
    browser.force_login(listener)
    page = browser.get("/networks/premium/").content.decode()
    assert "Subscribe" in page
    response = browser.post("/networks/premium/subscribe/", {"interval": "month"})
    assert response.status_code == 302
    assert response["Location"].startswith(stripe_on.api_base + "/checkout/")
    query = parse_qs(urlsplit(response["Location"]).query)
    assert query == {} or "session" not in query
