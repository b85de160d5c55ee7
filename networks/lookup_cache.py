"""One cache handle for the whole process, for the publish and listen paths.

``django.core.cache.cache`` is bound to the request context under ASGI: with Redis, every
request would build a new client and open a new TCP connection (measured: most of the
publish path's CPU). This handle, and its connection pool, live as long as the process.
"""

from __future__ import annotations

from functools import cache

from django.core.cache import BaseCache, caches


@cache
def lookup_cache() -> BaseCache:
    """The process-wide instance of the ``default`` cache (thread-safe, pooled)."""
    return caches.create_connection("default")
