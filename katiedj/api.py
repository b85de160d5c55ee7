"""REST API conventions shared by every app: one JSON error shape, cursor pagination."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from accounts.selectors import Forbidden, NotFound
from accounts.services import MembershipError


class Conflict(exceptions.APIException):
    status_code = 409
    default_detail = "This change breaks a rule."
    default_code = "conflict"


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
    if isinstance(data, dict) and "detail" in data and len(data) == 1:
        detail = data["detail"]
        response.data = {"error": str(detail), "code": getattr(detail, "code", "error")}
    else:
        response.data = {"error": "Invalid input.", "code": "invalid", "fields": data}
    return response


class NewestFirstCursorPagination(CursorPagination):
    ordering = "-created_at"
    page_size = 50
    max_page_size = 200
    page_size_query_param = "page_size"


def publish_endpoints_hook(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Document the publish endpoint, which ``networks.ingest`` serves outside DRF."""
    error = {
        "type": "object",
        "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
        "required": ["error", "code"],
    }
    result.setdefault("components", {}).setdefault("securitySchemes", {})["publisherKey"] = {
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
            ],
            "responses": {
                "200": {
                    "description": "Messages after `since`, in the envelope format",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "400": {
                    "description": "since or limit is not a plain whole number",
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
