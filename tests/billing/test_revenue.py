"""Subscribers and monthly recurring revenue per network, for the provider dashboard."""

from __future__ import annotations

import pytest
from django.utils import timezone

from billing.models import Price, Subscription
from billing.selectors import revenue_by_network
from tests.factories import NetworkFactory, UserFactory

pytestmark = pytest.mark.django_db


def subscribe(network, price, status="active"):
    return Subscription.objects.create(
        user=UserFactory(), network=network, price=price, status=status
    )


def test_yearly_prices_count_a_twelfth_and_currencies_stay_apart():
    network = NetworkFactory(is_public=False)
    monthly = Price.objects.create(network=network, interval="month", amount=500, currency="eur")
    yearly = Price.objects.create(network=network, interval="year", amount=1200, currency="usd")
    subscribe(network, monthly)
    subscribe(network, monthly, status="past_due")  # in its grace period: still paying
    subscribe(network, yearly, status="trialing")
    revenue = revenue_by_network(network_ids=[network.id])[network.id]
    assert revenue.subscribers == 3
    assert revenue.monthly == [("eur", 1000), ("usd", 100)]


def test_ended_and_granted_subscriptions_bring_neither_subscribers_nor_revenue():
    network = NetworkFactory(is_public=False)
    price = Price.objects.create(network=network, interval="month", amount=500)
    subscribe(network, price, status="canceled")
    subscribe(network, price, status="incomplete_expired")
    Subscription.objects.create(
        user=UserFactory(), network=network, status="active", granted_by_admin=True
    )
    revenue = revenue_by_network(network_ids=[network.id])[network.id]
    assert revenue.subscribers == 0 and revenue.monthly == []


def test_a_person_counts_once_and_archived_networks_count_nothing():
    network = NetworkFactory(is_public=False)
    monthly = Price.objects.create(network=network, interval="month", amount=500)
    yearly = Price.objects.create(network=network, interval="year", amount=6000)
    person = UserFactory()
    Subscription.objects.create(user=person, network=network, price=monthly, status="active")
    Subscription.objects.create(user=person, network=network, price=yearly, status="active")
    revenue = revenue_by_network(network_ids=[network.id])[network.id]
    assert revenue.subscribers == 1
    assert revenue.monthly == [("eur", 500)]  # the newest: the yearly price, 6000 / 12
    archived = NetworkFactory(is_public=False, archived_at=timezone.now())
    price = Price.objects.create(network=archived, interval="month", amount=500)
    subscribe(archived, price)
    assert revenue_by_network(network_ids=[archived.id])[archived.id].subscribers == 0


def test_every_asked_network_has_an_answer_in_one_query(django_assert_num_queries):
    networks = [NetworkFactory(is_public=False) for _ in range(3)]
    price = Price.objects.create(network=networks[0], interval="month", amount=700)
    subscribe(networks[0], price)
    with django_assert_num_queries(1):
        revenue = revenue_by_network(network_ids=[n.id for n in networks])
    assert [revenue[n.id].subscribers for n in networks] == [1, 0, 0]
