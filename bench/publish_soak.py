"""Soak a real server with rejected publishes and report its memory before and after.

A rejected publish must leave nothing behind. This starts one server process through
``tests/e2e/harness.py`` (production stack: a fresh PostgreSQL database and Redis, or the
embedded one), sends ``--warmup`` then ``--requests`` publishes that are all rejected (by
default: a valid key and a body of ``--body-bytes`` that is not JSON) over keep-alive
connections, and prints the server's RSS (``VmRSS``) after the warm-up and at the end::

    .venv/bin/python -m bench.publish_soak [--requests 10000] [--body-bytes 60000]
        [--kind not-json|data-not-object|forbidden] [--stack production|embedded]
        [--concurrency 8] [--json out.json]

Before the fix every rejection chained its frames, body included, onto one shared exception
object: RSS grew by about the body size per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.measure import git_commit, proc_status_kib
from tests.e2e import harness

KINDS = ("not-json", "data-not-object", "forbidden")
EXPECTED_STATUS = {"not-json": 400, "data-not-object": 400, "forbidden": 403}


def body_for(kind: str, size: int) -> bytes:
    """A publish body of about ``size`` bytes that the server must reject as ``kind``."""
    if kind == "not-json":
        return b"x" * size
    filler = "y" * max(0, size - 60)
    if kind == "data-not-object":
        return json.dumps({"network": "sample_net", "data": [filler]}).encode()
    # Another organization's network: refused after the body was parsed.
    return json.dumps({"network": "rival-net", "data": {"v": filler}}).encode()


async def soak(url: str, key: str, body: bytes, requests: int, concurrency: int) -> Counter:
    """POST ``body`` ``requests`` times over ``concurrency`` keep-alive connections."""
    statuses: Counter = Counter()
    remaining = iter(range(requests))
    headers = {"API-KEY": key, "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            for _ in remaining:
                try:
                    response = await client.post(url, content=body, headers=headers)
                    statuses[response.status_code] += 1
                except httpx.HTTPError as error:
                    statuses[type(error).__name__] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def rss_mib(pid: int) -> float:
    return proc_status_kib(pid, "VmRSS") / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--body-bytes", type=int, default=60_000)
    parser.add_argument("--kind", choices=KINDS, default="not-json")
    parser.add_argument("--stack", choices=("production", "embedded"), default="production")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"),
        help="its own db; keys are namespaced per run anyway",
    )
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="katiedj-soak-"))
    if args.stack == "embedded":
        stack = harness.start_embedded_stack(tmp)
    else:
        missing = harness.production_services_available()
        if missing:
            raise SystemExit(missing)
        env = {"DEBUG": "false", "SECRET_KEY": uuid.uuid4().hex * 2}
        stack = harness.start_production_stack(
            tmp, processes=1, redis_url=args.redis_url, extra_env=env
        )
    try:
        server = stack.servers[0]
        assert server.process is not None
        pid = server.process.pid
        url = f"{server.http}/api/publish"
        body = body_for(args.kind, args.body_bytes)
        started = rss_mib(pid)
        warm = asyncio.run(soak(url, stack.demo_key, body, args.warmup, args.concurrency))
        before = rss_mib(pid)
        began = time.perf_counter()
        statuses = asyncio.run(soak(url, stack.demo_key, body, args.requests, args.concurrency))
        elapsed = time.perf_counter() - began
        time.sleep(1)  # let the server finish whatever it still holds for the last requests
        after = rss_mib(pid)
        peak = proc_status_kib(pid, "VmHWM") / 1024
        problems = [line for line in server.log_tail(200).splitlines() if "Error" in line]
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    expected = EXPECTED_STATUS[args.kind]
    report: dict[str, Any] = {
        "commit": git_commit(),
        "stack": args.stack,
        "kind": args.kind,
        "body_bytes": len(body),
        "requests": args.requests,
        "warmup": args.warmup,
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "warmup_statuses": {str(k): v for k, v in sorted(warm.items(), key=str)},
        "rss_mib_at_start": round(started, 1),
        "rss_mib_before": round(before, 1),
        "rss_mib_after": round(after, 1),
        "rss_growth_mib": round(after - before, 1),
        "rss_growth_bytes_per_request": round((after - before) * 1024 * 1024 / args.requests),
        "peak_rss_mib": round(peak, 1),
        "requests_per_second": round(args.requests / elapsed),
        "server_log_errors": len(problems),
    }
    print(
        f"{args.requests} rejected publishes ({args.kind}, {len(body)} B bodies, "
        f"{args.stack} stack): statuses {report['statuses']}\n"
        f"server RSS {before:.1f} MiB after {args.warmup} warm-up requests -> {after:.1f} MiB "
        f"(growth {after - before:+.1f} MiB, "
        f"{report['rss_growth_bytes_per_request']} B/request; peak {peak:.1f} MiB); "
        f"{report['requests_per_second']} requests/s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    ok = statuses.get(expected, 0) == args.requests
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
