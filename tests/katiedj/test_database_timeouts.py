"""PostgreSQL is never waited on without a bound: connect, statement and pool timeouts."""

from __future__ import annotations

import json
import os

from tests.e2e.harness import run_python

PROBE = """
import json, django
from django.conf import settings
django.setup()
options = dict(settings.DATABASES["default"].get("OPTIONS", {}))
pool = {k: getattr(v, "__name__", v) for k, v in options.get("pool", {}).items()}
print(json.dumps({
    "connect_timeout": options.get("connect_timeout"),
    "options": options.get("options"),
    "pool": pool,
    "threads": settings.DATABASE_LOOKUP_THREADS,
    "wait": settings.DATABASE_LOOKUP_TIMEOUT_SECONDS,
}))
"""


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    clean.update({"DJANGO_SETTINGS_MODULE": "katiedj.settings", **env})
    result = run_python(clean, "-c", PROBE)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_postgresql_gets_bounded_waits_by_default():
    loaded = probe(DATABASE_URL="postgres://u@db.internal:5432/katiedj")
    assert loaded["connect_timeout"] == 3
    assert loaded["options"] == "-c statement_timeout=30000"
    assert loaded["pool"]["timeout"] == 10 and loaded["pool"]["reconnect_timeout"] == 5
    assert loaded["pool"]["reconnect_failed"] == "keep_reconnecting"  # never stops trying
    assert (loaded["threads"], loaded["wait"]) == (4, 3.0)


def test_the_bounds_come_from_the_environment_and_zero_lifts_them():
    loaded = probe(
        DATABASE_URL="postgres://u@db.internal:5432/katiedj?options=-c%20work_mem%3D8MB",
        DATABASE_CONNECT_TIMEOUT_SECONDS="7",
        DATABASE_STATEMENT_TIMEOUT_MS="1500",
        DATABASE_LOOKUP_THREADS="8",
        DATABASE_LOOKUP_TIMEOUT_SECONDS="1.5",
        DATABASE_POOL_RECONNECT_SECONDS="20",
    )
    assert loaded["connect_timeout"] == 7
    assert loaded["options"] == "-c work_mem=8MB -c statement_timeout=1500"  # both kept
    assert loaded["pool"]["reconnect_timeout"] == 20
    assert (loaded["threads"], loaded["wait"]) == (8, 1.5)
    lifted = probe(
        DATABASE_URL="postgres://u@db.internal:5432/katiedj",
        DATABASE_CONNECT_TIMEOUT_SECONDS="0",
        DATABASE_STATEMENT_TIMEOUT_MS="0",  # e.g. behind PgBouncer
    )
    assert lifted["connect_timeout"] is None and lifted["options"] is None


def test_sqlite_gets_none_of_them():
    loaded = probe()
    assert loaded["connect_timeout"] is None and loaded["options"] is None
