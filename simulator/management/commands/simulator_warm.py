"""Compile the traffic model's numba kernels into the cache ahead of the first tick."""

from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from simulator.model import _kernels


class Command(BaseCommand):
    help = (
        "Compile the traffic model's numba kernels into SIMULATION_NUMBA_CACHE_DIR (run at image "
        "build), so a fresh worker's first tick loads them instead of compiling for seconds."
    )

    def handle(self, *args: object, **options: object) -> None:
        if not _kernels.HAVE_NUMBA:
            self.stdout.write("numba is not installed: nothing to compile (the NumPy backend runs)")
            return
        _kernels.configure_cache(settings.SIMULATION_NUMBA_CACHE_DIR)
        started = time.perf_counter()
        kernels = _kernels.warm()
        elapsed = time.perf_counter() - started
        if kernels.cache_dir is None:
            raise CommandError("no writable directory for the numba cache: nothing was kept")
        stats = _kernels.cache_stats()
        compiled = sum(s["misses"] for s in stats.values())
        loaded = sum(s["hits"] for s in stats.values())
        self.stdout.write(
            f"numba kernels in {kernels.cache_dir}: {compiled} compiled, {loaded} already "
            f"cached ({elapsed:.1f} s)"
        )
