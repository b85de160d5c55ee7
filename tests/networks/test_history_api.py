"""``GET /api/v1/networks/<slug>/messages``: the same history ?since= replays, over HTTP."""

from __future__ import annotations

import json

import pytest

from networks.services import api_key_create
from tests.factories import NetworkFactory

pytestmark = pytest.mark.django_db


def publish(publisher, key, slug, data):
    body = json.dumps({"network": slug, "data": data})
    return publisher.post("/api/publish", data=body, headers={"API-KEY": key})


def test_public_history_pages_with_since_and_limit(publisher, api_key, network):
    for index in range(5):
        assert publish(publisher, api_key.secret, network.slug, {"i": index}).status_code == 200
    page = publisher.get(f"/api/v1/networks/{network.slug}/messages?limit=2").json()
    assert [m["data"] for m in page["messages"]] == [{"i": 0}, {"i": 1}]
    assert page["network"] == network.slug and page["oldest_seq"] == page["messages"][0]["seq"]
    rest = publisher.get(
        f"/api/v1/networks/{network.slug}/messages?since={page['next_since']}"
    ).json()
    assert [m["data"]["i"] for m in rest["messages"]] == [2, 3, 4]
    assert rest["messages"][0]["seq"] == page["next_since"] + 1
    empty = publisher.get(
        f"/api/v1/networks/{network.slug}/messages?since={rest['next_since']}"
    ).json()
    assert empty["messages"] == [] and empty["next_since"] == rest["next_since"]


def test_bad_parameters_are_400(publisher, network):
    response = publisher.get(f"/api/v1/networks/{network.slug}/messages?since=abc")
    assert response.status_code == 400 and response.json()["code"] == "invalid"


def test_paid_history_needs_a_key_with_the_read_history_scope(publisher, org):
    paid = NetworkFactory(organization=org, slug="paid-feed", is_public=False)
    _, publish_secret = api_key_create(organization=org, name="gen", networks=[paid])
    _, reader_secret = api_key_create(
        organization=org, name="archiver", networks=[paid], scopes=["read_history"]
    )
    publish(publisher, publish_secret, "paid-feed", {"secret": 1})
    url = "/api/v1/networks/paid-feed/messages"
    anonymous = publisher.get(url)
    publisher_only = publisher.get(url, headers={"Authorization": f"Bearer {publish_secret}"})
    reader = publisher.get(url, headers={"Authorization": f"Bearer {reader_secret}"})
    assert anonymous.status_code == publisher_only.status_code == 404
    assert reader.status_code == 200
    assert [m["data"] for m in reader.json()["messages"]] == [{"secret": 1}]


def test_another_tenants_reader_key_sees_nothing(publisher, org, other_org):
    paid = NetworkFactory(organization=org, slug="paid-feed", is_public=False)
    _, secret = api_key_create(organization=org, name="gen", networks=[paid])
    publish(publisher, secret, "paid-feed", {"secret": 1})
    foreign_net = NetworkFactory(organization=other_org, slug="theirs", is_public=False)
    _, foreign_reader = api_key_create(
        organization=other_org, name="r", networks=[foreign_net], scopes=["read_history"]
    )
    response = publisher.get(
        "/api/v1/networks/paid-feed/messages", headers={"Authorization": f"Bearer {foreign_reader}"}
    )
    assert response.status_code == 404
    assert "secret" not in response.text
