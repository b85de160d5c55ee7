"""REST API conventions shared by every app: one JSON error shape, cursor pagination."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from accounts.selectors import Forbidden, NotFound
from accounts.services import MembershipError


class Conflict(exceptions.APIException):
    status_code = 409
    default_detail = "This change breaks a rule."
    default_code = "conflict"


_ENVELOPE = {
    "type": "object",
    "properties": {
        "seq": {"type": "integer"},
        "epoch": {"type": "string"},
        "ts": {"type": "string", "format": "date-time"},
        "network": {"type": "string"},
        "data": {"type": "object"},
    },
    "required": ["seq", "epoch", "ts", "network", "data"],
}
_HISTORY_PAGE = {
    "type": "object",
    "properties": {
        "network": {"type": "string"},
        "epoch": {"type": "string", "description": "The current numbering's epoch"},
        "reset": {
            "type": "object",
            "nullable": True,
            "description": "Set when (epoch, since) was no position in the current numbering: "
            "messages then follow `seq` of `epoch`, and the old numbering's rest is gone",
            "properties": {"epoch": {"type": "string"}, "seq": {"type": "integer"}},
            "required": ["epoch", "seq"],
        },
        "oldest_seq": {"type": "integer", "nullable": True},
        "next_since": {"type": "integer"},
        "messages": {"type": "array", "items": _ENVELOPE},
    },
    "required": ["network", "epoch", "reset", "oldest_seq", "next_since", "messages"],
}


def _translate(exc: Exception) -> Exception:
    # Services raise plain domain errors; the API decides their HTTP meaning here, once.
    if isinstance(exc, (NotFound, ObjectDoesNotExist)):
        return exceptions.NotFound("Not found.")
    if isinstance(exc, Forbidden):
        return exceptions.PermissionDenied("Your role in this organization does not allow this.")
    if isinstance(exc, MembershipError):
        return Conflict(str(exc))
    if isinstance(exc, DjangoValidationError):
        return exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        )
    return exc


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render every API error as ``{"error": "<message>", "code": "<code>"}`` (+ ``fields``)."""
    response = drf_exception_handler(_translate(exc), context)
    if response is None:
        return None
    data = response.data
    detail = data.get("detail") if isinstance(data, dict) and len(data) == 1 else None
    if isinstance(detail, list) and len(detail) == 1:
        detail = detail[0]  # ValidationError({"detail": [message]}): one message, not fields
    if detail is not None and not isinstance(detail, (list, dict)):
        response.data = {"error": str(detail), "code": getattr(detail, "code", "error")}
    else:
        response.data = {"error": "Invalid input.", "code": "invalid", "fields": data}
    return response


# Django's own error pages for what never reaches a DRF view (a URL that matches no route, a
# request Django refuses): the same JSON shape under /api/, the portal's pages elsewhere.
_DJANGO_ERRORS = {
    400: ("Bad request.", "bad_request", defaults.bad_request),
    403: ("Permission denied.", "permission_denied", defaults.permission_denied),
    404: ("Not found.", "not_found", defaults.page_not_found),
}


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def _error_page(status: int) -> Any:
    message, code, page = _DJANGO_ERRORS[status]

    def handler(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
        if _is_api(request):
            return JsonResponse({"error": message, "code": code}, status=status)
        return page(request, exception)

    handler.__name__ = f"error_{status}"
    return handler


bad_request = _error_page(400)
permission_denied = _error_page(403)
page_not_found = _error_page(404)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"error": "Server error.", "code": "server_error"}, status=500)
    return defaults.server_error(request)


class NewestFirstCursorPagination(CursorPagination):
    ordering = "-created_at"
    page_size = 50
    max_page_size = 200
    page_size_query_param = "page_size"

    def decode_cursor(self, request: Request) -> Cursor | None:
        """DRF's, and a position that is not a timestamp is an invalid cursor too (404, as
        for any cursor this server did not make), not a query the database refuses."""
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            try:
                models.DateTimeField().to_python(cursor.position)
            except DjangoValidationError:
                raise exceptions.NotFound(self.invalid_cursor_message) from None
        return cursor


# The one error shape (``exception_handler``), as the schema's ``Error`` component.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "What went wrong, for people."},
        "code": {
            "type": "string",
            "description": "What went wrong, for programs (stable): `invalid`, `parse_error`, "
            "`json_too_deep`, `not_authenticated`, `permission_denied`, `not_found`, …",
        },
        "fields": {
            "type": "object",
            "additionalProperties": True,
            "description": "With `invalid`: the messages per field of the request body.",
        },
    },
    "required": ["error", "code"],
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}

