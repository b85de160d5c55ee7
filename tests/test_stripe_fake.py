"""The Stripe fake (tests/stripe_fake), driven by the real ``stripe`` library over HTTP.

No database: these tests only talk to a subprocess and to a webhook receiver in a thread.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
import stripe

from tests.stripe_fake import API_VERSION, FakeStripeError, FakeStripeProcess, sign_payload

SECRET = "whsec_fake_test_secret"
DAY = 86_400


class Receiver:
    """A webhook endpoint: records every POST and answers 200 (or queued statuses)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.received.append((dict(self.headers.items()), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/stripe"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def clear(self) -> None:
        with self.lock:
            self.received.clear()
            self.statuses.clear()

    def events(self) -> list[stripe.Event]:
        """Every received body, verified as Stripe's library verifies it."""
        with self.lock:
            received = list(self.received)
        return [
            stripe.Webhook.construct_event(body, headers["Stripe-Signature"], SECRET)
            for headers, body in received
        ]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def fake(receiver: Receiver) -> Iterator[FakeStripeProcess]:
    with FakeStripeProcess(webhook_url=receiver.url, webhook_secret=SECRET) as fake:
        yield fake


@contextmanager
def stripe_client(api_base: str, key: str = "sk_test_fake") -> Iterator[stripe.StripeClient]:
    """The real library pointed at the fake, with its connections closed afterwards."""
    session = requests.Session()
    session.trust_env = False  # never route loopback through a proxy from the environment
    http_client = stripe.RequestsClient(session=session)
    try:
        yield stripe.StripeClient(
            key,
            base_addresses={"api": api_base},
            http_client=http_client,
            max_network_retries=2,
        )
    finally:
        http_client.close()
        session.close()


@pytest.fixture(scope="module")
def client(fake: FakeStripeProcess) -> Iterator[stripe.StripeClient]:
    with stripe_client(fake.api_base) as client:
        yield client


@pytest.fixture(autouse=True)
def _clean(fake: FakeStripeProcess, receiver: Receiver) -> Iterator[None]:
    fake.configure(webhook_url=receiver.url, auto_deliver=True)
    fake.reset()
    receiver.clear()
    yield
    fake.flush()


def raw(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def open_checkout(client: stripe.StripeClient, *, interval: str = "month") -> dict[str, Any]:
    customer = client.v1.customers.create(
        params={"email": "ada@example.com", "name": "Ada", "metadata": {"user_id": "7"}}
    )
    product = client.v1.products.create(
        params={"name": "City traffic", "description": "Live feed", "metadata": {"network_id": "3"}}
    )
    price = client.v1.prices.create(
        params={
            "product": product.id,
            "unit_amount": 900,
            "currency": "eur",
            "recurring": {"interval": interval},
            "metadata": {"network_id": "3"},
        }
    )
    metadata = {"user_id": "7", "network_id": "3"}
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer.id,
            "line_items": [{"price": price.id, "quantity": 1}],
            "success_url": "http://app.test/billing/done?session_id={CHECKOUT_SESSION_ID}",
            "cancel_url": "http://app.test/billing/cancelled",
            "client_reference_id": "7",
            "metadata": metadata,
            "subscription_data": {"metadata": metadata},
        }
    )
    return {"customer": customer, "product": product, "price": price, "session": session}


def test_subscription_lifecycle_and_signed_webhooks(fake, client, receiver):
    opened = open_checkout(client)
    customer, price, session = opened["customer"], opened["price"], opened["session"]
    assert customer.id.startswith("cus_") and customer.metadata.to_dict() == {"user_id": "7"}
    assert (price.recurring.interval, price.unit_amount, price.active) == ("month", 900, True)
    assert session.object == "checkout.session"
    assert (session.status, session.payment_status, session.subscription) == (
        "open",
        "unpaid",
        None,
    )
    assert session.url == f"{fake.api_base}/checkout/{session.id}"

    created = fake.complete_checkout(session.id)
    assert created["status"] == "active"
    assert created["metadata"] == {"user_id": "7", "network_id": "3"}
    item = created["items"]["data"][0]
    assert item["price"]["id"] == price.id
    assert item["current_period_end"] - item["current_period_start"] == 30 * DAY

    done = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["subscription"]})
    assert (done.status, done.payment_status) == ("complete", "paid")
    assert done.subscription.id == created["id"]
    assert done.subscription.customer == customer.id

    listed = client.v1.subscriptions.list(params={"customer": customer.id})
    assert [sub.id for sub in listed.data] == [created["id"]]
    assert listed.data[0]["items"].data[0].price.id == price.id
    assert client.v1.subscriptions.list(params={"price": price.id}).data[0].id == created["id"]

    updated = client.v1.subscriptions.update(created["id"], params={"cancel_at_period_end": True})
    assert updated.cancel_at_period_end is True
    assert updated.cancel_at == item["current_period_end"]

    canceled = client.v1.subscriptions.cancel(created["id"])
    assert canceled.status == "canceled" and canceled.ended_at is not None
    assert client.v1.subscriptions.list(params={"customer": customer.id}).data == []
    everything = client.v1.subscriptions.list(params={"customer": customer.id, "status": "all"})
    assert [sub.status for sub in everything.data] == ["canceled"]

    fake.flush()
    events = receiver.events()
    assert [event.type for event in events] == [
        "customer.subscription.created",
        "checkout.session.completed",
        "invoice.paid",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    ]
    assert [event.id for event in events] == [event["id"] for event in fake.events()]
    for event in events:
        assert event.object == "event" and event.livemode is False
        assert event.api_version == API_VERSION
    assert events[1].data.object.subscription == created["id"]
    invoice = events[2].data.object
    assert invoice.parent.subscription_details.subscription == created["id"]
    assert (invoice.customer, invoice.status) == (customer.id, "paid")
    assert events[3].data.previous_attributes.cancel_at_period_end is False
    assert events[3].request.idempotency_key  # caused by our API request
    assert events[4].data.object.status == "canceled"

    headers, body = receiver.received[0]
    assert headers["Content-Type"].startswith("application/json")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, headers["Stripe-Signature"], "whsec_wrong")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body + b" ", headers["Stripe-Signature"], SECRET)
    forged = sign_payload(body, "whsec_wrong")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, forged, SECRET)


