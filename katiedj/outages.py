"""Outages of a backing service (the database, Redis), logged once per state change.

A publish path answering 503 during an outage sees the same error on every request: a
traceback each time drowned the log (175 lines per server for a 5 s Redis outage). Instead
the first failure logs one warning, the first success after it one line saying the service
is back, and everything in between is silent. The state is this process's own: each server
process logs its own two lines.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from katiedj.log_redaction import redact

logger = logging.getLogger(__name__)

DATABASE = "database"
REDIS = "redis"

_MESSAGE_CHARS = 200

# component → when this process first saw it fail (monotonic seconds). Written from the
# event loop and from database lookup threads, hence the lock; read without it on hot paths.
_down: dict[str, float] = {}
_lock = threading.Lock()


def describe(error: BaseException | None) -> str:
    """One short line about ``error``: its type and the first line of its message, with any
    secret redacted (a driver's message may quote what it was given)."""
    if error is None:
        return "no answer"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if len(text) > _MESSAGE_CHARS:
        text = text[:_MESSAGE_CHARS] + "…"
    return redact(f"{type(error).__name__}: {text}" if text else type(error).__name__)


def note_outage(component: str, error: BaseException | None = None) -> bool:
    """Record that ``component`` failed; logs a warning only if it was up until now.

    Returns whether this call changed the state."""
    if component in _down:
        return False
    with _lock:
        if component in _down:
            return False
        _down[component] = time.monotonic()
    logger.warning(
        "%s unavailable: %s (logged once; a line follows when it is back)",
        component,
        describe(error),
    )
    return True


def note_recovered(component: str) -> bool:
    """Record that ``component`` answered; logs a line only if it was down until now.

    Cheap when it was up (a dict lookup): call it after every success."""
    if component not in _down:
        return False
    with _lock:
        since = _down.pop(component, None)
    if since is None:
        return False
    # A warning too: an operator who sees the outage at WARNING level sees its end.
    logger.warning("%s reachable again after %.1f s", component, time.monotonic() - since)
    return True


def keep_reconnecting(pool: Any) -> None:
    """The PostgreSQL pool's ``reconnect_failed``: try again at once rather than stop.

    psycopg's pool gives up on a connection it could not make for ``reconnect_timeout``, and
    nothing tries again until a new request asks for one: requests already waiting then sat
    out their whole pool timeout after the database was back (measured: 5 s). ``check()``
    lets the pool grow again, which starts a new attempt straight away.
    """
    pool.check()


def is_down(component: str) -> bool:
    """Whether this process's last word on ``component`` was a failure."""
    return component in _down


def reset() -> None:
    """Forget every outage (tests)."""
    with _lock:
        _down.clear()
