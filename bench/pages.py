"""Portal page timings: how long each main page takes to render, on the production stack.

Starts one uvicorn process on PostgreSQL + Redis through ``tests.e2e.harness`` with
``DEBUG=false``, seeds a catalogue (``--networks`` networks, a day of hourly usage each, a
paid subscription) and a signed-in person who owns the demo organization, then requests each
page ``--requests`` times over one keep-alive connection after a warm-up. Loopback round
trips are reported: on this machine they are the server's time plus ~0.2 ms. Run from the
repository root::

    .venv/bin/python -m bench.pages [--requests 50] [--networks 60]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import httpx

from bench.measure import percentile
from tests.e2e import harness

SEED = """
from datetime import timedelta
from importlib import import_module

from allauth.account.models import EmailAddress
from django.conf import settings
from django.utils import timezone

from accounts.models import Membership, Organization, Role, User
from billing.services import subscription_grant
from networks.models import Network, UsageHour
from networks.services import network_create

demo = Organization.objects.get(slug="katiedj-demo")
for i in range({networks}):
    network_create(organization=demo, slug=f"bench-{{i:03d}}", name=f"Bench network {{i}}",
                   description="Seeded for bench.pages", is_public=i % 3 != 0)
hour = timezone.now().replace(minute=0, second=0, microsecond=0)
UsageHour.objects.bulk_create(
    UsageHour(organization=demo, network=network, hour=hour - timedelta(hours=h),
              messages=3600, bytes=3_600_000)
    for network in Network.objects.filter(organization=demo) for h in range(24)
)
user = User.objects.create_user(email="bench@example.com", password="bench-password-1")
EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
Membership.objects.create(organization=demo, user=user, role=Role.OWNER)
subscription_grant(user=user, network=Network.objects.get(slug="paid-net"), days=30)
session = import_module(settings.SESSION_ENGINE).SessionStore()
session["_auth_user_id"] = str(user.pk)
session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
session["_auth_user_hash"] = user.get_session_auth_hash()
session.save()
print(session.session_key)
"""

PAGES = [
    ("landing", "/"),
    ("catalogue", "/networks/"),
    ("catalogue search", "/networks/?q=bench-01"),
    ("network page (free)", "/networks/sample_net/"),
    ("network page (paid, subscribed)", "/networks/paid-net/"),
    ("docs", "/docs/"),
    ("listener dashboard", "/account/"),
    ("provider dashboard", "/dashboard/katiedj-demo/"),
    ("provider: network", "/dashboard/katiedj-demo/networks/sample_net/"),
    ("provider: keys", "/dashboard/katiedj-demo/keys/"),
    ("404 page", "/networks/no-such-network/"),
]


def measure(client: httpx.Client, path: str, requests: int) -> tuple[int, list[float]]:
    status = 0
    for _ in range(3):  # warm-up: caches, template loading
        status = client.get(path).status_code
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        status = client.get(path).status_code
        timings.append((time.perf_counter() - started) * 1000)
    return status, timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pages", description=__doc__)
    parser.add_argument("--requests", type=int, default=50, help="timed requests per page")
    parser.add_argument("--networks", type=int, default=60, help="extra networks to seed")
    options = parser.parse_args(argv)
    harness.require_production_services()
    tmp = Path(tempfile.mkdtemp(prefix="katiedj-pages-"))
    stack = harness.start_production_stack(
        tmp,
        processes=1,
        extra_env={"DEBUG": "false", "SECRET_KEY": secrets.token_urlsafe(50)},
    )
    try:
        output = harness.manage(stack.env, "shell", "-c", SEED.format(networks=options.networks))
        server = stack.servers[0]
        cookies = {"sessionid": output.strip().splitlines()[-1]}
        print(f"| page | status | p50 ms | p95 ms | max ms |  ({options.requests} requests each)")
        print("|---|---|---|---|---|")
        with httpx.Client(base_url=server.http, cookies=cookies, timeout=30) as client:
            for name, path in PAGES:
                status, timings = measure(client, path, options.requests)
                ordered = sorted(timings)
                p50, p95 = percentile(ordered, 0.50), percentile(ordered, 0.95)
                print(f"| {name} `{path}` | {status} | {p50:.1f} | "
                      f"{p95:.1f} | {max(timings):.1f} |")  # fmt: skip
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
