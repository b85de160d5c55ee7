"""The Stripe gateway and subscription mirroring against localstripe, an independent emulator.

tests/stripe_fake is ours, so it agrees with our reading of Stripe by construction; localstripe
(https://github.com/adrienverge/localstripe) was written by others. It runs as a separate
process (tests/localstripe_process.py). It has no Prices, Checkout or Customer Portal: the
subscription is made from a legacy Plan with a card attached to the customer, as an API client
would, and our side finds the network through the subscription's ``network_id`` metadata.

Shape differences from Stripe's current API that matter here: localstripe puts
``current_period_start/end`` on the subscription itself (Stripe moved them onto the items in
2025-03-31.basil), its items carry ``plan`` but no ``price``, a DELETE leaves ``canceled_at``
null (``ended_at`` is set), and its events say ``api_version: 2017-08-15``.
"""

from __future__ import annotations

import http.server
import queue
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import stripe
from django.utils import timezone

from billing import stripe_gateway
from billing.entitlement import entitlements_of
from billing.models import Customer, Subscription
from billing.services import subscription_end
from billing.sync import subscriptions_reconcile
from tests.factories import NetworkFactory, UserFactory
from tests.localstripe_process import TEST_SECRET_KEY, LocalStripeProcess

pytestmark = pytest.mark.django_db
WEBHOOK_SECRET = "whsec_localstripe"


@pytest.fixture(scope="module")
def localstripe() -> Iterator[LocalStripeProcess]:
    with LocalStripeProcess() as process:
        yield process


@pytest.fixture
def stripe_on(settings, localstripe: LocalStripeProcess) -> LocalStripeProcess:
    localstripe.reset()  # database ids restart after a rollback: no stale subscriptions
    settings.STRIPE_SECRET_KEY = TEST_SECRET_KEY
    settings.STRIPE_API_BASE = localstripe.api_base
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return localstripe


def subscribe(localstripe: LocalStripeProcess, *, customer_id: str, user_id: int, network_id: int):
    """What a Stripe client does without Checkout: plan, card, subscription (paid at once)."""
    product = localstripe.post("/v1/products", {"name": "Premium feed"})
    plan = localstripe.post(
        "/v1/plans",
        {"product": product["id"], "amount": 900, "currency": "eur", "interval": "month"},
    )
    # Stripe's test id pm_card_visa (4242...); attaching it makes a pm_... of the customer.
    card = localstripe.post("/v1/payment_methods/pm_card_visa/attach", {"customer": customer_id})
    localstripe.post(
        f"/v1/customers/{customer_id}", {"invoice_settings[default_payment_method]": card["id"]}
    )
    return localstripe.post(
        "/v1/subscriptions",
        {
            "customer": customer_id,
            "items[0][plan]": plan["id"],
            "metadata[user_id]": str(user_id),
            "metadata[network_id]": str(network_id),
        },
    )


@pytest.fixture
def subscribed(stripe_on: LocalStripeProcess):
    """A listener with a Stripe customer (made by our gateway) and an active subscription."""
    listener = UserFactory(email="listener@example.com")
    network = NetworkFactory(slug="premium", is_public=False)
    customer_id = stripe_gateway.customer_create(email=listener.email, user_id=listener.pk)
    Customer.objects.create(user=listener, stripe_customer_id=customer_id)
    stripe_subscription = subscribe(
        stripe_on, customer_id=customer_id, user_id=listener.pk, network_id=network.pk
    )
    assert stripe_subscription["status"] == "active"  # the first invoice was paid by card
    return listener, network, stripe_subscription


def test_the_gateway_creates_a_customer_localstripe_knows(stripe_on):
    listener = UserFactory(email="someone@example.com")
    customer_id = stripe_gateway.customer_create(email=listener.email, user_id=listener.pk)
    assert customer_id.startswith("cus_")
    customer = stripe_on.get(f"/v1/customers/{customer_id}")
    assert customer["email"] == "someone@example.com"
    assert customer["metadata"] == {"user_id": str(listener.pk)}