# What any management API operation may answer besides its own success (see ``_common``).
COMMON_ERRORS = {
    "400": "Invalid input (`invalid`, with `fields`), or a body that is not strict JSON "
    "(`parse_error`, `json_too_deep`)",
    "401": "No credentials, or an invalid, expired or revoked personal token",
    "403": "Your role in this organization does not allow this (or a portal-session request "
    "without its CSRF token)",
    "404": "No such object, or one of another organization (the same answer); on lists, an "
    "invalid `cursor`",
    "415": "A request body that is not `application/json`",
}
_METHODS = ("get", "put", "post", "patch", "delete")


def _common(path: str, operation: dict[str, Any]) -> list[str]:
    """The common error statuses ``operation`` can answer."""
    codes = ["403"]
    security = operation.get("security")
    if security and {} not in security:  # {}: anyone may call it
        codes.append("401")
    parameters = operation.get("parameters", [])
    if "{" in path or any(p.get("name") == "cursor" for p in parameters):
        codes.append("404")
    if "requestBody" in operation:
        codes += ["400", "415"]
    return codes


def common_error_responses_hook(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Document, once for every operation, the errors the API's conventions give any of them.

    Every error body is ``{"error", "code"}`` (``exception_handler``): each 4xx response gets
    the ``Error`` schema, and each operation the common statuses it can answer (401 without
    credentials, 403 for a role, 404 for a path that names nothing, 400 and 415 for a body)
    unless its view documents them itself.
    """
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, item in result.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for code in _common(path, operation):
                responses.setdefault(code, {"description": COMMON_ERRORS[code]})
            for code, response in responses.items():
                if code.startswith("4") and not response.get("content"):
                    response["content"] = {"application/json": {"schema": ERROR_REF}}
    return result


def publish_endpoints_hook(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Document the publish endpoint, which ``networks.ingest`` serves outside DRF."""
    error = ERROR_REF
    components = result.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    components.setdefault("securitySchemes", {})["publisherKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A publisher API key (kdj_…); the header `API-KEY: <key>` works too.",
    }
    slug_parameter = {"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}
    result["paths"]["/api/v1/networks/{slug}/messages"] = {
        "get": {
            "operationId": "v1_networks_messages_history",
            "summary": "Recent messages, oldest first (the history ?since= replays)",
            "description": (
                "Public networks: anyone. Paid and archived networks: the owning organization "
                "only (its publisher key with read_history, a member's personal token or "
                "session); anyone else gets 404."
            ),
            "tags": ["publish"],
            "security": [{"publisherKey": []}, {}],
            "parameters": [
                slug_parameter,
                {
                    "name": "since",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                },
                {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 1000}},
                {
                    "name": "epoch",
                    "in": "query",
                    "description": "The epoch of the envelope `since` came from: a position "
                    "outside the current numbering is reset (see `reset`)",
                    "schema": {"type": "string", "pattern": "^[0-9A-Za-z._-]{1,64}$"},
                },
            ],
            "responses": {
                "200": {
                    "description": "Messages after `since`, in the envelope format",
                    "content": {"application/json": {"schema": _HISTORY_PAGE}},
                },
                "400": {
                    "description": "since or limit is not a plain whole number, or epoch not "
                    "an epoch id",
                    "content": {"application/json": {"schema": error}},
                },
                "404": {
                    "description": "No such network, or not readable with this key",
                    "content": {"application/json": {"schema": error}},
                },
                "429": {
                    "description": "Too many refused keys from this address (see Retry-After)",
                    "content": {"application/json": {"schema": error}},
                },
                "503": {
                    "description": "Redis or the database unreachable (see Retry-After)",
                    "content": {"application/json": {"schema": error}},
                },
            },
        },
        "post": {
            "operationId": "v1_networks_messages_publish",
            "summary": "Publish one sample to a network's listeners",
            "tags": ["publish"],
            "security": [{"publisherKey": []}],
            "parameters": [slug_parameter],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"data": {"type": "object"}},
                            "required": ["data"],
                        }
                    }
                },
            },
            "responses": {
                "201": {
                    "description": "Accepted and fanned out",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "message": {"type": "string"},
                                    "network": {"type": "string"},
                                    "seq": {"type": "integer"},
                                    "epoch": {"type": "string"},
                                    "ts": {"type": "string", "format": "date-time"},
                                },
                            }
                        }
                    },
                },
                **{
                    str(code): {
                        "description": text,
                        "content": {"application/json": {"schema": error}},
                    }
                    for code, text in [
                        (400, "Not strict JSON or nested too deep, no data, data not an object"),
                        (401, "Missing, invalid, revoked or expired key"),
                        (404, "No such network, or not one this key may publish to"),
                        (409, "The network is archived"),
                        (413, "Body over the size limit"),
                        (429, "Over the key's rate, or too many refused keys (see Retry-After)"),
                        (503, "Temporarily unavailable (see Retry-After)"),
                    ]
                },
            },
        },
    }
    return result
