"""The provider dashboard's takings: money collected from Stripe's paid invoices, not prices."""

from __future__ import annotations

import itertools
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import Role
from billing.models import Payment
from tests.factories import MembershipFactory, NetworkFactory

pytestmark = pytest.mark.django_db

_invoices = itertools.count(1)

# Another organization's payment, with an amount nothing else on these pages adds up to.
FOREIGN_CENTS = 1_234_57
FOREIGN_MONEY = "€1,234.57"


def pay(network, cents: int, *, fee: int | None = None, refunded: int = 0, currency="eur", at=None):
    return Payment.objects.create(
        stripe_invoice_id=f"in_test_{next(_invoices)}",
        network=network,
        currency=currency,
        amount_paid=cents,
        fee=fee,
        amount_refunded=refunded,
        paid_at=at or timezone.now(),
        billing_reason="subscription_cycle",
    )


def browser_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text(html: bytes) -> str:
    """The page's text, tags dropped and whitespace collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html.decode())).strip()


def network_row(html: bytes, slug: str) -> str:
    """The text of the overview's table row of network ``slug``."""
    match = re.search(rf'<tr data-network="{re.escape(slug)}">(.*?)</tr>', html.decode(), re.S)
    assert match, slug
    return text(match.group(1).encode())


def takings_stat(html: bytes) -> str:
    match = re.search(r'id="takings-this-month">(.*?)</div></div>', html.decode(), re.S)
    assert match
    return text(match.group(1).encode())


@pytest.fixture
def owner():
    return MembershipFactory(role=Role.OWNER)


@pytest.fixture
def paid(owner):
    return NetworkFactory(organization=owner.organization, slug="paid-feed", is_public=False)


@pytest.fixture
def foreign():
    """Another organization's paid network, which took money this month."""
    network = NetworkFactory(organization=MembershipFactory().organization, is_public=False)
    pay(network, FOREIGN_CENTS, fee=100)
    return network


def test_a_paid_network_shows_its_takings_per_month(owner, paid, foreign):
    pay(paid, 900, fee=56, refunded=450)
    pay(paid, 9000, fee=291)
    last_month = timezone.now().replace(day=1) - timedelta(days=1)
    pay(paid, 500, fee=45, at=last_month)

    response = browser_for(owner.user).get(
        f"/dashboard/{owner.organization.slug}/networks/{paid.slug}/"
    )

    assert response.status_code == 200
    page = text(response.content)
    assert "Takings" in page
    this_month = timezone.now().strftime("%b %Y")
    # Month, payments, collected, Stripe fees, refunds, net.
    assert f"{this_month} 2 €99.00 €3.47 €4.50 €91.03" in page
    assert f"{last_month:%b %Y} 1 €5.00 €0.45 €0.00 €4.55" in page
    assert page.index(this_month) < page.index(f"{last_month:%b %Y}")  # newest first
    assert "From Stripe's paid invoices; a refund counts in the month" in page
    assert "No payments yet." not in page
    assert FOREIGN_MONEY not in page


def test_each_currency_has_its_own_row(owner, paid):
    pay(paid, 9000, fee=291)
    pay(paid, 1200, fee=65, currency="usd")
    pay(paid, 1000, currency="chf")  # no symbol; an unknown fee counts as nothing

    page = text(
        browser_for(owner.user)
        .get(f"/dashboard/{owner.organization.slug}/networks/{paid.slug}/")
        .content
    )

    assert "1 €90.00 €2.91 €0.00 €87.09" in page
    assert "1 $12.00 $0.65 $0.00 $11.35" in page
    assert "1 10.00 CHF 0.00 CHF 0.00 CHF 10.00 CHF" in page


def test_a_paid_network_without_payments_says_so(owner, paid, foreign):
    page = text(
        browser_for(owner.user)
        .get(f"/dashboard/{owner.organization.slug}/networks/{paid.slug}/")
        .content
    )
    assert "No payments yet." in page
    assert FOREIGN_MONEY not in page


def test_a_free_network_has_no_takings_table(owner):
    free = NetworkFactory(organization=owner.organization, is_public=True)
    response = browser_for(owner.user).get(
        f"/dashboard/{owner.organization.slug}/networks/{free.slug}/"
    )
    assert b'id="takings"' not in response.content
    assert b"No payments yet." not in response.content


def test_the_overview_sums_this_months_net_over_the_networks(owner, paid, foreign):
    pay(paid, 900, fee=56, refunded=450)
    pay(paid, 9000, fee=291)
    other = NetworkFactory(organization=owner.organization, slug="other-feed", is_public=False)
    pay(other, 2000, fee=80)
    pay(other, 1500, fee=70, currency="usd")
    quiet = NetworkFactory(organization=owner.organization, slug="quiet-feed", is_public=False)
    # Last month's payment counts on neither the summary nor the column.
    pay(quiet, 7000, fee=100, at=timezone.now().replace(day=1) - timedelta(days=1))

    response = browser_for(owner.user).get(f"/dashboard/{owner.organization.slug}/")

    assert response.status_code == 200
    # €91.03 + €19.20; $14.30.
    assert takings_stat(response.content) == "€110.23 + $14.30 takings this month, net"
    assert "Net this month" in text(response.content)
    assert network_row(response.content, "paid-feed").endswith("€91.03 live")
    assert network_row(response.content, "other-feed").endswith("€19.20 $14.30 live")
    assert network_row(response.content, "quiet-feed").endswith("— live")
    assert FOREIGN_MONEY not in text(response.content)


def test_the_overview_without_payments_shows_dashes(owner, paid, foreign):
    response = browser_for(owner.user).get(f"/dashboard/{owner.organization.slug}/")
    assert takings_stat(response.content) == "— takings this month, net"
    assert network_row(response.content, "paid-feed").endswith("— live")
    assert FOREIGN_MONEY not in text(response.content)


# Measured with one network: session, user, membership, networks, usage, subscriptions,
# payments (one query for all networks), the organization switcher.
OVERVIEW_QUERIES = 8


def test_the_overview_reads_payments_once_whatever_the_number_of_networks(
    owner, paid, foreign, django_assert_max_num_queries
):
    pay(paid, 900, fee=56)
    browser = browser_for(owner.user)
    url = f"/dashboard/{owner.organization.slug}/"
    with django_assert_max_num_queries(OVERVIEW_QUERIES) as one_network:
        browser.get(url)
    payment_reads = [q for q in one_network.captured_queries if "billing_payment" in q["sql"]]
    assert len(payment_reads) == 1

    for _ in range(5):
        network = NetworkFactory(organization=owner.organization, is_public=False)
        pay(network, 1000, fee=50)
        pay(network, 1000, fee=50, currency="usd")

    with django_assert_max_num_queries(OVERVIEW_QUERIES) as six_networks:
        response = browser.get(url)
    assert len(six_networks) == len(one_network)
    assert takings_stat(response.content) == "€55.94 + $47.50 takings this month, net"
