"""Money is exact: one subscription per person and network, staff and providers act through
Stripe, and the figures providers see are what Stripe collected (all against the fake)."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import Role
from billing.models import Payment, Price, Subscription, SubscriptionStatus
from billing.selectors import takings_by_month
from billing.services import (
    AlreadySubscribed,
    price_remove,
    price_set,
    subscription_change_plan,
)
from billing.sync import subscriptions_reconcile
from networks.services import network_archive, network_update
from tests.factories import MembershipFactory, NetworkFactory, UserFactory

from .conftest import deliver_all, session_id_of, start_checkout

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop(stripe_on):
    """A provider's paid network with a monthly and a yearly price."""
    provider = MembershipFactory(role=Role.OWNER)
    network = NetworkFactory(organization=provider.organization, slug="premium", is_public=False)
    price_set(network=network, interval="month", amount=900)
    price_set(network=network, interval="year", amount=9000)
    return provider, network


def deliver_new(stripe_on, client, seen: int, callbacks) -> None:
    with callbacks(execute=True):
        assert set(deliver_all(stripe_on, client, since=seen)) <= {200}


def stripe_client(stripe_on):
    """The real library on the fake, as Stripe's own dashboard would act."""
    import stripe

    return stripe.StripeClient("sk_test_x", base_addresses={"api": stripe_on.api_base})


def live_at_stripe(stripe_on, customer_id: str) -> list[dict]:
    params = {"customer": customer_id, "status": "all"}
    page = stripe_client(stripe_on).v1.subscriptions.list(params=params)
    return [s for s in page.data if s.status not in ("canceled", "incomplete_expired")]


def test_subscribe_when_subscribed_starts_no_second_checkout(shop, buy, stripe_on):
    _, network = shop
    person = UserFactory()
    buy(person, network)
    stripe_on.clear_requests_log()
    browser = Client()
    browser.force_login(person)
    response = browser.post("/networks/premium/subscribe/", {"interval": "year"}, follow=True)
    assert response.status_code == 200
    assert "change your plan" in response.content.decode()
    assert not [r for r in stripe_on.requests_log() if r["path"].startswith("/v1/checkout")]
    with pytest.raises(AlreadySubscribed):
        start_checkout(person, network, "month")


def test_subscribe_before_the_webhooks_arrived_is_caught_at_stripe(shop, stripe_on):
    _, network = shop
    person = UserFactory()
    url = start_checkout(person, network, "month")
    stripe_on.complete_checkout(session_id_of(url))  # paid; no event delivered yet
    with pytest.raises(AlreadySubscribed):
        start_checkout(person, network, "month")
    assert Subscription.objects.get(user=person).status == "active"  # mirrored on the way


def test_switching_to_yearly_changes_the_one_subscription_with_proration(
    shop, buy, stripe_on, client, django_capture_on_commit_callbacks
):
    _, network = shop
    person = UserFactory()
    stripe_subscription = buy(person, network, "month")
    seen = len(stripe_on.events())
    browser = Client()
    browser.force_login(person)
    page = browser.get("/networks/premium/").content.decode()
    assert 'id="switch-year"' in page and 'id="switch-month"' not in page
    response = browser.post("/networks/premium/plan/", {"interval": "year"})
    assert response.status_code == 302
    row = Subscription.objects.get(user=person)
    assert row.stripe_subscription_id == stripe_subscription["id"]
    assert (row.price.interval, row.price.amount) == ("year", 9000)
    customer = person.stripe_customer.stripe_customer_id
    live = live_at_stripe(stripe_on, customer)
    assert [s.id for s in live] == [stripe_subscription["id"]]
    assert live[0]["items"]["data"][0]["price"]["recurring"]["interval"] == "year"
    deliver_new(stripe_on, client, seen, django_capture_on_commit_callbacks)
    proration = Payment.objects.get(billing_reason="subscription_update")
    assert 0 < proration.amount_paid < 9000  # the unused month was credited
    with pytest.raises(Exception, match="already on the yearly plan"):
        subscription_change_plan(user=person, network=network, interval="year")


