"""The only module that talks to Stripe (the ``stripe`` library, API version pinned by it).

Everything else calls these functions with plain values and gets plain dicts back, so the
SDK's surface and version live in one place and tests can point it at a local fake server
(``STRIPE_API_BASE``).
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import stripe
from django.conf import settings


class BillingNotConfigured(Exception):
    """No STRIPE_SECRET_KEY: billing is off (the embedded default)."""


class WebhookRejected(Exception):
    """Unsigned, wrongly signed or stale webhook payload."""


def billing_configured() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


@cache
def _client_for(secret_key: str, api_base: str) -> stripe.StripeClient:
    base = {"api": api_base} if api_base else None
    return stripe.StripeClient(secret_key, base_addresses=base, max_network_retries=2)


def _client() -> stripe.StripeClient:
    if not billing_configured():
        raise BillingNotConfigured("Billing is not configured (STRIPE_SECRET_KEY is unset).")
    return _client_for(settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE)


def _plain(obj: Any) -> dict[str, Any]:
    # Round-trip through JSON: plain dicts, lists and numbers only.
    return json.loads(str(obj)) if hasattr(obj, "to_dict") else dict(obj)


def customer_create(*, email: str, user_id: int) -> str:
    customer = _client().v1.customers.create(
        params={"email": email, "metadata": {"user_id": str(user_id)}}
    )
    return customer.id


def product_upsert(*, product_id: str, name: str, description: str, network_id: int) -> str:
    """Create the network's Product, or update its name and description."""
    params = {"name": name, "description": description or name}
    if product_id:
        return _client().v1.products.update(product_id, params=params).id
    params["metadata"] = {"network_id": str(network_id)}
    return _client().v1.products.create(params=params).id


def price_create(
    *, product_id: str, amount: int, currency: str, interval: str, network_id: int
) -> str:
    price = _client().v1.prices.create(
        params={
            "product": product_id,
            "unit_amount": amount,
            "currency": currency,
            "recurring": {"interval": interval},
            "metadata": {"network_id": str(network_id)},
        }
    )
    return price.id


def price_deactivate(*, price_id: str) -> None:
    _client().v1.prices.update(price_id, params={"active": False})


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


def portal_session_url(*, customer_id: str, return_url: str) -> str:
    session = _client().v1.billing_portal.sessions.create(
        params={"customer": customer_id, "return_url": return_url}
    )
    return session.url


def subscription_retrieve(*, subscription_id: str) -> dict[str, Any]:
    return _plain(_client().v1.subscriptions.retrieve(subscription_id))


def subscriptions_list(*, status: str = "all") -> list[dict[str, Any]]:
    """Every subscription (auto-paginated), for reconciliation."""
    page = _client().v1.subscriptions.list(params={"status": status, "limit": 100})
    return [_plain(subscription) for subscription in page.auto_paging_iter()]


def webhook_event(*, payload: bytes, signature_header: str | None) -> dict[str, Any]:
    """The verified event, or WebhookRejected (unsigned, bad signature, or stale)."""
    if not settings.STRIPE_WEBHOOK_SECRET:
        raise WebhookRejected("Webhook secret is not configured.")
    if not signature_header:
        raise WebhookRejected("Missing Stripe-Signature header.")
    try:
        stripe.Webhook.construct_event(
            payload,
            signature_header,
            settings.STRIPE_WEBHOOK_SECRET,
            tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS,
        )
    except (ValueError, stripe.SignatureVerificationError) as error:
        raise WebhookRejected(str(error)) from None
    # The verified bytes as plain JSON (the SDK's objects hold Decimals a JSONField refuses).
    return json.loads(payload)
