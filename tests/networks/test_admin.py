"""Operators manage networks and keys in the Django admin; secrets are shown once."""

from __future__ import annotations

import json

import pytest
from django.contrib.messages import get_messages

from accounts.models import User
from networks.models import ApiKey
from networks.services import api_key_create


@pytest.fixture
def admin_client(client, db):
    admin = User.objects.create_superuser(email="ops@example.com", password="s3cret-pass-phrase")
    client.force_login(admin)
    return client


def publish(client, key, slug):
    body = json.dumps({"network": slug, "data": {}})
    return client.post(
        "/api/publish", data=body, content_type="application/json", headers={"API-KEY": key}
    )


def test_creating_a_key_in_the_admin_shows_the_secret_once(admin_client, publisher, org, network):
    response = admin_client.post(
        "/admin/networks/apikey/add/",
        {"organization": org.pk, "name": "from admin", "networks": [network.pk]},
        follow=True,
    )
    assert response.status_code == 200
    notices = [str(m) for m in get_messages(response.wsgi_request)]
    secret = next(word for notice in notices for word in notice.split() if word.startswith("kdj_"))
    api_key = ApiKey.objects.get(name="from admin")
    assert api_key.hashed_secret != secret and secret.startswith(api_key.prefix)
    assert publish(publisher, secret, network.slug).status_code == 200
    # The change page never shows it again.
    page = admin_client.get(f"/admin/networks/apikey/{api_key.pk}/change/")
    assert secret not in page.content.decode()


def test_the_admin_refuses_a_key_for_another_tenants_network(admin_client, org, other_network):
    response = admin_client.post(
        "/admin/networks/apikey/add/",
        {"organization": org.pk, "name": "sneaky", "networks": [other_network.pk]},
    )
    assert response.status_code == 200
    assert "belong to another organization" in response.content.decode()
    assert not ApiKey.objects.filter(name="sneaky").exists()


def test_the_revoke_action_stops_publishing(admin_client, publisher, org, network):
    api_key, secret = api_key_create(organization=org, name="doomed", networks=[network])
    assert publish(publisher, secret, network.slug).status_code == 200
    admin_client.post(
        "/admin/networks/apikey/",
        {"action": "revoke_selected", "_selected_action": [api_key.pk]},
    )
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert publish(publisher, secret, network.slug).status_code == 400


def test_network_admin_lists_and_edits(admin_client, network):
    assert admin_client.get("/admin/networks/network/").status_code == 200
    assert admin_client.get(f"/admin/networks/network/{network.pk}/change/").status_code == 200
