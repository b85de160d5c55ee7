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
