"""A small, stateful, Stripe-compatible HTTP server for tests (standard library only).

Run it with ``python -m tests.stripe_fake --port P --webhook-url URL --webhook-secret S``
(see ``__main__``) or from a test with :class:`FakeStripeProcess`, and point the real
``stripe`` library at it with ``StripeClient(key, base_addresses={"api": fake.api_base})``.

It implements customers, products, prices, Checkout Sessions (mode=subscription), billing
portal sessions, subscriptions (with plan changes and prorations) and the invoices they emit,
the payments behind paid invoices (InvoicePayments, PaymentIntents, Charges, balance
transactions with Stripe's fee) and refunds, in the shapes of API version
``2026-10-28.endive``, plus ``/_test/`` routes that play Stripe's part (pay a checkout,
fail or renew a payment, end a subscription, replay events), inject faults into ``/v1``
requests, log them, and set the account's API version (older versions get the pre-basil
shapes in events). Every state change records an event; events are POSTed, signed, to the
webhook URL unless auto-delivery is off.

It never imports project code.
"""

from .process import FakeStripeError, FakeStripeProcess
from .signing import sign_payload
from .state import API_VERSION

__all__ = ["API_VERSION", "FakeStripeError", "FakeStripeProcess", "sign_payload"]