def test_reconciliation_mirrors_the_subscription_and_its_cancellation(stripe_on, subscribed):
    listener, network, stripe_subscription = subscribed
    fetched = stripe_gateway.subscription_retrieve(subscription_id=stripe_subscription["id"])
    assert fetched["id"] == stripe_subscription["id"] and fetched["status"] == "active"

    assert subscriptions_reconcile() == 1
    row = Subscription.objects.get(stripe_subscription_id=stripe_subscription["id"])
    assert (row.user, row.network, row.price) == (listener, network, None)  # no Prices here
    assert row.status == "active" and not row.cancel_at_period_end
    assert network.pk in entitlements_of(user=listener)

    canceled = stripe_on.delete(f"/v1/subscriptions/{stripe_subscription['id']}")
    assert canceled["status"] == "canceled"
    # status=all: a plain list would leave canceled subscriptions out, in Stripe as here.
    listed = stripe_gateway.subscriptions_list(status="all")
    assert [(s["id"], s["status"]) for s in listed] == [(stripe_subscription["id"], "canceled")]

    assert subscriptions_reconcile() == 1
    row.refresh_from_db()
    assert row.status == "canceled"
    assert network.pk not in entitlements_of(user=listener)


def test_staff_ending_a_subscription_ends_it_at_stripe_first(stripe_on, subscribed):
    listener, network, stripe_subscription = subscribed
    subscriptions_reconcile()
    row = Subscription.objects.get(stripe_subscription_id=stripe_subscription["id"])
    subscription_end(subscription=row, refund="none")
    assert stripe_on.get(f"/v1/subscriptions/{stripe_subscription['id']}")["status"] == "canceled"
    row.refresh_from_db()
    assert row.status == "canceled"
    assert network.pk not in entitlements_of(user=listener)
    # Reconciliation finds Stripe agrees: nothing comes back to life.
    subscriptions_reconcile()
    row.refresh_from_db()
    assert row.status == "canceled"


def test_reconciliation_reads_the_current_period_end(stripe_on, subscribed):
    _, _, stripe_subscription = subscribed
    # localstripe has the period at the subscription's top level (Stripe before 2025-03-31),
    # none on its items.
    assert stripe_subscription["current_period_end"] > stripe_subscription["current_period_start"]
    assert "current_period_end" not in stripe_subscription["items"]["data"][0]

    subscriptions_reconcile()
    row = Subscription.objects.get(stripe_subscription_id=stripe_subscription["id"])
    # The reader takes the item's period (2025+) or, failing that, the top level's.
    assert row.current_period_end is not None
    assert row.current_period_end > timezone.now() + timedelta(days=27)
    assert int(row.current_period_end.timestamp()) == stripe_subscription["current_period_end"]


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: queue.Queue[tuple[str | None, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.put((self.headers.get("Stripe-Signature"), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, queue.Queue[tuple[str | None, bytes]]]]:
    """A loopback HTTP endpoint recording what localstripe posts (signature header, body)."""
    received: queue.Queue[tuple[str | None, bytes]] = queue.Queue()
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/stripe-webhook", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_localstripe_signs_webhooks_as_stripe_does_and_our_endpoint_applies_them(
    stripe_on,
    subscribed,
    webhook_receiver,
    client,
    eager_celery,
    django_capture_on_commit_callbacks,
):
    listener, network, stripe_subscription = subscribed
    subscriptions_reconcile()
    url, received = webhook_receiver
    stripe_on.register_webhook(
        "katiedj", url=url, secret=WEBHOOK_SECRET, events=["customer.subscription.deleted"]
    )

    stripe_on.delete(f"/v1/subscriptions/{stripe_subscription['id']}")
    # localstripe posts ~1 s after the event, to the webhooks registered *then*: a deletion
    # by the previous test may arrive here too, so wait for this subscription's.
    deadline = time.monotonic() + 15
    while True:
        signature, payload = received.get(timeout=max(deadline - time.monotonic(), 0.1))
        assert signature is not None and signature.startswith("t=")
        event = stripe.Webhook.construct_event(payload, signature, WEBHOOK_SECRET)
        assert event["type"] == "customer.subscription.deleted"
        if event["data"]["object"]["id"] == stripe_subscription["id"]:
            break
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, signature, "whsec_someone_else")

    # The same bytes and header through our real endpoint (verify, store, apply).
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/billing/webhook/",
            data=payload,
            content_type="application/json",
            headers={"Stripe-Signature": signature},
        )
    assert response.status_code == 200, response.content
    row = Subscription.objects.get(stripe_subscription_id=stripe_subscription["id"])
    assert row.status == "canceled"
    assert network.pk not in entitlements_of(user=listener)
