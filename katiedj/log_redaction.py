"""Keep tokens and keys out of the logs.

Listeners pass entitlement tokens (``kdje.…``) and personal tokens (``kdjp_…``) as
``?token=`` (the only way a browser's WebSocket can), and uvicorn logs every request line and
WebSocket handshake with its query string. ``RedactSecrets`` is attached to uvicorn's handlers
(``katiedj/uvicorn_logging.json``) and Django's console handler.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"

# Query parameters that carry credentials, whatever their value looks like.
_SECRET_PARAMETER = re.compile(
    r"(?i)([?&;](?:token|access_token|api_key|api-key|apikey)=)[^&;#\s\"']*"
)
# Our secrets wherever they appear: publisher keys and personal tokens (prefix + 36 base62
# characters; the 12-character display prefixes shown in the portal are not secrets) and
# entitlement tokens (prefix, payload, signature).
_SECRET_VALUE = re.compile(r"\b(kdjp?_)[0-9A-Za-z]{20,}|\b(kdje\.)[0-9A-Za-z_-]+\.[0-9A-Za-z_-]+")


def _value(match: re.Match[str]) -> str:
    return (match.group(1) or match.group(2)) + REDACTED


def redact(text: str) -> str:
    """``text`` with credential query values and KatieDJ secrets replaced by a marker."""
    if "=" not in text and "kdj" not in text:
        return text  # the common case, checked cheaply: most log lines hold neither
    return _SECRET_VALUE.sub(_value, _SECRET_PARAMETER.sub(r"\1" + REDACTED, text))


class RedactSecrets(logging.Filter):
    """Redact the message and its string arguments in place (numbers stay numbers, as
    uvicorn's access formatter unpacks them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True
