"""Test control beside the Stripe objects: injected faults and the log of ``/v1`` requests.

Both live on the server, not in :class:`~.state.State`: a fault answers before a request
reaches the state (so it changes nothing, not even the idempotency cache), and the log records
every ``/v1`` request, whatever became of it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .state import ApiError

DROP = "drop"


@dataclass
class Fault:
    """The next ``remaining`` matching ``/v1`` requests fail with ``status``.

    ``status`` None drops the connection without an answer (the client sees a connection
    error); ``path_prefix`` and ``method`` narrow which requests match.
    """

    status: int | None
    remaining: int = 1
    path_prefix: str | None = None
    method: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return self.method in (None, method) and (
            self.path_prefix is None or path.startswith(self.path_prefix)
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "status": DROP if self.status is None else self.status,
            "count": self.remaining,
            "path_prefix": self.path_prefix,
            "method": self.method,
        }

    def error(self, method: str, path: str) -> ApiError:
        """Stripe's error for this status, as the ``stripe`` library maps it to a class."""
        status = self.status or 500
        suffix = f" (fault injected by the fake for {method} {path})"
        if status == 429:
            return ApiError(
                429,
                "Request rate limit exceeded. Learn more about rate limits here "
                "https://stripe.com/docs/rate-limits." + suffix,
                error_type="rate_limit_error",
                code="rate_limit",
            )
        if status == 402:
            return ApiError(
                402,
                "Your card was declined." + suffix,
                error_type="card_error",
                code="card_declined",
                decline_code="generic_decline",
            )
        if status == 404:
            return ApiError(
                404,
                "No such object: the requested resource does not exist." + suffix,
                code="resource_missing",
            )
        if status == 409:
            return ApiError(
                409,
                "This object cannot be accessed right now because another API request or "
                "Stripe process is currently accessing it." + suffix,
                code="lock_timeout",
            )
        if status >= 500:
            return ApiError(
                status,
                "An unknown error occurred while processing your request." + suffix,
                error_type="api_error",
            )
        return ApiError(status, "The request was refused." + suffix)


def parse_fault(params: dict[str, Any]) -> Fault:
    """A fault from ``status`` (400-599 or ``drop``), ``count``, ``path_prefix``, ``method``."""
    raw = str(params.get("status", ""))
    if raw == DROP:
        status = None
    else:
        try:
            status = int(raw)
        except ValueError:
            status = 0
        if not 400 <= status <= 599:
            raise ApiError(400, "status must be an HTTP error (400-599) or 'drop'.", param="status")
    try:
        count = int(params.get("count", 1))
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise ApiError(400, "count must be a positive integer.", param="count")
    prefix = params.get("path_prefix") or None
    if prefix is not None and not prefix.startswith("/v1/"):
        raise ApiError(400, "path_prefix must start with /v1/.", param="path_prefix")
    method = params.get("method") or None
    return Fault(status, count, prefix, method.upper() if method else None)


class FaultInjector:
    """Pending faults, in the order they were added; the first that matches is used."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults = []

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [fault.as_json() for fault in self._faults]

    def take(self, method: str, path: str) -> Fault | None:
        """The fault this request meets, counted down (and forgotten once used up)."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None


class RequestLog:
    """Every ``/v1`` request seen, oldest first: to assert what the app asked Stripe for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []

    def record(
        self, method: str, path: str, idempotency_key: str | None, status: int | None
    ) -> None:
        """``status`` is the answer's HTTP status, None for a dropped connection."""
        entry = {
            "method": method,
            "path": path,
            "idempotency_key": idempotency_key,
            "status": status,
        }
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._entries]

    def clear(self) -> None:
        with self._lock:
            self._entries = []
