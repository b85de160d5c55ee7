"""The Procfile's worker process boots against Redis and answers the control channel."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from .harness import E2E_REDIS_URL, REPO_ROOT, base_env, require_production_services

pytestmark = pytest.mark.e2e


def test_celery_worker_starts_and_answers_ping(tmp_path):
    require_production_services()
    env = base_env()
    env["REDIS_URL"] = E2E_REDIS_URL
    node = f"e2e-{uuid.uuid4().hex[:8]}@localhost"
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "katiedj", "worker", "-n", node,
         "--concurrency", "1", "--pool", "solo", "--loglevel", "WARNING"],
        cwd=REPO_ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        answer = ""
        for _ in range(20):
            result = subprocess.run(
                [sys.executable, "-m", "celery", "-A", "katiedj", "inspect", "ping",
                 "-d", node, "-t", "2"],
                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            answer = result.stdout
            if "pong" in answer:
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        assert "pong" in answer, answer + (tmp_path / "worker.log").read_text()
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        log.close()
