"""The fake's Stripe objects and the state transitions that emit events.

Everything is in memory behind one lock. Objects are stored as plain dicts; subscriptions,
invoices and checkout sessions keep a few private ``_`` keys and are rendered into their API
shape on the way out, so an embedded price always shows the price's current state, as Stripe
does.

Money: every invoice paid with a positive amount gets a PaymentIntent, a Charge, a balance
transaction (with Stripe's card fee) and an InvoicePayment linking it to the invoice. A
negative invoice total becomes a credit on the customer's ``balance``, which later invoices
use up before charging the card (``starting_balance`` / ``ending_balance``).
"""

from __future__ import annotations

import copy
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .versions import downgrade, is_legacy

API_VERSION = "2026-10-28.endive"
DAY = 86_400
# Billing periods of this fake: a month is 30 days and a year 365, whatever the calendar says.
INTERVAL_SECONDS = {"day": DAY, "week": 7 * DAY, "month": 30 * DAY, "year": 365 * DAY}
LIVE_SUBSCRIPTION_STATUSES = ("active", "past_due", "trialing", "unpaid", "incomplete", "paused")
SUBSCRIPTION_STATUSES = (*LIVE_SUBSCRIPTION_STATUSES, "canceled", "incomplete_expired")
INVOICE_STATUSES = ("draft", "open", "paid", "uncollectible", "void")
PRORATION_BEHAVIORS = ("create_prorations", "always_invoice", "none")
PAYMENT_BEHAVIORS = (
    "allow_incomplete",
    "default_incomplete",
    "error_if_incomplete",
    "pending_if_incomplete",
)
BILLING_CYCLE_ANCHORS = ("now", "unchanged")
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
# Stripe's standard card pricing: 2.9 % (in thousandths) plus 30 cents per successful charge.
FEE_PER_MILLE = 29
FEE_FIXED = 30
_ALPHABET = string.ascii_letters + string.digits


