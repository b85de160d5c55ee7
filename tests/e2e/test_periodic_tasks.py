"""Real Celery beat and worker processes move publish counters into PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import psycopg
import pytest

from .harness import REPO_ROOT

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("stack", ["production"], indirect=True)
def test_beat_and_worker_roll_up_usage_and_last_use(stack, tmp_path):
    for index in range(5):
        status, _ = stack.publish({"network": "sample_net", "data": {"i": index}}, stack.demo_key)
        assert status == 200
    env = {**stack.env, "USAGE_ROLLUP_SECONDS": "1", "LAST_USED_FLUSH_SECONDS": "1"}
    node = f"e2e-beat-{uuid.uuid4().hex[:8]}@localhost"
    log = (tmp_path / "celery.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "katiedj", "worker", "--beat", "-n", node,
         "--pool", "solo", "--loglevel", "INFO",
         "--schedule", str(tmp_path / "celerybeat-schedule")],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        usage = last_used = None
        with psycopg.connect(stack.env["DATABASE_URL"], autocommit=True) as conn:
            while time.monotonic() < deadline and (usage is None or last_used is None):
                usage = conn.execute(
                    "SELECT SUM(u.messages) FROM networks_usagehour u "
                    "JOIN networks_network n ON n.id = u.network_id WHERE n.slug = 'sample_net'"
                ).fetchone()[0]
                last_used = conn.execute(
                    "SELECT MAX(last_used_at) FROM networks_apikey WHERE name = 'Demo publisher'"
                ).fetchone()[0]
                time.sleep(0.5)
        assert worker.poll() is None, (tmp_path / "celery.log").read_text()
        assert usage is not None and usage >= 5, (tmp_path / "celery.log").read_text()[-3000:]
        assert last_used is not None
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        log.close()
