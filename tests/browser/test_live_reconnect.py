"""The live view says "reconnecting" while the server restarts, then recovers by itself."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .support import live_message, wait_until_live

pytestmark = pytest.mark.browser


def test_live_view_recovers_by_itself_after_a_server_restart(site, page):
    page.goto("/networks/quiet-net/")
    wait_until_live(page)
    before = {"reading": 1}
    assert site.publish("quiet-net", before, site.generator_key).status_code == 201
    expect(live_message(page, before)).to_have_count(1)

    status = page.locator("#live-status")
    try:
        site.server.stop()
        expect(status).to_have_attribute("data-state", "reconnecting")
    finally:
        site.server.start()
    expect(status).to_have_attribute("data-state", "live", timeout=30_000)

    after = {"reading": 2}
    assert site.publish("quiet-net", after, site.generator_key).status_code == 201
    expect(live_message(page, after)).to_have_count(1)
    expect(live_message(page, before)).to_have_count(1)  # still on screen, not twice
    assert page.watch.problems(console=False) == []


def test_live_view_says_so_when_the_numbering_restarts_and_shows_what_follows(site, page):
    import redis

    page.goto("/networks/quiet-net/")
    wait_until_live(page)
    before = {"reading": "before the loss"}
    assert site.publish("quiet-net", before, site.generator_key).status_code == 201
    expect(live_message(page, before)).to_have_count(1)

    # Redis loses every network's numbering and history (a restart without persistence).
    prefix = site.stack.env["REDIS_KEY_PREFIX"]
    client = redis.Redis.from_url(site.stack.env["REDIS_URL"])
    for pattern in ("seq", "epoch", "history"):
        for key in client.scan_iter(f"{prefix}:{pattern}:*"):
            client.delete(key)
    client.close()

    after = {"reading": "numbered from one again"}
    assert site.publish("quiet-net", after, site.generator_key).status_code == 201
    expect(page.get_by_text("Numbering restarted after seq 0")).to_be_visible()
    expect(live_message(page, after)).to_have_count(1)
    expect(live_message(page, before)).to_have_count(1)
    assert page.watch.problems(console=False) == []
