# ruff: noqa: RUF003  (math notation: ρ, −, × are meant)
"""Errors raised when a topology or a parameter set cannot be simulated.

All of them derive from :class:`ModelConfigError` (itself a ``ValueError``), so callers that only
want "is this configuration usable?" catch one class; the subclasses say which rule broke and the
message names the offending street, node or signal plan.
"""

from __future__ import annotations


class ModelConfigError(ValueError):
    """A topology or parameter set the model refuses to run."""


class TopologyError(ModelConfigError):
    """Structural problem: unknown or duplicate street, turn between unconnected streets, ..."""


class TurningRatioError(ModelConfigError):
    """A street's turning ratios plus its exit share do not sum to 1 (or one is out of range)."""


class CFLViolationError(ModelConfigError):
    """A cell is shorter than the distance a wave travels in one step (v·Δt > Δx or w·Δt > Δx)."""


class SignalPlanError(ModelConfigError):
    """A fixed-time signal plan is malformed or does not match the streets of its node."""


class StateError(ModelConfigError):
    """A saved state does not fit the model it is restored into."""
