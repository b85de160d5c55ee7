"""The publisher key format: recognisable, checksummed, stored only as a hash.

A generated key reads ``kdj_`` + 30 random base62 characters + a 6-character base62 CRC32
of those 30. The prefix lets secret scanners spot a leaked key; the checksum rejects a typo
without a database lookup. Strings without the prefix (keys imported from an original
Katie DJ deployment, the embedded ``DEMO_API_KEY``) are still accepted and looked up by hash.
"""

from __future__ import annotations

import hashlib
import secrets
import string
import zlib

KEY_PREFIX = "kdj_"
_ALPHABET = string.digits + string.ascii_letters
_BODY_LENGTH = 30
_CHECKSUM_LENGTH = 6
# How many characters of a key (prefix included) are kept in clear to name it in listings.
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 8


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        chars.append(_ALPHABET[remainder])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_LENGTH)


def generate_key() -> str:
    """Return a new random publisher key in the recognisable format."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LENGTH))
    return f"{KEY_PREFIX}{body}{_checksum(body)}"


def is_well_formed(raw_key: str) -> bool:
    """False only for a string that claims the format (has the prefix) but breaks it."""
    if not raw_key.startswith(KEY_PREFIX):
        return True  # legacy or demo key: only the hash lookup can tell
    rest = raw_key[len(KEY_PREFIX) :]
    if len(rest) != _BODY_LENGTH + _CHECKSUM_LENGTH or any(c not in _ALPHABET for c in rest):
        return False
    body, checksum = rest[:_BODY_LENGTH], rest[_BODY_LENGTH:]
    return secrets.compare_digest(_checksum(body), checksum)


def hash_key(raw_key: str) -> str:
    """SHA-256 hex digest: keys are high-entropy, so a fast hash suffices and lookups stay O(1)."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def display_prefix(raw_key: str) -> str:
    """The part of a key kept in clear to recognise it (never enough to use it)."""
    if raw_key.startswith(KEY_PREFIX):
        return raw_key[:DISPLAY_PREFIX_LENGTH]
    # Imported keys may be short: never keep more than a third of them.
    return raw_key[: min(4, len(raw_key) // 3)]
