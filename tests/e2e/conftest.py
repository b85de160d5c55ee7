"""Stacks for end-to-end tests: every test here runs against real server processes."""

from __future__ import annotations

import pytest

from .harness import require_production_services, start_embedded_stack, start_production_stack

STACKS = ["embedded", "production"]


@pytest.fixture(scope="session", params=STACKS)
def stack(request, tmp_path_factory):
    """The platform as deployed: embedded (one ``manage.py serve``) or production (2 uvicorns)."""
    if request.param == "production":
        require_production_services()
        running = start_production_stack(tmp_path_factory.mktemp("production"))
    else:
        running = start_embedded_stack(tmp_path_factory.mktemp("embedded"))
    yield running
    running.stop()
