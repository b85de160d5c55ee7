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
