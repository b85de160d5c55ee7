"""The embedded mode's stand-in for Celery beat: the same schedule, run in a thread."""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings

from katiedj.celery import app

logger = logging.getLogger(__name__)


def run_due_tasks(last_run: dict[str, float], now: float) -> list[str]:
    """Run (eagerly, in this thread) every beat entry whose interval has passed."""
    ran = []
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        if now - last_run.get(name, 0.0) < float(entry["schedule"]):
            continue
        last_run[name] = now
        try:
            app.tasks[entry["task"]].apply(throw=True)
            ran.append(name)
        except Exception:
            logger.exception("periodic task %s failed", name)
    return ran


def run_due_simulations(last_run: dict[int, float], now: float) -> list[int]:
    """Tick (eagerly) every running simulation whose publish interval has passed."""
    from simulator.services import simulations_due
    from simulator.tasks import simulation_tick

    ticked = []
    for simulation_id in simulations_due(last_run, now):
        try:
            simulation_tick.apply(args=[simulation_id], throw=True)
            ticked.append(simulation_id)
        except Exception:
            logger.exception("simulation %s failed to tick", simulation_id)
    return ticked


def start_in_process_beat(tick_seconds: float = 0.2) -> threading.Thread:
    """Start a daemon thread that runs the beat schedule and the simulations until exit."""
    app.loader.import_default_modules()

    def loop() -> None:
        last_run: dict[str, float] = {name: time.time() for name in settings.CELERY_BEAT_SCHEDULE}
        simulations: dict[int, float] = {}
        while True:
            time.sleep(tick_seconds)
            now = time.time()
            run_due_tasks(last_run, now)
            run_due_simulations(simulations, now)

    thread = threading.Thread(target=loop, name="katiedj-beat", daemon=True)
    thread.start()
    return thread
