"""Measurement helpers shared by the benchmarks: /proc CPU and memory, Redis INFO, percentiles.

Everything here reads the machine; nothing starts or stops processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO_ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


# --- Processes ----------------------------------------------------------------------------


def cpu_list(spec: str) -> set[int]:
    """``"0"``, ``"0,2"`` or ``"0-3"`` to a set of cores."""
    cores: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cores.update(range(int(low), int(high or low) + 1))
    return cores


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of ``pid`` (stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status, e.g. VmRSS or VmHWM."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def self_cpu_seconds() -> float:
    """CPU used so far by this load process (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def core_jiffies() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies per ``cpu``/``cpuN`` line of /proc/stat."""
    result: dict[str, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu"):
            break
        name, *values = line.split()
        numbers = [int(value) for value in values[:8]]
        idle = numbers[3] + numbers[4]
        result[name] = (sum(numbers) - idle, sum(numbers))
    return result


def core_busy(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict:
    """Busy fraction of each core between two ``core_jiffies`` snapshots."""
    busy: dict[str, float] = {}
    for name, (busy1, total1) in after.items():
        busy0, total0 = before.get(name, (0, 0))
        if total1 > total0:
            busy[name] = round((busy1 - busy0) / (total1 - total0), 3)
    return busy


def process_cpu_table() -> dict[int, tuple[str, float]]:
    """CPU seconds of every process, by pid, with its command name."""
    table: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                name = stat[stat.index("(") + 1 : stat.rindex(")")]
                fields = stat.rsplit(")", 1)[1].split()
                table[int(entry)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return table


def other_processes(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], mine: set[int]
) -> dict[str, float]:
    """The busiest processes besides server and client between two snapshots (>= 0.1 s)."""
    used: Counter[str] = Counter()
    for pid, (name, seconds) in after.items():
        if pid not in mine:
            used[f"{name}[{pid}]"] += seconds - before.get(pid, (name, 0.0))[1]
    return {name: round(seconds, 2) for name, seconds in used.most_common(5) if seconds >= 0.1}


def pin_process(pid: int, cores: set[int]) -> None:
    """Pin every existing thread of ``pid``; threads they start inherit the mask."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cores)


def raise_fd_limit() -> None:
    """Soft open-files limit up to the hard one (server processes inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class RedisStats:
    """CPU seconds, connections accepted and commands run by Redis (INFO), or None."""

    def __init__(self, url: str | None) -> None:
        self.client: Any = None
        if url:
            import redis

            self.client = redis.Redis.from_url(url, socket_timeout=3)

    def sample(self) -> tuple[float, int, int] | None:
        if self.client is None:
            return None
        try:
            info = self.client.info()
        except Exception:
            return None
        return (
            float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            int(info["total_connections_received"]),
            int(info["total_commands_processed"]),
        )

    @staticmethod
    def delta(
        before: tuple[float, int, int] | None, after: tuple[float, int, int] | None
    ) -> dict[str, float] | None:
        if before is None or after is None:
            return None
        return {
            "cpu_s": round(after[0] - before[0], 3),
            "connections_opened": after[1] - before[1],
            "commands": after[2] - before[2] - 1,  # minus the first INFO
        }


# --- Statistics ---------------------------------------------------------------------------


def percentile(ordered: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def distribution_ms(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    return {
        "p50": ms(percentile(ordered, 0.50)),
        "p90": ms(percentile(ordered, 0.90)),
        "p99": ms(percentile(ordered, 0.99)),
        "max": ms(ordered[-1] if ordered else None),
    }


# --- Running ------------------------------------------------------------------------------


def git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return done.stdout.strip() or None
    return None


def asyncio_runner(loop: str) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Run a coroutine on uvloop (when asked and installed) or the stock loop."""
    factory = None
    if event_loop(loop) == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop

    def execute(coro: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)

    return execute


def event_loop(requested: str) -> str:
    """The loop that will run: ``"uvloop"`` when asked for and importable, else ``"asyncio"``."""
    if requested == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return "asyncio"
        return "uvloop"
    return "asyncio"
