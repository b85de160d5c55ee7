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
def stripe_client(
    api_base: str, key: str = "sk_test_fake", *, retries: int = 2
) -> Iterator[stripe.StripeClient]:
    """The real library pointed at the fake, with its connections closed afterwards."""
    session = requests.Session()
    session.trust_env = False  # never route loopback through a proxy from the environment
    http_client = stripe.RequestsClient(session=session)
    try:
        yield stripe.StripeClient(
            key,
            base_addresses={"api": api_base},
            http_client=http_client,
            max_network_retries=retries,
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


def test_products_without_prices_can_be_deleted(client):
    spare = client.v1.products.create(params={"name": "Spare"})
    deleted = client.v1.products.delete(spare.id)
    assert (deleted.id, deleted.deleted) == (spare.id, True)
    with pytest.raises(stripe.InvalidRequestError) as gone:
        client.v1.products.retrieve(spare.id)
    assert gone.value.code == "resource_missing"

    priced = open_checkout(client)["product"]
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.products.delete(priced.id)
    assert refused.value.http_status == 400
    assert client.v1.products.retrieve(priced.id).name == "City traffic"


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


# -- plan changes, payments, refunds, faults, old API versions ---------------------------------


def subscribe(fake: FakeStripeProcess, client: stripe.StripeClient) -> dict[str, Any]:
    """A paid monthly subscription at 9.00 EUR: ``open_checkout``'s objects plus
    ``subscription`` (as the fake rendered it) and its one ``item``."""
    opened = open_checkout(client)
    subscription = fake.complete_checkout(opened["session"].id)
    return {**opened, "subscription": subscription, "item": subscription["items"]["data"][0]}


def another_price(
    client: stripe.StripeClient, product_id: str, unit_amount: int, interval: str = "month"
) -> stripe.Price:
    return client.v1.prices.create(
        params={
            "product": product_id,
            "unit_amount": unit_amount,
            "currency": "eur",
            "recurring": {"interval": interval},
        }
    )


def change_price(
    client: stripe.StripeClient, subbed: dict[str, Any], price_id: str, **params: Any
) -> stripe.Subscription:
    return client.v1.subscriptions.update(
        subbed["subscription"]["id"],
        params={"items": [{"id": subbed["item"]["id"], "price": price_id}], **params},
    )


def line_summary(invoice: stripe.Invoice) -> list[tuple[int, bool]]:
    """(amount, proration) of every line."""
    return [
        (line.amount, line.parent.subscription_item_details.proration)
        for line in invoice.lines.data
    ]


def fake_now(fake: FakeStripeProcess) -> int:
    """The fake's clock (the newest event's ``created``; events are stamped with now)."""
    return max(event["created"] for event in fake.events())


def test_plan_change_to_a_new_interval_restarts_the_period_and_bills_at_once(fake, client):
    subbed = subscribe(fake, client)
    start = subbed["item"]["current_period_start"]
    yearly = another_price(client, subbed["product"].id, 9000, "year")

    updated = change_price(
        client,
        subbed,
        yearly.id,
        proration_behavior="create_prorations",  # a new interval bills at once anyway
        payment_behavior="error_if_incomplete",
        proration_date=start + 15 * DAY,
    )
    item = updated["items"].data[0]
    assert (item.id, item.price.id) == (subbed["item"]["id"], yearly.id)
    assert start <= item.current_period_start <= fake_now(fake)
    assert item.current_period_end - item.current_period_start == 365 * DAY
    assert updated.billing_cycle_anchor == item.current_period_start
    assert updated.latest_invoice != subbed["subscription"]["latest_invoice"]

    invoice = client.v1.invoices.retrieve(updated.latest_invoice, params={"expand": ["payments"]})
    # Half of the old month is unused: a 4.50 credit, then a full year.
    assert line_summary(invoice) == [(-450, True), (9000, False)]
    credit, year = invoice.lines.data
    assert credit.pricing.price_details.price == subbed["price"].id
    assert credit.description.startswith("Unused time on 1 x City traffic")
    assert year.period.end - year.period.start == 365 * DAY
    assert (invoice.billing_reason, invoice.status) == ("subscription_update", "paid")
    assert (invoice.total, invoice.amount_due, invoice.amount_paid) == (8550, 8550, 8550)
    assert invoice.parent.subscription_details.subscription == updated.id
    assert [payment.amount_paid for payment in invoice.payments.data] == [8550]

    events = fake.events()
    assert [event["type"] for event in events[-2:]] == [
        "customer.subscription.updated",
        "invoice.paid",
    ]
    previous = events[-2]["data"]["previous_attributes"]
    assert previous["items"]["data"][0]["price"]["id"] == subbed["price"].id
    assert previous["latest_invoice"] == subbed["subscription"]["latest_invoice"]
    assert events[-1]["data"]["object"]["id"] == invoice.id
    assert events[-1]["request"]["id"] is not None  # caused by the update request


def test_same_interval_always_invoice_prorates_the_rest_of_the_period(fake, client):
    subbed = subscribe(fake, client)
    item = subbed["item"]
    bigger = another_price(client, subbed["product"].id, 1500)

    updated = change_price(
        client,
        subbed,
        bigger.id,
        proration_behavior="always_invoice",
        proration_date=item["current_period_start"] + 10 * DAY,
    )
    new_item = updated["items"].data[0]
    assert new_item.price.id == bigger.id
    assert (new_item.current_period_start, new_item.current_period_end) == (
        item["current_period_start"],
        item["current_period_end"],
    )

    # 20 of 30 days remain: -9.00 x 2/3 and +15.00 x 2/3.
    invoice = client.v1.invoices.retrieve(
        updated.latest_invoice,
        params={"expand": ["payments.data.payment.payment_intent.latest_charge"]},
    )
    assert line_summary(invoice) == [(-600, True), (1000, True)]
    assert invoice.lines.data[1].pricing.price_details.price == bigger.id
    assert (invoice.total, invoice.amount_paid, invoice.status) == (400, 400, "paid")
    intent = invoice.payments.data[0].payment.payment_intent
    assert (intent.object, intent.amount, intent.status) == ("payment_intent", 400, "succeeded")
    assert intent.latest_charge.amount == 400

    charged = client.v1.payment_intents.retrieve(
        intent.id, params={"expand": ["latest_charge.balance_transaction"]}
    )
    transaction = charged.latest_charge.balance_transaction
    assert (transaction.amount, transaction.fee, transaction.net) == (400, 42, 358)  # 2.9% + 30
    assert fake.events()[-1]["type"] == "invoice.paid"


def test_create_prorations_wait_for_the_renewal_and_none_bills_nothing(fake, client):
    subbed = subscribe(fake, client)
    item = subbed["item"]
    first_invoice = subbed["subscription"]["latest_invoice"]
    bigger = another_price(client, subbed["product"].id, 1500)

    updated = change_price(
        client, subbed, bigger.id, proration_date=item["current_period_start"] + 10 * DAY
    )  # create_prorations is the default
    assert updated.latest_invoice == first_invoice
    assert fake.events()[-1]["type"] == "customer.subscription.updated"

    renewed = fake.renew(updated.id)
    invoice = client.v1.invoices.retrieve(renewed["latest_invoice"])
    assert line_summary(invoice) == [(-600, True), (1000, True), (1500, False)]
    assert (invoice.billing_reason, invoice.amount_paid) == ("subscription_cycle", 1900)

    cheaper = another_price(client, subbed["product"].id, 500)
    kept = change_price(client, subbed, cheaper.id, proration_behavior="none")
    assert kept.latest_invoice == renewed["latest_invoice"]
    assert kept["items"].data[0].price.id == cheaper.id
    again = client.v1.invoices.retrieve(fake.renew(kept.id)["latest_invoice"])
    assert line_summary(again) == [(500, False)]

    with pytest.raises(stripe.InvalidRequestError) as rejected:
        change_price(client, subbed, bigger.id, proration_behavior="sometimes")
    assert rejected.value.param == "proration_behavior"
    assert client.v1.subscriptions.retrieve(kept.id)["items"].data[0].price.id == cheaper.id


def test_downgrade_credit_goes_to_the_customer_balance(fake, client):
    subbed = subscribe(fake, client)
    item = subbed["item"]
    cheaper = another_price(client, subbed["product"].id, 600)

    updated = change_price(
        client,
        subbed,
        cheaper.id,
        proration_behavior="always_invoice",
        proration_date=item["current_period_start"] + 20 * DAY,
    )
    invoice = client.v1.invoices.retrieve(updated.latest_invoice, params={"expand": ["payments"]})
    assert line_summary(invoice) == [(-300, True), (200, True)]
    assert (invoice.total, invoice.amount_due, invoice.amount_paid) == (-100, 0, 0)
    assert (invoice.status, invoice.starting_balance, invoice.ending_balance) == ("paid", 0, -100)
    assert invoice.payments.data == []  # nothing was charged
    assert client.v1.customers.retrieve(subbed["customer"].id).balance == -100

    # The credit pays part of the next invoice.
    renewal = client.v1.invoices.retrieve(fake.renew(updated.id)["latest_invoice"])
    assert (renewal.total, renewal.starting_balance, renewal.amount_paid) == (600, -100, 500)
    assert client.v1.customers.retrieve(subbed["customer"].id).balance == 0


def test_paid_invoices_have_payments_charges_and_fees(fake, client):
    subbed = subscribe(fake, client)
    invoice_id = subbed["subscription"]["latest_invoice"]

    assert "payments" not in client.v1.invoices.retrieve(invoice_id)  # includable only
    invoice = client.v1.invoices.retrieve(
        invoice_id, params={"expand": ["payments.data.payment.payment_intent"]}
    )
    (payment,) = invoice.payments.data
    assert payment.id.startswith("inpay_") and payment.object == "invoice_payment"
    assert (payment.amount_paid, payment.amount_requested, payment.currency) == (900, 900, "eur")
    assert (payment.invoice, payment.is_default, payment.status) == (invoice_id, True, "paid")
    assert payment.status_transitions.paid_at == invoice.status_transitions.paid_at
    assert payment.payment.type == "payment_intent"
    intent = payment.payment.payment_intent
    assert (intent.amount, intent.currency, intent.status) == (900, "eur", "succeeded")
    assert intent.customer == subbed["customer"].id

    charge = client.v1.charges.retrieve(
        intent.latest_charge, params={"expand": ["balance_transaction", "payment_intent"]}
    )
    assert charge.id.startswith("ch_") and charge.payment_intent.id == intent.id
    assert (charge.amount, charge.amount_captured, charge.amount_refunded) == (900, 900, 0)
    assert (charge.paid, charge.refunded, charge.status) == (True, False, "succeeded")
    transaction = charge.balance_transaction
    assert (transaction.amount, transaction.fee, transaction.net) == (900, 56, 844)
    assert (transaction.type, transaction.source) == ("charge", charge.id)
    assert transaction.fee_details[0].type == "stripe_fee"
    assert client.v1.balance_transactions.retrieve(transaction.id).fee == 56
    assert client.v1.invoice_payments.retrieve(payment.id).invoice == invoice_id

    # An open (failed) invoice has no payment yet.
    failed = fake.fail_payment(subbed["subscription"]["id"])
    open_invoice = client.v1.invoices.retrieve(
        failed["latest_invoice"], params={"expand": ["payments"]}
    )
    assert (open_invoice.status, open_invoice.payments.data) == ("open", [])

    other = subscribe(fake, client)
    newest_first = [failed["latest_invoice"], invoice_id]
    listed = client.v1.invoices.list(params={"customer": subbed["customer"].id})
    assert [invoice.id for invoice in listed.data] == newest_first
    by_subscription = client.v1.invoices.list(params={"subscription": other["subscription"]["id"]})
    assert [invoice.id for invoice in by_subscription.data] == [
        other["subscription"]["latest_invoice"]
    ]
    assert [i.id for i in client.v1.invoices.list(params={"status": "open"}).data] == [
        failed["latest_invoice"]
    ]
    page = client.v1.invoices.list(params={"limit": 1, "starting_after": newest_first[0]})
    assert [invoice.id for invoice in page.data] == [invoice_id]


def first_charge(client: stripe.StripeClient, invoice_id: str) -> tuple[str, str]:
    """(PaymentIntent id, Charge id) that paid the invoice."""
    invoice = client.v1.invoices.retrieve(
        invoice_id, params={"expand": ["payments.data.payment.payment_intent"]}
    )
    intent = invoice.payments.data[0].payment.payment_intent
    return intent.id, intent.latest_charge


def test_refunds_partial_then_the_rest_then_refused(fake, client):
    subbed = subscribe(fake, client)
    intent_id, charge_id = first_charge(client, subbed["subscription"]["latest_invoice"])

    params = {
        "payment_intent": intent_id,
        "amount": 300,
        "reason": "requested_by_customer",
        "metadata": {"order": "7"},
    }
    first = client.v1.refunds.create(params=params, options={"idempotency_key": "refund-1"})
    replay = client.v1.refunds.create(params=params, options={"idempotency_key": "refund-1"})
    assert replay.id == first.id  # the retry did not refund twice
    assert first.id.startswith("re_") and first.object == "refund"
    assert (first.amount, first.charge, first.payment_intent) == (300, charge_id, intent_id)
    assert (first.status, first.reason, first.currency) == (
        "succeeded",
        "requested_by_customer",
        "eur",
    )
    assert first.metadata.to_dict() == {"order": "7"}
    transaction = client.v1.balance_transactions.retrieve(first.balance_transaction)
    assert (transaction.amount, transaction.fee, transaction.net) == (-300, 0, -300)
    assert (transaction.type, transaction.source) == ("refund", first.id)
    charge = client.v1.charges.retrieve(charge_id)
    assert (charge.amount_refunded, charge.refunded) == (300, False)

    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create(params={"charge": charge_id, "amount": 601})
    assert (too_much.value.http_status, too_much.value.code) == (400, "amount_too_large")
    assert too_much.value.param == "amount"

    rest = client.v1.refunds.create(params={"charge": charge_id})
    assert (rest.amount, rest.payment_intent) == (600, intent_id)
    charge = client.v1.charges.retrieve(charge_id)
    assert (charge.amount_refunded, charge.refunded) == (900, True)

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.refunds.create(params={"payment_intent": intent_id})
    assert (refused.value.http_status, refused.value.code) == (400, "charge_already_refunded")

    listed = client.v1.refunds.list(params={"charge": charge_id})
    assert [refund.id for refund in listed.data] == [rest.id, first.id]
    assert client.v1.refunds.list(params={"payment_intent": intent_id}).data[1].id == first.id
    assert client.v1.refunds.retrieve(rest.id).amount == 600

    events = [e for e in fake.events() if e["type"] in ("refund.created", "charge.refunded")]
    assert [e["type"] for e in events] == ["refund.created", "charge.refunded"] * 2
    assert events[2]["data"]["object"]["id"] == rest.id
    assert events[3]["data"]["object"]["refunded"] is True
    assert events[3]["data"]["previous_attributes"] == {"amount_refunded": 300, "refunded": False}


def test_cancel_with_prorate_and_invoice_now_credits_the_unused_time(fake, client):
    subbed = subscribe(fake, client)
    canceled = client.v1.subscriptions.cancel(
        subbed["subscription"]["id"], params={"prorate": True, "invoice_now": True}
    )
    assert canceled.status == "canceled"
    assert canceled.latest_invoice != subbed["subscription"]["latest_invoice"]
    invoice = client.v1.invoices.retrieve(canceled.latest_invoice)
    # Under a minute of the 30 days went by: the credit rounds to the whole 9.00.
    assert line_summary(invoice) == [(-900, True)]
    assert (invoice.status, invoice.amount_paid, invoice.ending_balance) == ("paid", 0, -900)
    assert client.v1.customers.retrieve(subbed["customer"].id).balance == -900
    assert [event["type"] for event in fake.events()[-2:]] == [
        "customer.subscription.deleted",
        "invoice.paid",
    ]

    # Without both flags nothing is credited (refunds are the app's job: POST /v1/refunds).
    other = subscribe(fake, client)
    plain = client.v1.subscriptions.cancel(other["subscription"]["id"], params={"prorate": True})
    assert plain.latest_invoice == other["subscription"]["latest_invoice"]
    assert client.v1.customers.retrieve(other["customer"].id).balance == 0


def test_injected_faults_raise_in_the_library_and_change_no_state(fake, client):
    subbed = subscribe(fake, client)
    intent_id, charge_id = first_charge(client, subbed["subscription"]["latest_invoice"])
    customer_id = subbed["customer"].id
    events_before = len(fake.events())

    with stripe_client(fake.api_base, retries=0) as once:
        fake.inject_fault(503, path_prefix="/v1/customers", method="POST")
        with pytest.raises(stripe.APIError) as unavailable:
            once.v1.customers.update(customer_id, params={"name": "Changed"})
        assert unavailable.value.http_status == 503
        assert once.v1.customers.retrieve(customer_id).name == "Ada"  # GET: not matched

        fake.inject_fault(429)
        with pytest.raises(stripe.RateLimitError):
            once.v1.customers.retrieve(customer_id)
        fake.inject_fault(402, path_prefix="/v1/refunds")
        with pytest.raises(stripe.CardError) as declined:
            once.v1.refunds.create(params={"charge": charge_id})
        assert declined.value.code == "card_declined"
        fake.inject_fault(404)
        with pytest.raises(stripe.InvalidRequestError) as missing:
            once.v1.charges.retrieve(charge_id)
        assert missing.value.code == "resource_missing"
        fake.inject_fault("drop", count=2, path_prefix="/v1/refunds")
        for _ in range(2):
            with pytest.raises(stripe.APIConnectionError):
                once.v1.refunds.create(params={"payment_intent": intent_id, "amount": 100})

        charge = once.v1.charges.retrieve(charge_id)
        assert (charge.amount_refunded, charge.refunded) == (0, False)
        assert once.v1.refunds.list(params={"charge": charge_id}).data == []
        assert once.v1.customers.retrieve(customer_id).name == "Ada"
        assert len(fake.events()) == events_before
        assert fake.faults() == []  # all used up

    statuses = [(entry["method"], entry["status"]) for entry in fake.requests_log()[-10:]]
    assert statuses == [
        ("POST", 503),
        ("GET", 200),
        ("GET", 429),
        ("POST", 402),
        ("GET", 404),
        ("POST", None),
        ("POST", None),
        ("GET", 200),
        ("GET", 200),
        ("GET", 200),
    ]

    fake.inject_fault(500, count=5, method="get")
    assert fake.faults() == [{"status": 500, "count": 5, "path_prefix": None, "method": "GET"}]
    fake.clear_faults()
    assert fake.faults() == []
    assert client.v1.charges.retrieve(charge_id).id == charge_id
    with pytest.raises(FakeStripeError) as bad:
        fake.inject_fault(200)
    assert bad.value.status == 400


def test_the_library_retries_an_injected_500_with_the_same_idempotency_key(fake, client):
    subbed = subscribe(fake, client)
    _, charge_id = first_charge(client, subbed["subscription"]["latest_invoice"])
    fake.inject_fault(500, path_prefix="/v1/refunds", method="POST")

    refund = client.v1.refunds.create(params={"charge": charge_id, "amount": 100})  # retries=2
    assert refund.amount == 100
    assert client.v1.charges.retrieve(charge_id).amount_refunded == 100  # refunded once
    posts = [entry for entry in fake.requests_log() if entry["path"] == "/v1/refunds"]
    assert [entry["status"] for entry in posts] == [500, 200]
    assert (
        posts[0]["idempotency_key"] and posts[0]["idempotency_key"] == (posts[1]["idempotency_key"])
    )


def test_requests_log_and_reset(fake, client):
    customer = client.v1.customers.create(
        params={"email": "log@example.com"}, options={"idempotency_key": "log-key"}
    )
    client.v1.customers.retrieve(customer.id)
    fake.configure(auto_deliver=True)  # /_test/ routes are not logged
    assert fake.requests_log() == [
        {"method": "POST", "path": "/v1/customers", "idempotency_key": "log-key", "status": 200},
        {
            "method": "GET",
            "path": f"/v1/customers/{customer.id}",
            "idempotency_key": None,
            "status": 200,
        },
    ]
    fake.clear_requests_log()
    assert fake.requests_log() == []

    fake.inject_fault(500, count=3)
    configured = fake.configure(account_api_version="2024-06-20")
    assert configured["account_api_version"] == "2024-06-20"
    with pytest.raises(stripe.APIError):
        client.v1.customers.create(
            params={"email": "x@example.com"}, options={"max_network_retries": 0}
        )
    assert [fault["count"] for fault in fake.faults()] == [2]
    fake.reset()
    assert (fake.faults(), fake.requests_log()) == ([], [])
    assert fake.configure()["account_api_version"] == API_VERSION
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.retrieve(customer.id)  # gone with the reset


def test_an_old_account_api_version_renders_events_the_old_way(fake, client, receiver):
    fake.configure(account_api_version="2024-06-20")
    subbed = subscribe(fake, client)
    subscription_id, item = subbed["subscription"]["id"], subbed["item"]
    intent_id, charge_id = first_charge(client, subbed["subscription"]["latest_invoice"])

    # Requests keep the library's pinned version: the current shape.
    current = client.v1.subscriptions.retrieve(subscription_id)
    assert "current_period_end" not in current
    assert current["items"].data[0].current_period_end == item["current_period_end"]

    fake.flush()
    delivered = receiver.events()
    assert {event.api_version for event in delivered} == {"2024-06-20"}
    by_type = {event["type"]: event["data"]["object"] for event in fake.events()}
    created = by_type["customer.subscription.created"]
    assert created["current_period_start"] == item["current_period_start"]
    assert created["current_period_end"] == item["current_period_end"]
    assert "current_period_end" not in created["items"]["data"][0]
    assert created["plan"]["id"] == subbed["price"].id
    invoice = by_type["invoice.paid"]
    assert "parent" not in invoice
    assert (invoice["subscription"], invoice["paid"]) == (subscription_id, True)
    assert (invoice["payment_intent"], invoice["charge"]) == (intent_id, charge_id)
    line = invoice["lines"]["data"][0]
    assert (line["subscription"], line["type"], line["proration"]) == (
        subscription_id,
        "subscription",
        False,
    )
    assert line["price"]["id"] == subbed["price"].id and "pricing" not in line

    client.v1.subscriptions.update(subscription_id, params={"cancel_at_period_end": True})
    flagged = fake.events("customer.subscription.updated")[-1]
    assert flagged["data"]["previous_attributes"] == {
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
    }
    assert flagged["data"]["object"]["current_period_end"] == item["current_period_end"]

    yearly = another_price(client, subbed["product"].id, 9000, "year")
    change_price(client, subbed, yearly.id)
    updated = fake.events("customer.subscription.updated")[-1]
    assert updated["api_version"] == "2024-06-20"
    assert (
        updated["data"]["previous_attributes"]["current_period_end"] == (item["current_period_end"])
    )
    assert updated["data"]["object"]["current_period_end"] > item["current_period_end"]

    # A request pinned to an old version gets the old shape too.
    status, headers, body = raw(
        "GET",
        f"{fake.api_base}/v1/subscriptions/{subscription_id}",
        headers={"Authorization": "Bearer sk_test_fake", "Stripe-Version": "2024-06-20"},
    )
    assert (status, headers["Stripe-Version"]) == (200, "2024-06-20")
    old = json.loads(body)
    assert old["current_period_end"] == updated["data"]["object"]["current_period_end"]
    assert "current_period_end" not in old["items"]["data"][0]

    fake.reset()  # back to the current version
    subscribe(fake, client)
    assert {event["api_version"] for event in fake.events()} == {API_VERSION}
    created = fake.events("customer.subscription.created")[0]["data"]["object"]
    assert "current_period_end" not in created
