"""The only module that talks to Stripe (the ``stripe`` library, API version pinned here).

Everything else calls these functions with plain values and gets plain dicts back, so the
SDK's surface and version live in one place and tests can point it at a local fake server
(``STRIPE_API_BASE``). Every Stripe failure leaves this module as one of two errors:
``StripeUnavailable`` (transient: retry later) or ``StripeRejected`` (permanent).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from functools import cache
from typing import Any, ParamSpec, TypeVar

import stripe
from django.conf import settings

from .errors import (
    BillingNotConfigured,
    StripeRejected,
    StripeUnavailable,
    WebhookRejected,
)

logger = logging.getLogger(__name__)

# The API version every request is made with, and so the shape of every object we read.
# Webhook payloads come in the Stripe account's default version, which may be older: the
# sync code reads only ids from them and re-reads the object itself through this client.
STRIPE_API_VERSION = "2026-10-28.endive"

__all__ = [
    "STRIPE_API_VERSION",
    "BillingNotConfigured",
    "StripeRejected",
    "StripeUnavailable",
    "WebhookRejected",
]

P = ParamSpec("P")
R = TypeVar("R")


def billing_configured() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


@cache
def _client_for(
    secret_key: str, api_base: str, timeout: float, retries: int
) -> stripe.StripeClient:
    base = {"api": api_base} if api_base else None
    return stripe.StripeClient(
        secret_key,
        base_addresses=base,
        stripe_version=STRIPE_API_VERSION,
        # The library retries connection errors, 409, 429 and 5xx with the same idempotency
        # key (it adds one to every POST), so a retried create never makes a second object.
        max_network_retries=retries,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def _client() -> stripe.StripeClient:
    if not billing_configured():
        raise BillingNotConfigured("Billing is not configured (STRIPE_SECRET_KEY is unset).")
    return _client_for(
        settings.STRIPE_SECRET_KEY,
        settings.STRIPE_API_BASE,
        settings.STRIPE_TIMEOUT_SECONDS,
        settings.STRIPE_NETWORK_RETRIES,
    )


def _translated(call: Callable[P, R]) -> Callable[P, R]:
    """Turn the SDK's errors into StripeUnavailable / StripeRejected (fresh instances)."""

    @functools.wraps(call)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return call(*args, **kwargs)
        except (stripe.APIConnectionError, stripe.RateLimitError) as error:
            logger.warning("Stripe unavailable in %s: %s", call.__name__, type(error).__name__)
            raise StripeUnavailable(
                "Payments are temporarily unavailable. Please try again in a minute."
            ) from error
        except stripe.StripeError as error:
            status = error.http_status
            if status is None or status >= 500 or status in (409, 429):
                logger.warning("Stripe failed in %s: HTTP %s", call.__name__, status)
                raise StripeUnavailable(
                    "Payments are temporarily unavailable. Please try again in a minute."
                ) from error
            logger.error("Stripe refused %s: HTTP %s %s", call.__name__, status, error.code or "")
            raise StripeRejected(
                error.user_message or "Stripe refused the request.",
                code=error.code or "",
                status=status,
            ) from error

    return wrapper


def _plain(obj: Any) -> dict[str, Any]:
    # Round-trip through JSON: plain dicts, lists and numbers only.
    return json.loads(str(obj)) if hasattr(obj, "to_dict") else dict(obj)


def _options(idempotency_key: str | None) -> dict[str, str] | None:
    return {"idempotency_key": idempotency_key} if idempotency_key else None


# --- Customers, products, prices ------------------------------------------------------------


@_translated
def customer_create(*, email: str, user_id: int) -> str:
    customer = _client().v1.customers.create(
        params={"email": email, "metadata": {"user_id": str(user_id)}}
    )
    return customer.id


@_translated
def product_create(*, name: str, description: str, network_id: int) -> str:
    params = {"name": name, "description": description or name}
    params["metadata"] = {"network_id": str(network_id)}
    return _client().v1.products.create(params=params).id


@_translated
def product_update(*, product_id: str, name: str, description: str) -> str:
    params = {"name": name, "description": description or name}
    return _client().v1.products.update(product_id, params=params).id


@_translated
def product_delete(*, product_id: str) -> None:
    """Delete a product that has no prices (cleaning up after a failed price creation)."""
    _client().v1.products.delete(product_id)


@_translated
def price_create(
    *,
    product_id: str,
    amount: int,
    currency: str,
    interval: str,
    network_id: int,
    idempotency_key: str | None = None,
) -> str:
    price = _client().v1.prices.create(
        params={
            "product": product_id,
            "unit_amount": amount,
            "currency": currency,
            "recurring": {"interval": interval},
            "metadata": {"network_id": str(network_id)},
        },
        options=_options(idempotency_key),
    )
    return price.id


@_translated
def price_deactivate(*, price_id: str) -> None:
    _client().v1.prices.update(price_id, params={"active": False})


# --- Checkout and the customer portal -------------------------------------------------------


@_translated
def checkout_session_create(
    *,
    customer_id: str,
    price_id: str,
    success_url: str,
    cancel_url: str,
    user_id: int,
    network_id: int,
) -> dict[str, Any]:
    metadata = {"user_id": str(user_id), "network_id": str(network_id)}
    session = _client().v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer_id,
            "line_items": [{"price": price_id, "quantity": 1}],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "client_reference_id": str(user_id),
            "metadata": metadata,
            "subscription_data": {"metadata": metadata},
        }
    )
    return _plain(session)


