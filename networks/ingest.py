"""The publish endpoints as a plain ASGI app: the hot path, kept off Django's request stack.

Under ASGI every Django request costs a fresh worker thread and a thread hop per middleware
hook and per request signal — measured ~8 ms per publish on this machine kind, more than all
the real work. Publish requests carry their own credential and need no session, CSRF or
user, so this app parses them itself and calls ``services.publish_request`` directly: no
thread hop and no database query once the caches are warm.

Routes (see ``route_publish``): ``POST /api/publish`` and ``POST /publish`` (the original
Katie DJ contract, errors ``{"error": …}``), ``POST /api/v1/networks/<slug>/messages``
(REST: Bearer or API-KEY auth, 401 for a bad key, errors ``{"error": …, "code": …}``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from importlib import import_module
from typing import Any
from urllib.parse import parse_qs

import redis
from django.conf import settings
from django.contrib.auth import get_user
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest
from django.http.cookie import parse_cookie

from accounts.selectors import personal_token_user
from accounts.tokens import PERSONAL_TOKEN
from katiedj import metrics, outages
from katiedj.asgi_responses import send_json as _send_json

from . import key_failures
from .accounting import MAX_SEQ, ahistory_since, aresume_position, retry_after_header
from .lookup_cache import DatabaseUnavailable, adatabase_call
from .models import KeyScope
from .selectors import NetworkInfo, anetwork_get_by_slug, apublisher_key_get, is_member
from .services import (
    PayloadTooLarge,
    PublishError,
    TooManyFailedKeysError,
    envelope_text,
    publish_request,
)

logger = logging.getLogger(__name__)

_LEGACY_PATH = re.compile(r"^/(?:api/)?publish/?$")
_REST_PATH = re.compile(r"^/api/v1/networks/(?P<slug>[^/]+)/messages/?$")

Scope = dict[str, Any]


@dataclass(frozen=True)
class PublishRoute:
    rest: bool
    slug: str | None = None


def route_publish(path: str) -> PublishRoute | None:
    """The publish route ``path`` names, or None if it is not a publish URL."""
    if _LEGACY_PATH.match(path):
        return PublishRoute(rest=False)
    rest = _REST_PATH.match(path)
    if rest:
        return PublishRoute(rest=True, slug=rest["slug"])
    return None


class ClientDisconnected(Exception):
    pass


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _rest_key(scope: Scope) -> str | None:
    scheme, _, credentials = (_header(scope, b"authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return _header(scope, b"api-key")


def client_address(scope: Scope) -> str | None:
    """The caller's address, which refused keys are counted against (None: not counted)."""
    client = scope.get("client")
    return client[0] if client else None


def _content_length(scope: Scope) -> int | None:
    try:
        return int(_header(scope, b"content-length") or "")
    except ValueError:
        return None


_WHOLE_NUMBER = re.compile(r"[0-9]{1,19}")
_EPOCH = re.compile(r"[0-9A-Za-z._-]{1,64}")
_BAD_PAGE = {
    "error": "since and limit must be whole numbers: since from 0 to 9223372036854775807, "
    "limit up to 1000; epoch an epoch id from an envelope",
    "code": "invalid",
}


def _history_page(scope: Scope) -> tuple[int, int, str] | None:
    """(since, limit, epoch) from the query string, or None when one is malformed."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    since, limit = query.get("since", ["0"])[0], query.get("limit", ["100"])[0]
    epoch = query.get("epoch", [""])[0]
    # ASCII digits only: int() would also take " 5", "+5", "1_0" and other scripts' digits.
    if not (_WHOLE_NUMBER.fullmatch(since) and _WHOLE_NUMBER.fullmatch(limit)):
        return None
    if int(since) > MAX_SEQ or (epoch and not _EPOCH.fullmatch(epoch)):
        return None
    return int(since), min(1000, max(1, int(limit))), epoch


async def _reads_private_history(scope: Scope, network: NetworkInfo) -> bool:
    """Whether the caller belongs to ``network``'s organization: a key of its with the
    ``read_history`` scope for this network, or a member's personal token or session.

    Refused credentials count against the caller's address (TooManyFailedKeys past it).
    """
    client = client_address(scope)
    raw = _rest_key(scope)
    if raw and not PERSONAL_TOKEN.claims(raw):
        publisher = await apublisher_key_get(raw_key=raw, client=client)
        if publisher is None:
            await key_failures.arecord_failure(client)
            return False
        return (
            KeyScope.READ_HISTORY in publisher.scopes
            and network.organization_id == publisher.organization_id
            and network.id in publisher.network_ids
        )
    session_key = None if raw else _session_key(scope)
    if not (raw or session_key):
        return False
    key_failures.raise_if_blocked_here(client)
    member = await adatabase_call(
        _person_is_member, raw, session_key, client, network.organization_id
    )
    if member is None:
        await key_failures.arecord_failure(client)
    return bool(member)


def _session_key(scope: Scope) -> str | None:
    cookies = parse_cookie(_header(scope, b"cookie") or "")
    return cookies.get(settings.SESSION_COOKIE_NAME) or None


def _person_is_member(
    token: str | None, session_key: str | None, client: str | None, organization_id: int
) -> bool | None:
    """Whether the person behind ``token`` or ``session_key`` is a member of the organization;
    None when neither names an active person. Database queries: the caller's hop."""
    key_failures.check_before_lookup(client)
    if token:
        user = personal_token_user(raw_token=token)
        user_id = user.pk if user is not None else None
    else:
        request = HttpRequest()
        request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
        user = get_user(request)  # checks the session's password hash, like the middleware
        user_id = user.pk if user.is_authenticated else None
    if user_id is None:
        return None
    return is_member(user_id=user_id, organization_id=organization_id)


