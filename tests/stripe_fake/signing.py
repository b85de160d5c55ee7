"""Stripe webhook signatures: ``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256>``."""

from __future__ import annotations

import hashlib
import hmac
import time


def sign_payload(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header value for ``payload`` signed with ``secret``.

    The signed message is ``f"{timestamp}.{payload}"``, as ``stripe.Webhook.construct_event``
    recomputes it; ``timestamp`` defaults to now (pass an old one to test the tolerance check).
    """
    if timestamp is None:
        timestamp = int(time.time())
    signed = str(timestamp).encode("ascii") + b"." + payload
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"