class ApiError(Exception):
    """Becomes a Stripe-shaped ``{"error": {...}}`` response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = error_type
        self.code = code
        self.param = param
        self.decline_code = decline_code

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.decline_code:
            error["decline_code"] = self.decline_code
        if self.param:
            error["param"] = self.param
        return {"error": error}


def missing(kind: str, object_id: str, param: str = "id") -> ApiError:
    return ApiError(404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def now() -> int:
    return int(time.time())


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """A deep copy without the private ``_`` keys."""
    return {key: copy.deepcopy(value) for key, value in obj.items() if not key.startswith("_")}


def list_object(data: list[dict[str, Any]], url: str, *, has_more: bool = False) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


class RequestContext:
    """Who caused a change: an API request (its id and idempotency key) or Stripe itself."""

    def __init__(self, request_id: str | None = None, idempotency_key: str | None = None):
        self.request_id = request_id
        self.idempotency_key = idempotency_key


AUTOMATIC = RequestContext()


@dataclass
class LineSpec:
    """One invoice line before its invoice exists: what a subscription item is charged or
    credited (a negative ``amount``) for which stretch of time."""

    item_id: str
    price_id: str
    quantity: int
    amount: int
    start: int
    end: int
    proration: bool = False
    description: str | None = None  # None: "<quantity> x <product name>"


class State:
    def __init__(
        self, *, public_base: str, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.lock = threading.RLock()
        self.public_base = public_base
        self.on_event = on_event
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self._seq = 0
            self.customers: dict[str, dict[str, Any]] = {}
            self.products: dict[str, dict[str, Any]] = {}
            self.prices: dict[str, dict[str, Any]] = {}
            self.checkout_sessions: dict[str, dict[str, Any]] = {}
            self.portal_sessions: dict[str, dict[str, Any]] = {}
            self.subscriptions: dict[str, dict[str, Any]] = {}
            self.invoices: dict[str, dict[str, Any]] = {}
            self.invoice_payments: dict[str, dict[str, Any]] = {}
            self.payment_intents: dict[str, dict[str, Any]] = {}
            self.charges: dict[str, dict[str, Any]] = {}
            self.balance_transactions: dict[str, dict[str, Any]] = {}
            self.refunds: dict[str, dict[str, Any]] = {}
            # The version events are rendered in (an account setting, see /_test/config).
            self.account_api_version = API_VERSION
            self.events: list[dict[str, Any]] = []
            self.events_by_id: dict[str, dict[str, Any]] = {}
            self.idempotency: dict[str, tuple[str, int, bytes]] = {}

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- events ------------------------------------------------------------------------------

    def _emit(
        self,
        event_type: str,
        obj: dict[str, Any],
        ctx: RequestContext,
        previous: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        version = self.account_api_version
        obj = copy.deepcopy(obj)
        if is_legacy(version):
            # Rebuild the old object from the new one and diff the old shapes, so that
            # previous_attributes name the keys an old-version reader sees change.
            # (A deep copy: downgrade works in place, and must not see the same dict twice.)
            if previous is not None:
                before = downgrade(copy.deepcopy({**obj, **previous}), self)
            obj = downgrade(obj, self)
            if previous is not None:
                previous = self._changes(before, obj)
        data: dict[str, Any] = {"object": obj}
        if previous is not None:
            data["previous_attributes"] = previous
        event = {
            "id": new_id("evt_"),
            "object": "event",
            "api_version": version,
            "created": now(),
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": ctx.request_id, "idempotency_key": ctx.idempotency_key},
            "type": event_type,
        }
        self.events.append(event)
        self.events_by_id[event["id"]] = event
        if self.on_event is not None:
            self.on_event(copy.deepcopy(event))
        return event

    @staticmethod
    def _changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """``previous_attributes``: the old value of every top-level key that changed."""
        return {key: before.get(key) for key in after if before.get(key) != after[key]}

    # -- lookups -----------------------------------------------------------------------------

    def lookup(self, object_id: str) -> dict[str, Any] | None:
        """The rendered object with this id, whatever its type (for ``expand``)."""
        for prefix, table, render in (
            ("cus_", self.customers, public),
            ("prod_", self.products, public),
            ("price_", self.prices, public),
            ("sub_", self.subscriptions, self.render_subscription),
            ("in_", self.invoices, public),
            ("cs_", self.checkout_sessions, self.render_checkout_session),
            ("inpay_", self.invoice_payments, public),
            ("pi_", self.payment_intents, public),
            ("ch_", self.charges, public),
            ("txn_", self.balance_transactions, public),
            ("re_", self.refunds, public),
        ):
            if object_id.startswith(prefix) and object_id in table:
                return render(table[object_id])
        return None

    def _get(self, table: dict[str, dict[str, Any]], kind: str, object_id: str, param: str = "id"):
        try:
            return table[object_id]
        except KeyError:
            raise missing(kind, object_id, param) from None

    def customer(self, customer_id: str, param: str = "id") -> dict[str, Any]:
        return self._get(self.customers, "customer", customer_id, param)

    def product(self, product_id: str, param: str = "id") -> dict[str, Any]:
        return self._get(self.products, "product", product_id, param)

    def price(self, price_id: str, param: str = "id") -> dict[str, Any]:
        return self._get(self.prices, "price", price_id, param)

    def subscription(self, subscription_id: str) -> dict[str, Any]:
        return self._get(self.subscriptions, "subscription", subscription_id)

    def invoice(self, invoice_id: str) -> dict[str, Any]:
        return self._get(self.invoices, "invoice", invoice_id)

    def invoice_payment(self, invoice_payment_id: str) -> dict[str, Any]:
        return self._get(self.invoice_payments, "invoice_payment", invoice_payment_id)

    def payment_intent(self, payment_intent_id: str, param: str = "id") -> dict[str, Any]:
        return self._get(self.payment_intents, "payment_intent", payment_intent_id, param)

    def charge(self, charge_id: str, param: str = "id") -> dict[str, Any]:
        return self._get(self.charges, "charge", charge_id, param)

    def balance_transaction(self, transaction_id: str) -> dict[str, Any]:
        return self._get(self.balance_transactions, "balance_transaction", transaction_id)

    def refund(self, refund_id: str) -> dict[str, Any]:
        return self._get(self.refunds, "refund", refund_id)

    def checkout_session(self, session_id: str) -> dict[str, Any]:
        return self._get(self.checkout_sessions, "checkout.session", session_id)

    def portal_session(self, session_id: str) -> dict[str, Any]:
        return self._get(self.portal_sessions, "billing_portal.session", session_id)

    # -- customers, products, prices ---------------------------------------------------------

    def create_customer(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = {
            "id": new_id("cus_", 14),
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": now(),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": params.get("description"),
            "discount": None,
            "email": params.get("email"),
            "invoice_prefix": new_id("", 8).upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": merge_metadata({}, params.get("metadata")),
            "name": params.get("name"),
            "next_invoice_sequence": 1,
            "phone": params.get("phone"),
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
            "_seq": self._next_seq(),
        }
        self.customers[customer["id"]] = customer
        return public(customer)

    def update_customer(self, customer_id: str, params: dict[str, Any]) -> dict[str, Any]:
        customer = self.customer(customer_id)
        for key in ("email", "name", "description", "phone"):
            if key in params:
                customer[key] = params[key] or None
        if "metadata" in params:
            customer["metadata"] = merge_metadata(customer["metadata"], params["metadata"])
        return public(customer)

    def create_product(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("name"):
            raise ApiError(
                400, "Missing required param: name.", code="parameter_missing", param="name"
            )
        created = now()
        product = {
            "id": params.get("id") or new_id("prod_", 14),
            "object": "product",
            "active": params.get("active", True),
            "created": created,
            "default_price": None,
            "description": params.get("description") or None,
            "images": [],
            "livemode": False,
            "marketing_features": [],
            "metadata": merge_metadata({}, params.get("metadata")),
            "name": params["name"],
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": None,
            "type": "service",
            "unit_label": None,
            "updated": created,
            "url": None,
            "_seq": self._next_seq(),
        }
        if product["id"] in self.products:
            raise ApiError(
                400,
                f"Product already exists: '{product['id']}'.",
                code="resource_already_exists",
                param="id",
            )
        self.products[product["id"]] = product
        return public(product)

    def update_product(self, product_id: str, params: dict[str, Any]) -> dict[str, Any]:
        product = self.product(product_id)
        if "name" in params:
            if not params["name"]:
                raise ApiError(400, "You must provide a name for the product.", param="name")
            product["name"] = params["name"]
        if "description" in params:
            product["description"] = params["description"] or None
        if "active" in params:
            product["active"] = params["active"]
        if "metadata" in params:
            product["metadata"] = merge_metadata(product["metadata"], params["metadata"])
        product["updated"] = now()
        return public(product)

    def delete_product(self, product_id: str) -> dict[str, Any]:
        """Stripe deletes a product only while it has no prices (else: archive it)."""
        self.product(product_id)
        if any(price["product"] == product_id for price in self.prices.values()):
            raise ApiError(
                400,
                "This product cannot be deleted because it has one or more user-created prices.",
            )
        del self.products[product_id]
        return {"id": product_id, "object": "product", "deleted": True}

    def create_price(self, params: dict[str, Any]) -> dict[str, Any]:
        product_id = params.get("product")
        if not product_id:
            raise ApiError(
                400, "Missing required param: product.", code="parameter_missing", param="product"
            )
        self.product(product_id, param="product")
        currency = params.get("currency")
        if not currency:
            raise ApiError(
                400, "Missing required param: currency.", code="parameter_missing", param="currency"
            )
        unit_amount = params.get("unit_amount")
        if unit_amount is None:
            raise ApiError(
                400,
                "Missing required param: unit_amount.",
                code="parameter_missing",
                param="unit_amount",
            )
        recurring = params.get("recurring")
        rendered_recurring = None
        if recurring is not None:
            if not isinstance(recurring, dict) or recurring.get("interval") not in INTERVAL_SECONDS:
                raise ApiError(
                    400,
                    "Invalid recurring[interval]: must be one of day, week, month, or year",
                    param="recurring[interval]",
                )
            rendered_recurring = {
                "interval": recurring["interval"],
                "interval_count": as_int(
                    recurring.get("interval_count", 1), "recurring[interval_count]"
                ),
                "meter": None,
                "trial_period_days": None,
                "usage_type": "licensed",
            }
        price = {
            "id": new_id("price_"),
            "object": "price",
            "active": params.get("active", True),
            "billing_scheme": "per_unit",
            "created": now(),
            "currency": currency.lower(),
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": params.get("lookup_key"),
            "metadata": merge_metadata({}, params.get("metadata")),
            "nickname": params.get("nickname"),
            "product": product_id,
            "recurring": rendered_recurring,
            "tax_behavior": "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "recurring" if rendered_recurring else "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": str(unit_amount),
            "_seq": self._next_seq(),
        }
        self.prices[price["id"]] = price
        return public(price)

    def update_price(self, price_id: str, params: dict[str, Any]) -> dict[str, Any]:
        price = self.price(price_id)
        for key in ("active", "nickname", "lookup_key"):
            if key in params:
                price[key] = params[key]
        if "metadata" in params:
            price["metadata"] = merge_metadata(price["metadata"], params["metadata"])
        return public(price)

    # -- checkout ----------------------------------------------------------------------------

    def create_checkout_session(self, params: dict[str, Any]) -> dict[str, Any]:
        mode = params.get("mode")
        if mode != "subscription":
            raise ApiError(
                400,
                "This fake Stripe supports Checkout in mode=subscription only "
                f"(got mode={mode!r}).",
                param="mode",
            )
        customer_id = params.get("customer")
        if customer_id:
            self.customer(customer_id, param="customer")
        items = params.get("line_items")
        if not isinstance(items, list) or not items:
            raise ApiError(
                400,
                "Missing required param: line_items.",
                code="parameter_missing",
                param="line_items",
            )
        line_items = []
        currency = None
        for index, item in enumerate(items):
            param = f"line_items[{index}][price]"
            if not isinstance(item, dict) or not item.get("price"):
                raise ApiError(
                    400, f"Missing required param: {param}.", code="parameter_missing", param=param
                )
            price = self.price(item["price"], param=param)
            if not price["active"]:
                raise ApiError(
                    400,
                    f"The price specified is inactive: '{price['id']}'. "
                    "This field only accepts active prices.",
                    param=param,
                )
            if price["recurring"] is None:
                raise ApiError(
                    400,
                    "You must specify at least one recurring price in `subscription` mode.",
                    param=param,
                )
            if currency not in (None, price["currency"]):
                raise ApiError(400, "All prices must use the same currency.", param=param)
            currency = price["currency"]
            quantity = as_int(item.get("quantity", 1), f"line_items[{index}][quantity]")
            line_items.append({"price": price["id"], "quantity": quantity})
        amount = sum(self.prices[i["price"]]["unit_amount"] * i["quantity"] for i in line_items)
        subscription_data = params.get("subscription_data") or {}
        created = now()
        session_id = new_id("cs_test_", 58)
        session = {
            "id": session_id,
            "object": "checkout.session",
            "after_expiration": None,
            "allow_promotion_codes": params.get("allow_promotion_codes"),
            "amount_subtotal": amount,
            "amount_total": amount,
            "automatic_tax": {"enabled": False, "liability": None, "status": None},
            "billing_address_collection": None,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "client_secret": None,
            "consent": None,
            "consent_collection": None,
            "created": created,
            "currency": currency,
            "custom_fields": [],
            "custom_text": {
                "after_submit": None,
                "shipping_address": None,
                "submit": None,
                "terms_of_service_acceptance": None,
            },
            "customer": customer_id or None,
            "customer_creation": None if customer_id else "always",
            "customer_details": None,
            "customer_email": params.get("customer_email"),
            "expires_at": created + DAY,
            "invoice": None,
            "invoice_creation": None,
            "livemode": False,
            "locale": params.get("locale"),
            "metadata": merge_metadata({}, params.get("metadata")),
            "mode": mode,
            "payment_intent": None,
            "payment_link": None,
            "payment_method_collection": "always",
            "payment_method_types": ["card"],
            "payment_status": "unpaid",
            "phone_number_collection": {"enabled": False},
            "recovered_from": None,
            "setup_intent": None,
            "shipping_address_collection": None,
            "shipping_cost": None,
            "shipping_options": [],
            "status": "open",
            "submit_type": None,
            "subscription": None,
            "success_url": params.get("success_url"),
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": "hosted",
            "url": f"{self.public_base}/checkout/{session_id}",
            "_line_items": line_items,
            "_subscription_metadata": merge_metadata({}, subscription_data.get("metadata")),
            "_seq": self._next_seq(),
        }
        self.checkout_sessions[session_id] = session
        return self.render_checkout_session(session)

    def render_checkout_session(self, session: dict[str, Any]) -> dict[str, Any]:
        return public(session)

    def checkout_line_items(self, session_id: str) -> dict[str, Any]:
        session = self.checkout_session(session_id)
        data = []
        for item in session["_line_items"]:
            price = self.prices[item["price"]]
            amount = price["unit_amount"] * item["quantity"]
            data.append(
                {
                    "id": "li_" + session_id[-24:] + str(len(data)),
                    "object": "item",
                    "amount_discount": 0,
                    "amount_subtotal": amount,
                    "amount_tax": 0,
                    "amount_total": amount,
                    "currency": price["currency"],
                    "description": self.products[price["product"]]["name"],
                    "price": public(price),
                    "quantity": item["quantity"],
                }
            )
        return list_object(data, f"/v1/checkout/sessions/{session_id}/line_items")

    def complete_checkout(self, session_id: str) -> dict[str, Any]:
        """Pay an open session: the subscription, its first invoice, and their events."""
        session = self.checkout_session(session_id)
        if session["status"] != "open":
            raise ApiError(
                400,
                f"This Checkout Session is no longer open (status "
                f"{session['status']}): '{session_id}'.",
                param="id",
            )
        customer_id = session["customer"]
        if customer_id is None:
            customer_id = self.create_customer({"email": session["customer_email"]})["id"]
            session["customer"] = customer_id
        customer = self.customers[customer_id]
        subscription = self._new_subscription(
            customer_id, session["_line_items"], session["_subscription_metadata"]
        )
        invoice = self._new_invoice(subscription, billing_reason="subscription_create", paid=True)
        subscription["latest_invoice"] = invoice["id"]
        session.update(
            status="complete",
            payment_status="paid",
            subscription=subscription["id"],
            invoice=invoice["id"],
            url=None,
            customer_details={
                "address": None,
                "email": customer["email"] or session["customer_email"],
                "name": customer["name"],
                "phone": None,
                "tax_exempt": "none",
                "tax_ids": [],
            },
        )
        rendered = self.render_subscription(subscription)
        self._emit("customer.subscription.created", rendered, AUTOMATIC)
        self._emit("checkout.session.completed", self.render_checkout_session(session), AUTOMATIC)
        self._emit("invoice.paid", public(invoice), AUTOMATIC)
        return rendered

    def success_url(self, session: dict[str, Any]) -> str | None:
        url = session["success_url"]
        return url.replace("{CHECKOUT_SESSION_ID}", session["id"]) if url else None

    # -- billing portal ----------------------------------------------------------------------

    def create_portal_session(self, params: dict[str, Any]) -> dict[str, Any]:
        customer_id = params.get("customer")
        if not customer_id:
            raise ApiError(
                400, "Missing required param: customer.", code="parameter_missing", param="customer"
            )
        self.customer(customer_id, param="customer")
        session_id = new_id("bps_")
        session = {
            "id": session_id,
            "object": "billing_portal.session",
            "configuration": params.get("configuration") or "bpc_fakedefaultconfiguration",
            "created": now(),
            "customer": customer_id,
            "flow": None,
            "livemode": False,
            "locale": params.get("locale"),
            "on_behalf_of": None,
            "return_url": params.get("return_url"),
            "url": f"{self.public_base}/portal/{session_id}",
            "_seq": self._next_seq(),
        }
        self.portal_sessions[session_id] = session
        return public(session)

    def portal_subscriptions(self, session_id: str) -> list[dict[str, Any]]:
        customer_id = self.portal_session(session_id)["customer"]
        return [
            self.render_subscription(sub)
            for sub in sorted(self.subscriptions.values(), key=lambda s: -s["_seq"])
            if sub["customer"] == customer_id and sub["status"] in LIVE_SUBSCRIPTION_STATUSES
        ]

    # -- subscriptions -----------------------------------------------------------------------

    def _new_subscription(
        self, customer_id: str, line_items: list[dict[str, Any]], metadata: dict[str, str]
    ) -> dict[str, Any]:
        start = now()
        subscription_id = new_id("sub_")
        first_price = self.prices[line_items[0]["price"]]
        end = start + period_seconds(first_price)
        subscription = {
            "id": subscription_id,
            "object": "subscription",
            "billing_cycle_anchor": start,
            "cancel_at": None,
            "cancel_at_period_end": False,
            "canceled_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": "charge_automatically",
            "created": start,
            "currency": first_price["currency"],
            "customer": customer_id,
            "days_until_due": None,
            "default_payment_method": None,
            "description": None,
            "discounts": [],
            "ended_at": None,
            "latest_invoice": None,
            "livemode": False,
            "metadata": dict(metadata),
            "pause_collection": None,
            "schedule": None,
            "start_date": start,
            "status": "active",
            "test_clock": None,
            "trial_end": None,
            "trial_start": None,
            "_items": [
                {
                    "id": new_id("si_", 14),
                    "created": start,
                    "current_period_start": start,
                    "current_period_end": end,
                    "price": item["price"],
                    "quantity": item["quantity"],
                }
                for item in line_items
            ],
            # Prorations of create_prorations updates, billed on the next invoice (as Stripe
            # sweeps pending invoice items into it).
            "_pending": [],
            "_seq": self._next_seq(),
        }
        self.subscriptions[subscription_id] = subscription
        return subscription

    def render_subscription(self, subscription: dict[str, Any]) -> dict[str, Any]:
        rendered = public(subscription)
        items = []
        for item in subscription["_items"]:
            price = public(self.prices[item["price"]])
            items.append(
                {
                    "id": item["id"],
                    "object": "subscription_item",
                    "created": item["created"],
                    "current_period_end": item["current_period_end"],
                    "current_period_start": item["current_period_start"],
                    "discounts": [],
                    "metadata": {},
                    "plan": plan_of(price),
                    "price": price,
                    "quantity": item["quantity"],
                    "subscription": subscription["id"],
                    "tax_rates": [],
                }
            )
        rendered["items"] = {
            "object": "list",
            "data": items,
            "has_more": False,
            "total_count": len(items),
            "url": f"/v1/subscription_items?subscription={subscription['id']}",
        }
        return dict(sorted(rendered.items()))

    def list_subscriptions(self, params: dict[str, Any]) -> dict[str, Any]:
        status = params.get("status")
        if status is not None and status not in (*SUBSCRIPTION_STATUSES, "all", "ended"):
            raise ApiError(
                400,
                f"Invalid status: must be one of {', '.join(SUBSCRIPTION_STATUSES)}, all, or ended",
                param="status",
            )
        customer_id = params.get("customer")
        price_id = params.get("price")

        def wanted(sub: dict[str, Any]) -> bool:
            if customer_id and sub["customer"] != customer_id:
                return False
            if price_id and all(item["price"] != price_id for item in sub["_items"]):
                return False
            if status is None:
                return sub["status"] != "canceled" and sub["status"] != "incomplete_expired"
            if status == "ended":
                return sub["status"] in ("canceled", "incomplete_expired")
            return status == "all" or sub["status"] == status

        rows = [sub for sub in self.subscriptions.values() if wanted(sub)]
        return paginate(rows, params, "/v1/subscriptions", self.render_subscription)

    def update_subscription(
        self, subscription_id: str, params: dict[str, Any], ctx: RequestContext
    ) -> dict[str, Any]:
        subscription = self.subscription(subscription_id)
        before = self.render_subscription(subscription)
        if subscription["status"] == "canceled" and set(params) - {
            "metadata",
            "cancellation_details",
            "expand",
        }:
            raise ApiError(
                400,
                "A canceled subscription can only update its cancellation_details and metadata.",
            )
        behavior = choice(params, "proration_behavior", PRORATION_BEHAVIORS, "create_prorations")
        choice(params, "payment_behavior", PAYMENT_BEHAVIORS, "allow_incomplete")  # all pay
        anchor = choice(params, "billing_cycle_anchor", BILLING_CYCLE_ANCHORS, "unchanged")
        # Everything is checked before anything changes: a rejected request changes nothing.
        changes = self._item_changes(subscription, params["items"]) if "items" in params else []
        at = self._proration_time(subscription, params.get("proration_date"))
        invoice = None
        if changes or anchor == "now":
            invoice = self._change_plan(subscription, changes, behavior, anchor == "now", at)
        if "cancel_at_period_end" in params:
            self._set_cancel_at_period_end(subscription, params["cancel_at_period_end"])
        if "cancellation_details" in params:
            details = params["cancellation_details"] or {}
            for key in ("comment", "feedback"):
                if key in details:
                    subscription["cancellation_details"][key] = details[key] or None
        if "description" in params:
            subscription["description"] = params["description"] or None
        if "metadata" in params:
            subscription["metadata"] = merge_metadata(subscription["metadata"], params["metadata"])
        if subscription["cancel_at_period_end"]:
            subscription["cancel_at"] = period_end(subscription)  # a plan change moves it
        after = self.render_subscription(subscription)
        previous = self._changes(before, after)
        if previous:
            self._emit("customer.subscription.updated", after, ctx, previous)
        if invoice is not None:
            self._emit("invoice.paid", public(invoice), ctx)
        return after

    def _item_changes(
        self, subscription: dict[str, Any], items: Any
    ) -> list[tuple[dict[str, Any], dict[str, Any], int]]:
        """``items[i][id|price|quantity]`` checked: (stored item, new price, new quantity) of
        every item that changes. This fake changes existing items only (no adds or deletes)."""
        if not isinstance(items, list) or not items:
            raise ApiError(400, "Invalid array", param="items")
        by_id = {item["id"]: item for item in subscription["_items"]}
        changes = []
        for index, entry in enumerate(items):
            param = f"items[{index}]"
            if not isinstance(entry, dict):
                raise ApiError(400, "Invalid object", param=param)
            for key in entry:
                if key not in ("id", "price", "quantity"):
                    raise ApiError(400, f"Received unknown parameter: {param}[{key}]", param=param)
            if not entry.get("id"):
                raise ApiError(
                    400,
                    "This fake Stripe only changes existing subscription items: "
                    f"{param}[id] is required.",
                    code="parameter_missing",
                    param=f"{param}[id]",
                )
            item = by_id.get(entry["id"])
            if item is None:
                raise missing("subscription_item", entry["id"], f"{param}[id]")
            price = self.price(entry.get("price") or item["price"], param=f"{param}[price]")
            if price["id"] != item["price"]:
                self._check_plan_price(subscription, price, f"{param}[price]")
            quantity = as_int(entry.get("quantity", item["quantity"]), f"{param}[quantity]")
            if quantity < 1:
                raise ApiError(400, "Invalid positive integer", param=f"{param}[quantity]")
            if (price["id"], quantity) != (item["price"], item["quantity"]):
                changes.append((item, price, quantity))
        return changes

    @staticmethod
    def _check_plan_price(subscription: dict[str, Any], price: dict[str, Any], param: str) -> None:
        if not price["active"]:
            raise ApiError(
                400,
                f"The price specified is inactive: '{price['id']}'. "
                "This field only accepts active prices.",
                param=param,
            )
        if price["recurring"] is None:
            raise ApiError(
                400, "The price specified is not recurring: a subscription needs one.", param=param
            )
        if price["currency"] != subscription["currency"]:
            raise ApiError(
                400,
                f"The price's currency ({price['currency']}) is not the subscription's "
                f"({subscription['currency']}).",
                param=param,
            )

    @staticmethod
    def _proration_time(subscription: dict[str, Any], proration_date: Any) -> int:
        """When prorations are computed from: now, or ``proration_date`` (in the period)."""
        if proration_date is None:
            return now()
        at = as_int(proration_date, "proration_date")
        start = min(item["current_period_start"] for item in subscription["_items"])
        if not start <= at <= period_end(subscription):
            raise ApiError(
                400,
                "proration_date must be within the subscription's current period.",
                param="proration_date",
            )
        return at

    def _change_plan(
        self,
        subscription: dict[str, Any],
        changes: list[tuple[dict[str, Any], dict[str, Any], int]],
        behavior: str,
        anchor_now: bool,
        at: int,
    ) -> dict[str, Any] | None:
        """Apply item changes; the invoice billed at once, if any (already paid).

        A new interval (or ``billing_cycle_anchor=now``) restarts the period of every item now
        and bills at once, whatever the proration behavior, as Stripe does: credits for the
        unused old time (unless ``none``) plus the full new period. Otherwise the period
        stays; ``always_invoice`` bills the prorations (credit for the old price, debit for
        the new, over the remaining time) at once, ``create_prorations`` leaves them for the
        next invoice, ``none`` only changes the price.
        """
        new = {item["id"]: (price, quantity) for item, price, quantity in changes}
        reset = anchor_now or any(
            period_seconds(price) != period_seconds(self.prices[item["price"]])
            for item, price, _ in changes
        )
        specs: list[LineSpec] = []
        start = now()
        for item in subscription["_items"]:
            if not reset and item["id"] not in new:
                continue
            price, quantity = new.get(item["id"], (self.prices[item["price"]], item["quantity"]))
            if behavior != "none":
                specs += self._proration_specs(item, price, quantity, at, debit=not reset)
            item["price"], item["quantity"] = price["id"], quantity
            if reset:
                item["current_period_start"] = start
                item["current_period_end"] = start + period_seconds(price)
        if reset:
            subscription["billing_cycle_anchor"] = start
            specs += self._period_specs(subscription)
        elif behavior == "create_prorations":
            subscription["_pending"] += specs
            return None
        elif behavior == "none" or not (specs or subscription["_pending"]):
            return None
        invoice = self._new_invoice(
            subscription, billing_reason="subscription_update", paid=True, specs=specs
        )
        subscription["latest_invoice"] = invoice["id"]
        return invoice

    def _proration_specs(
        self,
        item: dict[str, Any],
        price: dict[str, Any],
        quantity: int,
        at: int,
        *,
        debit: bool,
    ) -> list[LineSpec]:
        """The credit for the item's unused time from ``at`` on (at its current price), and
        with ``debit`` the charge for that time at ``price`` x ``quantity``."""
        start, end = item["current_period_start"], item["current_period_end"]
        remaining = end - max(at, start)
        if remaining <= 0 or end <= start:
            return []
        old = self.prices[item["price"]]
        after = datetime.fromtimestamp(at, tz=UTC).strftime("%d %b %Y")
        specs = []
        old_amount = old["unit_amount"] * item["quantity"]
        if old_amount:
            specs.append(
                LineSpec(
                    item["id"],
                    old["id"],
                    item["quantity"],
                    -prorate(old_amount, remaining, end - start),
                    at,
                    end,
                    proration=True,
                    description=f"Unused time on {item['quantity']} x "
                    f"{self.products[old['product']]['name']} after {after}",
                )
            )
        new_amount = price["unit_amount"] * quantity
        if debit and new_amount:
            specs.append(
                LineSpec(
                    item["id"],
                    price["id"],
                    quantity,
                    prorate(new_amount, remaining, end - start),
                    at,
                    end,
                    proration=True,
                    description=f"Remaining time on {quantity} x "
                    f"{self.products[price['product']]['name']} after {after}",
                )
            )
        return specs

    def _set_cancel_at_period_end(self, subscription: dict[str, Any], flag: bool) -> None:
        subscription["cancel_at_period_end"] = flag
        details = subscription["cancellation_details"]
        if flag:
            subscription["cancel_at"] = period_end(subscription)
            subscription["canceled_at"] = now()
            details["reason"] = "cancellation_requested"
        else:
            subscription["cancel_at"] = None
            subscription["canceled_at"] = None
            subscription["cancellation_details"] = {
                "comment": None,
                "feedback": None,
                "reason": None,
            }

    def portal_cancel(self, session_id: str, subscription_id: str) -> dict[str, Any]:
        """The portal's "Cancel subscription": cancel at the end of the period (its default)."""
        customer_id = self.portal_session(session_id)["customer"]
        subscription = self.subscriptions.get(subscription_id)
        if subscription is None or subscription["customer"] != customer_id:
            raise missing("subscription", subscription_id)
        if subscription["cancel_at_period_end"] or subscription["status"] == "canceled":
            return self.render_subscription(subscription)
        return self.update_subscription(subscription_id, {"cancel_at_period_end": True}, AUTOMATIC)

    def cancel_subscription(
        self,
        subscription_id: str,
        ctx: RequestContext,
        *,
        reason: str = "cancellation_requested",
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        subscription = self.subscription(subscription_id)
        if subscription["status"] == "canceled":
            raise ApiError(
                400,
                f"This subscription has already been canceled: '{subscription_id}'.",
                param="id",
            )
        params = params or {}
        at = now()
        final = self._final_invoice(subscription, params, at)
        subscription["_pending"] = []  # not billed above: dropped, as by an immediate cancel
        subscription.update(
            status="canceled",
            cancel_at_period_end=False,
            cancel_at=None,
            canceled_at=subscription["canceled_at"] or at,
            ended_at=at,
        )
        details = subscription["cancellation_details"]
        details["reason"] = reason
        for key in ("comment", "feedback"):
            value = (params.get("cancellation_details") or {}).get(key)
            if value:
                details[key] = value
        rendered = self.render_subscription(subscription)
        self._emit("customer.subscription.deleted", rendered, ctx)
        if final is not None:
            self._emit("invoice.paid", public(final), ctx)
        return rendered

    def _final_invoice(
        self, subscription: dict[str, Any], params: dict[str, Any], at: int
    ) -> dict[str, Any] | None:
        """``invoice_now``: bill pending prorations now and, with ``prorate``, credit the unused
        time of the current period. The invoice is paid at once; a negative total becomes a
        credit on the customer's balance. (``prorate`` alone changes nothing here; Stripe
        would leave a pending credit for the customer's next invoice.)"""
        if not params.get("invoice_now"):
            return None
        specs: list[LineSpec] = []
        if params.get("prorate"):
            for item in subscription["_items"]:
                price = self.prices[item["price"]]
                specs += self._proration_specs(item, price, item["quantity"], at, debit=False)
        if not (specs or subscription["_pending"]):
            return None
        invoice = self._new_invoice(
            subscription, billing_reason="subscription_update", paid=True, specs=specs
        )
        subscription["latest_invoice"] = invoice["id"]
        return invoice

    # -- simulated billing (the /_test/ routes) ----------------------------------------------

    def fail_payment(self, subscription_id: str) -> dict[str, Any]:
        """A renewal charge failed: an open invoice for the next period, status ``past_due``.

        The period does not move; a later ``renew`` pays that invoice and starts the period.
        """
        subscription = self.subscription(subscription_id)
        self._require_live(subscription)
        before = self.render_subscription(subscription)
        invoice = self._open_invoice(subscription)
        if invoice is None:
            invoice = self._new_invoice(
                subscription, billing_reason="subscription_cycle", paid=False, next_period=True
            )
        invoice["attempt_count"] += 1
        invoice["attempted"] = True
        invoice["next_payment_attempt"] = now() + 3 * DAY
        subscription["latest_invoice"] = invoice["id"]
        subscription["status"] = "past_due"
        after = self.render_subscription(subscription)
        self._emit("invoice.payment_failed", public(invoice), AUTOMATIC)
        changes = self._changes(before, after)
        if changes:
            self._emit("customer.subscription.updated", after, AUTOMATIC, changes)
        return after

    def renew(self, subscription_id: str) -> dict[str, Any]:
        """The period ran out: start the next one and pay its invoice, or end the subscription
        if it was set to cancel at the period end (as Stripe would)."""
        subscription = self.subscription(subscription_id)
        self._require_live(subscription)
        if subscription["cancel_at_period_end"]:
            return self.cancel_subscription(subscription_id, AUTOMATIC)
        before = self.render_subscription(subscription)
        invoice = self._open_invoice(subscription)
        if invoice is None:
            invoice = self._new_invoice(
                subscription, billing_reason="subscription_cycle", paid=True, next_period=True
            )
        else:
            self._mark_paid(invoice)
        for item in subscription["_items"]:
            start = item["current_period_end"]
            item["current_period_start"] = start
            item["current_period_end"] = start + period_seconds(self.prices[item["price"]])
        subscription["latest_invoice"] = invoice["id"]
        subscription["status"] = "active"
        after = self.render_subscription(subscription)
        self._emit("invoice.paid", public(invoice), AUTOMATIC)
        self._emit("customer.subscription.updated", after, AUTOMATIC, self._changes(before, after))
        return after

    def end(self, subscription_id: str) -> dict[str, Any]:
        """The subscription ended on Stripe's side (period end, or retries exhausted)."""
        subscription = self.subscription(subscription_id)
        reason = (
            "payment_failed"
            if subscription["status"] in ("past_due", "unpaid")
            else ("cancellation_requested")
        )
        return self.cancel_subscription(subscription_id, AUTOMATIC, reason=reason)

    @staticmethod
    def _require_live(subscription: dict[str, Any]) -> None:
        if subscription["status"] == "canceled":
            raise ApiError(
                400, f"The subscription is canceled: '{subscription['id']}'.", param="id"
            )

    # -- invoices ----------------------------------------------------------------------------

    def _open_invoice(self, subscription: dict[str, Any]) -> dict[str, Any] | None:
        latest = self.invoices.get(subscription["latest_invoice"] or "")
        return latest if latest is not None and latest["status"] == "open" else None

    def _mark_paid(self, invoice: dict[str, Any]) -> None:
        """Paid: the card is charged ``amount_due`` (nothing when a credit covered it all)."""
        paid_at = now()
        invoice.update(
            status="paid",
            amount_paid=invoice["amount_due"],
            amount_remaining=0,
            attempted=True,
            attempt_count=invoice["attempt_count"] + 1,
            next_payment_attempt=None,
        )
        invoice["status_transitions"]["paid_at"] = paid_at
        if invoice["amount_paid"] > 0:
            self._collect(invoice, paid_at)

    def _period_specs(
        self, subscription: dict[str, Any], next_period: bool = False
    ) -> list[LineSpec]:
        """A full period of every item: the current one, or the one after it."""
        specs = []
        for item in subscription["_items"]:
            price = self.prices[item["price"]]
            start, end = item["current_period_start"], item["current_period_end"]
            if next_period:
                start, end = end, end + period_seconds(price)
            amount = price["unit_amount"] * item["quantity"]
            specs.append(LineSpec(item["id"], price["id"], item["quantity"], amount, start, end))
        return specs

    def _render_line(self, spec: LineSpec, invoice_id: str, subscription_id: str) -> dict[str, Any]:
        price = self.prices[spec.price_id]
        name = self.products[price["product"]]["name"]
        return {
            "id": new_id("il_"),
            "object": "line_item",
            "amount": spec.amount,
            "currency": price["currency"],
            "description": spec.description or f"{spec.quantity} x {name}",
            "invoice": invoice_id,
            "livemode": False,
            "metadata": {},
            "parent": {
                "invoice_item_details": None,
                "subscription_item_details": {
                    # Prorations are invoice items on Stripe, regular period charges are not.
                    "invoice_item": new_id("ii_") if spec.proration else None,
                    "proration": spec.proration,
                    "proration_details": {"credited_items": None},
                    "subscription": subscription_id,
                    "subscription_item": spec.item_id,
                },
                "type": "subscription_item_details",
            },
            "period": {"end": spec.end, "start": spec.start},
            "pricing": {
                "price_details": {"price": price["id"], "product": price["product"]},
                "type": "price_details",
                "unit_amount_decimal": str(price["unit_amount"]),
            },
            "quantity": spec.quantity,
        }

    def _new_invoice(
        self,
        subscription: dict[str, Any],
        *,
        billing_reason: str,
        paid: bool,
        next_period: bool = False,
        specs: list[LineSpec] | None = None,
    ) -> dict[str, Any]:
        """A finalized invoice: ``specs`` (default: a full period) after the pending
        prorations; the customer's balance is applied (a credit lowers ``amount_due``, a
        negative total adds to the credit)."""
        created = now()
        invoice_id = new_id("in_")
        if specs is None:
            specs = self._period_specs(subscription, next_period)
        specs = [*subscription["_pending"], *specs]
        subscription["_pending"] = []
        lines = [self._render_line(spec, invoice_id, subscription["id"]) for spec in specs]
        total = sum(spec.amount for spec in specs)
        customer = self.customers[subscription["customer"]]
        starting_balance = customer["balance"]
        due = total + starting_balance
        customer["balance"] = min(due, 0)
        invoice = {
            "id": invoice_id,
            "object": "invoice",
            "amount_due": max(due, 0),
            "amount_paid": 0,
            "amount_remaining": max(due, 0),
            "attempt_count": 0,
            "attempted": False,
            "billing_reason": billing_reason,
            "collection_method": "charge_automatically",
            "created": created,
            "currency": subscription["currency"],
            "customer": subscription["customer"],
            "customer_email": customer["email"],
            "customer_name": customer["name"],
            "ending_balance": customer["balance"],
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "lines": list_object(lines, f"/v1/invoices/{invoice_id}/lines"),
            "livemode": False,
            "metadata": {},
            "next_payment_attempt": None,
            "number": f"{customer['invoice_prefix']}-{customer['next_invoice_sequence']:04d}",
            "parent": {
                "quote_details": None,
                "subscription_details": {
                    "metadata": dict(subscription["metadata"]),
                    "subscription": subscription["id"],
                },
                "type": "subscription_details",
            },
            "period_end": lines[0]["period"]["start"] if lines else created,
            "period_start": lines[0]["period"]["start"] if lines else created,
            "starting_balance": starting_balance,
            "status": "open",
            "status_transitions": {
                "finalized_at": created,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "subtotal": total,
            "total": total,
            "_payments": [],  # InvoicePayment ids; ``payments`` is includable (expand) only
            "_seq": self._next_seq(),
        }
        customer["next_invoice_sequence"] += 1
        if paid:
            self._mark_paid(invoice)
            invoice["attempt_count"] = 1
        self.invoices[invoice_id] = invoice
        return invoice

    def list_invoices(self, params: dict[str, Any]) -> dict[str, Any]:
        status = params.get("status")
        if status is not None and status not in INVOICE_STATUSES:
            raise ApiError(
                400,
                f"Invalid status: must be one of {', '.join(INVOICE_STATUSES)}",
                param="status",
            )
        customer_id, subscription_id = params.get("customer"), params.get("subscription")

        def wanted(invoice: dict[str, Any]) -> bool:
            subscription = invoice["parent"]["subscription_details"]["subscription"]
            return (
                customer_id in (None, invoice["customer"])
                and subscription_id in (None, subscription)
                and status in (None, invoice["status"])
            )

        rows = [invoice for invoice in self.invoices.values() if wanted(invoice)]
        return paginate(rows, params, "/v1/invoices", public)

    def invoice_payments_of(self, invoice_id: str) -> dict[str, Any]:
        """The invoice's includable ``payments`` list (``expand[]=payments``)."""
        invoice = self.invoice(invoice_id)
        data = [public(self.invoice_payments[pid]) for pid in invoice["_payments"]]
        return {
            **list_object(data, f"/v1/invoice_payments?invoice={invoice_id}"),
            "total_count": len(data),
        }

    def list_invoice_payments(self, params: dict[str, Any]) -> dict[str, Any]:
        invoice_id = params.get("invoice")
        rows = [
            row for row in self.invoice_payments.values() if invoice_id in (None, row["invoice"])
        ]
        return paginate(rows, params, "/v1/invoice_payments", public)

    def invoice_payment_refs(self, invoice_id: str) -> tuple[str | None, str | None]:
        """(PaymentIntent, Charge) that paid the invoice, for old API versions' invoice
        ``payment_intent`` and ``charge``; (None, None) if nothing was charged."""
        invoice = self.invoices.get(invoice_id)
        for payment_id in invoice["_payments"] if invoice else []:
            payment = self.invoice_payments[payment_id]
            if payment["is_default"]:
                intent_id = payment["payment"]["payment_intent"]
                return intent_id, self.payment_intents[intent_id]["latest_charge"]
        return None, None

    # -- payments, charges, balance transactions, refunds -------------------------------------

    def _collect(self, invoice: dict[str, Any], at: int) -> None:
        """Charge the invoice's ``amount_paid`` to the customer's (always accepted) card."""
        amount, currency = invoice["amount_paid"], invoice["currency"]
        customer = self.customers[invoice["customer"]]
        description = {
            "subscription_create": "Subscription creation",
            "subscription_cycle": "Subscription cycle",
            "subscription_update": "Subscription update",
        }.get(invoice["billing_reason"], "Invoice payment")
        charge_id, intent_id = new_id("ch_"), new_id("pi_")
        payment_method = new_id("pm_")
        transaction = self._new_balance_transaction(
            amount, stripe_fee(amount), currency, charge_id, "charge", description, at
        )
        self.charges[charge_id] = {
            "id": charge_id,
            "object": "charge",
            "amount": amount,
            "amount_captured": amount,
            "amount_refunded": 0,
            "balance_transaction": transaction["id"],
            "billing_details": {
                "address": None,
                "email": customer["email"],
                "name": customer["name"],
                "phone": None,
            },
            "calculated_statement_descriptor": "FAKE STRIPE",
            "captured": True,
            "created": at,
            "currency": currency,
            "customer": customer["id"],
            "description": description,
            "disputed": False,
            "failure_code": None,
            "failure_message": None,
            "livemode": False,
            "metadata": {},
            "outcome": {
                "network_status": "approved_by_network",
                "reason": None,
                "risk_level": "normal",
                "seller_message": "Payment complete.",
                "type": "authorized",
            },
            "paid": True,
            "payment_intent": intent_id,
            "payment_method": payment_method,
            "payment_method_details": {
                "card": {
                    "brand": "visa",
                    "country": "US",
                    "exp_month": 12,
                    "exp_year": 2034,
                    "funding": "credit",
                    "last4": "4242",
                },
                "type": "card",
            },
            "receipt_url": None,
            "refunded": False,
            "status": "succeeded",
            "_seq": self._next_seq(),
        }
        self.payment_intents[intent_id] = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": amount,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic_async",
            "client_secret": f"{intent_id}_secret_{new_id('', 24)}",
            "confirmation_method": "automatic",
            "created": at,
            "currency": currency,
            "customer": customer["id"],
            "description": description,
            "last_payment_error": None,
            "latest_charge": charge_id,
            "livemode": False,
            "metadata": {},
            "next_action": None,
            "payment_method": payment_method,
            "payment_method_types": ["card"],
            "status": "succeeded",
            "_seq": self._next_seq(),
        }
        payment_id = new_id("inpay_")
        self.invoice_payments[payment_id] = {
            "id": payment_id,
            "object": "invoice_payment",
            "amount_paid": amount,
            "amount_requested": amount,
            "created": at,
            "currency": currency,
            "invoice": invoice["id"],
            "is_default": True,
            "livemode": False,
            "payment": {"payment_intent": intent_id, "type": "payment_intent"},
            "status": "paid",
            "status_transitions": {"canceled_at": None, "paid_at": at},
            "_seq": self._next_seq(),
        }
        invoice["_payments"].append(payment_id)

    def _new_balance_transaction(
        self,
        amount: int,
        fee: int,
        currency: str,
        source: str,
        kind: str,
        description: str | None,
        at: int,
    ) -> dict[str, Any]:
        transaction_id = new_id("txn_")
        fee_details = []
        if fee:
            fee_details.append(
                {
                    "amount": fee,
                    "application": None,
                    "currency": currency,
                    "description": "Stripe processing fees",
                    "type": "stripe_fee",
                }
            )
        transaction = {
            "id": transaction_id,
            "object": "balance_transaction",
            "amount": amount,
            "available_on": at + 2 * DAY,
            "created": at,
            "currency": currency,
            "description": description,
            "exchange_rate": None,
            "fee": fee,
            "fee_details": fee_details,
            "net": amount - fee,
            "reporting_category": kind,
            "source": source,
            "status": "pending",
            "type": kind,
            "_seq": self._next_seq(),
        }
        self.balance_transactions[transaction_id] = transaction
        return transaction

    def create_refund(self, params: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        """Refund (part of) a charge: a Refund with its own negative balance transaction
        (Stripe keeps its fee), the charge's ``amount_refunded`` raised, two events."""
        charge = self._refund_target(params)
        refundable = charge["amount_captured"] - charge["amount_refunded"]
        if refundable <= 0:
            raise ApiError(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = as_int(params.get("amount", refundable), "amount")
        if amount < 1:
            raise ApiError(400, "Invalid positive integer", param="amount")
        if amount > refundable:
            currency = charge["currency"]
            raise ApiError(
                400,
                f"Refund amount ({money(amount, currency)}) is greater than unrefunded amount "
                f"on charge ({money(refundable, currency)})",
                code="amount_too_large",
                param="amount",
            )
        reason = params.get("reason") or None
        if reason is not None and reason not in REFUND_REASONS:
            raise ApiError(
                400,
                f"Invalid reason: must be one of {', '.join(REFUND_REASONS)}",
                param="reason",
            )
        metadata = merge_metadata({}, params.get("metadata"))
        at = now()
        refund_id = new_id("re_")
        transaction = self._new_balance_transaction(
            -amount, 0, charge["currency"], refund_id, "refund", "REFUND FOR CHARGE", at
        )
        refund = {
            "id": refund_id,
            "object": "refund",
            "amount": amount,
            "balance_transaction": transaction["id"],
            "charge": charge["id"],
            "created": at,
            "currency": charge["currency"],
            "destination_details": {
                "card": {
                    "reference": None,
                    "reference_status": "pending",
                    "reference_type": "acquirer_reference_number",
                    "type": "refund",
                },
                "type": "card",
            },
            "metadata": metadata,
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": None,
            "_seq": self._next_seq(),
        }
        self.refunds[refund_id] = refund
        before = public(charge)
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
        after = public(charge)
        self._emit("refund.created", public(refund), ctx)
        self._emit("charge.refunded", after, ctx, self._changes(before, after))
        return public(refund)

    def _refund_target(self, params: dict[str, Any]) -> dict[str, Any]:
        """The charge named by ``charge`` or ``payment_intent`` (both must agree if given)."""
        charge_id, intent_id = params.get("charge"), params.get("payment_intent")
        if not charge_id and not intent_id:
            raise ApiError(
                400,
                "One of the following params should be provided for this request: "
                "payment_intent or charge.",
                code="parameter_missing",
            )
        if intent_id:
            intent = self.payment_intent(intent_id, param="payment_intent")
            if charge_id and charge_id != intent["latest_charge"]:
                raise ApiError(
                    400,
                    f"The charge '{charge_id}' does not belong to the PaymentIntent '{intent_id}'.",
                    param="charge",
                )
            charge_id = intent["latest_charge"]
        return self.charge(charge_id, param="charge")

    def list_refunds(self, params: dict[str, Any]) -> dict[str, Any]:
        charge_id, intent_id = params.get("charge"), params.get("payment_intent")
        rows = [
            refund
            for refund in self.refunds.values()
            if charge_id in (None, refund["charge"])
            and intent_id in (None, refund["payment_intent"])
        ]
        return paginate(rows, params, "/v1/refunds", public)


# -- helpers ---------------------------------------------------------------------------------


def period_seconds(price: dict[str, Any]) -> int:
    recurring = price["recurring"]
    return INTERVAL_SECONDS[recurring["interval"]] * recurring["interval_count"]


def period_end(subscription: dict[str, Any]) -> int:
    return max(item["current_period_end"] for item in subscription["_items"])


def prorate(amount: int, remaining: int, length: int) -> int:
    """``amount`` x ``remaining`` / ``length`` (amount >= 0), rounded half up, in integers so
    that tests can compute the same cents."""
    return (2 * amount * remaining + length) // (2 * length)


def stripe_fee(amount: int) -> int:
    """Stripe's card fee on a charge of ``amount``: 2.9 % rounded half up, plus 30."""
    return (amount * FEE_PER_MILLE + 500) // 1000 + FEE_FIXED


def money(amount: int, currency: str) -> str:
    """An amount for people (error messages, pages): ``5.00 EUR``."""
    return f"{amount / 100:.2f} {currency.upper()}"


def choice(params: dict[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    """An enum parameter, checked; ``default`` if absent."""
    value = params.get(key, default)
    if value not in allowed:
        raise ApiError(400, f"Invalid {key}: must be one of {', '.join(allowed)}", param=key)
    return value


def plan_of(price: dict[str, Any]) -> dict[str, Any]:
    """The legacy ``plan`` view of a recurring price, still present on subscription items."""
    recurring = price["recurring"] or {}
    return {
        "id": price["id"],
        "object": "plan",
        "active": price["active"],
        "amount": price["unit_amount"],
        "amount_decimal": price["unit_amount_decimal"],
        "billing_scheme": "per_unit",
        "created": price["created"],
        "currency": price["currency"],
        "interval": recurring.get("interval"),
        "interval_count": recurring.get("interval_count"),
        "livemode": False,
        "metadata": dict(price["metadata"]),
        "meter": None,
        "nickname": price["nickname"],
        "product": price["product"],
        "tiers_mode": None,
        "transform_usage": None,
        "trial_period_days": None,
        "usage_type": "licensed",
    }


def merge_metadata(current: dict[str, str], update: Any) -> dict[str, str]:
    """Stripe's metadata update: keys are set, an empty value unsets, ``""`` clears all."""
    if update is None:
        return dict(current)
    if update == "":
        return {}
    if not isinstance(update, dict):
        raise ApiError(400, "Invalid object", param="metadata")
    merged = dict(current)
    for key, value in update.items():
        if not isinstance(value, str):
            raise ApiError(
                400,
                "Invalid metadata value: metadata values must be strings.",
                param=f"metadata[{key}]",
            )
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def as_int(value: Any, param: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"Invalid integer: {value}", param=param) from None


def paginate(
    rows: list[dict[str, Any]],
    params: dict[str, Any],
    url: str,
    render: Callable[[dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """Newest first, ``limit`` (1-100, default 10), ``starting_after`` / ``ending_before``."""
    limit = as_int(params.get("limit", 10), "limit")
    if not 1 <= limit <= 100:
        raise ApiError(400, "Invalid limit: must be between 1 and 100", param="limit")
    rows = sorted(rows, key=lambda row: -row["_seq"])
    ids = [row["id"] for row in rows]
    starting_after, ending_before = params.get("starting_after"), params.get("ending_before")
    if starting_after:
        if starting_after not in ids:
            raise missing("object", starting_after, "starting_after")
        rows = rows[ids.index(starting_after) + 1 :]
        page, has_more = rows[:limit], len(rows) > limit
    elif ending_before:
        if ending_before not in ids:
            raise missing("object", ending_before, "ending_before")
        rows = rows[: ids.index(ending_before)]
        page, has_more = rows[-limit:], len(rows) > limit
    else:
        page, has_more = rows[:limit], len(rows) > limit
    return list_object([render(row) for row in page], url, has_more=has_more)
