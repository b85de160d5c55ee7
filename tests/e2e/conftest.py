"""Stacks for end-to-end tests: every test here runs against real server processes."""

from __future__ import annotations

import os

import pytest

from .harness import production_services_available, start_embedded_stack, start_production_stack

STACKS = ["embedded", "production"]


def _services_required() -> bool:
    return (
        os.environ.get("CI", "").lower() == "true"
        or os.environ.get("KATIEDJ_REQUIRE_SERVICES") == "1"
    )


@pytest.fixture(scope="session", params=STACKS)
def stack(request, tmp_path_factory):
    """The platform as deployed: embedded (one ``manage.py serve``) or production (2 uvicorns)."""
    if request.param == "production":
        missing = production_services_available()
        if missing:
            if _services_required():
                pytest.fail(missing)
            pytest.skip(missing)
        running = start_production_stack(tmp_path_factory.mktemp("production"))
    else:
        running = start_embedded_stack(tmp_path_factory.mktemp("embedded"))
    yield running
    running.stop()