def test_two_checkouts_completed_anyway_leave_one_subscription_and_a_full_refund(
    shop, stripe_on, client, eager_celery, django_capture_on_commit_callbacks
):
    _, network = shop
    person = UserFactory()
    urls = [start_checkout(person, network, "month") for _ in range(2)]  # two tabs, unpaid
    first = stripe_on.complete_checkout(session_id_of(urls[0]))
    second = stripe_on.complete_checkout(session_id_of(urls[1]))
    with django_capture_on_commit_callbacks(execute=True):
        assert set(deliver_all(stripe_on, client)) == {200}
    customer = person.stripe_customer.stripe_customer_id
    assert [s.id for s in live_at_stripe(stripe_on, customer)] == [first["id"]]
    duplicate = Subscription.objects.get(stripe_subscription_id=second["id"])
    assert duplicate.status == SubscriptionStatus.CANCELED
    refunds = stripe_on.events("refund.created")
    assert [r["data"]["object"]["amount"] for r in refunds] == [900]
    kept = Subscription.objects.get(stripe_subscription_id=first["id"])
    assert kept.status == SubscriptionStatus.ACTIVE


def test_staff_ending_a_subscription_cancels_at_stripe_and_refunds_the_unused_part(
    shop, buy, stripe_on
):
    _, network = shop
    person = UserFactory()
    stripe_subscription = buy(person, network)
    staff = UserFactory(is_staff=True, is_superuser=True)
    browser = Client()
    browser.force_login(staff)
    row = Subscription.objects.get(user=person)
    response = browser.post(
        "/admin/billing/subscription/",
        {"action": "end_now_prorated", "_selected_action": [row.pk]},
    )
    assert response.status_code == 302
    at_stripe = stripe_on.events("customer.subscription.deleted")
    assert [e["data"]["object"]["id"] for e in at_stripe] == [stripe_subscription["id"]]
    refund = stripe_on.events("refund.created")[0]["data"]["object"]
    assert 890 <= refund["amount"] <= 900  # nearly the whole month was unused
    row.refresh_from_db()
    assert row.status == SubscriptionStatus.CANCELED
    subscriptions_reconcile()  # Stripe agrees: nothing comes back
    row.refresh_from_db()
    assert row.status == SubscriptionStatus.CANCELED


def test_the_admin_cannot_edit_a_stripe_subscription_into_another_state(shop, buy):
    _, network = shop
    person = UserFactory()
    buy(person, network)
    row = Subscription.objects.get(user=person)
    staff = UserFactory(is_staff=True, is_superuser=True)
    browser = Client()
    browser.force_login(staff)
    url = f"/admin/billing/subscription/{row.pk}/change/"
    page = browser.get(url).content.decode()
    assert 'name="status"' not in page  # every mirrored field is read-only
    browser.post(url, {"status": "canceled", "current_period_end_0": "2020-01-01"})
    row.refresh_from_db()
    assert row.status == SubscriptionStatus.ACTIVE


def test_deleting_a_stripe_subscription_row_ends_it_at_stripe_first(shop, buy, stripe_on):
    _, network = shop
    person = UserFactory()
    stripe_subscription = buy(person, network)
    row = Subscription.objects.get(user=person)
    staff = UserFactory(is_staff=True, is_superuser=True)
    browser = Client()
    browser.force_login(staff)
    stripe_on.inject_fault(503, count=10)
    browser.post(f"/admin/billing/subscription/{row.pk}/delete/", {"post": "yes"})
    assert Subscription.objects.filter(pk=row.pk).exists()  # Stripe down: nothing deleted
    stripe_on.clear_faults()
    browser.post(f"/admin/billing/subscription/{row.pk}/delete/", {"post": "yes"})
    assert not Subscription.objects.filter(pk=row.pk).exists()
    deleted = stripe_on.events("customer.subscription.deleted")
    assert [e["data"]["object"]["id"] for e in deleted] == [stripe_subscription["id"]]


@pytest.mark.parametrize("change", ["archive", "make free"])
def test_a_network_no_longer_sold_ends_its_subscriptions_with_prorated_refunds(
    shop, buy, stripe_on, change, django_capture_on_commit_callbacks
):
    _, network = shop
    people = [UserFactory(), UserFactory()]
    for person in people:
        buy(person, network)
    with django_capture_on_commit_callbacks(execute=True):
        if change == "archive":
            network_archive(network=network)
        else:
            network_update(network=network, is_public=True)
    ended = {e["data"]["object"]["id"] for e in stripe_on.events("customer.subscription.deleted")}
    assert ended == set(Subscription.objects.values_list("stripe_subscription_id", flat=True))
    assert len(stripe_on.events("refund.created")) == 2
    assert not Price.objects.filter(network=network, active=True).exists()
    prices = [e for e in stripe_on.requests_log() if e["path"].startswith("/v1/prices/")]
    assert len(prices) == 2  # both Stripe prices deactivated
    assert set(Subscription.objects.values_list("status", flat=True)) == {"canceled"}


