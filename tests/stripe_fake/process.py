"""Run the fake as a subprocess and drive its ``/_test/`` routes from a test."""

from __future__ import annotations

import http.client
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlencode

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_PREFIX = "stripe-fake listening on "
DEFAULT_WEBHOOK_SECRET = "whsec_test_fake"


class FakeStripeError(RuntimeError):
    """A ``/_test/`` call answered with an error status."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"fake Stripe answered {status}: {body}")
        self.status = status
        self.body = body


class FakeStripeProcess:
    """``python -m tests.stripe_fake`` in a subprocess; a context manager.

    ``port=None`` lets the server pick a free port (read back from its ready line).
    """

    def __init__(
        self,
        port: int | None = None,
        webhook_url: str | None = None,
        webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
        auto_deliver: bool = True,
        *,
        verbose: bool = False,
        startup_timeout: float = 15.0,
    ) -> None:
        self.requested_port = port
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.auto_deliver = auto_deliver
        self.verbose = verbose
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self._process: subprocess.Popen[str] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def api_base(self) -> str:
        if self.port is None:
            raise RuntimeError("the fake Stripe server is not running")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        if self._process is not None:
            return self
        command = [
            sys.executable,
            "-m",
            "tests.stripe_fake",
            "--port",
            str(self.requested_port or 0),
            "--webhook-secret",
            self.webhook_secret,
        ]
        if self.webhook_url:
            command += ["--webhook-url", self.webhook_url]
        if not self.auto_deliver:
            command.append("--no-auto-deliver")
        if self.verbose:
            command.append("--verbose")
        self._process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            self.port = self._read_port()
            self._request("GET", "/_test/health")
        except BaseException:
            self.stop()
            raise
        return self

    def _read_port(self) -> int:
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        deadline = time.monotonic() + self.startup_timeout
        line = ""
        while not line.endswith("\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the fake Stripe server did not start in time")
            readable, _, _ = select.select([stdout], [], [], remaining)
            if readable:
                chunk = stdout.readline()
                if not chunk:
                    code = self._process.wait(timeout=5)
                    raise RuntimeError(f"the fake Stripe server exited with status {code}")
                line += chunk
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"unexpected output from the fake Stripe server: {line!r}")
        return int(line.strip().rsplit(":", 1)[1])

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        finally:
            if process.stdout is not None:
                process.stdout.close()
            self.port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the /_test/ routes ------------------------------------------------------------------

    def _request(self, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
        params = {key: value for key, value in (params or {}).items() if value is not None}
        body = urlencode(params).encode("ascii") if method == "POST" else None
        if method != "POST" and params:
            path = f"{path}?{urlencode(params)}"
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        payload = json.loads(raw) if raw else None
        if response.status >= 400:
            raise FakeStripeError(response.status, payload)
        return payload

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """Every event so far, oldest first (optionally of one type)."""
        return self._request("GET", "/_test/events", {"type": event_type} if event_type else None)

    def deliver(self, event_id: str) -> int | None:
        """Send one event now (freshly signed); the receiver's HTTP status, None if unreachable."""
        return self._request("POST", f"/_test/events/{quote(event_id)}/deliver")["status"]

    def deliveries(self) -> list[dict[str, Any]]:
        """The delivery log: per event, every attempt's status (or connection error)."""
        return self._request("GET", "/_test/deliveries")

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the background sender has finished with every queued event."""
        if not self._request("POST", "/_test/flush", {"timeout": timeout})["drained"]:
            raise TimeoutError("webhook deliveries still pending")

    def configure(
        self,
        *,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        auto_deliver: bool | None = None,
        account_api_version: str | None = None,
    ) -> dict[str, Any]:
        """Change settings of the running server (e.g. once the app's port is known).

        ``account_api_version`` (e.g. ``"2024-06-20"``) is the version events are rendered in;
        before ``2025-03-31`` they have the old shapes (see ``versions``). ``reset`` puts it
        back to the current version; the delivery settings survive a reset.
        """
        params: dict[str, Any] = {"account_api_version": account_api_version}
        if webhook_url is not None:
            params["webhook_url"] = webhook_url
        if webhook_secret is not None:
            params["webhook_secret"] = webhook_secret
            self.webhook_secret = webhook_secret
        if auto_deliver is not None:
            params["auto_deliver"] = "true" if auto_deliver else "false"
        return self._request("POST", "/_test/config", params)

    def complete_checkout(self, session_id: str) -> dict[str, Any]:
        """Pay the checkout session; the new subscription."""
        return self._request("POST", f"/_test/checkout/{quote(session_id)}/complete")

    def fail_payment(self, subscription_id: str) -> dict[str, Any]:
        return self._request(
            "POST", f"/_test/subscriptions/{quote(subscription_id)}/payment_failed"
        )

    def renew(self, subscription_id: str) -> dict[str, Any]:
        return self._request("POST", f"/_test/subscriptions/{quote(subscription_id)}/renew")

    def end(self, subscription_id: str) -> dict[str, Any]:
        return self._request("POST", f"/_test/subscriptions/{quote(subscription_id)}/end")

    def reset(self) -> None:
        """Forget all objects, events, deliveries, faults and logged requests."""
        self._request("POST", "/_test/reset")

    def inject_fault(
        self,
        status: int | str,
        count: int = 1,
        path_prefix: str | None = None,
        method: str | None = None,
    ) -> list[dict[str, Any]]:
        """Fail the next ``count`` matching ``/v1`` requests; the pending faults.

        ``status`` is an HTTP error status (429: rate_limit_error, 402: card_error, 404:
        resource_missing, 5xx: api_error, ...) or ``"drop"`` to close the connection without
        an answer. A failed request changes no state.
        """
        params = {"status": status, "count": count, "path_prefix": path_prefix, "method": method}
        return self._request("POST", "/_test/faults", params)

    def faults(self) -> list[dict[str, Any]]:
        """Pending faults: ``{status, count (left), path_prefix, method}``."""
        return self._request("GET", "/_test/faults")

    def clear_faults(self) -> None:
        self._request("DELETE", "/_test/faults")

    def requests_log(self) -> list[dict[str, Any]]:
        """Every ``/v1`` request so far, oldest first: ``{method, path, idempotency_key,
        status}`` (``status`` None: dropped by a fault)."""
        return self._request("GET", "/_test/requests")

    def clear_requests_log(self) -> None:
        self._request("DELETE", "/_test/requests")
