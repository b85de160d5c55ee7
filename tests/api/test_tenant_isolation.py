"""Tenant isolation from the attacker's side: Globex's people probe Acme's objects.

Every answer must be 404, the same as for objects that do not exist, and nothing may change.
"""

from __future__ import annotations

import json

import pytest

from accounts.models import Membership

pytestmark = pytest.mark.django_db


def probes(victim):
    member_id = Membership.objects.get(user=victim.member, organization=victim.organization).pk
    invitation_id = victim.organization.invitations.values_list("pk", flat=True).first() or 1
    org, net, key = victim.slug, victim.network.slug, victim.api_key.pk
    return [
        ("get", f"/api/v1/orgs/{org}/", None),
        ("patch", f"/api/v1/orgs/{org}/", {"name": "Pwned"}),
        ("get", f"/api/v1/orgs/{org}/members/", None),
        ("patch", f"/api/v1/orgs/{org}/members/{member_id}/", {"role": "owner"}),
        ("delete", f"/api/v1/orgs/{org}/members/{member_id}/", None),
        ("get", f"/api/v1/orgs/{org}/invitations/", None),
        ("post", f"/api/v1/orgs/{org}/invitations/", {"email": "mole@globex.example"}),
        ("delete", f"/api/v1/orgs/{org}/invitations/{invitation_id}/", None),
        ("get", f"/api/v1/orgs/{org}/networks/", None),
        ("post", f"/api/v1/orgs/{org}/networks/", {"slug": "planted"}),
        ("get", f"/api/v1/orgs/{org}/networks/{net}/", None),
        ("patch", f"/api/v1/orgs/{org}/networks/{net}/", {"name": "Pwned"}),
        ("post", f"/api/v1/orgs/{org}/networks/{net}/archive/", None),
        ("delete", f"/api/v1/orgs/{org}/networks/{net}/archive/", None),
        ("get", f"/api/v1/orgs/{org}/keys/", None),
        ("post", f"/api/v1/orgs/{org}/keys/", {"name": "mine", "networks": [net]}),
        ("get", f"/api/v1/orgs/{org}/keys/{key}/", None),
        ("delete", f"/api/v1/orgs/{org}/keys/{key}/", None),
        ("post", f"/api/v1/orgs/{org}/keys/{key}/rotate/", {}),
    ]


@pytest.mark.parametrize("attacker_role", ["owner", "admin", "member"])
def test_every_endpoint_answers_404_for_another_tenants_objects(
    acme, globex, acme_invitation, as_user, attacker_role
):
    attacker = as_user(getattr(globex, attacker_role))
    for method, path, body in probes(acme):
        response = getattr(attacker, method)(path, data=body, format="json")
        assert response.status_code == 404, (method, path, response.status_code)
        assert response.json() == {"error": "Not found.", "code": "not_found"}
    # Nothing changed on Acme's side.
    acme.organization.refresh_from_db()
    acme.network.refresh_from_db()
    acme.api_key.refresh_from_db()
    assert acme.organization.name == "Acme"
    assert acme.network.archived_at is None and acme.network.name != "Pwned"
    assert acme.api_key.is_active and acme.api_key.replaced_by is None
    assert acme.organization.memberships.count() == 3
    assert not acme.organization.networks.filter(slug="planted").exists()


def test_foreign_and_missing_objects_look_the_same(acme, globex, as_user):
    attacker = as_user(globex.owner)
    foreign = attacker.get(f"/api/v1/orgs/acme/keys/{acme.api_key.pk}/")
    missing = attacker.get("/api/v1/orgs/globex/keys/999999/")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()


def test_an_attacker_cannot_scope_a_key_to_a_foreign_network(acme, globex, as_user):
    response = as_user(globex.owner).post(
        "/api/v1/orgs/globex/keys/",
        data={"name": "sneaky", "networks": [acme.network.slug]},
        format="json",
    )
    assert response.status_code == 400
    assert "networks" in response.json()["fields"]


def test_lists_show_only_ones_own_tenant(acme, globex, as_user):
    client = as_user(globex.owner)
    orgs = [o["slug"] for o in client.get("/api/v1/orgs/").json()["results"]]
    networks = [n["slug"] for n in client.get("/api/v1/orgs/globex/networks/").json()["results"]]
    keys = [k["prefix"] for k in client.get("/api/v1/orgs/globex/keys/").json()["results"]]
    assert orgs == ["globex"]
    assert networks == ["globex-live"]
    assert keys == [globex.api_key.prefix]


def test_publishing_with_one_tenants_key_to_anothers_network(acme, globex, publisher):
    rest = publisher.post(
        f"/api/v1/networks/{acme.network.slug}/messages",
        data=json.dumps({"data": {"x": 1}}),
        headers={"Authorization": f"Bearer {globex.secret}"},
    )
    legacy = publisher.post(
        "/api/publish",
        data=json.dumps({"network": acme.network.slug, "data": {"x": 1}}),
        headers={"API-KEY": globex.secret},
    )
    assert rest.status_code == 404
    assert rest.json()["code"] == "network_not_found"
    # The original contract keeps its 403 and its error text.
    assert legacy.status_code == 403
    assert legacy.json() == {"error": "You cannot broadcast to this channel"}


def test_anonymous_callers_are_refused(acme):
    from rest_framework.test import APIClient

    response = APIClient().get("/api/v1/orgs/acme/networks/")
    assert response.status_code in (401, 403)
    assert "error" in response.json()
