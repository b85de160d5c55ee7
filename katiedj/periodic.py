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


def start_in_process_beat(tick_seconds: float = 1.0) -> threading.Thread:
    """Start a daemon thread that runs the beat schedule until the process exits."""
    app.loader.import_default_modules()

    def loop() -> None:
        last_run: dict[str, float] = {name: time.time() for name in settings.CELERY_BEAT_SCHEDULE}
        while True:
            time.sleep(tick_seconds)
            run_due_tasks(last_run, time.time())

    thread = threading.Thread(target=loop, name="katiedj-beat", daemon=True)
    thread.start()
    return thread
