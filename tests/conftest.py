"""Shared fixtures: a provider organization, its networks and publisher keys."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from accounts.models import Organization
from networks import accounting, lookup_cache
from networks.models import ApiKey, Network
from networks.sequence import reset_local_allocator
from networks.services import api_key_create
from streaming import connection_limits
from tests.asgi_client import AsgiTestClient
from tests.factories import NetworkFactory, OrganizationFactory


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Real hashers cost ~100 ms per user on purpose; tests make many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_publish_state():
    """Each test starts with an empty cache: cached rows of a rolled-back test would lie."""
    lookup_cache.clear()
    reset_local_allocator()
    accounting.local.reset()
    accounting.local_history.reset()
    connection_limits.reset_local()
    yield
    lookup_cache.clear()
    reset_local_allocator()
    accounting.local.reset()
    connection_limits.reset_local()


@pytest.fixture
def publisher() -> AsgiTestClient:
    """An HTTP client of the real ASGI app, for the publish endpoints (not Django views)."""
    return AsgiTestClient()


@dataclass
class IssuedKey:
    row: ApiKey
    secret: str


@pytest.fixture
def org(db) -> Organization:
    return OrganizationFactory(slug="acme", name="Acme Sensors")


@pytest.fixture
def network(org) -> Network:
    return NetworkFactory(organization=org, slug="city-traffic")


@pytest.fixture
def api_key(org, network) -> IssuedKey:
    row, secret = api_key_create(organization=org, name="generator", networks=[network])
    return IssuedKey(row=row, secret=secret)


@pytest.fixture
def other_org(db) -> Organization:
    return OrganizationFactory(slug="globex", name="Globex")


@pytest.fixture
def other_network(other_org) -> Network:
    return NetworkFactory(organization=other_org, slug="globex-weather")


@pytest.fixture
def eager_celery():
    """Run tasks inline whatever the broker settings (the worker path has e2e tests of its own)."""
    from katiedj.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous
