import json
from urllib.parse import urlsplit

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import Client

from tests.stripe_fake import FakeStripeProcess, sign_payload

WEBHOOK_SECRET = "whsec_billing_tests"


@pytest.fixture(autouse=True)
async def _close_connections_opened_in_worker_threads():
    """Async tests reach the database from asgiref's worker thread; close what it opened
    there, or PostgreSQL refuses to drop the test database at the end of the run."""
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture
def premium(db):
    """A paid network."""
    from tests.factories import NetworkFactory

    return NetworkFactory(slug="premium", is_public=False)


@pytest.fixture
def listener(db):
    from tests.factories import UserFactory

    return UserFactory(email="listener@example.com")


@pytest.fixture(scope="session")
def fake_stripe():
    """One local Stripe-compatible server for the billing tests (events delivered by hand)."""
    with FakeStripeProcess(webhook_secret=WEBHOOK_SECRET, auto_deliver=False) as fake:
        yield fake


@pytest.fixture
def stripe_on(settings, fake_stripe):
    """Billing configured against the fake, which starts empty."""
    fake_stripe.reset()
    fake_stripe.configure(auto_deliver=False)
    settings.STRIPE_SECRET_KEY = "sk_test_billing"
    settings.STRIPE_API_BASE = fake_stripe.api_base
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_NETWORK_RETRIES = 0
    return fake_stripe


def post_event(client: Client, event: dict, secret: str = WEBHOOK_SECRET):
    """POST one event to our webhook endpoint, signed as Stripe would."""
    body = json.dumps(event).encode()
    return client.post(
        "/billing/webhook/",
        data=body,
        content_type="application/json",
        headers={"Stripe-Signature": sign_payload(body, secret)},
    )


def deliver_all(fake, client: Client, since: int = 0) -> list[int]:
    """Post the fake's events (from index ``since``) to our webhook endpoint."""
    return [post_event(client, event).status_code for event in fake.events()[since:]]


def start_checkout(person, network, interval: str = "month") -> str:
    """Our Subscribe for ``person``: the fake's Checkout URL."""
    from billing.services import checkout_start

    return checkout_start(
        user=person, network=network, interval=interval,
        success_url="http://testserver/ok", cancel_url="http://testserver/no",
    )  # fmt: skip


def session_id_of(checkout_url: str) -> str:
    return urlsplit(checkout_url).path.rsplit("/", 1)[-1]


@pytest.fixture
def buy(stripe_on, client, eager_celery, django_capture_on_commit_callbacks):
    """``buy(person, network, interval)``: Checkout paid on the fake, every event applied."""

    def buy(person, network, interval="month") -> dict:
        url = start_checkout(person, network, interval)
        seen = len(stripe_on.events())
        stripe_subscription = stripe_on.complete_checkout(session_id_of(url))
        with django_capture_on_commit_callbacks(execute=True):
            assert set(deliver_all(stripe_on, client, since=seen)) == {200}
        return stripe_subscription

    return buy
