"""A runaway simulation cannot hold up billing (issue 14), on the production stack: PostgreSQL,
Redis, a uvicorn process, the Procfile's two workers (the default queue with beat, and the
``simulations`` queue in a prefork pool, which enforces time limits) and the Stripe fake.

An operator lifted the per-tick work quota; the CPU quota per tick stays at one second. A
simulation that would need many CPU seconds a tick starts; while its first tick runs, a new
subscriber's checkout webhooks arrive. The subscription is active within a generous deadline
(it never waits for the tick: another worker takes it), and the tick is stopped at its limit:
its result discarded, its simulation stopped with the reason, never run on the default worker.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.stripe_fake import FakeStripeProcess

from .harness import celery_worker, manage, require_production_services, start_production_stack
from .test_billing_truth import WEBHOOK_SECRET, post_signed, wait_for

pytestmark = pytest.mark.e2e
CHECKOUT = """
from accounts.models import User
from billing.services import checkout_start, price_set
from networks.models import Network
network = Network.objects.get(slug="paid-net")
price_set(network=network, interval="month", amount=900)
user = User.objects.create(email="newcomer@example.com")
print(checkout_start(user=user, network=network, interval="month",
                     success_url="http://x/ok", cancel_url="http://x/no"))
"""
TICK_RECEIVED = re.compile(r"Task simulator\.tasks\.simulation_tick\[[^]]+\] received")


def wait_for_log(path: Path, pattern: re.Pattern, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and pattern.search(path.read_text(errors="replace")):
            return True
        time.sleep(0.1)
    return False


def test_a_runaway_tick_is_stopped_at_its_limit_while_a_webhook_is_applied(tmp_path):
    require_production_services()
    with FakeStripeProcess(webhook_secret=WEBHOOK_SECRET, auto_deliver=False) as fake:
        env = {
            "STRIPE_SECRET_KEY": "sk_test_quota",
            "STRIPE_API_BASE": fake.api_base,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "SIMULATION_MAX_CELL_UPDATES_PER_TICK": str(10**13),
            "SIMULATION_MAX_TICK_CPU_SECONDS": "1",
        }
        stack = start_production_stack(tmp_path, processes=1, extra_env=env)
        try:
            _race(stack, fake, tmp_path)
        finally:
            stack.stop()


def _race(stack, fake, tmp_path: Path) -> None:
    database = stack.env["DATABASE_URL"]
    webhook = stack.servers[0].http + "/billing/webhook/"
    checkout_url = manage(stack.env, "shell", "-v", "0", "-c", CHECKOUT).split()[-1]
    # 40 x 40 grid: 236,160 cells, 3,600 steps a tick: ~9 s of NumPy CPU a tick, unbounded.
    manage(stack.env, "simulation", "create", "runaway", "--network", "quiet-net",
           "--rows", "40", "--cols", "40", "--steps-per-publish", "3600")  # fmt: skip
    default_log, simulations_log = tmp_path / "default.log", tmp_path / "simulations.log"
    with (
        celery_worker(stack.env, default_log, beat=True),
        celery_worker(stack.env, simulations_log, queues="simulations", pool="prefork"),
    ):
        manage(stack.env, "simulation", "start", "runaway")
        assert wait_for_log(simulations_log, TICK_RECEIVED, 60), simulations_log.read_text()
        # The tick is running: a new subscriber pays now.
        seen = len(fake.events())
        subscription = fake.complete_checkout(checkout_url.rsplit("/", 1)[-1])
        for event in fake.events()[seen:]:
            assert post_signed(webhook, event) == 200
        status_of = "SELECT status FROM billing_subscription WHERE stripe_subscription_id = %s"
        assert wait_for(database, status_of, (subscription["id"],), "active", 30) == "active"

        simulation = "SELECT status FROM simulator_simulation WHERE name = %s"
        assert wait_for(database, simulation, ("runaway",), "stopped", 60) == "stopped"
    step = "SELECT step FROM simulator_simulation WHERE name = %s"
    assert wait_for(database, step, ("runaway",), 0, 1) == 0  # the tick's result was discarded
    listed = manage(stack.env, "simulation", "list")
    assert re.search(r"runaway\t.*stopped.*(CPU|time limit)", listed), listed
    assert not TICK_RECEIVED.search(default_log.read_text(errors="replace"))