def test_unknown_ids_are_resource_missing(client):
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.customers.retrieve("cus_doesnotexist")
    assert (missing.value.code, missing.value.http_status) == ("resource_missing", 404)
    assert missing.value.param == "id"
    assert "cus_doesnotexist" in missing.value.user_message

    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.subscriptions.retrieve("sub_doesnotexist")
    assert missing.value.code == "resource_missing"

    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.prices.create(
            params={"product": "prod_nope", "unit_amount": 1, "currency": "eur"}
        )
    assert (missing.value.code, missing.value.param) == ("resource_missing", "product")


def test_api_key_is_required(fake):
    status, _, body = raw("GET", f"{fake.api_base}/v1/customers/cus_x")
    assert status == 401
    assert json.loads(body)["error"]["type"] == "invalid_request_error"

    with (
        stripe_client(fake.api_base, "pk_test_nope") as publishable,
        pytest.raises(stripe.AuthenticationError),
    ):
        publishable.v1.customers.create(params={"email": "x@example.com"})


def test_prices_are_immutable_except_active_and_metadata(client):
    price = open_checkout(client)["price"]
    with pytest.raises(stripe.InvalidRequestError) as rejected:
        client.v1.prices.update(price.id, params={"unit_amount": 1})
    assert rejected.value.param == "unit_amount"

    updated = client.v1.prices.update(price.id, params={"active": False, "metadata": {"x": "1"}})
    assert updated.active is False
    assert updated.metadata.to_dict() == {"network_id": "3", "x": "1"}
    assert client.v1.prices.retrieve(price.id).active is False

    product = client.v1.products.update(price.product, params={"name": "Renamed"})
    assert product.name == "Renamed"
    assert client.v1.products.retrieve(price.product).description == "Live feed"


def test_list_pagination(fake, client):
    opened = open_checkout(client, interval="year")
    customer, price = opened["customer"], opened["price"]
    ids = []
    for _ in range(3):
        session = client.v1.checkout.sessions.create(
            params={
                "mode": "subscription",
                "customer": customer.id,
                "line_items": [{"price": price.id, "quantity": 1}],
            }
        )
        ids.append(fake.complete_checkout(session.id)["id"])
    newest_first = ids[::-1]

    page = client.v1.subscriptions.list(params={"customer": customer.id, "limit": 2})
    assert page.has_more is True and [sub.id for sub in page.data] == newest_first[:2]
    rest = client.v1.subscriptions.list(
        params={"customer": customer.id, "limit": 2, "starting_after": page.data[-1].id}
    )
    assert rest.has_more is False and [sub.id for sub in rest.data] == newest_first[2:]
    everything = client.v1.subscriptions.list(params={"status": "all", "limit": 1})
    assert [sub.id for sub in everything.auto_paging_iter()] == newest_first
    period = everything.data[0]["items"].data[0]
    assert period.current_period_end - period.current_period_start == 365 * DAY


