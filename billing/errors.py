"""What can go wrong with money, as the rest of the project sees it (no ``stripe`` types)."""

from __future__ import annotations


class BillingError(Exception):
    """A billing action that cannot be done as asked; the message is for people."""


class BillingNotConfigured(BillingError):
    """No STRIPE_SECRET_KEY: billing is off (the embedded default)."""


class StripeUnavailable(BillingError):
    """Stripe could not be reached, timed out, rate-limited us or failed on its side.

    Transient: the same call may succeed later. ``retry_after`` is a hint in seconds.
    """

    def __init__(self, message: str, *, retry_after: int = 30) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StripeRejected(BillingError):
    """Stripe answered that the request itself is wrong (unknown object, bad parameter,
    declined card, wrong key): repeating it will not help."""

    def __init__(self, message: str, *, code: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class WebhookRejected(Exception):
    """Unsigned, wrongly signed, stale or malformed webhook payload."""
