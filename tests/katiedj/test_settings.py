"""Settings come from the environment, with safe embedded defaults."""

from __future__ import annotations

import json
import os
import subprocess

from tests.e2e.harness import run_python

PROBE = """
import json, django
from django.conf import settings
django.setup()
default_db = settings.DATABASES["default"]
print(json.dumps({
    "db": default_db["ENGINE"],
    "db_name": str(default_db["NAME"]),
    "layer": settings.CHANNEL_LAYERS["default"]["BACKEND"],
    "cache": settings.CACHES["default"]["BACKEND"],
    "eager": settings.CELERY_TASK_ALWAYS_EAGER,
    "hosts": settings.ALLOWED_HOSTS,
    "port": settings.PORT,
    "debug": settings.DEBUG,
}))
"""


def load_settings(**env: str) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "REDIS_", "KATIEDJ_", "DEBUG", "SECRET_KEY"))
    }
    clean.update({"DJANGO_SETTINGS_MODULE": "katiedj.settings", **env})
    return run_python(clean, "-c", PROBE)


def test_the_embedded_default_needs_no_service():
    result = load_settings()
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["db"] == "django.db.backends.sqlite3"
    assert loaded["db_name"].endswith("var/katiedj.sqlite3")
    assert loaded["layer"] == "channels.layers.InMemoryChannelLayer"
    assert loaded["cache"].endswith("LocMemCache")
    assert loaded["eager"] is True
    assert loaded["port"] == 8000


def test_production_reads_database_redis_hosts_and_port():
    result = load_settings(
        DATABASE_URL="postgres://u:p@db.internal:5432/katiedj",
        REDIS_URL="redis://cache.internal:6379/0",
        ALLOWED_HOSTS="radio.example.com, api.example.com",
        PORT="9001",
        DEBUG="false",
        SECRET_KEY="x" * 50,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["db"] == "django.db.backends.postgresql"
    assert loaded["layer"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    assert loaded["cache"].endswith("RedisCache")
    assert loaded["eager"] is False
    assert loaded["hosts"] == ["radio.example.com", "api.example.com"]
    assert loaded["port"] == 9001
    assert loaded["debug"] is False


def test_the_development_secret_key_refuses_to_run_without_debug():
    result = load_settings(DEBUG="false")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr
