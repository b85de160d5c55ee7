"""Call the real ASGI application in-process from synchronous tests."""

from __future__ import annotations

import json as jsonlib
from typing import Any

import httpx
from asgiref.sync import async_to_sync


class AsgiTestClient:
    """HTTP requests through ``katiedj.asgi.application`` (routing, publish app, Django).

    It runs under ``async_to_sync``, so the app's thread-sensitive database calls execute on
    the test's own thread and see the test's transaction.
    """

    def __init__(self) -> None:
        from katiedj.asgi import application

        self._transport = httpx.ASGITransport(app=application)

    def request(
        self,
        method: str,
        path: str,
        data: Any = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body = data if isinstance(data, (bytes, str)) or data is None else jsonlib.dumps(data)
        all_headers = {"content-type": content_type, **(headers or {})}

        async def call() -> httpx.Response:
            async with httpx.AsyncClient(
                transport=self._transport, base_url="http://testserver"
            ) as client:
                response = await client.request(method, path, content=body, headers=all_headers)
                await response.aread()
                return response

        return async_to_sync(call)()

    def post(self, path: str, data: Any = None, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, data, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)