def test_simulated_billing(fake, client):
    subscription_id = fake.complete_checkout(open_checkout(client)["session"].id)["id"]
    first_end = (
        client.v1.subscriptions.retrieve(subscription_id)["items"].data[0].current_period_end
    )

    failed = fake.fail_payment(subscription_id)
    assert failed["status"] == "past_due"
    renewed = fake.renew(subscription_id)
    assert renewed["status"] == "active"
    assert renewed["items"]["data"][0]["current_period_start"] == first_end
    assert renewed["items"]["data"][0]["current_period_end"] == first_end + 30 * DAY
    assert renewed["latest_invoice"] == failed["latest_invoice"]  # the retry paid that invoice

    ended = fake.end(subscription_id)
    assert ended["status"] == "canceled"
    with pytest.raises(FakeStripeError) as rejected:
        fake.renew(subscription_id)
    assert rejected.value.status == 400

    types = [event["type"] for event in fake.events()]
    assert types[3:] == [
        "invoice.payment_failed",
        "customer.subscription.updated",
        "invoice.paid",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    ]
    assert [e["type"] for e in fake.events("invoice.payment_failed")] == ["invoice.payment_failed"]
    invoice = client.v1.invoices.retrieve(failed["latest_invoice"])
    assert invoice.status == "paid"
    assert invoice.parent.subscription_details.subscription == subscription_id

    # A subscription set to cancel at the period end ends when the period runs out.
    second = fake.complete_checkout(open_checkout(client)["session"].id)["id"]
    client.v1.subscriptions.update(second, params={"cancel_at_period_end": True})
    assert fake.renew(second)["status"] == "canceled"


def test_manual_delivery_out_of_order_and_replay(fake, client, receiver):
    fake.configure(auto_deliver=False)
    fake.complete_checkout(open_checkout(client)["session"].id)
    fake.flush()
    assert receiver.received == []

    events = fake.events()
    for event in reversed(events):
        assert fake.deliver(event["id"]) == 200
    assert fake.deliver(events[0]["id"]) == 200  # a replay: same event, freshly signed
    assert [event.id for event in receiver.events()] == [
        *(event["id"] for event in reversed(events)),
        events[0]["id"],
    ]

    receiver.statuses.append(500)
    assert fake.deliver(events[0]["id"]) == 500
    fake.configure(webhook_url="http://127.0.0.1:9/unreachable")
    assert fake.deliver(events[0]["id"]) is None


def test_auto_delivery_retries_on_server_errors(fake, client, receiver):
    receiver.statuses.extend([500, 503])
    fake.complete_checkout(open_checkout(client)["session"].id)
    fake.flush()
    first = fake.deliveries()[0]
    assert [attempt["status"] for attempt in first["attempts"]] == [500, 503, 200]
    assert first["succeeded"] is True
    assert [event.type for event in receiver.events()][2:] == [
        "customer.subscription.created",
        "checkout.session.completed",
        "invoice.paid",
    ]


def test_checkout_and_portal_pages(fake, client):
    opened = open_checkout(client)
    session = opened["session"]
    status, _, page = raw("GET", session.url)
    assert status == 200 and b"Pay</button>" in page
    form = f"/_test/checkout/{session.id}/complete".encode()
    assert b'action="' + form + b'"' in page

    status, headers, _ = raw(
        "POST",
        fake.api_base + form.decode(),
        body=urlencode({"redirect": "1"}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 303
    location = urlsplit(headers["Location"])
    assert parse_qs(location.query) == {"session_id": [session.id]}
    subscription_id = client.v1.checkout.sessions.retrieve(session.id).subscription

    portal = client.v1.billing_portal.sessions.create(
        params={"customer": opened["customer"].id, "return_url": "http://app.test/account"}
    )
    assert portal.object == "billing_portal.session"
    assert portal.url == f"{fake.api_base}/portal/{portal.id}"
    status, _, page = raw("GET", portal.url)
    assert status == 200 and b"Cancel subscription</button>" in page
    status, headers, _ = raw(
        "POST", f"{fake.api_base}/portal/{portal.id}/subscriptions/{subscription_id}/cancel"
    )
    assert (status, headers["Location"]) == (303, "http://app.test/account")
    subscription = client.v1.subscriptions.retrieve(subscription_id)
    assert subscription.cancel_at_period_end is True and subscription.status == "active"
    assert fake.events()[-1]["type"] == "customer.subscription.updated"


def test_idempotent_requests(client):
    first = client.v1.customers.create(
        params={"email": "a@example.com"}, options={"idempotency_key": "same-key"}
    )
    again = client.v1.customers.create(
        params={"email": "a@example.com"}, options={"idempotency_key": "same-key"}
    )
    assert again.id == first.id
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create(
            params={"email": "b@example.com"}, options={"idempotency_key": "same-key"}
        )


def test_sign_payload_matches_the_library():
    payload = b'{"id": "evt_1", "object": "event"}'
    header = sign_payload(payload, SECRET, timestamp=1_700_000_000)
    expected = stripe.WebhookSignature.generate_signature_header(
        payload.decode(), SECRET, timestamp=1_700_000_000
    )
    assert header == expected
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        stripe.Webhook.construct_event(payload, header, SECRET)
    assert stripe.Webhook.construct_event(payload, sign_payload(payload, SECRET), SECRET).id == (
        "evt_1"
    )
