"""The fake's Stripe objects and the state transitions that emit events.

Everything is in memory behind one lock. Objects are stored as plain dicts; subscriptions and
checkout sessions keep a few private ``_`` keys and are rendered into their API shape on the
way out, so an embedded price always shows the price's current state, as Stripe does.
"""

from __future__ import annotations

import copy
import secrets
import string
import threading
import time
from collections.abc import Callable
from typing import Any

API_VERSION = "2026-10-28.endive"
DAY = 86_400
# Billing periods of this fake: a month is 30 days and a year 365, whatever the calendar says.
INTERVAL_SECONDS = {"day": DAY, "week": 7 * DAY, "month": 30 * DAY, "year": 365 * DAY}
LIVE_SUBSCRIPTION_STATUSES = ("active", "past_due", "trialing", "unpaid", "incomplete", "paused")
SUBSCRIPTION_STATUSES = (*LIVE_SUBSCRIPTION_STATUSES, "canceled", "incomplete_expired")
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
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = error_type
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
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
        data: dict[str, Any] = {"object": copy.deepcopy(obj)}
        if previous is not None:
            data["previous_attributes"] = previous
        event = {
            "id": new_id("evt_"),
            "object": "event",
            "api_version": API_VERSION,
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
        after = self.render_subscription(subscription)
        changes = self._changes(before, after)
        if changes:
            self._emit("customer.subscription.updated", after, ctx, changes)
        return after

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
        at = now()
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
            value = ((params or {}).get("cancellation_details") or {}).get(key)
            if value:
                details[key] = value
        rendered = self.render_subscription(subscription)
        self._emit("customer.subscription.deleted", rendered, ctx)
        return rendered

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

    def _new_invoice(
        self,
        subscription: dict[str, Any],
        *,
        billing_reason: str,
        paid: bool,
        next_period: bool = False,
    ) -> dict[str, Any]:
        created = now()
        invoice_id = new_id("in_")
        lines = []
        total = 0
        for item in subscription["_items"]:
            price = self.prices[item["price"]]
            start, end = item["current_period_start"], item["current_period_end"]
            if next_period:
                start, end = end, end + period_seconds(price)
            amount = price["unit_amount"] * item["quantity"]
            total += amount
            lines.append(
                {
                    "id": new_id("il_"),
                    "object": "line_item",
                    "amount": amount,
                    "currency": price["currency"],
                    "description": f"{item['quantity']} x "
                    f"{self.products[price['product']]['name']}",
                    "invoice": invoice_id,
                    "livemode": False,
                    "metadata": {},
                    "parent": {
                        "invoice_item_details": None,
                        "subscription_item_details": {
                            "invoice_item": None,
                            "proration": False,
                            "proration_details": {"credited_items": None},
                            "subscription": subscription["id"],
                            "subscription_item": item["id"],
                        },
                        "type": "subscription_item_details",
                    },
                    "period": {"end": end, "start": start},
                    "pricing": {
                        "price_details": {"price": price["id"], "product": price["product"]},
                        "type": "price_details",
                        "unit_amount_decimal": str(price["unit_amount"]),
                    },
                    "quantity": item["quantity"],
                }
            )
        customer = self.customers[subscription["customer"]]
        invoice = {
            "id": invoice_id,
            "object": "invoice",
            "amount_due": total,
            "amount_paid": 0,
            "amount_remaining": total,
            "attempt_count": 0,
            "attempted": False,
            "billing_reason": billing_reason,
            "collection_method": "charge_automatically",
            "created": created,
            "currency": subscription["currency"],
            "customer": subscription["customer"],
            "customer_email": customer["email"],
            "customer_name": customer["name"],
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
            "status": "open",
            "status_transitions": {
                "finalized_at": created,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "subtotal": total,
            "total": total,
            "_seq": self._next_seq(),
        }
        customer["next_invoice_sequence"] += 1
        if paid:
            self._mark_paid(invoice)
            invoice["attempt_count"] = 1
        self.invoices[invoice_id] = invoice
        return invoice


# -- helpers ---------------------------------------------------------------------------------


def period_seconds(price: dict[str, Any]) -> int:
    recurring = price["recurring"]
    return INTERVAL_SECONDS[recurring["interval"]] * recurring["interval_count"]


def period_end(subscription: dict[str, Any]) -> int:
    return max(item["current_period_end"] for item in subscription["_items"])


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
