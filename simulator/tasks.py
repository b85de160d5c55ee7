"""Celery tasks: one tick of one simulation (scheduled by beat per running simulation), the
build check of a simulation's town, and the import of an uploaded town.

All of them go to the ``simulations`` queue (``CELERY_TASK_ROUTES``), taken by its own worker:
webhooks and sweeps on the default queue never wait behind them. A tick or a build past its
soft time limit is interrupted and its simulation stopped with the reason; past the hard one
the worker kills the child process running it, and its parent stops the simulation.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django.conf import settings

from . import services, towns

SOFT_LIMIT = settings.SIMULATION_TICK_SOFT_TIME_LIMIT
HARD_LIMIT = settings.SIMULATION_TICK_TIME_LIMIT


class SimulationTask(Task):
    """A task on one simulation (its id the first argument), bounded in wall-clock time."""

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # Also run in the worker's parent process after the hard time limit killed the child:
        # the only place left to stop a simulation that would do it again next time.
        if isinstance(exc, TimeLimitExceeded):
            simulation_id = (list(args or []) or [(kwargs or {}).get("simulation_id")])[0]
            if simulation_id is not None:
                services.simulation_halt(
                    simulation_id=int(simulation_id),
                    reason=f"Its {_what(self)} ran past the hard time limit of {HARD_LIMIT:g} s "
                    "and was killed.",
                )


def _what(task: Task) -> str:
    return "tick" if task.name == simulation_tick.name else "model build"


@shared_task(
    base=SimulationTask, ignore_result=True, soft_time_limit=SOFT_LIMIT, time_limit=HARD_LIMIT
)
def simulation_tick(simulation_id: int) -> int | None:
    """Step and publish once; safe to run twice (see ``services.simulation_tick``)."""
    try:
        return services.simulation_tick(simulation_id=simulation_id)
    except SoftTimeLimitExceeded:
        services.simulation_halt(
            simulation_id=simulation_id,
            reason=f"A tick ran past its time limit of {SOFT_LIMIT:g} s and was discarded: "
            "publish fewer steps per sample, or use a smaller town or a longer time step.",
        )
        return None


@shared_task(
    base=SimulationTask, ignore_result=True, soft_time_limit=SOFT_LIMIT, time_limit=HARD_LIMIT
)
def simulation_build_check(simulation_id: int) -> bool:
    """Build a simulation's model once and check its size (``services.simulation_build_check``)."""
    try:
        return services.simulation_build_check(simulation_id=simulation_id)
    except SoftTimeLimitExceeded:
        services.simulation_halt(
            simulation_id=simulation_id,
            reason=f"Building its model ran past the time limit of {SOFT_LIMIT:g} s: use a "
            "smaller town or a longer time step.",
        )
        return False


# --- Towns (issue 14) -------------------------------------------------------------------------
# Parsing an uploaded network happens here, never in a request. Past the soft limit the import
# ends as failed with its reason; the hard limit (a little later) kills a worker stuck in C code.


class TownImportTask(Task):
    """The import of one town (its id the first argument), bounded in wall-clock time."""

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # Run in the worker's parent once the hard limit killed the child: the town would
        # otherwise wait as "processing" for ever.
        if isinstance(exc, TimeLimitExceeded):
            town_id = (list(args or []) or [(kwargs or {}).get("town_id")])[0]
            if town_id is not None:
                towns.town_import_failed(
                    town_id=int(town_id),
                    error=f"The import ran past the hard time limit of "
                    f"{settings.TOWN_IMPORT_TIME_LIMIT_SECONDS + 15} s and was killed: the "
                    "network is too large or too complex.",
                )


@shared_task(
    base=TownImportTask,
    ignore_result=True,
    soft_time_limit=settings.TOWN_IMPORT_TIME_LIMIT_SECONDS,
    time_limit=settings.TOWN_IMPORT_TIME_LIMIT_SECONDS + 15,
)
def town_import(town_id: int) -> str | None:
    """Import an uploaded town; safe to run twice (see ``towns.town_import``)."""
    return towns.town_import(town_id=town_id)