@_translated
def portal_session_url(*, customer_id: str, return_url: str) -> str:
    session = _client().v1.billing_portal.sessions.create(
        params={"customer": customer_id, "return_url": return_url}
    )
    return session.url


# --- Subscriptions ----------------------------------------------------------------------------


@_translated
def subscription_retrieve(*, subscription_id: str) -> dict[str, Any]:
    return _plain(_client().v1.subscriptions.retrieve(subscription_id))


@_translated
def subscriptions_list(*, status: str = "all", customer_id: str = "") -> list[dict[str, Any]]:
    """Subscriptions (auto-paginated), all of them or one customer's."""
    params: dict[str, Any] = {"status": status, "limit": 100}
    if customer_id:
        params["customer"] = customer_id
    page = _client().v1.subscriptions.list(params=params)
    return [_plain(subscription) for subscription in page.auto_paging_iter()]


@_translated
def subscription_change_price(
    *, subscription_id: str, item_id: str, price_id: str, idempotency_key: str
) -> dict[str, Any]:
    """Move the subscription's item to another price, prorated and invoiced at once."""
    updated = _client().v1.subscriptions.update(
        subscription_id,
        params={
            "items": [{"id": item_id, "price": price_id}],
            "proration_behavior": "always_invoice",
            "payment_behavior": "error_if_incomplete",
        },
        options=_options(idempotency_key),
    )
    return _plain(updated)


@_translated
def subscription_cancel_now(*, subscription_id: str) -> dict[str, Any]:
    """End the subscription now (no credit note: refunds are made explicitly)."""
    try:
        return _plain(_client().v1.subscriptions.cancel(subscription_id))
    except stripe.InvalidRequestError:
        # Already canceled (or cancelling twice): its current state is what we want.
        current = _plain(_client().v1.subscriptions.retrieve(subscription_id))
        if current.get("status") in ("canceled", "incomplete_expired"):
            return current
        raise


@_translated
def subscription_set_cancel_at_period_end(*, subscription_id: str, cancel: bool) -> dict[str, Any]:
    updated = _client().v1.subscriptions.update(
        subscription_id, params={"cancel_at_period_end": cancel}
    )
    return _plain(updated)


# --- Invoices, payments and refunds ------------------------------------------------------------


@_translated
def invoice_retrieve(*, invoice_id: str) -> dict[str, Any]:
    """The invoice with its payments expanded (2025+ API versions keep them there)."""
    return _plain(_client().v1.invoices.retrieve(invoice_id, params={"expand": ["payments"]}))


@_translated
def invoices_list(*, subscription_id: str, status: str = "paid") -> list[dict[str, Any]]:
    page = _client().v1.invoices.list(
        params={"subscription": subscription_id, "status": status, "limit": 100}
    )
    return [_plain(invoice) for invoice in page.auto_paging_iter()]


@_translated
def payment_intent_charge(*, payment_intent_id: str) -> dict[str, Any] | None:
    """The payment's charge with its balance transaction (fees), or None if not charged."""
    intent = _plain(
        _client().v1.payment_intents.retrieve(
            payment_intent_id, params={"expand": ["latest_charge.balance_transaction"]}
        )
    )
    charge = intent.get("latest_charge")
    return charge if isinstance(charge, dict) else None


@_translated
def charge_retrieve(*, charge_id: str) -> dict[str, Any]:
    return _plain(
        _client().v1.charges.retrieve(charge_id, params={"expand": ["balance_transaction"]})
    )


@_translated
def refund_create(
    *, payment_intent_id: str, amount: int, idempotency_key: str, reason: str
) -> dict[str, Any]:
    refund = _client().v1.refunds.create(
        params={
            "payment_intent": payment_intent_id,
            "amount": amount,
            "reason": "requested_by_customer",
            "metadata": {"katiedj_reason": reason},
        },
        options=_options(idempotency_key),
    )
    return _plain(refund)


# --- Webhooks ------------------------------------------------------------------------------


def webhook_event(*, payload: bytes, signature_header: str | None) -> dict[str, Any]:
    """The verified event, or WebhookRejected (unsigned, bad signature, stale, malformed)."""
    if not settings.STRIPE_WEBHOOK_SECRET:
        raise WebhookRejected("Webhook secret is not configured.")
    if not signature_header:
        raise WebhookRejected("Missing Stripe-Signature header.")
    try:
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8"),
            signature_header,
            settings.STRIPE_WEBHOOK_SECRET,
            tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS,
        )
        # The verified bytes as plain JSON (the SDK's objects hold Decimals a JSONField
        # refuses); checked for shape ourselves, so a signed array or a bare object is a 400.
        event = json.loads(payload)
    except (ValueError, stripe.SignatureVerificationError) as error:
        raise WebhookRejected(str(error)) from None
    if not (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
        and isinstance(event.get("created"), int)
        and isinstance((event.get("data") or {}).get("object"), dict)
    ):
        raise WebhookRejected("Not a Stripe event: id, type, created and data.object needed.")
    return event
