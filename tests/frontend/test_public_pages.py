"""Pages anyone can see: the landing page and a network's page."""

import pytest
from django.test import Client

from tests.factories import NetworkFactory

pytestmark = pytest.mark.django_db


def test_the_landing_page_lists_free_and_paid_networks_but_not_archived_ones(db):
    NetworkFactory(slug="open-air", name="Open air", is_public=True)
    NetworkFactory(slug="market-ticks", name="Market ticks", is_public=False)
    from django.utils import timezone

    NetworkFactory(slug="gone", name="Gone", archived_at=timezone.now())
    page = Client().get("/").content.decode()
    assert "Open air" in page and "Market ticks" in page and "Gone" not in page
    assert page.index("Open air") < page.index("Market ticks")


def test_a_paid_network_says_plainly_when_billing_is_not_configured(settings):
    settings.STRIPE_SECRET_KEY = ""
    NetworkFactory(slug="market-ticks", is_public=False)
    page = Client().get("/networks/market-ticks/").content.decode()
    assert "Billing is not configured on this server" in page


def test_an_unknown_network_page_is_404(db):
    assert Client().get("/networks/nope/").status_code == 404
