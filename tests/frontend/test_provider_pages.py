"""The provider dashboard's overview (usage, listeners, subscribers, revenue) and simulations."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from billing.models import Price, Subscription
from networks.models import UsageHour
from simulator.models import Simulation, SimulationStatus, Topology
from tests.api.conftest import make_tenant
from tests.factories import NetworkFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme(db):
    return make_tenant("acme")


def browser_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def row_of(page: str, slug: str) -> str:
    return re.search(rf'<tr data-network="{slug}">(.*?)</tr>', page, re.S).group(1)


def paying(network, price, count: int) -> None:
    for _ in range(count):
        Subscription.objects.create(
            user=UserFactory(), network=network, price=price, status="active"
        )


def test_subscribers_and_monthly_revenue_per_network(acme):
    paid = NetworkFactory(organization=acme.organization, slug="acme-pro", is_public=False)
    monthly = Price.objects.create(network=paid, interval="month", amount=500, currency="eur")
    yearly = Price.objects.create(network=paid, interval="year", amount=6000, currency="eur")
    paying(paid, monthly, 2)
    paying(paid, yearly, 1)  # counts 1/12 of 60.00 a month
    Subscription.objects.create(user=UserFactory(), network=paid, price=monthly, status="canceled")
    page = browser_for(acme.member).get("/dashboard/acme/").content.decode()
    cells = re.findall(r'<td class="num">(.*?)</td>', row_of(page, "acme-pro"), re.S)
    assert cells[3] == "3" and cells[4] == "€15.00"
    assert "€15.00" in page and '>3</div><div class="label">paying subscribers' in page


def test_the_usage_chart_draws_one_bar_per_hour(acme):
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    for hours_ago, count in ((0, 40), (3, 10), (30, 999)):  # the last is outside the 24 hours
        UsageHour.objects.create(
            organization=acme.organization,
            network=acme.network,
            hour=now - timedelta(hours=hours_ago),
            messages=count,
        )
    page = browser_for(acme.member).get("/dashboard/acme/").content.decode()
    bars = re.findall(r'<rect class="bar"[^>]*><title>[^<]*: (\d+)</title>', page)
    assert len(bars) == 24 and bars[-1] == "40" and bars[-4] == "10"
    assert sorted(map(int, bars))[-2:] == [10, 40]


def test_the_overview_totals_count_the_charted_hours(acme):
    """Per-network and overall 24-hour totals cover exactly the hours the chart draws."""
    other = NetworkFactory(organization=acme.organization, slug="acme-other")
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    for network, hours_ago, count in ((acme.network, 0, 40), (other, 23, 7), (other, 24, 999)):
        UsageHour.objects.create(
            organization=acme.organization,
            network=network,
            hour=now - timedelta(hours=hours_ago),
            messages=count,
        )
    page = browser_for(acme.member).get("/dashboard/acme/").content.decode()
    bars = re.findall(r'<rect class="bar"[^>]*><title>[^<]*: (\d+)</title>', page)
    assert sum(map(int, bars)) == 47
    assert re.findall(r'<td class="num">(.*?)</td>', row_of(page, "acme-other"), re.S)[0] == "7"
    assert '>47</div><div class="label">messages, last 24 h' in page


def test_the_overview_costs_the_same_queries_for_1_or_12_networks(
    acme, django_assert_max_num_queries
):
    browser = browser_for(acme.owner)
    browser.get("/dashboard/acme/")
    with django_assert_max_num_queries(9):
        browser.get("/dashboard/acme/")
    for i in range(11):
        network = NetworkFactory(organization=acme.organization, slug=f"n{i}", is_public=i % 2)
        price = Price.objects.create(network=network, interval="month", amount=300)
        paying(network, price, 2)
    with django_assert_max_num_queries(9):
        page = browser.get("/dashboard/acme/").content.decode()
    assert page.count("<tr data-network=") == 12


def test_the_network_detail_page_is_bounded_in_queries(acme, django_assert_max_num_queries):
    browser = browser_for(acme.owner)
    browser.get("/dashboard/acme/networks/acme-live/")
    with django_assert_max_num_queries(9):
        assert browser.get("/dashboard/acme/networks/acme-live/").status_code == 200


def test_dashboard_forms_carry_the_ids_the_browser_tests_use(acme):
    browser = browser_for(acme.admin)
    assert 'id="create-network-form"' in browser.get("/dashboard/acme/").content.decode()
    keys = browser.get("/dashboard/acme/keys/").content.decode()
    assert 'id="create-key-form"' in keys
    row = re.search(rf'<tr data-key-prefix="{acme.api_key.prefix}">(.*?)</tr>', keys, re.S)
    assert row and 'class="btn-danger btn-sm revoke-key"' in row.group(1)


def test_a_price_form_error_says_what_is_wrong(acme, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_x"
    NetworkFactory(organization=acme.organization, slug="acme-pro", is_public=False)
    response = browser_for(acme.admin).post(
        "/dashboard/acme/networks/acme-pro/price/",
        {"interval": "month", "amount": "0.10", "currency": "eur"},
        follow=True,
    )
    assert "The price was not saved. Amount:" in response.content.decode()
    assert not Price.objects.exists()


@pytest.fixture
def town(acme):
    return Simulation.objects.create(
        name="town", network=acme.network, topology=Topology.GRID, topology_options={"rows": 2}
    )


def test_admins_start_pause_and_stop_a_simulation(acme, town):
    browser = browser_for(acme.admin)
    base = f"/dashboard/acme/simulations/{town.pk}"
    for action, status in (("start", "running"), ("pause", "paused"), ("stop", "stopped")):
        response = browser.post(f"{base}/{action}/")
        assert response["Location"] == "/dashboard/acme/simulations/"
        town.refresh_from_db()
        assert town.status == status
    page = browser.get("/dashboard/acme/simulations/").content.decode()
    assert f'<tr data-simulation="{town.pk}">' in page and ">Start</button>" in page


def test_members_see_simulations_but_cannot_run_them(acme, town):
    browser = browser_for(acme.member)
    page = browser.get("/dashboard/acme/simulations/").content.decode()
    assert "town" in page and "Start</button>" not in page
    assert browser.post(f"/dashboard/acme/simulations/{town.pk}/start/").status_code == 403
    town.refresh_from_db()
    assert town.status == SimulationStatus.STOPPED


def test_another_organization_cannot_touch_a_simulation(acme, town):
    globex = make_tenant("globex")
    response = browser_for(globex.owner).post(f"/dashboard/globex/simulations/{town.pk}/start/")
    assert response.status_code == 404
    page = browser_for(globex.owner).get("/dashboard/globex/simulations/").content.decode()
    assert f'data-simulation="{town.pk}"' not in page and "No simulation yet" in page


def test_a_simulation_is_created_stopped_on_an_own_network(acme):
    browser = browser_for(acme.owner)
    response = browser.post(
        "/dashboard/acme/simulations/",
        {
            "name": "downtown",
            "network": "acme-live",
            "topology": "grid",
            "rows": 3,
            "cols": 2,
            "publish_interval_seconds": 2,
        },
    )
    assert response.status_code == 302
    created = Simulation.objects.get(name="downtown")
    assert created.status == SimulationStatus.STOPPED
    assert created.topology_options == {"rows": 3, "cols": 2}


def test_a_bad_simulation_is_refused_with_field_messages(acme):
    globex = make_tenant("globex")
    page = (
        browser_for(acme.owner)
        .post(
            "/dashboard/acme/simulations/",
            {"name": "x", "network": globex.network.slug, "topology": "grid", "rows": 99},
        )
        .content.decode()
    )
    assert "Select a valid choice" in page
    assert "Ensure this value is less than or equal to 20." in page
    assert not Simulation.objects.exists()


def test_subscribers_and_revenue_are_charted_per_paid_network(acme):
    pro = NetworkFactory(organization=acme.organization, slug="acme-pro", is_public=False)
    lite = NetworkFactory(organization=acme.organization, slug="acme-lite", is_public=False)
    paying(pro, Price.objects.create(network=pro, interval="month", amount=500), 3)
    paying(lite, Price.objects.create(network=lite, interval="year", amount=2400), 1)
    page = browser_for(acme.member).get("/dashboard/acme/").content.decode()

    def bars(section_id: str) -> list[tuple[str, str]]:
        section = re.search(rf'<section[^>]*id="{section_id}".*?</section>', page, re.S).group(0)
        return re.findall(r'<rect class="bar"[^>]*><title>([^<]*): (\d+)</title>', section)

    # Best sellers first; the free network is not charted.
    assert bars("subscribers-chart") == [("acme-pro", "3"), ("acme-lite", "1")]
    # Whole currency units a month: 3 x 5.00, and 24.00 a year counts 2.00 a month.
    assert bars("revenue-chart") == [("acme-pro", "15"), ("acme-lite", "2")]
