"""Small template helpers of the portal: navigation state and money."""

from __future__ import annotations

from django import template
from django.utils.html import format_html, json_script

from simulator.selectors import street_map

register = template.Library()

_SYMBOLS = {"eur": "€", "usd": "$", "gbp": "£"}


@register.simple_tag(takes_context=True)
def nav_link(context: template.Context, href: str, label: str, exact: bool = False) -> str:
    """A navigation link marked ``aria-current="page"`` when the visitor is in that section."""
    request = context.get("request")
    path = request.path if request is not None else ""
    current = path == href if exact else path.startswith(href)
    return format_html(
        '<a href="{}"{}>{}</a>', href, ' aria-current="page"' if current else "", label
    )


@register.filter
def money(cents: int | None, currency: str = "eur") -> str:
    """``499, "eur"`` → ``€4.99`` (currency code as suffix when there is no symbol)."""
    if cents is None:
        return "—"
    amount = f"{cents / 100:,.2f}"
    symbol = _SYMBOLS.get((currency or "").lower())
    return f"{symbol}{amount}" if symbol else f"{amount} {(currency or '').upper()}"


@register.simple_tag
def street_map_json(network_id: int) -> str:
    """The network's street map (from its simulation) as an inert JSON script, or nothing.

    A template tag so the network page's view, which billing owns, stays free of simulator
    imports: the portal composes the page.
    """
    layout = street_map(network_id=network_id)
    return json_script(layout, "live-topology") if layout else ""
