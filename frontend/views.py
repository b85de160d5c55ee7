"""Public portal pages (landing, catalogue, docs) and the listener's account page."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponsePermanentRedirect
from django.shortcuts import redirect, render
from django.templatetags.static import static

from accounts.models import PersonalToken
from accounts.selectors import organizations_of
from accounts.services import personal_token_create, personal_token_revoke
from billing.selectors import is_stripe_customer, subscriptions_of
from billing.stripe_gateway import billing_configured
from networks.models import Network
from streaming.selectors import listeners_now

from .forms import CatalogueFilterForm, PersonalTokenForm
from .selectors import catalogue_networks, catalogue_providers, featured_networks, usage_window

CATALOGUE_PAGE_SIZE = 24


def _with_listeners(networks: list) -> list:
    """Attach ``listeners`` (connected now) to each network: one occupancy read for all."""
    counts = listeners_now([n.id for n in networks])
    for network in networks:
        network.listeners = counts.get(network.id, 0)
    return networks


def _base_urls(request: HttpRequest) -> dict[str, str]:
    http = request.build_absolute_uri("/").rstrip("/")
    ws = ("wss://" if request.is_secure() else "ws://") + request.get_host()
    return {"base_url": http, "ws_base": ws}


def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico whatever the page says: point them at the SVG icon."""
    return HttpResponsePermanentRedirect(static("frontend/favicon.svg"))


def home(request: HttpRequest) -> HttpResponse:
    """What KatieDJ is, in one screen, and a few networks to try."""
    return render(
        request,
        "frontend/home.html",
        {"networks": _with_listeners(featured_networks()), **_base_urls(request)},
    )


def catalogue(request: HttpRequest) -> HttpResponse:
    """Every live network: search, filter by access and provider, listeners now, price."""
    form = CatalogueFilterForm(request.GET or None, providers=catalogue_providers())
    filters = form.cleaned_data if form.is_valid() else {}
    networks = catalogue_networks(
        q=filters.get("q", ""),
        access=filters.get("access", ""),
        provider=filters.get("provider", ""),
    )
    page = Paginator(networks, CATALOGUE_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "frontend/catalogue.html",
        {
            "form": form,
            "page": page,
            "networks": _with_listeners(list(page.object_list)),
            "filtered": any(filters.values()),
            "query": query.urlencode(),
        },
    )


def docs(request: HttpRequest) -> HttpResponse:
    """How to publish and listen, from docs/protocol.md, with this server's addresses."""
    return render(
        request,
        "frontend/docs.html",
        {
            **_base_urls(request),
            "max_bytes": settings.PUBLISH_MAX_BYTES,
            "rate": settings.PUBLISH_RATE_PER_SECOND,
            "token_minutes": settings.ENTITLEMENT_TOKEN_SECONDS // 60,
            "connections_per_user": settings.LISTENER_CONNECTIONS_PER_USER,
            "connections_per_address": settings.LISTENER_CONNECTIONS_PER_ADDRESS,
            "inbound_bytes": settings.WEBSOCKET_MAX_INBOUND_BYTES,
            "demo_network": settings.DEMO_NETWORK_SLUG,
            "ping_interval": settings.WEBSOCKET_PING_INTERVAL,
            "ping_timeout": settings.WEBSOCKET_PING_TIMEOUT,
            "backpressure_buffer": Network._meta.get_field("backpressure_buffer").get_default(),
        },
    )


@login_required
def account(request: HttpRequest) -> HttpResponse:
    """The listener's dashboard: subscriptions, personal tokens (secret shown once), snippets.

    ``/dashboard/tokens/`` posts here too (the former personal-tokens page).
    """
    form = PersonalTokenForm()
    created = None
    if request.method == "POST":
        if request.POST.get("revoke"):
            token = PersonalToken.objects.filter(
                user=request.user, pk=request.POST["revoke"]
            ).first()
            if token is None:
                raise Http404
            personal_token_revoke(token=token)
            messages.success(request, f"Token {token.prefix}… revoked; scripts using it stop.")
            return redirect("frontend:account")
        form = PersonalTokenForm(request.POST)
        if form.is_valid():
            created = personal_token_create(user=request.user, name=form.cleaned_data["name"])
            form = PersonalTokenForm()
    subscriptions = list(subscriptions_of(user=request.user))
    usage = usage_window(network_ids={s.network_id for s in subscriptions}, hours=24)
    for subscription in subscriptions:
        subscription.messages_24h = usage.of(subscription.network_id)["messages"]
    return render(
        request,
        "frontend/account.html",
        {
            **_base_urls(request),
            "subscriptions": subscriptions,
            "tokens": PersonalToken.objects.filter(user=request.user),
            "form": form,
            "created": created,
            "token_value": created[1] if created else "<your personal token>",
            "token_example": (
                f"curl -X POST {request.build_absolute_uri('/api/v1/entitlements/token')} "
                f"-H 'Authorization: Bearer {created[1]}'"
                if created
                else ""
            ),
            "example_network": subscriptions[0].network if subscriptions else None,
            "can_manage_billing": billing_configured() and is_stripe_customer(user=request.user),
            "memberships": organizations_of(user=request.user).order_by("organization__name"),
        },
    )
