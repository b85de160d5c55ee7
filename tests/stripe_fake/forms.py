"""Decoding of Stripe's form encoding: ``line_items[0][price]=p&metadata[k]=v&expand[0]=x``."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


class FormError(ValueError):
    """A key that is not of the form ``name[part][part]...``, or conflicting shapes."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def parse_form(text: str) -> dict[str, Any]:
    """Nested dicts and lists from a form-encoded body or query string.

    Objects whose keys are all decimal indexes become lists (in index order); ``key[]``
    appends. Leaf values stay strings; an empty value is kept (Stripe uses it to unset).
    """
    root: dict[str, Any] = {}
    for raw_key, value in parse_qsl(text, keep_blank_values=True, strict_parsing=False):
        match = _KEY.match(raw_key)
        if match is None:
            raise FormError(f"Invalid parameter name: {raw_key}", raw_key)
        parts = [match.group(1), *_PART.findall(match.group(2))]
        node = root
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if part == "":
                part = str(sum(1 for k in node if k.isdigit()))
            if last:
                if isinstance(node.get(part), dict):
                    raise FormError(f"Invalid value for {raw_key}: expected an object", raw_key)
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise FormError(f"Invalid value for {raw_key}: expected a string", raw_key)
                node = child
    # The top level is always an object, even if every key happens to be a number.
    return {key: _listify(value) for key, value in root.items()}


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {key: _listify(value) for key, value in node.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted
