"""A visitor signs up, pays for a network on Checkout and hears it live in the browser."""

from __future__ import annotations

import re
import time
import uuid

import pytest
from playwright.sync_api import expect

from .support import live_message, log_in, screenshot, wait_until_live

pytestmark = pytest.mark.browser


def sign_up(site, page, email: str) -> None:
    """Sign up, open the link of the verification email, confirm; logged in afterwards."""
    page.goto("/accounts/signup/")
    form = page.locator("form:has([name=password1])")
    form.locator("[name=email]").fill(email)
    form.locator("[name=password1]").fill(site.password)
    form.locator("[name=password2]").fill(site.password)
    form.locator("[type=submit]").click()
    expect(page).to_have_url(re.compile(r"/accounts/confirm-email/$"))  # "check your inbox"

    page.goto(site.verification_link(email))
    page.locator("form[method=post] [type=submit]").last.click()
    page.wait_for_load_state()
    if "/accounts/login/" in page.url:
        log_in(page, email, site.password)


def test_visitor_signs_up_pays_on_checkout_and_hears_the_paid_network(site, page):
    email = f"listener-{uuid.uuid4().hex[:8]}@example.com"
    sign_up(site, page, email)

    page.goto("/networks/")
    page.locator(".network-card[data-slug=paid-net] a").first.click()
    expect(page).to_have_url(f"{site.url}/networks/paid-net/")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "not-entitled")

    page.locator("#subscribe-button").click()
    expect(page).to_have_url(re.compile(re.escape(site.fake.api_base) + "/checkout/cs_"))
    page.locator("#pay").click()

    page.wait_for_url(re.compile(re.escape(site.url) + "/networks/paid-net/"))
    if "/subscribed/" in page.url:  # a thank-you page first, with the way back
        page.locator("a[href$='/networks/paid-net/']").first.click()
    expect(page).to_have_url(re.compile(re.escape(site.url) + "/networks/paid-net/(\\?.*)?$"))
    wait_until_live(page, timeout=30)

    tide = {"gauge": 1, "tide_cm": 250}
    published = site.publish("paid-net", tide, site.generator_key)
    assert published.status_code == 201, published.text
    expect(live_message(page, tide)).to_have_count(1)

    # The page itself knows it too (its server-side answer may lag a second behind the
    # token's: a process caches entitlements that briefly): no more offer to subscribe.
    deadline = time.monotonic() + 5
    while page.locator("#subscribe-button").count() and time.monotonic() < deadline:
        time.sleep(0.5)
        page.reload()
    expect(page.locator("main")).to_contain_text("You are subscribed")
    expect(page.locator("#subscribe-button")).to_have_count(0)
    wait_until_live(page)
    for minute in range(1, 6):
        tide = {"gauge": 1, "tide_cm": 250 + 9 * minute}
        assert site.publish("paid-net", tide, site.generator_key).status_code == 201
    expect(live_message(page, tide)).to_have_count(1)
    screenshot(page, "network-page-paid-live")

    # Subscribed monthly, the page offers a switch to yearly, never a second Checkout.
    expect(page.locator("#current-plan")).to_contain_text("/ month")
    page.locator("#switch-year").click()
    expect(page.locator("main")).to_contain_text("You are now on the yearly plan")
    expect(page.locator("#current-plan")).to_contain_text("/ year")
    expect(page.locator("#switch-year")).to_have_count(0)
    expect(page.locator("#switch-month")).to_have_count(1)

    page.goto("/account/")
    expect(page.locator("main")).to_contain_text("Harbour tides")
    form = page.locator("#create-token-form")
    form.locator("[name=name]").fill("laptop")
    form.locator("[type=submit]").click()
    expect(page.locator("#new-secret")).to_have_text(re.compile(r"^\s*kdjp_\S+\s*$"))
    screenshot(page, "listener-dashboard")
    assert page.watch.problems() == []
