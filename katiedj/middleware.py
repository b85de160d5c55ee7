"""Request guards: an ASGI deadline on request bodies, the Content-Security-Policy, and no NUL
in a path."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import Http404, HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware

from katiedj.asgi_responses import send_json

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class BodyTimeout(Exception):
    """The request's body did not arrive before its deadline (not an OSError on purpose:
    callers catching I/O errors must not mistake it for one)."""


class RequestBodyDeadline:
    """Answer 408 and close when an HTTP request's body has not fully arrived ``seconds``
    after its headers.

    uvicorn waits for a body as long as the client keeps the connection open, so clients
    trickling bytes would hold connections and request tasks at will. Only the body is timed:
    once it is complete, ``receive`` is the server's own (Django waits on it for a disconnect
    while a view runs, however long that takes). WebSockets pass through untouched.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.seconds <= 0:
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        body_done = False
        response_started = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                # asyncio.timeout: no extra task per message (the publish path is hot).
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except BodyTimeout:
            if not response_started:
                await _request_timeout(send)


async def _request_timeout(send: Any) -> None:
    # The rest of the body may still be on its way: this connection is done.
    await send_json(
        send,
        408,
        {"error": "The request body did not arrive in time", "code": "request_timeout"},
        [(b"connection", b"close")],
    )


# Stripe's hosted pages: a Subscribe or "Manage billing" form posts to us and is redirected
# there, and form-action applies to the redirect too.
STRIPE_PAGES = ("https://checkout.stripe.com", "https://billing.stripe.com")


@lru_cache(maxsize=64)
def content_security_policy(host: str | None, secure: bool, stripe_api_base: str) -> str:
    """The portal's policy: everything from this origin, no inline script.

    style-src allows inline styles: the templates (and the admin's and API docs' pages) use
    style attributes and a few <style> blocks. Styles cannot run script, and the ways CSS
    can leak page content out (url() to another host) are closed by img-src and font-src.
    """
    connect = ["'self'"]
    if host:
        # 'self' covers same-host WebSockets in CSP 3 browsers; older Safari needs the URL.
        connect.append(f"{'wss' if secure else 'ws'}://{host}")
    form_action = ["'self'", *STRIPE_PAGES]
    if stripe_api_base:
        # A Stripe-compatible server (the tests' fake) serves Checkout from its own origin.
        parts = urlsplit(stripe_api_base)
        form_action.append(f"{parts.scheme}://{parts.netloc}")
    directives = {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": connect,
        "form-action": form_action,
        "frame-ancestors": ["'none'"],
        "base-uri": ["'self'"],
        "object-src": ["'none'"],
    }
    return "; ".join(f"{name} {' '.join(values)}" for name, values in directives.items())


def _add_policy(request: HttpRequest, response: HttpResponse) -> None:
    if "Content-Security-Policy" in response:
        return  # a view that set its own knows better
    if settings.DEBUG and response.status_code >= 500:
        return  # Django's debug error page relies on inline script
    try:
        host = request.get_host()
    except DisallowedHost:
        host = None
    response["Content-Security-Policy"] = content_security_policy(
        host, request.is_secure(), settings.STRIPE_API_BASE
    )


@sync_and_async_middleware
def ContentSecurityPolicyMiddleware(get_response):  # named like the classes in MIDDLEWARE
    """Add the Content-Security-Policy header, without a thread hop under ASGI."""
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            response = await get_response(request)
            _add_policy(request, response)
            return response

    else:

        def middleware(request: HttpRequest) -> HttpResponse:
            response = get_response(request)
            _add_policy(request, response)
            return response

    return middleware


def _refuse_nul(request: HttpRequest) -> None:
    if "\x00" in request.path_info:
        raise Http404("No page has a NUL character in its address.")


@sync_and_async_middleware
def NulInPathMiddleware(get_response):  # named like the classes in MIDDLEWARE
    """404 for a path with a NUL character (``%00``): it names nothing, since PostgreSQL text
    cannot hold one, and a view looking it up (``<str:slug>``) would be a server error."""
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            _refuse_nul(request)
            return await get_response(request)

    else:

        def middleware(request: HttpRequest) -> HttpResponse:
            _refuse_nul(request)
            return get_response(request)

    return middleware
