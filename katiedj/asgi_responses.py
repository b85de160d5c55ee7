"""JSON answers sent straight on an ASGI connection (the publish path and the body deadline
run below Django, so they cannot return a JsonResponse)."""

from __future__ import annotations

import json
from typing import Any


async def send_json(
    send: Any, status: int, payload: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()
) -> None:
    """One complete JSON response; ``headers`` are added to the content headers."""
    # json.dumps' default separators: the bytes Django's JsonResponse (the original) produced.
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
