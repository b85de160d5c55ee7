"""Billing HTTP endpoints: the Stripe webhook, checkout, plan changes, the customer portal.

Stripe being down never gives a 500 here: the person gets a page saying so, with status 503
and ``Retry-After``.
"""

from __future__ import annotations

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from networks.models import Network

from . import services, stripe_gateway, sync
from .entitlement import user_may_hear
from .errors import BillingError, StripeUnavailable, WebhookRejected
from .models import Interval, Price
from .tasks import process_webhook_event

logger = logging.getLogger(__name__)


def stripe_unavailable(request: HttpRequest, error: StripeUnavailable, back: str) -> HttpResponse:
    """A page saying payments are down for a moment: 503 with Retry-After, nothing lost."""
    response = render(
        request,
        "frontend/billing_unavailable.html",
        {"message": str(error), "back": back, "retry_after": error.retry_after},
        status=503,
    )
    response["Retry-After"] = str(error.retry_after)
    return response


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Verify, store once, process later. 400 for unsigned/bad/stale/malformed; 200 for replays."""
    try:
        row = sync.webhook_receive(
            payload=request.body, signature_header=request.headers.get("Stripe-Signature")
        )
    except WebhookRejected as error:
        logger.warning("rejected a Stripe webhook: %s", error)
        return HttpResponseBadRequest(f"Rejected: {error}")
    if row is None:
        return JsonResponse({"status": "duplicate"})
    transaction.on_commit(lambda: process_webhook_event.delay(row.pk))
    return JsonResponse({"status": "accepted"})


def network_page(request: HttpRequest, slug: str) -> HttpResponse:
    """A network's page: the live view, how to listen, and for paid networks how to subscribe
    (or, for a subscriber, how to switch plan)."""
    network = get_object_or_404(
        Network.objects.select_related("organization"), slug=slug, archived_at__isnull=True
    )
    prices = {p.interval: p for p in Price.objects.filter(network=network, active=True)}
    current = (
        services.live_subscription(user=request.user, network=network)
        if request.user.is_authenticated and not network.is_public
        else None
    )
    return render(
        request,
        "frontend/network_page.html",
        {
            "network": network,
            "prices": [prices[i] for i in (Interval.MONTH, Interval.YEAR) if i in prices],
            "billing_configured": stripe_gateway.billing_configured(),
            "subscribed": not network.is_public
            and user_may_hear(user=request.user, network=network),
            "current_subscription": current,
            "other_plans": [
                p for i, p in prices.items() if current is None or current.price_id != p.pk
            ],
        },
    )


@login_required
@require_POST
def checkout(request: HttpRequest, slug: str) -> HttpResponse:
    """Subscribe: Stripe Checkout, or a plan change for a person who already subscribes."""
    network = get_object_or_404(Network, slug=slug, archived_at__isnull=True, is_public=False)
    back = reverse("billing:network", kwargs={"slug": slug})
    if not stripe_gateway.billing_configured():
        messages.error(request, "Billing is not configured on this server.")
        return redirect(back)
    interval = request.POST.get("interval", Interval.MONTH)
    success = request.build_absolute_uri(reverse("billing:success", kwargs={"slug": slug}))
    cancel = request.build_absolute_uri(back)
    try:
        url = services.checkout_start(
            user=request.user,
            network=network,
            interval=interval,
            success_url=success + "?session_id={CHECKOUT_SESSION_ID}",
            cancel_url=cancel + "?checkout=cancelled",
        )
    except services.AlreadySubscribed as error:
        messages.info(request, str(error))
        return redirect(back)
    except StripeUnavailable as error:
        return stripe_unavailable(request, error, back)
    except BillingError as error:
        messages.error(request, str(error))
        return redirect(back)
    return redirect(url)


@login_required
@require_POST
def change_plan(request: HttpRequest, slug: str) -> HttpResponse:
    """Switch the person's subscription to another interval: prorated by Stripe, one charge."""
    network = get_object_or_404(Network, slug=slug, archived_at__isnull=True, is_public=False)
    back = reverse("billing:network", kwargs={"slug": slug})
    try:
        change = services.subscription_change_plan(
            user=request.user, network=network, interval=request.POST.get("interval", "")
        )
    except StripeUnavailable as error:
        return stripe_unavailable(request, error, back)
    except BillingError as error:
        messages.error(request, str(error))
        return redirect(back)
    messages.success(
        request,
        f"You are now on the {change.price.get_interval_display().lower()} plan; Stripe "
        "credited the unused part of your previous plan.",
    )
    return redirect(back)


@login_required
def checkout_success(request: HttpRequest, slug: str) -> HttpResponse:
    network = get_object_or_404(Network, slug=slug)
    return render(request, "frontend/checkout_success.html", {"network": network})


@login_required
@require_POST
def portal(request: HttpRequest) -> HttpResponse:
    """Stripe's Customer Portal; it returns the person to their account page."""
    back = reverse("frontend:account")
    try:
        url = services.portal_url(user=request.user, return_url=request.build_absolute_uri(back))
    except StripeUnavailable as error:
        return stripe_unavailable(request, error, back)
    except BillingError as error:
        messages.error(request, str(error))
        return redirect(back)
    return redirect(url)
