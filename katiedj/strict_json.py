"""Strict JSON parsing: RFC 8259 as browsers and other languages read it, nothing more.

Python's ``json`` accepts ``NaN``, ``Infinity`` and ``-Infinity``, turns ``1e999`` into
``inf`` (written back as ``Infinity``, which no JSON parser reads), keeps ``"\\ud800"`` (a
lone surrogate no UTF-8 encoder can write: a 500 later, when the text is sent) and recurses
once per nesting level (``RecursionError`` past about a thousand). ``loads`` refuses all of
these on input, so nothing accepted can later be emitted as something that is not JSON.

The checks that are not free run only when a cheap scan of the text says they could matter,
so an ordinary body is parsed by the C scanner at full speed.
"""

from __future__ import annotations

import json
import math
import re
import threading
from array import array
from itertools import accumulate
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class InvalidJSON(ValueError):
    """The text is not strict JSON; the message says why."""


class JSONTooDeep(InvalidJSON):
    """Arrays and objects nested deeper than the limit."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"JSON nested deeper than {max_depth} levels")
        self.max_depth = max_depth


def _number_shape(byte: int) -> int:
    # Digits become "0", e and E "e", anything else a space ("+" is deleted).
    if ord("0") <= byte <= ord("9"):
        return ord("0")
    return ord("e") if byte in b"eE" else ord(" ")


# Cheap scans on bytes decide whether the exact checks run; a false positive only costs them.
_NUMBER_SHAPES = bytes(_number_shape(byte) for byte in range(256))
# A literal past the double range (1.8e308) has a positive 3-digit exponent or, with a
# 2-digit one, 210 digits in a row: 200 is a safe cut.
_HUGE_EXPONENT, _LONG_DIGITS = b"e000", b"0" * 200
# A \u escape of a surrogate, and a well-formed pair of them.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_PAIR = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")
# Nesting is counted on a skeleton of quotes and brackets: { and } read as [ and ] (the
# parser refuses mismatched ones), every other byte is deleted.
_UNIFY_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(byte for byte in range(256) if byte not in b'"[]{}')
# [ and ] as +1 and -1 (signed bytes), for the running count of a deep skeleton.
_STEPS = bytes.maketrans(b"[]", b"\x01\xff")
_QUICK_PASSES = 4

_decoders = threading.local()


def _reject_constant(name: str) -> Any:
    raise InvalidJSON(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJSON(f"number out of range: {text[:20]}")
    return value


def _double_sized_int(text: str) -> int:
    value = int(text)
    try:
        float(value)
    except OverflowError:
        # JavaScript and most JSON parsers would read it as Infinity.
        raise InvalidJSON(f"number out of range: {text[:20]}") from None
    return value


def _decoder(exact_numbers: bool) -> json.JSONDecoder:
    # One per thread (a decoder's scanner keeps a memo between calls) and kind, made once.
    name = "exact" if exact_numbers else "plain"
    decoder = getattr(_decoders, name, None)
    if decoder is None:
        hooks: dict[str, Any] = {}
        if exact_numbers:
            hooks = {"parse_float": _finite_float, "parse_int": _double_sized_int}
        decoder = json.JSONDecoder(parse_constant=_reject_constant, **hooks)
        setattr(_decoders, name, decoder)
    return decoder


def _text_and_utf8(data: bytes | bytearray | str) -> tuple[str, bytes]:
    if isinstance(data, str):
        try:
            return data, data.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidJSON("lone surrogate in the text") from None
    raw = bytes(data)
    # UTF-16 and -32 (NULs among the first bytes) and BOMs as json.loads detects them, but
    # decoded strictly: an encoded surrogate is refused, not passed through.
    encoding = "utf-8" if raw[:4].isascii() and b"\x00" not in raw[:4] else None
    try:
        if encoding is None:
            encoding = json.detect_encoding(raw)
            text = raw.decode(encoding)
            return text, text.encode("utf-8")
        return raw.decode(encoding), raw
    except UnicodeDecodeError:
        raise InvalidJSON(f"not valid {encoding}") from None


def _skeleton(utf8: bytes) -> bytes:
    """The brackets outside strings, all as [ and ] (valid JSON assumed)."""
    if b"\\" in utf8:
        # Without escaped backslashes and quotes, every quote left opens or closes a string.
        utf8 = utf8.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Adjacent quotes are an empty string, or the end of one and the start of another with no
    # bracket between: either way dropping them leaves what is outside strings unchanged.
    skeleton = utf8.translate(_UNIFY_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in skeleton:  # strings holding brackets (rare): keep every other piece
        skeleton = b"".join(skeleton.split(b'"')[::2])
    return skeleton


def nests_deeper_than(utf8: bytes, limit: int) -> bool:
    """Whether arrays and objects nest deeper than ``limit`` (strings' brackets do not count)."""
    skeleton, passes = _skeleton(utf8), 0
    # Each pass drops every innermost [], one level: the usual shallow body empties in a few
    # cheap passes. Deeper ones get the running count instead (linear, whatever the shape).
    while passes < min(limit, _QUICK_PASSES):
        reduced = skeleton.replace(b"[]", b"")
        if reduced == skeleton:  # empty, or brackets that do not pair: the parser says so
            return False
        skeleton, passes = reduced, passes + 1
    if not skeleton or passes == limit:
        return bool(skeleton)
    steps = array("b", skeleton.translate(_STEPS))
    return max(accumulate(steps)) > limit - passes


def loads(data: bytes | bytearray | str, *, max_depth: int | None = None) -> Any:
    """Parse strict JSON (limit: ``settings.JSON_MAX_DEPTH`` levels unless ``max_depth``).

    Raises InvalidJSON (JSONTooDeep for nesting) on anything that is not strict JSON.
    """
    if max_depth is None:
        max_depth = settings.JSON_MAX_DEPTH
    text, utf8 = _text_and_utf8(data)
    # Fewer brackets than the limit cannot nest deeper: the common case skips the scan, and
    # the parser never recurses deep enough to hit the interpreter's limit.
    openers = utf8.count(b"[") + utf8.count(b"{")
    if openers > max_depth and nests_deeper_than(utf8, max_depth):
        raise JSONTooDeep(max_depth)
    shapes = utf8.translate(_NUMBER_SHAPES, b"+")
    exact_numbers = _HUGE_EXPONENT in shapes or _LONG_DIGITS in shapes
    try:
        value = _decoder(exact_numbers).decode(text)
    except RecursionError:
        raise JSONTooDeep(max_depth) from None  # only with a limit the stack cannot take
    except InvalidJSON:
        raise
    except ValueError as error:  # JSONDecodeError, and int() past its digit limit
        raise InvalidJSON(str(error)) from None
    if _SURROGATE_ESCAPE.search(utf8):
        # Escaped backslashes out first, so every \\u left is an escape; then pairs out: any
        # surrogate left is alone (a string no UTF-8 encoder can write).
        unpaired = _SURROGATE_PAIR.sub(b"", utf8.replace(b"\\\\", b""))
        if _SURROGATE_ESCAPE.search(unpaired):
            raise InvalidJSON("lone surrogate (\\ud800-\\udfff) in a string")
    return value


class StrictJSONParser(JSONParser):
    """DRF's JSON parser on ``loads``: every API endpoint answers bad JSON with a 400."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        raw = stream.read()
        try:
            return loads(raw.decode(encoding))
        except UnicodeDecodeError:
            raise ParseError(f"JSON parse error - not valid {encoding}") from None
        except JSONTooDeep as error:
            raise ParseError(str(error), code="json_too_deep") from None
        except InvalidJSON as error:
            raise ParseError(f"JSON parse error - {error}") from None