def test_removing_a_price_lets_its_subscribers_finish_their_period(shop, buy, stripe_on):
    _, network = shop
    person = UserFactory()
    buy(person, network, "month")
    assert price_remove(network=network, interval="month") == 1
    row = Subscription.objects.get(user=person)
    assert row.status == SubscriptionStatus.ACTIVE and row.cancel_at_period_end
    assert not Price.objects.filter(network=network, interval="month", active=True).exists()


def test_takings_equal_what_stripe_collected_less_fees_and_refunds(
    shop, buy, stripe_on, client, django_capture_on_commit_callbacks
):
    _, network = shop
    first, second = UserFactory(), UserFactory()
    kept = buy(first, network, "month")
    buy(second, network, "year")
    seen = len(stripe_on.events())
    stripe_on.renew(kept["id"])
    from billing.services import subscription_end

    subscription_end(subscription=Subscription.objects.get(user=second))  # prorated refund
    deliver_new(stripe_on, client, seen, django_capture_on_commit_callbacks)

    paid = [e["data"]["object"] for e in stripe_on.events("invoice.paid")]
    gross = sum(invoice["amount_paid"] for invoice in paid)
    refunds = sum(e["data"]["object"]["amount"] for e in stripe_on.events("refund.created"))
    fees = sum(round(i["amount_paid"] * 0.029) + 30 for i in paid if i["amount_paid"])
    (takings,) = takings_by_month(network_ids=[network.id])
    assert (takings.gross, takings.refunded, takings.fees) == (gross, refunds, fees)
    assert takings.net == gross - fees - refunds
    assert takings.payments == 3  # two checkouts and one renewal


def test_events_from_an_account_on_an_older_api_version_still_give_the_renewal_date(
    shop, stripe_on, client, eager_celery, django_capture_on_commit_callbacks
):
    _, network = shop
    stripe_on.configure(account_api_version="2024-06-20")
    person = UserFactory()
    url = start_checkout(person, network, "month")
    stripe_subscription = stripe_on.complete_checkout(session_id_of(url))
    assert "current_period_end" in stripe_on.events()[0]["data"]["object"]  # the old shape
    with django_capture_on_commit_callbacks(execute=True):
        assert set(deliver_all(stripe_on, client)) == {200}
    row = Subscription.objects.get(user=person)
    period_end = stripe_subscription["items"]["data"][0]["current_period_end"]
    assert int(row.current_period_end.timestamp()) == period_end
    assert row.price.amount == 900
    assert Payment.objects.get(user=person).amount_paid == 900


def test_a_provider_stops_selling_a_price_from_the_dashboard(shop, buy, stripe_on):
    provider, network = shop
    person = UserFactory()
    buy(person, network, "year")
    browser = Client()
    browser.force_login(provider.user)
    org = provider.organization.slug
    page = browser.get(f"/dashboard/{org}/networks/premium/").content.decode()
    assert 'id="stop-selling-year"' in page
    response = browser.post(f"/dashboard/{org}/networks/premium/price/year/remove/", follow=True)
    assert "1 subscriber(s) keep it" in response.content.decode()
    assert Subscription.objects.get(user=person).cancel_at_period_end
    member = MembershipFactory(organization=provider.organization, role=Role.MEMBER)
    browser.force_login(member.user)
    refused = browser.post(f"/dashboard/{org}/networks/premium/price/month/remove/")
    assert refused.status_code == 403  # members are read-only
    assert Price.objects.filter(network=network, interval="month", active=True).exists()


def test_a_plan_switched_at_stripe_is_mirrored(
    shop, buy, stripe_on, client, django_capture_on_commit_callbacks
):
    _, network = shop
    person = UserFactory()
    stripe_subscription = buy(person, network, "month")
    yearly = Price.objects.get(network=network, interval="year", active=True)
    seen = len(stripe_on.events())
    item_id = stripe_subscription["items"]["data"][0]["id"]
    # A switch made in Stripe's own dashboard: only its webhook tells us.
    stripe_client(stripe_on).v1.subscriptions.update(
        stripe_subscription["id"],
        params={"items": [{"id": item_id, "price": yearly.stripe_price_id}]},
    )
    deliver_new(stripe_on, client, seen, django_capture_on_commit_callbacks)
    assert Subscription.objects.get(user=person).price == yearly
