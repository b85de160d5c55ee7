"""Billing HTTP endpoints: the Stripe webhook, checkout, the customer portal."""

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

from . import services, stripe_gateway
from .entitlement import user_may_hear
from .models import Interval, Price
from .tasks import process_webhook_event

logger = logging.getLogger(__name__)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Verify, store once, process later. 400 for unsigned/bad/stale; 200 for replays."""
    try:
        row = services.webhook_receive(
            payload=request.body, signature_header=request.headers.get("Stripe-Signature")
        )
    except stripe_gateway.WebhookRejected as error:
        logger.warning("rejected a Stripe webhook: %s", error)
        return HttpResponseBadRequest(f"Rejected: {error}")
    if row is None:
        return JsonResponse({"status": "duplicate"})
    transaction.on_commit(lambda: process_webhook_event.delay(row.pk))
    return JsonResponse({"status": "accepted"})


def network_page(request: HttpRequest, slug: str) -> HttpResponse:
    """A network's page: the live view, how to listen, and for paid networks how to subscribe."""
    network = get_object_or_404(
        Network.objects.select_related("organization"), slug=slug, archived_at__isnull=True
    )
    prices = {p.interval: p for p in Price.objects.filter(network=network, active=True)}
    return render(
        request,
        "frontend/network_page.html",
        {
            "network": network,
            "prices": [prices[i] for i in (Interval.MONTH, Interval.YEAR) if i in prices],
            "billing_configured": stripe_gateway.billing_configured(),
            "subscribed": not network.is_public
            and user_may_hear(user=request.user, network=network),
        },
    )


@login_required
@require_POST
def checkout(request: HttpRequest, slug: str) -> HttpResponse:
    network = get_object_or_404(Network, slug=slug, archived_at__isnull=True, is_public=False)
    if not stripe_gateway.billing_configured():
        messages.error(request, "Billing is not configured on this server.")
        return redirect("billing:network", slug=slug)
    interval = request.POST.get("interval", Interval.MONTH)
    success = request.build_absolute_uri(reverse("billing:success", kwargs={"slug": slug}))
    cancel = request.build_absolute_uri(reverse("billing:network", kwargs={"slug": slug}))
    try:
        url = services.checkout_start(
            user=request.user,
            network=network,
            interval=interval,
            success_url=success + "?session_id={CHECKOUT_SESSION_ID}",
            cancel_url=cancel + "?checkout=cancelled",
        )
    except services.BillingError as error:
        messages.error(request, str(error))
        return redirect("billing:network", slug=slug)
    return redirect(url)


@login_required
def checkout_success(request: HttpRequest, slug: str) -> HttpResponse:
    network = get_object_or_404(Network, slug=slug)
    return render(request, "frontend/checkout_success.html", {"network": network})


@login_required
@require_POST
def portal(request: HttpRequest) -> HttpResponse:
    try:
        url = services.portal_url(
            user=request.user, return_url=request.build_absolute_uri(reverse("frontend:dashboard"))
        )
    except (services.BillingError, stripe_gateway.BillingNotConfigured) as error:
        messages.error(request, str(error))
        return redirect("frontend:dashboard")
    return redirect(url)
