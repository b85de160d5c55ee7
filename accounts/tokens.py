"""Secret formats: recognisable, checksummed, stored only as a hash.

A generated secret reads ``<prefix>`` + 30 random base62 characters + a 6-character base62
CRC32 of those 30. The prefix lets secret scanners spot a leak and says what the secret is
(``kdj_`` a publisher API key, ``kdjp_`` a personal token); the checksum rejects a typo
without a database lookup. Publisher keys without the prefix (imported from an original
Katie DJ deployment, the embedded ``DEMO_API_KEY``) are still accepted and looked up by hash.
"""

from __future__ import annotations

import hashlib
import secrets
import string
import zlib
from dataclasses import dataclass

_ALPHABET = string.digits + string.ascii_letters
_BODY_LENGTH = 30
_CHECKSUM_LENGTH = 6


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        chars.append(_ALPHABET[remainder])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_LENGTH)


def hash_secret(raw: str) -> str:
    """SHA-256 hex digest: secrets are high-entropy, so a fast hash suffices; lookups stay O(1)."""
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class SecretFormat:
    prefix: str

    @property
    def length(self) -> int:
        return len(self.prefix) + _BODY_LENGTH + _CHECKSUM_LENGTH

    def generate(self) -> str:
        """A new random secret in this format."""
        body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LENGTH))
        return f"{self.prefix}{body}{_checksum(body)}"

    def claims(self, raw: str) -> bool:
        """True when ``raw`` carries this format's prefix."""
        return raw.startswith(self.prefix)

    def is_valid(self, raw: str) -> bool:
        """True when ``raw`` has the prefix, the length, the alphabet and a matching checksum."""
        rest = raw[len(self.prefix) :]
        if not self.claims(raw) or len(rest) != _BODY_LENGTH + _CHECKSUM_LENGTH:
            return False
        if any(c not in _ALPHABET for c in rest):
            return False
        return secrets.compare_digest(_checksum(rest[:_BODY_LENGTH]), rest[_BODY_LENGTH:])

    def display_prefix(self, raw: str) -> str:
        """The part kept in clear to recognise a secret (never enough to use it)."""
        if self.claims(raw):
            return raw[: len(self.prefix) + 8]
        # Imported keys may be short: never keep more than a third of them.
        return raw[: min(4, len(raw) // 3)]


PUBLISHER_KEY = SecretFormat("kdj_")
PERSONAL_TOKEN = SecretFormat("kdjp_")
