"""The listener's dashboard at /account/: subscriptions, personal tokens, snippets."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from billing.models import Customer, Price, Subscription, SubscriptionStatus
from tests.factories import NetworkFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def listener(db):
    return UserFactory(email="ada@example.com")


@pytest.fixture
def browser(listener) -> Client:
    client = Client()
    client.force_login(listener)
    return client


def test_visitors_are_sent_to_log_in():
    response = Client().get("/account/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_subscriptions_show_status_renewal_and_price(listener, browser):
    paid = NetworkFactory(slug="fx", name="FX quotes", is_public=False)
    price = Price.objects.create(network=paid, interval="month", amount=1250, currency="usd")
    Subscription.objects.create(
        user=listener,
        network=paid,
        price=price,
        status=SubscriptionStatus.ACTIVE,
        current_period_end=timezone.now().replace(year=2031, month=3, day=14),
    )
    ended = NetworkFactory(slug="old", name="Old feed", is_public=False)
    Subscription.objects.create(user=listener, network=ended, status=SubscriptionStatus.CANCELED)
    Subscription.objects.create(user=UserFactory(), network=ended, status="active")  # not ours
    page = browser.get("/account/").content.decode()
    assert "FX quotes" in page and "renews 14 Mar 2031" in page and "$12.50 / month" in page
    assert "Old feed" in page and "Canceled" in page
    assert page.count('href="/networks/old/"') == 1


def test_the_billing_portal_button_needs_billing_and_a_stripe_customer(listener, browser, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_x"
    assert "billing-portal-button" not in browser.get("/account/").content.decode()
    Customer.objects.create(user=listener, stripe_customer_id="cus_1")
    page = browser.get("/account/").content.decode()
    assert 'id="billing-portal-button"' in page and 'action="/billing/portal/"' in page


def test_a_new_token_is_shown_once_and_fills_the_snippets(listener, browser):
    page = browser.post("/account/", {"name": "laptop"}).content.decode()
    secret = re.search(r'id="new-secret">(kdjp_\w+)<', page).group(1)
    assert 'id="create-token-form"' in page
    # The Python, CLI, token-exchange and REST snippets all carry it.
    assert page.count(secret) >= 5
    later = browser.get("/account/").content.decode()
    assert secret not in later and "&lt;your personal token&gt;" in later
    assert listener.personal_tokens.get().name == "laptop"


def test_a_token_without_a_name_is_refused_with_a_clear_message(listener, browser):
    page = browser.post("/account/", {"name": ""}).content.decode()
    assert "This field is required." in page and "new-secret" not in page
    assert not listener.personal_tokens.exists()


def test_tokens_are_revoked_by_their_owner_only(listener, browser):
    browser.post("/account/", {"name": "laptop"})
    token = listener.personal_tokens.get()
    intruder = Client()
    intruder.force_login(UserFactory())
    assert intruder.post("/account/", {"revoke": token.pk}).status_code == 404
    response = browser.post("/account/", {"revoke": token.pk}, follow=True)
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert "revoked" in response.content.decode()


def test_the_account_page_costs_the_same_queries_for_1_or_10_subscriptions(
    listener, browser, django_assert_max_num_queries
):
    def subscribe(i: int) -> None:
        network = NetworkFactory(slug=f"paid-{i}", is_public=False)
        price = Price.objects.create(network=network, interval="month", amount=100 + i)
        Subscription.objects.create(
            user=listener,
            network=network,
            price=price,
            status="active",
            current_period_end=timezone.now() + timedelta(days=3),
        )

    subscribe(0)
    browser.post("/account/", {"name": "one"})
    browser.get("/account/")
    with django_assert_max_num_queries(6):
        browser.get("/account/")
    for i in range(1, 10):
        subscribe(i)
        browser.post("/account/", {"name": f"token {i}"})
    with django_assert_max_num_queries(6):
        page = browser.get("/account/").content.decode()
    assert page.count('href="/networks/paid-') == 10


def test_the_former_tokens_address_still_works(listener, browser):
    page = browser.post("/dashboard/tokens/", {"name": "ci"}).content.decode()
    assert re.search(r'id="new-secret">kdjp_\w+<', page)
