"""``/metrics``: Prometheus text for operators, never for the public."""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from katiedj.metrics import render_prometheus

from .occupancy import PROCESS_ID
from .selectors import network_stream_stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _allowed(request: HttpRequest) -> tuple[bool, int]:
    """With METRICS_TOKEN set, its bearer only; without, loopback clients only."""
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(presented.strip(), token)
        return ok, 401
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback, 403
    except ValueError:
        return False, 403


def metrics(request: HttpRequest) -> HttpResponse:
    """Listeners, messages and history per network (all processes), then this process's
    counters and latency histograms. Scrape every server process for the per-process part."""
    allowed, status = _allowed(request)
    if not allowed:
        reason = (
            "Send Authorization: Bearer <METRICS_TOKEN>"
            if status == 401
            else "Metrics are served to loopback clients only; set METRICS_TOKEN to scrape remotely"
        )
        response = HttpResponse(reason + "\n", status=status, content_type="text/plain")
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body = render_prometheus(network_stream_stats(), process=PROCESS_ID)
    return HttpResponse(body, content_type=CONTENT_TYPE)
