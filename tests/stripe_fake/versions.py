"""Objects as accounts on API versions before ``2025-03-31.basil`` see them.

The fake stores everything in the current shape. An account whose API version is older
(``POST /_test/config account_api_version=2024-06-20``) gets its events rendered the old way,
as does a request that sends an old ``Stripe-Version`` header:

* subscriptions carry ``current_period_start`` / ``current_period_end`` (and, with one item,
  ``plan`` and ``quantity``) at the top level; their items carry no period;
* invoices carry ``subscription``, ``charge``, ``payment_intent`` and ``paid`` at the top level
  and no ``parent``;
* invoice lines carry ``type``, ``subscription``, ``subscription_item``, ``proration``,
  ``proration_details``, ``invoice_item`` and an embedded ``price``, and no ``parent`` or
  ``pricing``.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

# The first version of the basil era, which moved all of the above.
BASIL = "2025-03-31"
VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")


class Refs(Protocol):
    """What the old shapes need from the state (``State`` provides both)."""

    def lookup(self, object_id: str) -> dict[str, Any] | None: ...

    def invoice_payment_refs(self, invoice_id: str) -> tuple[str | None, str | None]: ...


def is_legacy(version: str) -> bool:
    """True for versions before basil (dates compare as strings)."""
    return version[:10] < BASIL


def downgrade(node: Any, refs: Refs) -> Any:
    """``node`` (an object, a list, or anything holding them) in the old shapes, in place."""
    if isinstance(node, list):
        return [downgrade(value, refs) for value in node]
    if not isinstance(node, dict):
        return node
    for key, value in node.items():
        node[key] = downgrade(value, refs)
    kind = node.get("object")
    if kind == "subscription":
        _subscription(node)
    elif kind == "invoice":
        _invoice(node, refs)
    elif kind == "line_item":
        _line_item(node, refs)
    return node


def _subscription(subscription: dict[str, Any]) -> None:
    items = (subscription.get("items") or {}).get("data") or []
    starts = [item.pop("current_period_start") for item in items if "current_period_start" in item]
    ends = [item.pop("current_period_end") for item in items if "current_period_end" in item]
    if starts and ends:
        subscription["current_period_start"] = min(starts)
        subscription["current_period_end"] = max(ends)
    if len(items) == 1:
        subscription["plan"] = items[0].get("plan")
        subscription["quantity"] = items[0].get("quantity")


def _invoice(invoice: dict[str, Any], refs: Refs) -> None:
    parent = invoice.pop("parent", None) or {}
    details = parent.get("subscription_details") or {}
    invoice["subscription"] = details.get("subscription")
    invoice["subscription_details"] = {"metadata": details.get("metadata")}
    invoice["payment_intent"], invoice["charge"] = refs.invoice_payment_refs(invoice["id"])
    invoice["paid"] = invoice.get("status") == "paid"


def _line_item(line: dict[str, Any], refs: Refs) -> None:
    parent = line.pop("parent", None) or {}
    pricing = line.pop("pricing", None) or {}
    details = parent.get("subscription_item_details") or parent.get("invoice_item_details") or {}
    line["invoice_item"] = details.get("invoice_item")
    line["type"] = "invoiceitem" if line["invoice_item"] else "subscription"
    line["subscription"] = details.get("subscription")
    line["subscription_item"] = details.get("subscription_item")
    line["proration"] = bool(details.get("proration"))
    line["proration_details"] = details.get("proration_details")
    price_id = (pricing.get("price_details") or {}).get("price")
    line["price"] = refs.lookup(price_id) if price_id else None
