"""Browser tests: Playwright drives Debian's Chromium against a real production stack.

One stack for the whole run, as deployed: PostgreSQL, Redis, a uvicorn process with
``DEBUG=false`` (collected static files, styled error pages), a Celery worker (webhooks are
applied there) and the local Stripe-compatible server for Checkout. Emails go to files, where
the tests read verification links.

``make test-browser`` runs these in a pytest process of their own: Playwright's sync API leaves
an event loop behind that would break the async tests of the rest of the suite.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.harness import (
    celery_worker,
    manage,
    require_production_services,
    start_production_stack,
)
from tests.stripe_fake import FakeStripeProcess

from .support import (
    BROWSER_REDIS_URL,
    CHROMIUM,
    CHROMIUM_ARGS,
    SEED,
    TIMEOUT_MS,
    WEBHOOK_SECRET,
    Site,
    watched_page,
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Never share a process with the rest of the suite (see the module's docstring)."""
    browser = [item for item in items if item.get_closest_marker("browser")]
    if browser and len(browser) < len(items):
        skip = pytest.mark.skip(
            reason="browser tests run in a process of their own: make test-browser"
        )
        for item in browser:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Iterator[Site]:
    require_production_services()
    tmp = tmp_path_factory.mktemp("browser")
    outbox = tmp / "outbox"
    with FakeStripeProcess(webhook_secret=WEBHOOK_SECRET) as fake:
        env = {
            "DEBUG": "false",
            "SECRET_KEY": "browser-tests-" + uuid.uuid4().hex,
            # Plain http on loopback: the cookies cannot be Secure-only here.
            "SESSION_COOKIE_SECURE": "false",
            "CSRF_COOKIE_SECURE": "false",
            "STRIPE_SECRET_KEY": "sk_test_browser",
            "STRIPE_API_BASE": fake.api_base,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "EMAIL_FILE_PATH": str(outbox),
        }
        stack = start_production_stack(tmp, processes=1, redis_url=BROWSER_REDIS_URL, extra_env=env)
        try:
            fake.configure(webhook_url=stack.servers[0].http + "/billing/webhook/")
            seeded = manage(stack.env, "shell", "-v", "0", "-c", SEED)
            with celery_worker(stack.env, tmp / "worker.log"):
                key = seeded.strip().splitlines()[-1]
                running = Site(stack=stack, fake=fake, outbox=outbox, generator_key=key)
                yield running
                running.http.close()
        finally:
            stack.stop()


@pytest.fixture(scope="session")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def browser_context(chromium, site):
    context = chromium.new_context(base_url=site.url, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    yield context
    context.close()


@pytest.fixture
def page(browser_context, site):
    """A fresh page with cookies of its own."""
    return watched_page(browser_context, site.url)
