"""The HTTP side: Stripe's ``/v1`` routes, the ``/_test/`` control routes and the HTML pages."""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import json
import re
import sys
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .control import FaultInjector, RequestLog, parse_fault
from .forms import FormError, parse_form
from .state import API_VERSION, ApiError, RequestContext, State, money, new_id
from .versions import VERSION, downgrade, is_legacy
from .webhooks import WebhookSender

HOST = "127.0.0.1"
EXPAND = frozenset({"expand"})
BOOLEAN_PARAMS = frozenset(
    {"active", "cancel_at_period_end", "allow_promotion_codes", "invoice_now", "prorate"}
)
INTEGER_PARAMS = frozenset({"unit_amount", "limit", "amount", "proration_date"})
PAGE_PARAMS = EXPAND | {"limit", "starting_after", "ending_before"}

CUSTOMER_PARAMS = EXPAND | {"email", "name", "description", "phone", "metadata"}
PRODUCT_PARAMS = EXPAND | {"name", "description", "active", "metadata"}
PRICE_CREATE_PARAMS = EXPAND | {
    "product",
    "unit_amount",
    "currency",
    "recurring",
    "metadata",
    "nickname",
    "lookup_key",
    "active",
}
PRICE_UPDATE_PARAMS = EXPAND | {"active", "metadata", "nickname", "lookup_key"}
CHECKOUT_PARAMS = EXPAND | {
    "mode",
    "customer",
    "customer_email",
    "line_items",
    "success_url",
    "cancel_url",
    "client_reference_id",
    "metadata",
    "subscription_data",
    "locale",
    "allow_promotion_codes",
    "billing_address_collection",
    "payment_method_types",
    "customer_update",
    "ui_mode",
}
PORTAL_PARAMS = EXPAND | {"customer", "return_url", "configuration", "locale"}
SUBSCRIPTION_UPDATE_PARAMS = EXPAND | {
    "cancel_at_period_end",
    "metadata",
    "cancellation_details",
    "proration_behavior",
    "description",
    "items",
    "payment_behavior",
    "billing_cycle_anchor",
    "proration_date",
}
SUBSCRIPTION_CANCEL_PARAMS = EXPAND | {"invoice_now", "prorate", "cancellation_details"}
SUBSCRIPTION_LIST_PARAMS = PAGE_PARAMS | {"customer", "status", "price"}
INVOICE_LIST_PARAMS = PAGE_PARAMS | {"customer", "subscription", "status"}
INVOICE_PAYMENT_LIST_PARAMS = PAGE_PARAMS | {"invoice"}
REFUND_PARAMS = EXPAND | {"payment_intent", "charge", "amount", "reason", "metadata"}
REFUND_LIST_PARAMS = PAGE_PARAMS | {"charge", "payment_intent"}

Params = dict[str, Any]


class Response:
    def __init__(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(payload, indent=2).encode("utf-8") + b"\n")


def error_response(error: ApiError) -> Response:
    return json_response(error.body(), error.status)


def redirect(location: str) -> Response:
    return Response(HTTPStatus.SEE_OTHER, headers={"Location": location})


def html_response(title: str, body: str, status: int = 200) -> Response:
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}"
        "li{margin:.5em 0}</style></head>\n"
        f"<body><p><small>Fake Stripe (test mode)</small></p><h1>{html.escape(title)}</h1>\n"
        f"{body}\n</body></html>\n"
    )
    return Response(status, page.encode("utf-8"), "text/html; charset=utf-8")


class FakeStripeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        port: int,
        *,
        webhook_url: str | None,
        webhook_secret: str,
        auto_deliver: bool = True,
        verbose: bool = False,
    ) -> None:
        super().__init__((HOST, port), Handler)
        self.verbose = verbose
        self.sender = WebhookSender(
            url=webhook_url, secret=webhook_secret, auto_deliver=auto_deliver
        )
        self.state = State(public_base=self.api_base, on_event=self.sender.event_created)
        self.faults = FaultInjector()
        self.request_log = RequestLog()

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def api_base(self) -> str:
        return f"http://{HOST}:{self.port}"


