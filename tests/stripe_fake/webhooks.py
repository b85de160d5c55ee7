"""Signed webhook delivery: a background sender (in order, with retries) and one-shot sends."""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .signing import sign_payload

USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
# Retries after a connection error or a 5xx (4xx answers are final, as the receiver decided).
DEFAULT_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)
SEND_TIMEOUT = 10.0


def encode_event(event: dict[str, Any]) -> bytes:
    """The body Stripe would send: pretty-printed JSON, as the real API does."""
    return json.dumps(event, indent=2).encode("utf-8")


@dataclass
class Delivery:
    event_id: str
    event_type: str
    attempts: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False

    def as_json(self) -> dict[str, Any]:
        last = self.attempts[-1] if self.attempts else {}
        status = last.get("status")
        return {
            "event": self.event_id,
            "type": self.event_type,
            "attempts": list(self.attempts),
            "done": self.done,
            "succeeded": status is not None and 200 <= status < 300,
        }


class WebhookSender:
    """Posts events to the configured URL, one at a time and in order, from a daemon thread."""

    def __init__(
        self,
        *,
        url: str | None,
        secret: str,
        auto_deliver: bool,
        retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
    ) -> None:
        self.url = url
        self.secret = secret
        self.auto_deliver = auto_deliver
        self.retry_delays = retry_delays
        self._queue: queue.Queue[tuple[int, dict[str, Any], Delivery]] = queue.Queue()
        self._cond = threading.Condition()
        self._pending = 0
        self._generation = 0
        self._log: list[Delivery] = []
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)
        self._thread.start()

    # -- configuration and state -------------------------------------------------------------

    def configure(
        self, *, url: str | None = None, secret: str | None = None, auto_deliver: bool | None = None
    ) -> None:
        with self._cond:
            if url is not None:
                self.url = url or None
            if secret is not None:
                self.secret = secret
            if auto_deliver is not None:
                self.auto_deliver = auto_deliver

    def reset(self) -> None:
        """Forget the log; queued deliveries of the old state are dropped, not sent."""
        with self._cond:
            self._generation += 1
            self._log = []

    def log(self) -> list[dict[str, Any]]:
        with self._cond:
            return [delivery.as_json() for delivery in self._log]

    def flush(self, timeout: float) -> bool:
        """Wait until every queued delivery finished (delivered or out of retries)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout=timeout)

    # -- sending -----------------------------------------------------------------------------

    def event_created(self, event: dict[str, Any]) -> None:
        with self._cond:
            if not (self.auto_deliver and self.url):
                return
            delivery = Delivery(event["id"], event["type"])
            self._log.append(delivery)
            self._pending += 1
            generation = self._generation
        self._queue.put((generation, event, delivery))

    def send_once(self, event: dict[str, Any]) -> dict[str, Any]:
        """One synchronous attempt, freshly signed; the attempt record (status or error)."""
        with self._cond:
            url, secret = self.url, self.secret
            delivery = Delivery(event["id"], event["type"])
            self._log.append(delivery)
        if not url:
            attempt = {"at": int(time.time()), "status": None, "error": "no webhook URL"}
        else:
            attempt = _post(url, encode_event(event), secret)
        with self._cond:
            delivery.attempts.append(attempt)
            delivery.done = True
        return attempt

    def _run(self) -> None:
        while True:
            generation, event, delivery = self._queue.get()
            try:
                self._deliver_with_retries(generation, event, delivery)
            finally:
                with self._cond:
                    delivery.done = True
                    self._pending -= 1
                    self._cond.notify_all()

    def _deliver_with_retries(
        self, generation: int, event: dict[str, Any], delivery: Delivery
    ) -> None:
        body = encode_event(event)
        for delay in (*self.retry_delays, None):
            with self._cond:
                if generation != self._generation or not self.url:
                    return
                url, secret = self.url, self.secret
            attempt = _post(url, body, secret)
            with self._cond:
                delivery.attempts.append(attempt)
            status = attempt["status"]
            if (status is not None and status < 500) or delay is None:
                return
            time.sleep(delay)


def _post(url: str, body: bytes, secret: str) -> dict[str, Any]:
    parts = urlsplit(url)
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": USER_AGENT,
        "Stripe-Signature": sign_payload(body, secret),
        "Cache-Control": "no-cache",
    }
    started = int(time.time())
    connection = connection_class(parts.hostname or "127.0.0.1", parts.port, timeout=SEND_TIMEOUT)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return {"at": started, "status": response.status, "error": None}
    except (OSError, http.client.HTTPException) as error:
        return {"at": started, "status": None, "error": f"{type(error).__name__}: {error}"}
    finally:
        connection.close()
