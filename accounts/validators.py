"""Text that reaches other people's screens and mail headers: no invisible controls."""

from __future__ import annotations

import re
import unicodedata

from django.core.exceptions import ValidationError

# Bidirectional embeddings, overrides and isolates: they make text read differently from what
# it is (a name that displays as something else). Other format characters, such as the
# zero-width joiner inside emoji, stay allowed.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Cc: C0 and C1 controls (CR, LF, tab, NUL, escape, DEL…); Zl/Zp: Unicode line breaks.
_CONTROL_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def is_control_character(char: str) -> bool:
    """True for characters that break lines, headers or terminals, or reverse text."""
    return char in _BIDI_CONTROLS or unicodedata.category(char) in _CONTROL_CATEGORIES


def validate_no_control_characters(value: str) -> None:
    """Refuse control characters (line breaks, tabs, escapes) and text-direction overrides."""
    if any(is_control_character(char) for char in value):
        raise ValidationError(
            "Control characters (line breaks, tabs, escape sequences) and text-direction "
            "overrides are not allowed here.",
            code="control_characters",
        )


def single_line(value: str, *, max_length: int | None = None) -> str:
    """``value`` on one line with no control characters, for mail headers and quoted text.

    Each run of controls and whitespace becomes one space, so a stored name can never add a
    header or a paragraph of its own; ``max_length`` cuts it with an ellipsis.
    """
    text = "".join(" " if is_control_character(char) else char for char in value)
    text = re.sub(r"\s+", " ", text).strip()
    if max_length is not None and len(text) > max_length:
        text = text[: max_length - 1].rstrip() + "…"
    return text
