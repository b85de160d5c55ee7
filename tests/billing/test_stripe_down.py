"""Stripe unreachable or refusing: no 500 anywhere on the money paths, nothing left behind."""

from __future__ import annotations

import httpx
import pytest
from django.test import Client

from accounts.models import Role
from billing.models import Customer, Price
from billing.services import customer_for, price_set
from tests.factories import MembershipFactory, NetworkFactory, UserFactory

pytestmark = pytest.mark.django_db
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens on the discard port


@pytest.fixture
def paid(stripe_on):
    network = NetworkFactory(slug="premium", is_public=False)
    price_set(network=network, interval="month", amount=900)
    return network


@pytest.fixture
def listener_browser(db):
    browser = Client()
    browser.force_login(UserFactory(email="buyer@example.com"))
    return browser


def test_subscribe_with_stripe_unreachable_is_a_503_page_with_retry_after(
    paid, listener_browser, settings
):
    settings.STRIPE_API_BASE = UNREACHABLE
    response = listener_browser.post("/networks/premium/subscribe/", {"interval": "month"})
    assert response.status_code == 503
    assert response["Retry-After"].isdigit()
    assert "Nothing was charged" in response.content.decode()


@pytest.mark.parametrize("status", [500, 503, 429, "drop"])
def test_subscribe_while_stripe_fails_is_a_503_page(paid, listener_browser, stripe_on, status):
    stripe_on.inject_fault(status, count=10)
    response = listener_browser.post("/networks/premium/subscribe/", {"interval": "month"})
    assert response.status_code == 503
    stripe_on.clear_faults()


def test_stripe_refusing_checkout_says_why_without_a_500(paid, listener_browser, stripe_on):
    stripe_on.inject_fault(400, count=10, path_prefix="/v1/checkout")
    response = listener_browser.post(
        "/networks/premium/subscribe/", {"interval": "month"}, follow=True
    )
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == "/networks/premium/"
    stripe_on.clear_faults()


def test_the_billing_portal_with_stripe_unreachable_is_a_503_page(stripe_on, settings):
    person = UserFactory()
    Customer.objects.create(user=person, stripe_customer_id="cus_somebody")
    browser = Client()
    browser.force_login(person)
    settings.STRIPE_API_BASE = UNREACHABLE
    response = browser.post("/billing/portal/")
    assert response.status_code == 503 and response["Retry-After"].isdigit()


def test_the_portal_returns_the_listener_to_their_account_page(stripe_on):
    person = UserFactory()
    customer_for(user=person)
    browser = Client()
    browser.force_login(person)
    location = browser.post("/billing/portal/")["Location"]
    assert location.startswith(stripe_on.api_base + "/portal/")
    portal_page = httpx.get(location).text
    assert 'href="http://testserver/account/"' in portal_page


def test_setting_a_price_with_stripe_down_leaves_no_orphan_product(stripe_on):
    provider = MembershipFactory(role=Role.OWNER)
    network = NetworkFactory(organization=provider.organization, slug="gauges", is_public=False)
    stripe_on.inject_fault(503, count=10, path_prefix="/v1/prices")
    browser = Client()
    browser.force_login(provider.user)
    response = browser.post(
        f"/dashboard/{provider.organization.slug}/networks/gauges/price/",
        {"interval": "month", "amount": "9.00", "currency": "eur"},
        follow=True,
    )
    assert response.status_code == 200
    assert "temporarily unavailable" in response.content.decode()
    assert not Price.objects.filter(network=network).exists()
    stripe_on.clear_faults()
    created = [r for r in stripe_on.requests_log() if r["path"] == "/v1/products"]
    deleted = [r for r in stripe_on.requests_log() if r["method"] == "DELETE"]
    assert len(created) == 1 and len(deleted) == 1  # the product made for it is gone again
