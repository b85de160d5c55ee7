"""The public pages render, load nothing from elsewhere, and are saved as screenshots."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .support import live_message, live_messages, screenshot, wait_until_live, watched_page

pytestmark = pytest.mark.browser

# The 13 streets of sample_net, as the built-in simulator publishes them.
STREETS = [str(street) for street in range(13)]


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("landing", "/"),
        ("catalogue", "/networks/"),
        ("docs", "/docs/"),
        ("sign-up", "/accounts/signup/"),
    ],
)
def test_public_page_renders_on_its_own(site, page, name, path):
    response = page.goto(path)
    assert response.status == 200
    expect(page.locator("h1").first).to_be_visible()
    assert page.evaluate("document.styleSheets.length") > 0, "unstyled: not the portal's layout"
    screenshot(page, name)
    assert page.watch.problems() == []


def test_unknown_page_is_a_styled_404_with_a_way_back(site, page):
    response = page.goto("/no-such-page/")
    assert response.status == 404
    expect(page.locator("a[href='/']").first).to_be_visible()
    expect(page.locator("body")).not_to_contain_text("Traceback")
    screenshot(page, "not-found")
    assert page.watch.problems(console=False) == []  # the console notes the 404 itself


def test_catalogue_search_narrows_the_cards(site, page):
    page.goto("/networks/")
    cards = page.locator(".network-card:visible")
    expect(cards.first).to_be_visible()
    assert cards.count() >= 3
    search = page.locator("[name=q]")
    search.fill("harbour")
    search.press("Enter")
    expect(cards).to_have_count(1)
    expect(cards.first).to_have_attribute("data-slug", "paid-net")


def test_network_page_shows_traffic_as_it_arrives(site, page):
    page.goto("/networks/sample_net/")
    wait_until_live(page)
    samples = [
        {
            "state": {street: round(10 + 7 * int(street) + 3 * step, 1) for street in STREETS},
            "timestamp": f"2026-01-01T00:00:0{step}Z",
        }
        for step in range(6)
    ]
    for sample in samples:
        body = {"network": "sample_net", "data": sample}
        assert site.stack.publish(body, site.stack.demo_key)[0] == 200
    expect(live_messages(page)).to_have_count(len(samples))
    for sample in samples:
        expect(live_message(page, sample)).to_have_count(1)
    screenshot(page, "network-page-live")
    assert page.watch.problems() == []


def test_pages_fit_a_phone_screen(site, chromium):
    phone = chromium.new_context(
        base_url=site.url, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    try:
        page = watched_page(phone, site.url)
        for name, path in [("landing", "/"), ("catalogue", "/networks/"), ("docs", "/docs/"),
                           ("network-page", "/networks/sample_net/")]:  # fmt: skip
            page.goto(path)
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} scrolls sideways by {overflow}px on a phone"
            screenshot(page, f"phone-{name}")
        assert page.watch.problems() == []
    finally:
        phone.close()


def test_a_keyboard_user_skips_to_the_content_and_reaches_the_search(site, page):
    page.goto("/networks/")
    page.keyboard.press("Tab")
    skip = page.locator(".skip-link")
    expect(skip).to_be_focused()
    expect(skip).to_be_visible()  # shown when focused, for sighted keyboard users
    page.keyboard.press("Enter")
    assert page.evaluate("location.hash") == "#main"
    # From the content, Tab reaches the catalogue's search box, and the box is labelled.
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.name") == "q":
            break
    search = page.locator("[name=q]")
    expect(search).to_be_focused()
    label = page.evaluate(
        "(el => el.labels.length ? el.labels[0].textContent : el.getAttribute('aria-label'))"
        "(document.querySelector('[name=q]'))"
    )
    assert label and label.strip()
