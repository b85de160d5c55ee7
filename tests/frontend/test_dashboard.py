"""The provider dashboard: what each role can do, and isolation from the attacker's side."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client

from accounts.models import Membership
from networks.models import ApiKey
from tests.api.conftest import make_tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme(db):
    return make_tenant("acme")


@pytest.fixture
def globex(db):
    return make_tenant("globex")


def browser_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_anonymous_visitors_are_sent_to_log_in(acme):
    response = Client().get("/dashboard/acme/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_the_dashboard_opens_on_your_organization(acme):
    response = browser_for(acme.member).get("/dashboard/", follow=True)
    assert response.redirect_chain[-1][0] == "/dashboard/acme/"
    assert b"acme-live" in response.content


def test_someone_without_an_organization_can_create_one(db):
    from tests.factories import UserFactory

    browser = browser_for(UserFactory())
    assert b"Create your organization" in browser.get("/dashboard/").content
    response = browser.post("/dashboard/", {"name": "Harbour Sensors"})
    assert response["Location"] == "/dashboard/harbour-sensors/"


def test_every_page_and_action_is_404_for_another_organization(acme, globex):
    attacker = browser_for(globex.owner)
    member_id = Membership.objects.get(organization=acme.organization, user=acme.member).pk
    key_id = acme.api_key.pk
    pages = [
        ("get", "/dashboard/acme/", None),
        ("post", "/dashboard/acme/", {"slug": "planted"}),
        ("get", "/dashboard/acme/networks/acme-live/", None),
        ("post", "/dashboard/acme/networks/acme-live/", {"name": "Pwned"}),
        ("post", "/dashboard/acme/networks/acme-live/archive/", None),
        ("get", "/dashboard/acme/keys/", None),
        ("post", "/dashboard/acme/keys/", {"name": "x", "networks": ["acme-live"]}),
        ("post", f"/dashboard/acme/keys/{key_id}/revoke/", None),
        ("post", f"/dashboard/acme/keys/{key_id}/rotate/", None),
        ("get", "/dashboard/acme/members/", None),
        ("post", "/dashboard/acme/members/", {"email": "mole@globex.example", "role": "owner"}),
        ("post", f"/dashboard/acme/members/{member_id}/", {"action": "remove"}),
        ("post", "/dashboard/acme/invitations/1/cancel/", None),
    ]
    for method, path, data in pages:
        response = getattr(attacker, method)(path, data or {})
        assert response.status_code == 404, (method, path, response.status_code)
    acme.api_key.refresh_from_db()
    assert acme.api_key.is_active
    assert acme.organization.memberships.count() == 3
    assert not acme.organization.networks.filter(slug="planted").exists()
    assert not mail.outbox


def test_globex_cannot_pick_acme_networks_for_its_key(acme, globex):
    response = browser_for(globex.owner).post(
        "/dashboard/globex/keys/", {"name": "x", "networks": ["acme-live"], "scopes": ["publish"]}
    )
    assert response.status_code == 200
    assert b"Select a valid choice" in response.content
    assert not ApiKey.objects.filter(name="x").exists()


def test_an_admin_creates_a_key_and_sees_the_secret_once(acme, publisher):
    browser = browser_for(acme.admin)
    response = browser.post(
        "/dashboard/acme/keys/", {"name": "fleet", "networks": ["acme-live"], "scopes": ["publish"]}
    )
    page = response.content.decode()
    secret = re.search(r'id="new-secret">(kdj_\w+)<', page).group(1)
    assert "curl -X POST" in page and secret in page
    assert "not be shown again" in page
    later = browser.get("/dashboard/acme/keys/").content.decode()
    assert secret not in later and secret[:12] in later
    body = '{"network": "acme-live", "data": {"ok": 1}}'
    assert publisher.post("/api/publish", data=body, headers={"API-KEY": secret}).status_code == 200


def test_a_member_sees_keys_but_cannot_create_or_revoke_them(acme):
    browser = browser_for(acme.member)
    page = browser.get("/dashboard/acme/keys/").content.decode()
    assert acme.api_key.prefix in page
    assert "Create key" not in page and "Revoke" not in page
    created = browser.post(
        "/dashboard/acme/keys/", {"name": "x", "networks": ["acme-live"], "scopes": ["publish"]}
    )
    revoked = browser.post(f"/dashboard/acme/keys/{acme.api_key.pk}/revoke/")
    assert created.status_code == revoked.status_code == 403
    acme.api_key.refresh_from_db()
    assert acme.api_key.is_active


def test_revoke_and_rotate_from_the_dashboard(acme, publisher):
    browser = browser_for(acme.owner)
    rotated = browser.post(f"/dashboard/acme/keys/{acme.api_key.pk}/rotate/").content.decode()
    new_secret = re.search(r'id="new-secret">(kdj_\w+)<', rotated).group(1)
    assert new_secret != acme.secret
    new_key = ApiKey.objects.get(replaces=acme.api_key)
    browser.post(f"/dashboard/acme/keys/{new_key.pk}/revoke/")
    body = '{"network": "acme-live", "data": {}}'
    assert (
        publisher.post("/api/publish", data=body, headers={"API-KEY": new_secret}).status_code
        == 400
    )


def test_networks_are_created_edited_and_archived(acme, publisher):
    browser = browser_for(acme.admin)
    created = browser.post(
        "/dashboard/acme/",
        {
            "slug": "buoys",
            "name": "Buoys",
            "history_max_messages": 100,
            "history_max_age_seconds": 3600,
        },
    )
    assert created["Location"] == "/dashboard/acme/networks/buoys/"
    browser.post(
        "/dashboard/acme/networks/buoys/",
        {
            "name": "Ocean buoys",
            "description": "Waves",
            "history_max_messages": 100,
            "history_max_age_seconds": 3600,
        },
    )
    page = browser.get("/dashboard/acme/networks/buoys/").content.decode()
    assert "Ocean buoys" in page and "curl -X POST" in page
    browser.post("/dashboard/acme/networks/acme-live/archive/")
    body = '{"network": "acme-live", "data": {}}'
    assert (
        publisher.post("/api/publish", data=body, headers={"API-KEY": acme.secret}).status_code
        == 409
    )


def test_usage_per_network_is_shown(acme, publisher):
    from networks import accounting

    body = '{"network": "acme-live", "data": {"v": 1}}'
    for _ in range(3):
        publisher.post("/api/publish", data=body, headers={"API-KEY": acme.secret})
    accounting.rollup_usage()
    page = browser_for(acme.member).get("/dashboard/acme/").content.decode()
    row = re.search(r'<tr data-network="acme-live">.*?<td class="num">(\d+)</td>', page, re.S)
    assert row and row.group(1) == "3"


def test_invitations_are_emailed_and_accepted_through_the_link(acme):
    from tests.factories import UserFactory

    browser_for(acme.admin).post(
        "/dashboard/acme/members/", {"email": "joiner@example.com", "role": "member"}
    )
    assert len(mail.outbox) == 1
    link = re.search(r"http://testserver(/invitations/\S+/)", mail.outbox[0].body).group(1)
    joiner = browser_for(UserFactory(email="joiner@example.com"))
    assert joiner.get(link).status_code == 200
    accepted = joiner.post(link)
    assert accepted["Location"] == "/dashboard/acme/"
    assert acme.organization.memberships.filter(user__email="joiner@example.com").exists()


def test_roles_on_the_members_page(acme):
    owner_id = Membership.objects.get(organization=acme.organization, user=acme.owner).pk
    member_id = Membership.objects.get(organization=acme.organization, user=acme.member).pk
    admin = browser_for(acme.admin)
    assert (
        admin.post(f"/dashboard/acme/members/{owner_id}/", {"action": "remove"}).status_code == 403
    )
    assert admin.post(f"/dashboard/acme/members/{member_id}/", {"role": "admin"}).status_code == 403
    owner = browser_for(acme.owner)
    owner.post(f"/dashboard/acme/members/{member_id}/", {"role": "admin"})
    assert Membership.objects.get(pk=member_id).role == "admin"
    last_owner = owner.post(
        f"/dashboard/acme/members/{owner_id}/", {"action": "remove"}, follow=True
    )
    assert b"last owner" in last_owner.content


def test_personal_tokens_page(acme):
    browser = browser_for(acme.member)
    page = browser.post("/dashboard/tokens/", {"name": "laptop"}).content.decode()
    secret = re.search(r'id="new-secret">(kdjp_\w+)<', page).group(1)
    token = acme.member.personal_tokens.get()
    browser.post("/dashboard/tokens/", {"revoke": token.pk})
    token.refresh_from_db()
    assert token.revoked_at is not None
    other = browser_for(acme.owner).post("/dashboard/tokens/", {"revoke": token.pk})
    assert other.status_code == 404
    assert secret not in browser.get("/dashboard/tokens/").content.decode()
