"""``/metrics``: Prometheus text for operators, never for the public.

Servers answer it with ``metrics_app``, below Django (``katiedj.asgi``): Django runs its
views, and WhiteNoise, on asgiref's one sync thread, which a portal page waiting on a hung
database holds, and a scrape must not wait behind it. ``metrics`` is the same answer as a
Django view (the test client, ``runserver``).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from katiedj.metrics import render_prometheus

from .occupancy import PROCESS_ID
from .selectors import network_stream_stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Scrape:
    status: int
    body: str
    content_type: str = CONTENT_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def _allowed(authorization: str, address: str) -> tuple[bool, int]:
    """With METRICS_TOKEN set, its bearer only; without, loopback clients only."""
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, presented = authorization.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(presented.strip(), token)
        return ok, 401
    try:
        return ipaddress.ip_address(address).is_loopback, 403
    except ValueError:
        return False, 403


def scrape(authorization: str, address: str) -> Scrape:
    """Listeners, messages and history per network (all processes), then this process's
    counters and latency histograms, for a caller with this Authorization header and
    address. Scrape every server process for the per-process part.

    Degrades rather than fails: the per-process part whatever the database and Redis do
    (waiting at most ``DATABASE_LOOKUP_TIMEOUT_SECONDS`` for the database), with
    ``katiedj_database_up`` / ``katiedj_redis_up`` saying which answered."""
    allowed, status = _allowed(authorization, address)
    if not allowed:
        if status == 401:
            reason = "Send Authorization: Bearer <METRICS_TOKEN>"
            return Scrape(
                401, reason + "\n", "text/plain", {"WWW-Authenticate": 'Bearer realm="metrics"'}
            )
        reason = "Metrics are served to loopback clients only; set METRICS_TOKEN to scrape remotely"
        return Scrape(403, reason + "\n", "text/plain")
    networks, up = network_stream_stats()
    return Scrape(200, render_prometheus(networks, process=PROCESS_ID, up=up))


def metrics(request: HttpRequest) -> HttpResponse:
    """``scrape`` as a Django view."""
    answer = scrape(request.headers.get("Authorization", ""), request.META.get("REMOTE_ADDR", ""))
    response = HttpResponse(answer.body, status=answer.status, content_type=answer.content_type)
    for name, value in answer.headers.items():
        response[name] = value
    return response


async def metrics_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``scrape`` as a plain ASGI app, run on a worker thread of its own (not asgiref's)."""
    authorization = next(
        (value.decode("latin-1") for name, value in scope["headers"] if name == b"authorization"),
        "",
    )
    client = scope.get("client")
    answer = await asyncio.to_thread(scrape, authorization, client[0] if client else "")
    body = answer.body.encode()
    headers = [
        (b"content-type", answer.content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in answer.headers.items()),
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
