"""The public portal: landing, catalogue, network page with its live view, docs, error pages."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client, RequestFactory
from django.utils import timezone

from billing.models import Price
from billing.services import subscription_grant
from simulator.models import Simulation, Topology
from tests.factories import NetworkFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db


def cards(page: str) -> list[str]:
    """Slugs of the network cards on a page, in order."""
    return re.findall(r'class="card network-card" data-slug="([^"]+)"', page)


@pytest.fixture
def shelf(db):
    """Two providers, free and paid networks, one archived."""
    weather = OrganizationFactory(slug="met", name="Met Office")
    markets = OrganizationFactory(slug="ticker", name="Ticker Ltd")
    NetworkFactory(organization=weather, slug="rain", name="Rainfall", description="mm per hour")
    NetworkFactory(organization=weather, slug="wind", name="Wind gusts")
    paid = NetworkFactory(organization=markets, slug="fx", name="FX quotes", is_public=False)
    Price.objects.create(network=paid, interval="month", amount=499, currency="eur")
    NetworkFactory(organization=markets, slug="old", name="Old feed", archived_at=timezone.now())
    return paid


def test_the_catalogue_lists_live_networks_free_first(shelf):
    page = Client().get("/networks/").content.decode()
    assert cards(page) == ["rain", "wind", "fx"]
    assert "€4.99" in page and "/month" in page
    assert 'name="q"' in page


def test_the_catalogue_searches_names_descriptions_and_providers(shelf):
    browser = Client()
    assert cards(browser.get("/networks/", {"q": "per hour"}).content.decode()) == ["rain"]
    assert cards(browser.get("/networks/", {"q": "ticker"}).content.decode()) == ["fx"]
    nothing = browser.get("/networks/", {"q": "volcano"}).content.decode()
    assert cards(nothing) == [] and "No network matches" in nothing


def test_the_catalogue_filters_by_access_and_provider(shelf):
    browser = Client()
    assert cards(browser.get("/networks/", {"access": "paid"}).content.decode()) == ["fx"]
    assert cards(browser.get("/networks/", {"access": "free"}).content.decode()) == [
        "rain",
        "wind",
    ]
    by_met = browser.get("/networks/", {"provider": "met", "access": "paid"}).content.decode()
    assert cards(by_met) == []
    # A provider without live networks is not offered (nor is a made-up one accepted).
    unknown = browser.get("/networks/", {"provider": "nobody"}).content.decode()
    assert "Select a valid choice" in unknown


def test_the_catalogue_shows_listeners_now_from_one_occupancy_read(shelf, monkeypatch):
    asked = []

    def occupancy(network_ids):
        asked.append(sorted(network_ids))
        return {network_id: 7 for network_id in network_ids}

    monkeypatch.setattr("frontend.views.listeners_now", occupancy)
    page = Client().get("/networks/").content.decode()
    assert len(asked) == 1 and len(asked[0]) == 3
    assert page.count('<span class="listeners">7</span> listening') == 3


def test_the_catalogue_costs_the_same_queries_for_3_or_30_networks(
    shelf, django_assert_max_num_queries
):
    browser = Client()
    browser.get("/networks/")  # warm caches (e.g. content types)
    with django_assert_max_num_queries(4):
        browser.get("/networks/")
    for i in range(27):
        network = NetworkFactory(slug=f"bulk-{i}", is_public=i % 2 == 0)
        if not network.is_public:
            Price.objects.create(network=network, interval="month", amount=100 + i)
    with django_assert_max_num_queries(4):
        page = browser.get("/networks/").content.decode()
    assert len(cards(page)) == 24  # first page
    assert "Page 1 of 2" in page


def test_the_landing_page_says_what_katiedj_is_and_links_to_catalogue_and_docs(shelf):
    page = Client().get("/").content.decode()
    assert "Publish a JSON sample once" in page
    assert 'href="/networks/"' in page and 'href="/docs/"' in page
    assert cards(page) == ["rain", "wind", "fx"]


def test_the_network_page_has_the_live_view_and_one_subscribe_button(shelf, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_x"
    Price.objects.create(network=shelf, interval="year", amount=4900, currency="eur")
    buyer = UserFactory()
    browser = Client()
    browser.force_login(buyer)
    page = browser.get("/networks/fx/").content.decode()
    assert '<section id="live-view"' in page and 'data-network="fx"' in page
    assert 'data-paid="true"' in page and 'id="live-status"' in page
    assert page.count('id="subscribe-button"') == 1
    assert 'value="month"' in page and 'value="year"' in page
    assert 'action="/networks/fx/subscribe/"' in page


def test_a_visitor_is_asked_to_log_in_before_subscribing(shelf, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_x"
    page = Client().get("/networks/fx/").content.decode()
    link = re.search(r'<a id="subscribe-button"[^>]*href="([^"]+)"', page)
    assert link and link.group(1) == "/accounts/login/?next=/networks/fx/"


def test_a_subscriber_sees_no_subscribe_button(shelf):
    listener = UserFactory()
    subscription_grant(user=listener, network=shelf)
    browser = Client()
    browser.force_login(listener)
    page = browser.get("/networks/fx/").content.decode()
    assert "You are subscribed" in page and "subscribe-button" not in page


def test_the_network_page_renders_in_a_bounded_number_of_queries(
    shelf, django_assert_max_num_queries
):
    listener = UserFactory()
    subscription_grant(user=listener, network=shelf)
    Simulation.objects.create(name="town", network=shelf, topology=Topology.SAMPLE_NET)
    browser = Client()
    browser.force_login(listener)
    browser.get("/networks/fx/")
    with django_assert_max_num_queries(6):
        assert browser.get("/networks/fx/").status_code == 200


def test_a_traffic_network_embeds_its_street_map(db):
    network = NetworkFactory(slug="town")
    Simulation.objects.create(
        name="grid",
        network=network,
        topology=Topology.GRID,
        topology_options={"rows": 2, "cols": 3},
    )
    page = Client().get("/networks/town/").content.decode()
    raw = re.search(r'<script id="live-topology" type="application/json">(.*?)</script>', page)
    layout = json.loads(raw.group(1))
    inner = {n["id"]: (n["x"], n["y"]) for n in layout["nodes"] if not n["id"].startswith("border")}
    assert set(inner) == {f"r{r}c{c}" for r in range(2) for c in range(3)}
    # Laid out as the grid: same row, same y; columns left to right.
    assert inner["r0c0"][1] == inner["r0c2"][1] < inner["r1c0"][1]
    assert inner["r0c0"][0] < inner["r0c1"][0] < inner["r0c2"][0]
    assert all(0 <= n["x"] <= 1 and 0 <= n["y"] <= 1 for n in layout["nodes"])
    assert all(s["jam"] > 0 for s in layout["streets"])


def test_a_network_without_a_simulation_has_no_street_map(shelf):
    assert "live-topology" not in Client().get("/networks/rain/").content.decode()


def test_the_docs_cover_publishing_listening_tokens_and_close_codes(db, settings):
    settings.PUBLISH_MAX_BYTES = 12345
    page = Client().get("/docs/").content.decode()
    for expected in (
        "/api/publish",
        "API-KEY",
        "katiedj_client",
        "new WebSocket(",
        "?format=envelope",
        "since=",
        '"type": "gap"',
        "/api/v1/entitlements/token",
        '["katiedj", "kdje.…"]',
        "12345 bytes",
    ):
        assert expected in page, expected
    for code in ("1008", "1009", "1012", "4401", "4403", "4408", "4410", "4429"):
        assert f"<td>{code}</td>" in page, code


def test_sign_up_and_log_in_wear_the_portal_layout(db):
    for path in ("/accounts/signup/", "/accounts/login/"):
        page = Client().get(path).content.decode()
        assert 'class="card auth-card"' in page and "katiedj.css" in page, path
        assert 'href="/docs/"' in page, path


def test_favicon_requests_get_the_svg_icon(db):
    response = Client().get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("frontend/favicon.svg")


def test_an_unknown_page_is_a_styled_404(db):
    response = Client().get("/no/such/page/")
    assert response.status_code == 404
    page = response.content.decode()
    assert "We could not find that page" in page and 'href="/networks/"' in page
    assert "katiedj.css" in page


def test_a_forbidden_action_is_a_styled_403(db):
    from tests.api.conftest import make_tenant

    acme = make_tenant("acme")
    browser = Client()
    browser.force_login(acme.member)
    response = browser.post("/dashboard/acme/keys/", {"name": "x"})
    assert response.status_code == 403
    page = response.content.decode()
    assert "You are not allowed to do that" in page and acme.member.email in page


def test_the_500_page_renders_without_a_request_context(db):
    from django.views.defaults import server_error

    response = server_error(RequestFactory().get("/"))
    assert response.status_code == 500
    page = response.content.decode()
    assert "Something went wrong on our side" in page and 'href="/"' in page


def test_a_granted_subscription_says_it_does_not_renew(shelf):
    listener = UserFactory()
    subscription_grant(user=listener, network=shelf, days=10)
    browser = Client()
    browser.force_login(listener)
    page = browser.get("/account/").content.decode()
    assert "granted, no renewal" in page and "renews" not in page