# What a request cannot be served without: Redis (channel layer, cache, counters) or the
# database (down, refusing, or past its bounded wait). Either way the documented 503.
_SERVICE_DOWN = (redis.RedisError, OSError, DatabaseUnavailable, OperationalError, InterfaceError)


async def _send_unavailable(send: Any, error: Exception) -> int:
    """503 with Retry-After: nothing was published, the client should retry shortly. One log
    line per outage (``katiedj.outages``), not a traceback per request; no key is logged."""
    down = outages.REDIS if isinstance(error, (redis.RedisError, OSError)) else outages.DATABASE
    outages.note_outage(down, error)
    body = {"error": "Service unavailable, retry shortly", "code": "unavailable"}
    await _send_json(send, 503, body, [(b"retry-after", b"1")])
    return 503


class PublishApp:
    """ASGI app for the publish routes; anything else must not be routed here."""

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        route = route_publish(scope["path"])
        assert route is not None, "route only publish paths here"  # noqa: S101
        if route.rest and scope["method"] == "GET":
            started = False

            async def tracked_send(message: dict[str, Any]) -> None:
                nonlocal started
                started = started or message["type"] == "http.response.start"
                await send(message)

            try:
                await self._history(scope, tracked_send, route)
            except _SERVICE_DOWN as error:
                if started:
                    raise
                await _send_unavailable(send, error)
            return
        if scope["method"] != "POST":
            error = {"error": "Method not allowed: use POST"}
            allow = b"POST"
            if route.rest:
                error["code"] = "method_not_allowed"
                allow = b"GET, POST"
            await _send_json(send, 405, error, [(b"allow", allow)])
            return

        async def read_body(limit: int) -> bytes:
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)

        raw_key = _rest_key(scope) if route.rest else _header(scope, b"api-key")
        started = time.perf_counter()
        status = await self._publish(scope, send, route, raw_key, read_body)
        if status:
            metrics.publish_handled(status, time.perf_counter() - started)

    async def _publish(self, scope: Scope, send: Any, route: PublishRoute, raw_key, read_body):
        """Publish and answer; returns the status sent (0 if the client went away)."""
        try:
            message = await publish_request(
                raw_key=raw_key,
                read_body=read_body,
                content_length=_content_length(scope),
                network_slug=route.slug,
                client=client_address(scope),
            )
        except PublishError as error:
            return await self._send_error(send, route, error)
        except ClientDisconnected:
            return 0
        except _SERVICE_DOWN as error:
            return await _send_unavailable(send, error)  # nothing was fanned out
        outages.note_recovered(outages.REDIS)
        status = 201 if route.rest else 200
        await _send_json(send, status, message.receipt(with_epoch=route.rest))
        return status

    @staticmethod
    async def _history(scope: Scope, send: Any, route: PublishRoute) -> None:
        """``GET …/messages?since=&limit=``: recent messages, oldest first.

        Public networks: anyone. Paid and archived networks: the owning organization only
        (``_reads_private_history``); anyone else gets the 404 of a missing network.
        """
        network = await anetwork_get_by_slug(slug=route.slug or "")
        if network is not None and (network.archived or not network.is_public):
            try:
                if not await _reads_private_history(scope, network):
                    network = None  # indistinguishable from a network that does not exist
            except key_failures.TooManyFailedKeys as blocked:
                error = TooManyFailedKeysError(blocked.retry_after)
                retry_after = retry_after_header(blocked.retry_after).encode()
                body = {"error": error.message, "code": error.code}
                await _send_json(send, error.status, body, [(b"retry-after", retry_after)])
                return
        if network is None:
            body = {"error": "Network not found", "code": "network_not_found"}
            await _send_json(send, 404, body)
            return
        page = _history_page(scope)
        if page is None:
            await _send_json(send, 400, _BAD_PAGE)
            return
        since, limit, epoch = page
        position = await aresume_position(network_id=network.id, since=since, epoch=epoch)
        # A position outside the current numbering pages from where it starts, and says so.
        since = position.since
        reset = "null"
        if position.reset:
            reset = f'{{"epoch":"{position.epoch.id}","seq":{position.since}}}'
        entries, oldest = await ahistory_since(
            network_id=network.id,
            since=since,
            limit=limit,
            max_age_seconds=network.history_max_age_seconds,
        )
        # The stored frames are JSON already: splice them in rather than parse them again.
        messages = ",".join(
            envelope_text(
                seq=e.seq,
                epoch=e.epoch or position.epoch.id,
                ts=e.ts,
                network=network.slug,
                frame=e.frame,
            )
            for e in entries
        )
        next_since = entries[-1].seq if entries else since
        body = (
            f'{{"network":{json.dumps(network.slug)},"epoch":"{position.epoch.id}",'
            f'"reset":{reset},"oldest_seq":{json.dumps(oldest)},'
            f'"next_since":{next_since},"messages":[{messages}]}}'
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _send_error(send: Any, route: PublishRoute, error: PublishError) -> int:
        headers: list[tuple[bytes, bytes]] = []
        if error.retry_after is not None:
            headers.append((b"retry-after", retry_after_header(error.retry_after).encode()))
        if not route.rest:
            text = error.legacy_message or error.message
            await _send_json(send, error.status, {"error": text}, headers)
            return error.status
        status, payload = error.status, {"error": error.message, "code": error.code}
        if error.code in ("api_key_missing", "api_key_invalid"):
            status, headers = 401, [(b"www-authenticate", b'Bearer realm="publish"')]
        elif error.code == "network_forbidden":
            # REST convention: another tenant's network is indistinguishable from none.
            status, payload = 404, {"error": "Network not found", "code": "network_not_found"}
        await _send_json(send, status, payload, headers)
        return status
