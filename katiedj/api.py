"""REST API conventions shared by every app: one JSON error shape."""

from __future__ import annotations

from typing import Any

from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render every API error as ``{"error": "<message>", "code": "<code>"}`` (+ ``fields``)."""
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    if isinstance(data, dict) and "detail" in data:
        detail = data["detail"]
        response.data = {"error": str(detail), "code": getattr(detail, "code", "error")}
    else:
        response.data = {"error": "Invalid input", "code": "invalid", "fields": data}
    return response