class Handler(BaseHTTPRequestHandler):
    server: FakeStripeServer
    protocol_version = "HTTP/1.1"
    server_version = "FakeStripe/1.0"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    # -- plumbing ----------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write(f"stripe-fake: {format % args}\n")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        request_id = new_id("req_", 14)
        api = path.startswith("/v1/")
        response: Response | None
        try:
            # Faults come before anything else, so that a failed request changes no state.
            fault = self.server.faults.take(method, path) if api else None
            if fault is not None:
                dropped = fault.status is None
                response = None if dropped else error_response(fault.error(method, path))
            elif api:
                response = self._api(method, path, split.query, body, request_id)
            else:
                response = self._other(method, path, split.query, body)
        except ApiError as error:
            response = error_response(error)
        except FormError as error:
            response = error_response(ApiError(400, str(error), param=error.param))
        except Exception:
            # A bug in the fake: answer like Stripe's 500 rather than dropping the connection.
            traceback.print_exc(file=sys.stderr)
            response = error_response(
                ApiError(500, "Internal error in the fake Stripe server.", error_type="api_error")
            )
        if api:
            self.server.request_log.record(
                method,
                path,
                self.headers.get("Idempotency-Key"),
                None if response is None else response.status,
            )
        if response is None:  # an injected "drop": close the connection without an answer
            self.close_connection = True
            return
        self._send(response, request_id)

    def _send(self, response: Response, request_id: str) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Request-Id", request_id)
        self.send_header("Cache-Control", "no-cache, no-store")
        for name, value in {"Stripe-Version": API_VERSION, **response.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _params(self, query: str, body: bytes) -> Params:
        content_type = self.headers.get("Content-Type", "")
        if body and content_type.startswith("application/json"):
            try:
                loaded = json.loads(body)
            except ValueError:
                raise ApiError(400, "Invalid JSON body.") from None
            return loaded if isinstance(loaded, dict) else {}
        text = body.decode("utf-8") if body else query
        return parse_form(text)

    # -- Stripe's API ------------------------------------------------------------------------

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                key = base64.b64decode(key).decode("utf-8").partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                key = ""
        elif scheme.lower() != "bearer":
            key = ""
        key = key.strip()
        if not key:
            raise ApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
            )
        if not key.startswith(("sk_test_", "rk_test_")):
            shown = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:]
            raise ApiError(
                401, f"Invalid API Key provided: {shown} (this fake accepts sk_test_ keys only)"
            )

    def _api(self, method: str, path: str, query: str, body: bytes, request_id: str) -> Response:
        self._authenticate()
        route = _match(API_ROUTES, method, path)
        if route is None:
            raise ApiError(
                404,
                f"Unrecognized request URL ({method}: {path}). This fake Stripe implements only "
                "the routes its tests need.",
            )
        action, allowed, args = route
        params = self._params(query if method != "POST" else "", body)
        if method == "POST" and query:
            params = {**parse_form(query), **params}
        for key in params:
            if key not in allowed:
                raise ApiError(400, f"Received unknown parameter: {key}", param=key)
        params = _coerce(params)
        expand = params.pop("expand", None) or []
        if isinstance(expand, str):
            expand = [expand]
        idempotency_key = self.headers.get("Idempotency-Key") if method == "POST" else None
        ctx = RequestContext(request_id, idempotency_key)
        state = self.server.state
        with state.lock:
            # Stripe answers in the request's pinned version, else the account's.
            version = self.headers.get("Stripe-Version") or state.account_api_version
            if idempotency_key:
                fingerprint = hashlib.sha256(f"{method} {path}\n".encode() + body).hexdigest()
                cached = state.idempotency.get(idempotency_key)
                if cached is not None:
                    if cached[0] != fingerprint:
                        raise ApiError(
                            400,
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with. Try using a key other than "
                            f"'{idempotency_key}' if you meant to execute a different request.",
                            error_type="idempotency_error",
                        )
                    return Response(cached[1], cached[2], headers={"Idempotent-Replayed": "true"})
            try:
                result = action(state, ctx, params, *args)
                result = _expand(state, result, expand)
                if is_legacy(version):
                    result = downgrade(result, state)
                response = json_response(result)
                response.headers["Stripe-Version"] = version
            except ApiError as error:
                response = error_response(error)
            if idempotency_key and response.status < 500:
                state.idempotency[idempotency_key] = (fingerprint, response.status, response.body)
        return response

    # -- test control routes and pages -------------------------------------------------------

    def _other(self, method: str, path: str, query: str, body: bytes) -> Response:
        route = _match(OTHER_ROUTES, method, path)
        if route is None:
            if method == "GET" and not path.startswith("/_test/"):
                return html_response("Not found", "<p>No such page.</p>", 404)
            raise ApiError(404, f"Unrecognized request URL ({method}: {path}).")
        action, _, args = route
        params = _coerce(self._params(query if method != "POST" else "", body))
        if method == "POST" and query:
            params = {**parse_form(query), **params}
        return action(self.server, params, *args)


