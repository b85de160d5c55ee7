"""Server-side cost of the publish path's Redis script (``networks.accounting``).

Runs the admit script N times against a Redis (db 15 of ``--redis``, flushed first) with a
payload of ``--payload-bytes`` and reports Redis's own microseconds per call
(``INFO commandstats``), plus the client's round trips per second. Redis runs scripts one at
a time, so this bounds publishes per second per Redis.

    .venv/bin/python -m bench.admit_script --calls 20000
"""

from __future__ import annotations

import argparse
import json
import os
import time

import django


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--payload-bytes", type=int, default=200)
    args = parser.parse_args()
    os.environ["REDIS_URL"] = args.redis
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "katiedj.settings")
    django.setup()

    from networks.accounting import admit_publish
    from networks.redis_clients import redis_client
    from networks.selectors import NetworkInfo, PublisherKey

    client = redis_client()
    client.flushdb()
    client.config_resetstat()
    network = NetworkInfo(id=1, slug="bench", organization_id=1, is_public=True)
    key = PublisherKey(
        id=1, organization_id=1, prefix="b", network_ids=frozenset({1}), rate_per_second=10**9
    )
    frame = json.dumps({"x": "y" * max(0, args.payload_bytes - 10)})
    started = time.perf_counter()
    for _ in range(args.calls):
        admit_publish(network=network, publisher=key, nbytes=len(frame), frame=frame, ts="t")
    elapsed = time.perf_counter() - started
    stats = client.info("commandstats")
    script = stats.get("cmdstat_evalsha") or stats.get("cmdstat_eval")
    print(
        f"{args.calls} publishes: Redis {script['usec_per_call']:.1f} µs per script call "
        f"(at most {1e6 / script['usec_per_call']:,.0f} publishes/s per Redis); "
        f"client round trips {args.calls / elapsed:,.0f}/s"
    )
    client.flushdb()


if __name__ == "__main__":
    main()
