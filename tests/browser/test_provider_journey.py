"""A provider creates a network and a key in the dashboard, publishes with it, revokes it."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .support import live_message, live_messages, log_in, screenshot, wait_until_live, watched_page

pytestmark = pytest.mark.browser


def choose(form, name: str, value: str) -> None:
    """Pick ``value`` in a multiple choice, whether a <select> or checkboxes."""
    field = form.locator(f"[name={name}]")
    if field.first.evaluate("el => el.tagName") == "SELECT":
        field.select_option(value)
    else:
        form.locator(f"[name={name}][value='{value}']").check()


def test_provider_publishes_with_a_new_key_sees_it_live_then_revokes_it(site, page):
    log_in(page, site.provider_email, site.password)
    page.goto(f"/dashboard/{site.provider_org}/")

    network = page.locator("#create-network-form")
    network.locator("[name=slug]").fill("tide-gauges")
    network.locator("[name=name]").fill("Tide gauges")
    network.locator("[name=description]").fill("Water levels of the harbour, every second.")
    network.locator("[name=is_public]").check()
    network.locator("[type=submit]").click()
    expect(page).to_have_url(f"{site.url}/dashboard/{site.provider_org}/networks/tide-gauges/")
    page.goto(f"/dashboard/{site.provider_org}/")
    expect(page.locator("main")).to_contain_text("Tide gauges")
    screenshot(page, "provider-dashboard")

    page.goto(f"/dashboard/{site.provider_org}/keys/")
    key_form = page.locator("#create-key-form")
    key_form.locator("[name=name]").fill("gauge 7")
    choose(key_form, "networks", "tide-gauges")
    key_form.locator("[type=submit]").click()
    secret = page.locator("#new-secret").inner_text().strip()
    assert secret.startswith("kdj_")
    screenshot(page, "provider-dashboard-keys")

    live = watched_page(page.context, site.url)
    live.goto("/networks/tide-gauges/")
    expect(live.locator("#live-view")).to_have_attribute("data-network", "tide-gauges")
    wait_until_live(live)

    reading = {"gauge": 7, "level_cm": 312}
    published = site.publish("tide-gauges", reading, secret)
    assert published.status_code == 201, published.text
    message = live_message(live, reading)
    expect(message).to_have_count(1)
    expect(message).to_have_attribute("data-seq", str(published.json()["seq"]))

    row = page.locator(f"[data-key-prefix='{secret[:12]}']")
    row.locator(".revoke-key").click()
    expect(row.locator(".revoke-key")).to_have_count(0)

    refused = site.publish("tide-gauges", {"gauge": 7, "level_cm": 313}, secret)
    assert refused.status_code == 401, refused.text
    assert refused.json()["code"] == "api_key_invalid"
    legacy = site.http.post(
        "/api/publish",
        json={"network": "tide-gauges", "data": {"gauge": 7}},
        headers={"API-KEY": secret},
    )
    assert legacy.status_code == 400
    assert legacy.json() == {"error": "API-KEY not valid"}
    expect(live_messages(live)).to_have_count(1)
    assert page.watch.problems() == [] and live.watch.problems() == []