# -- /v1 actions (called with the state lock held) --------------------------------------------


def _retrieve(getter: str, render: str | None = None) -> Callable[..., Any]:
    def action(state: State, ctx: RequestContext, params: Params, object_id: str) -> Any:
        obj = getattr(state, getter)(object_id)
        if render is not None:
            return getattr(state, render)(obj)
        return {key: value for key, value in obj.items() if not key.startswith("_")}

    return action


API_ROUTES: list[tuple[str, re.Pattern[str], Callable[..., Any], frozenset[str]]] = []
OTHER_ROUTES: list[tuple[str, re.Pattern[str], Callable[..., Any], frozenset[str]]] = []


def _route(
    table: list[Any], method: str, pattern: str, allowed: frozenset[str] = EXPAND
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(action: Callable[..., Any]) -> Callable[..., Any]:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        table.append((method, regex, action, frozenset(allowed)))
        return action

    return register


def _match(
    table: list[Any], method: str, path: str
) -> tuple[Callable[..., Any], frozenset[str], tuple[str, ...]] | None:
    for route_method, regex, action, allowed in table:
        found = regex.match(path)
        if found and route_method == method:
            return action, allowed, tuple(found.groups())
    return None


def _api_route(method: str, pattern: str, allowed: frozenset[str] = EXPAND):
    return _route(API_ROUTES, method, pattern, allowed)


def _test_route(method: str, pattern: str):
    return _route(OTHER_ROUTES, method, pattern)


@_api_route("POST", "/v1/customers", CUSTOMER_PARAMS)
def _create_customer(state: State, ctx: RequestContext, params: Params) -> Any:
    return state.create_customer(params)


_api_route("GET", "/v1/customers/{id}")(_retrieve("customer"))


@_api_route("POST", "/v1/customers/{id}", CUSTOMER_PARAMS)
def _update_customer(state: State, ctx: RequestContext, params: Params, customer_id: str) -> Any:
    return state.update_customer(customer_id, params)


@_api_route("POST", "/v1/products", PRODUCT_PARAMS | {"id"})
def _create_product(state: State, ctx: RequestContext, params: Params) -> Any:
    return state.create_product(params)


_api_route("GET", "/v1/products/{id}")(_retrieve("product"))


@_api_route("POST", "/v1/products/{id}", PRODUCT_PARAMS)
def _update_product(state: State, ctx: RequestContext, params: Params, product_id: str) -> Any:
    return state.update_product(product_id, params)


@_api_route("DELETE", "/v1/products/{id}")
def _delete_product(state: State, ctx: RequestContext, params: Params, product_id: str) -> Any:
    return state.delete_product(product_id)


@_api_route("POST", "/v1/prices", PRICE_CREATE_PARAMS)
def _create_price(state: State, ctx: RequestContext, params: Params) -> Any:
    return state.create_price(params)


_api_route("GET", "/v1/prices/{id}")(_retrieve("price"))


@_api_route("POST", "/v1/prices/{id}", PRICE_UPDATE_PARAMS)
def _update_price(state: State, ctx: RequestContext, params: Params, price_id: str) -> Any:
    return state.update_price(price_id, params)


@_api_route("POST", "/v1/checkout/sessions", CHECKOUT_PARAMS)
def _create_checkout_session(state: State, ctx: RequestContext, params: Params) -> Any:
    return state.create_checkout_session(params)


_api_route("GET", "/v1/checkout/sessions/{id}")(
    _retrieve("checkout_session", "render_checkout_session")
)


@_api_route("GET", "/v1/checkout/sessions/{id}/line_items", EXPAND | {"limit"})
def _checkout_line_items(state: State, ctx: RequestContext, params: Params, cs_id: str) -> Any:
    return state.checkout_line_items(cs_id)


@_api_route("POST", "/v1/billing_portal/sessions", PORTAL_PARAMS)
def _create_portal_session(state: State, ctx: RequestContext, params: Params) -> Any:
    return state.create_portal_session(params)


@_api_route("GET", "/v1/subscriptions", SUBSCRIPTION_LIST_PARAMS)
def _list_subscriptions(state: State, ctx: RequestContext, params: Params) -> Any:
    return state.list_subscriptions(params)


_api_route("GET", "/v1/subscriptions/{id}")(_retrieve("subscription", "render_subscription"))


@_api_route("POST", "/v1/subscriptions/{id}", SUBSCRIPTION_UPDATE_PARAMS)
def _update_subscription(state: State, ctx: RequestContext, params: Params, sub_id: str) -> Any:
    return state.update_subscription(sub_id, params, ctx)


@_api_route("DELETE", "/v1/subscriptions/{id}", SUBSCRIPTION_CANCEL_PARAMS)
def _cancel_subscription(state: State, ctx: RequestContext, params: Params, sub_id: str) -> Any:
    return state.cancel_subscription(sub_id, ctx, params=params)


@_api_route("GET", "/v1/invoices", INVOICE_LIST_PARAMS)
def _list_invoices(state: State, ctx: RequestContext, params: Params) -> Any:
    return state.list_invoices(params)


_api_route("GET", "/v1/invoices/{id}")(_retrieve("invoice"))


@_api_route("GET", "/v1/invoice_payments", INVOICE_PAYMENT_LIST_PARAMS)
def _list_invoice_payments(state: State, ctx: RequestContext, params: Params) -> Any:
    return state.list_invoice_payments(params)


_api_route("GET", "/v1/invoice_payments/{id}")(_retrieve("invoice_payment"))
_api_route("GET", "/v1/payment_intents/{id}")(_retrieve("payment_intent"))
_api_route("GET", "/v1/charges/{id}")(_retrieve("charge"))
_api_route("GET", "/v1/balance_transactions/{id}")(_retrieve("balance_transaction"))


@_api_route("POST", "/v1/refunds", REFUND_PARAMS)
def _create_refund(state: State, ctx: RequestContext, params: Params) -> Any:
    return state.create_refund(params, ctx)


@_api_route("GET", "/v1/refunds", REFUND_LIST_PARAMS)
def _list_refunds(state: State, ctx: RequestContext, params: Params) -> Any:
    return state.list_refunds(params)


_api_route("GET", "/v1/refunds/{id}")(_retrieve("refund"))


@_api_route("GET", "/v1/events/{id}")
def _retrieve_event(state: State, ctx: RequestContext, params: Params, event_id: str) -> Any:
    try:
        return state.events_by_id[event_id]
    except KeyError:
        raise ApiError(
            404, f"No such event: '{event_id}'", code="resource_missing", param="id"
        ) from None


# -- /_test/ control routes (no auth) and the HTML pages --------------------------------------


def _wants_redirect(params: Params) -> bool:
    return params.get("redirect") in ("1", "true", True)


@_test_route("GET", "/_test/health")
def _health(server: FakeStripeServer, params: Params) -> Response:
    return json_response({"ok": True, "api_base": server.api_base, "api_version": API_VERSION})


@_test_route("POST", "/_test/faults")
def _add_fault(server: FakeStripeServer, params: Params) -> Response:
    server.faults.add(parse_fault(params))
    return json_response(server.faults.pending())


@_test_route("GET", "/_test/faults")
def _faults(server: FakeStripeServer, params: Params) -> Response:
    return json_response(server.faults.pending())


@_test_route("DELETE", "/_test/faults")
def _clear_faults(server: FakeStripeServer, params: Params) -> Response:
    server.faults.clear()
    return json_response([])


@_test_route("GET", "/_test/requests")
def _requests(server: FakeStripeServer, params: Params) -> Response:
    return json_response(server.request_log.entries())


@_test_route("DELETE", "/_test/requests")
def _clear_requests(server: FakeStripeServer, params: Params) -> Response:
    server.request_log.clear()
    return json_response([])


@_test_route("POST", "/_test/checkout/{id}/complete")
def _complete_checkout(server: FakeStripeServer, params: Params, cs_id: str) -> Response:
    state = server.state
    with state.lock:
        session = state.checkout_session(cs_id)
        if _wants_redirect(params) and session["status"] != "open":
            subscription = None  # a second click on Pay: just go on to the success page
        else:
            subscription = state.complete_checkout(cs_id)
        success_url = state.success_url(session)
    if not _wants_redirect(params):
        return json_response(subscription)
    if success_url:
        return redirect(success_url)
    return html_response("Payment complete", "<p>Thank you. You can close this page.</p>")


@_test_route("POST", "/_test/subscriptions/{id}/payment_failed")
def _payment_failed(server: FakeStripeServer, params: Params, sub_id: str) -> Response:
    with server.state.lock:
        return json_response(server.state.fail_payment(sub_id))


@_test_route("POST", "/_test/subscriptions/{id}/renew")
def _renew(server: FakeStripeServer, params: Params, sub_id: str) -> Response:
    with server.state.lock:
        return json_response(server.state.renew(sub_id))


@_test_route("POST", "/_test/subscriptions/{id}/end")
def _end(server: FakeStripeServer, params: Params, sub_id: str) -> Response:
    with server.state.lock:
        return json_response(server.state.end(sub_id))


@_test_route("GET", "/_test/events")
def _events(server: FakeStripeServer, params: Params) -> Response:
    wanted = params.get("type")
    with server.state.lock:
        events = [e for e in server.state.events if wanted in (None, e["type"])]
        return json_response(events)


@_test_route("POST", "/_test/events/{id}/deliver")
def _deliver(server: FakeStripeServer, params: Params, event_id: str) -> Response:
    with server.state.lock:
        event = server.state.events_by_id.get(event_id)
    if event is None:
        raise ApiError(404, f"No such event: '{event_id}'", code="resource_missing", param="id")
    attempt = server.sender.send_once(event)
    return json_response({"event": event_id, **attempt})


@_test_route("GET", "/_test/deliveries")
def _deliveries(server: FakeStripeServer, params: Params) -> Response:
    return json_response(server.sender.log())


@_test_route("POST", "/_test/flush")
def _flush(server: FakeStripeServer, params: Params) -> Response:
    timeout = float(params.get("timeout", 10))
    return json_response({"drained": server.sender.flush(timeout)})


@_test_route("POST", "/_test/config")
def _config(server: FakeStripeServer, params: Params) -> Response:
    version = params.get("account_api_version")
    if version is not None and not VERSION.match(version):
        raise ApiError(
            400,
            "account_api_version must look like 2024-06-20 or 2026-10-28.endive.",
            param="account_api_version",
        )
    auto = params.get("auto_deliver")
    server.sender.configure(
        url=params.get("webhook_url"),
        secret=params.get("webhook_secret"),
        auto_deliver=None if auto is None else auto in (True, "true", "1"),
    )
    state, sender = server.state, server.sender
    with state.lock:
        if version is not None:
            state.account_api_version = version
        return json_response(
            {
                "webhook_url": sender.url,
                "auto_deliver": sender.auto_deliver,
                "account_api_version": state.account_api_version,
            }
        )


@_test_route("POST", "/_test/reset")
def _reset(server: FakeStripeServer, params: Params) -> Response:
    """Forget every object, event, delivery, fault and logged request; the account's API
    version goes back to the current one. Webhook URL, secret and auto-delivery stay."""
    server.sender.reset()
    server.state.reset()
    server.faults.clear()
    server.request_log.clear()
    return json_response({"ok": True})


def _date(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d")


@_test_route("GET", "/checkout/{id}")
def _checkout_page(server: FakeStripeServer, params: Params, cs_id: str) -> Response:
    state = server.state
    with state.lock:
        session = state.checkout_sessions.get(cs_id)
        if session is None:
            return html_response("Checkout not found", "<p>No such checkout session.</p>", 404)
        rows = []
        for item in state.checkout_line_items(cs_id)["data"]:
            price = item["price"]
            rows.append(
                f"<li>{html.escape(item['description'])}: "
                f"{money(price['unit_amount'], price['currency'])} per "
                f"{html.escape(price['recurring']['interval'])} x {item['quantity']}</li>"
            )
        total = money(session["amount_total"], session["currency"])
        success_url = state.success_url(session)
        cancel_url = session["cancel_url"]
        is_open = session["status"] == "open"
    parts = [f"<ul>{''.join(rows)}</ul>", f"<p>Total due today: <strong>{total}</strong></p>"]
    if is_open:
        parts.append(
            f'<form method="post" action="/_test/checkout/{html.escape(cs_id)}/complete">'
            '<input type="hidden" name="redirect" value="1">'
            '<button type="submit" id="pay">Pay</button></form>'
        )
        if cancel_url:
            parts.append(f'<p><a href="{html.escape(cancel_url)}" id="cancel">Back</a></p>')
    else:
        parts.append("<p>This checkout session is complete.</p>")
        if success_url:
            parts.append(f'<p><a href="{html.escape(success_url)}">Continue</a></p>')
    return html_response("Checkout", "\n".join(parts))


@_test_route("GET", "/portal/{id}")
def _portal_page(server: FakeStripeServer, params: Params, bps_id: str) -> Response:
    state = server.state
    with state.lock:
        session = state.portal_sessions.get(bps_id)
        if session is None:
            return html_response("Portal not found", "<p>No such portal session.</p>", 404)
        subscriptions = state.portal_subscriptions(bps_id)
        products = {pid: p["name"] for pid, p in state.products.items()}
    rows = []
    for sub in subscriptions:
        item = sub["items"]["data"][0]
        name = html.escape(products.get(item["price"]["product"], item["price"]["product"]))
        ends = _date(item["current_period_end"])
        if sub["cancel_at_period_end"]:
            action = f"<em>Cancels on {ends}</em>"
        else:
            action = (
                f'<form method="post" action="/portal/{html.escape(bps_id)}/subscriptions/'
                f'{html.escape(sub["id"])}/cancel" style="display:inline">'
                '<button type="submit">Cancel subscription</button></form>'
            )
        rows.append(
            f'<li data-subscription="{html.escape(sub["id"])}">{name} '
            f"({html.escape(sub['status'])}, renews {ends}) {action}</li>"
        )
    body = f"<ul>{''.join(rows)}</ul>" if rows else "<p>No active subscriptions.</p>"
    if session["return_url"]:
        body += f'\n<p><a href="{html.escape(session["return_url"])}">Return</a></p>'
    return html_response("Billing portal", body)


@_test_route("POST", "/portal/{id}/subscriptions/{sub}/cancel")
def _portal_cancel(server: FakeStripeServer, params: Params, bps_id: str, sub_id: str) -> Response:
    state = server.state
    with state.lock:
        session = state.portal_session(bps_id)
        state.portal_cancel(bps_id, sub_id)
    return redirect(session["return_url"] or f"/portal/{bps_id}")


# -- helpers -----------------------------------------------------------------------------------


def _coerce(params: Params) -> Params:
    """Form values are strings; turn the few booleans and integers the routes use into them."""
    result: Params = {}
    for key, value in params.items():
        if key in BOOLEAN_PARAMS and isinstance(value, str):
            if value not in ("true", "false"):
                raise ApiError(400, f"Invalid boolean: {value}", param=key)
            value = value == "true"
        elif key in INTEGER_PARAMS and isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ApiError(400, f"Invalid integer: {value}", param=key) from None
        result[key] = value
    return result


def _expand(state: State, obj: Any, paths: list[str]) -> Any:
    for path in paths:
        if not isinstance(path, str) or not path:
            raise ApiError(400, "Invalid expand value.", param="expand")
        _expand_path(state, obj, path.split("."), path)
    return obj


def _expand_path(state: State, node: Any, parts: list[str], path: str) -> None:
    if not parts or not isinstance(node, dict):
        return
    head, rest = parts[0], parts[1:]
    if head == "data" and node.get("object") == "list":
        for item in node["data"]:
            _expand_path(state, item, rest, path)
        return
    # Includable properties: absent unless expanded, as on Stripe.
    if head == "line_items" and node.get("object") == "checkout.session":
        node["line_items"] = state.checkout_line_items(node["id"])
    elif head == "payments" and node.get("object") == "invoice":
        node["payments"] = state.invoice_payments_of(node["id"])
    elif head not in node:
        raise ApiError(400, f"This property cannot be expanded ({head}).", param="expand")
    value = node[head]
    if isinstance(value, str):
        found = state.lookup(value)
        if found is None:
            raise ApiError(400, f"This property cannot be expanded ({head}).", param="expand")
        node[head] = value = found
    _expand_path(state, value, rest, path)


def serve(
    port: int,
    *,
    webhook_url: str | None,
    webhook_secret: str,
    auto_deliver: bool,
    verbose: bool = False,
    ready: Callable[[FakeStripeServer], None] | None = None,
) -> None:
    server = FakeStripeServer(
        port,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        auto_deliver=auto_deliver,
        verbose=verbose,
    )
    try:
        if ready is not None:
            ready(server)
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()


__all__ = ["FakeStripeServer", "serve"]
