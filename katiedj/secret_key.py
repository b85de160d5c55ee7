"""The secret key of ``make run``: generated once, kept in ``var/``, never the public one.

Imported by the settings module, so nothing here may touch Django's settings at import.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

# In the repository, hence known to everyone: anything signed with it (sessions, entitlement
# tokens, password-reset links) can be forged. Only tests may run with it.
DEV_SECRET_KEY = "django-insecure-katiedj-embedded-development-key-do-not-use-in-production"  # noqa: S105
SECRET_KEY_FILE = "secret_key"  # noqa: S105 (a file name)


def read_secret_key(var_dir: Path) -> str:
    """The key ``ensure_secret_key`` kept in ``var_dir``, or "" when there is none yet."""
    try:
        return (var_dir / SECRET_KEY_FILE).read_text().strip()
    except FileNotFoundError:
        return ""


def ensure_secret_key(var_dir: Path) -> str:
    """The key kept in ``var_dir``, generated (readable by this user only) when missing."""
    existing = read_secret_key(var_dir)
    if existing:
        return existing
    var_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(64)
    try:
        # O_EXCL: two processes starting at once keep one key; 0600 from the first byte.
        fd = os.open(var_dir / SECRET_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_secret_key(var_dir)
    with os.fdopen(fd, "w") as file:
        file.write(key + "\n")
    return key


def running_tests() -> bool:
    """True inside a pytest process (server processes the tests start are not)."""
    return "pytest" in sys.modules


def refuse_public_secret_key(secret_key: str) -> None:
    """Stop a server about to sign with the public development key, whatever ``DEBUG`` says."""
    if secret_key == DEV_SECRET_KEY and not running_tests():
        raise ImproperlyConfigured(
            "SECRET_KEY is the public development key: set SECRET_KEY, or start the "
            "embedded mode with `make run` (manage.py serve), which keeps a generated key "
            f"in var/{SECRET_KEY_FILE}."
        )
