"""The published sample of a traffic simulation: what listeners receive as ``data``.

A sample is a plain JSON object::

    {"state": {"0": 12.345, "1": 0.0, ...},   # mean density of every street, veh/km
     "timestamp": "2026-11-27T10:00:00.123Z", # wall-clock time of the sample, UTC
     "step": 60,                              # model steps taken since t = 0
     "sim_time": 60.0}                        # simulated seconds since t = 0

``state`` and ``timestamp`` are exactly what the original Katie DJ listener reads
(``data["state"]["0"]`` … and ``data["timestamp"]``). A run may ask for extras, each a map keyed
by street id like ``state``:

- ``"flows"``: outflow of every street during the last step, veh/h;
- ``"signals"``: gate of every signalized approach (1 green, 0 red, a fraction in between);
- ``"queues"``: vehicles waiting to enter at every source street.

Values are plain Python numbers rounded to 3 decimals. Used by the stand-alone generator
(``simulator.generator``) and the Celery tick alike; no Django here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

DECIMALS = 3
"""Every number in a sample is rounded to this many decimals."""

EXTRAS: frozenset[str] = frozenset({"flows", "signals", "queues"})
"""The optional keys a sample may carry besides ``state``."""


class SampledModel(Protocol):
    """What :func:`sample_payload` reads from a model (:class:`~simulator.model.TrafficModel`)."""

    @property
    def step_count(self) -> int: ...

    @property
    def time(self) -> float: ...

    def densities(self) -> dict[str, float]: ...

    def flows(self) -> dict[str, float]: ...

    def signal_states(self) -> dict[str, float]: ...

    def queue_lengths(self) -> dict[str, float]: ...


def parse_extras(value: str | Iterable[str] | None) -> frozenset[str]:
    """``"flows,queues"`` (or an iterable of names) → a validated frozenset of extras.

    Raises :class:`ValueError` naming the unknown extras and the known ones.
    """
    if value is None:
        return frozenset()
    names = value.split(",") if isinstance(value, str) else list(value)
    extras = frozenset(name.strip() for name in names if name.strip())
    unknown = extras - EXTRAS
    if unknown:
        raise ValueError(
            f"unknown extra(s) {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(sorted(EXTRAS))}"
        )
    return extras


def utc_timestamp(moment: datetime | None = None) -> str:
    """ISO-8601 UTC with millisecond precision and a ``Z`` suffix: ``2026-11-27T10:00:00.123Z``."""
    moment = datetime.now(UTC) if moment is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(value: float) -> float:
    """A JSON-safe float rounded to :data:`DECIMALS` (``-0.0`` becomes ``0.0``)."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"the model produced a non-finite value ({number})")
    return round(number, DECIMALS) + 0.0


def _rounded(values: Mapping[str, float]) -> dict[str, float]:
    return {str(key): _number(value) for key, value in values.items()}


def sample_payload(model: SampledModel, *, extras: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The sample to publish for the model's current state (see the module docstring).

    ``extras`` is a subset of :data:`EXTRAS`; anything else raises :class:`ValueError`.
    """
    extras = parse_extras(extras)
    payload: dict[str, Any] = {
        "state": _rounded(model.densities()),
        "timestamp": utc_timestamp(),
        "step": int(model.step_count),
        "sim_time": float(model.time),
    }
    if "flows" in extras:
        payload["flows"] = _rounded(model.flows())
    if "signals" in extras:
        payload["signals"] = _rounded(model.signal_states())
    if "queues" in extras:
        payload["queues"] = _rounded(model.queue_lengths())
    return payload
