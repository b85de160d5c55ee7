"""What the browser tests share: the running site, Chromium's flags, page helpers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.e2e.harness import REPO_ROOT, Stack
from tests.stripe_fake import FakeStripeProcess

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(
    os.environ.get("BROWSER_SCREENSHOTS", REPO_ROOT / "var" / "test-artifacts" / "screenshots")
)
# A Redis database of their own: the Celery queue is not prefixed, and a worker of another
# concurrent e2e run must not take (and fail) this run's webhook tasks.
BROWSER_REDIS_URL = os.environ.get("BROWSER_REDIS_URL", "redis://127.0.0.1:6379/11")
WEBHOOK_SECRET = "whsec_browser"
PASSWORD = "browser passphrase 2026"
PROVIDER_EMAIL = "provider@acme.example"
PROVIDER_ORG = "acme-sensors"
TIMEOUT_MS = 15_000

SEED = f"""
from allauth.account.models import EmailAddress
from accounts.models import User
from accounts.services import organization_create
from billing.services import price_set
from networks.models import Network
from networks.services import api_key_create

provider = User.objects.create_user(email={PROVIDER_EMAIL!r}, password={PASSWORD!r})
EmailAddress.objects.create(user=provider, email=provider.email, verified=True, primary=True)
organization_create(name="Acme Sensors", owner=provider, slug={PROVIDER_ORG!r})
paid = Network.objects.get(slug="paid-net")
paid.name, paid.description = "Harbour tides", "Tide gauges of the harbour, every second."
paid.save()
price_set(network=paid, interval="month", amount=900)
price_set(network=paid, interval="year", amount=9000)
quiet = Network.objects.get(slug="quiet-net")
_, secret = api_key_create(
    organization=paid.organization, name="tide gauges", networks=[paid, quiet]
)
print(secret)
"""


def compact(data: dict) -> str:
    """A data object as the live view prints it (``JSON.stringify``)."""
    return json.dumps(data, separators=(",", ":"))


@dataclass
class Site:
    """The running platform as a browser user and a data generator see it."""

    stack: Stack
    fake: FakeStripeProcess
    outbox: Path
    generator_key: str  # publishes to paid-net and quiet-net
    provider_email: str = PROVIDER_EMAIL
    provider_org: str = PROVIDER_ORG
    password: str = PASSWORD
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, timeout=10)

    @property
    def server(self):
        return self.stack.servers[0]

    @property
    def url(self) -> str:
        return self.server.http

    def publish(self, slug: str, data: dict, key: str) -> httpx.Response:
        """What any data generator does: the versioned publish endpoint with a bearer key."""
        return self.http.post(
            f"/api/v1/networks/{slug}/messages",
            json={"data": data},
            headers={"Authorization": f"Bearer {key}"},
        )

    def verification_link(self, email: str, timeout: float = 10.0) -> str:
        """The confirm-email link of the last verification email sent to ``email``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in sorted(self.outbox.glob("*.log"), reverse=True):
                text = message.read_text(errors="replace")
                if f"To: {email}" in text:
                    links = re.findall(r"https?://\S+/accounts/confirm-email/[^\s/]+/", text)
                    if links:
                        return links[-1]
            time.sleep(0.1)
        raise AssertionError(f"no verification email to {email} in {self.outbox}")


@dataclass
class PageWatch:
    """What a page did that a person would notice: script errors, console errors, requests
    to anywhere but the site (the portal vendors its assets: no CDN at run time)."""

    origin: str
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)

    def attach(self, page) -> None:
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)
        page.on("request", self._request)
        page.on("response", self._response)

    def problems(self, *, console: bool = True) -> list[str]:
        """Everything that went wrong; ``console=False`` when connections drop on purpose
        (Chromium logs each refused WebSocket as a console error)."""
        found = [f"script error: {e}" for e in self.errors]
        found += [f"failed asset: {b}" for b in self.broken]
        found += [f"request to another host (no CDN at run time): {f}" for f in self.foreign]
        if console:
            found += [f"console error: {c}" for c in self.console]
        return found

    def _ours(self, url: str) -> bool:
        return urlsplit(url).netloc == urlsplit(self.origin).netloc

    def _console(self, message) -> None:
        # Only our pages' messages: Checkout is Stripe's page (here the local fake's).
        if message.type == "error" and self._ours(message.page.url if message.page else ""):
            self.console.append(f"{message.text} ({message.location.get('url', '?')})")

    def _response(self, response) -> None:
        """Our pages' assets that failed (a page's own status is the test's to check)."""
        request = response.request
        asset = request.resource_type != "document" and self._ours(request.frame.url)
        if asset and response.status >= 400:
            self.broken.append(f"{response.status} {response.url}")

    def _request(self, request) -> None:
        """What our pages load from elsewhere (following a link to Checkout is no load)."""
        if request.is_navigation_request() or not self._ours(request.frame.url):
            return
        web = urlsplit(request.url).scheme in ("http", "https", "ws", "wss")
        if web and not self._ours(request.url):
            self.foreign.append(request.url)


def watched_page(context, origin: str):
    """A new page of ``context`` whose ``watch`` records script errors and foreign requests."""
    page = context.new_page()
    page.watch = PageWatch(origin=origin)
    page.watch.attach(page)
    page.on("dialog", lambda dialog: dialog.accept())  # "Revoke this key?" and the like
    return page


def screenshot(page, name: str) -> Path:
    """Save the whole page as ``var/test-artifacts/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    with contextlib.suppress(Exception):
        page.wait_for_load_state("networkidle", timeout=3_000)
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page, email: str, password: str) -> None:
    page.goto("/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", password)
    page.locator("form:has(input[name=login]) [type=submit]").click()
    page.wait_for_load_state()
    assert "/accounts/login/" not in page.url, "login failed"


def wait_until_live(page, timeout: float = 20.0) -> None:
    """Wait for the live view to say ``live``; reload while it says ``not-entitled``.

    A subscription becomes active when Stripe's webhooks have been applied by the worker, a
    moment after Checkout: the page loaded before then rightly says "not entitled".
    """
    status = page.locator("#live-status")
    deadline = time.monotonic() + timeout
    while True:
        state = status.get_attribute("data-state")
        if state == "live":
            return
        assert time.monotonic() < deadline, f"live view still {state!r} after {timeout} s"
        if state == "not-entitled":
            time.sleep(0.5)
            page.reload()
        else:
            time.sleep(0.1)


def live_messages(page):
    """Every message the live view shows (its order on screen is the page's business)."""
    return page.locator("#live-messages .live-message")


def live_message(page, data: dict):
    """The live view's entry for the message whose data is ``data``."""
    return live_messages(page).filter(has_text=compact(data))
