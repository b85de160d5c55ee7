"""Providers manage networks and keys; the publish path follows at once."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from networks.models import ApiKey

pytestmark = pytest.mark.django_db


def legacy_publish(publisher, key, slug, data=None):
    body = json.dumps({"network": slug, "data": data or {"v": 1}})
    return publisher.post("/api/publish", data=body, headers={"API-KEY": key})


def rest_publish(publisher, key, slug, data=None):
    body = json.dumps({"data": data or {"v": 1}})
    return publisher.post(
        f"/api/v1/networks/{slug}/messages", data=body, headers={"Authorization": f"Bearer {key}"}
    )


def test_a_created_key_is_shown_once_and_publishes(acme, as_user, publisher):
    admin = as_user(acme.admin)
    created = admin.post(
        "/api/v1/orgs/acme/keys/",
        {"name": "sensor fleet", "networks": ["acme-live"], "scopes": ["publish"]},
        format="json",
    )
    assert created.status_code == 201
    secret = created.json()["key"]
    assert secret.startswith(created.json()["prefix"])
    assert created.json()["networks"] == ["acme-live"]
    assert legacy_publish(publisher, secret, "acme-live").status_code == 200
    detail = admin.get(f"/api/v1/orgs/acme/keys/{created.json()['id']}/").json()
    assert "key" not in detail


def test_a_read_history_only_key_cannot_publish(acme, as_user, publisher):
    created = as_user(acme.owner).post(
        "/api/v1/orgs/acme/keys/",
        {"name": "archiver", "networks": ["acme-live"], "scopes": ["read_history"]},
        format="json",
    )
    secret = created.json()["key"]
    assert legacy_publish(publisher, secret, "acme-live").status_code == 403
    assert rest_publish(publisher, secret, "acme-live").status_code == 404


def test_unknown_scopes_are_refused(acme, as_user):
    response = as_user(acme.owner).post(
        "/api/v1/orgs/acme/keys/",
        {"name": "x", "networks": ["acme-live"], "scopes": ["admin"]},
        format="json",
    )
    assert response.status_code == 400
    assert "scopes" in response.json()["fields"]


def test_revoking_through_the_api_stops_publishing(acme, as_user, publisher):
    assert legacy_publish(publisher, acme.secret, "acme-live").status_code == 200
    assert (
        as_user(acme.admin).delete(f"/api/v1/orgs/acme/keys/{acme.api_key.pk}/").status_code == 204
    )
    assert legacy_publish(publisher, acme.secret, "acme-live").json() == {
        "error": "API-KEY not valid"
    }
    assert rest_publish(publisher, acme.secret, "acme-live").status_code == 401


def test_an_expired_key_is_refused_on_both_paths(acme, publisher):
    ApiKey.objects.filter(pk=acme.api_key.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    acme.api_key.refresh_from_db()
    acme.api_key.save()  # the edit goes through the model, as the admin or API would
    assert legacy_publish(publisher, acme.secret, "acme-live").status_code == 400
    assert rest_publish(publisher, acme.secret, "acme-live").status_code == 401


def test_rotation_gives_a_new_key_and_a_grace_period(acme, as_user, publisher):
    owner = as_user(acme.owner)
    rotated = owner.post(
        f"/api/v1/orgs/acme/keys/{acme.api_key.pk}/rotate/", {"grace_seconds": 3600}, format="json"
    )
    assert rotated.status_code == 201
    new_secret = rotated.json()["key"]
    assert rotated.json()["networks"] == ["acme-live"]
    # Both keys publish during the grace period.
    assert legacy_publish(publisher, new_secret, "acme-live").status_code == 200
    assert legacy_publish(publisher, acme.secret, "acme-live").status_code == 200
    old = owner.get(f"/api/v1/orgs/acme/keys/{acme.api_key.pk}/").json()
    assert old["replaced_by"] == rotated.json()["id"]
    assert old["expires_at"] is not None


def test_rotation_without_grace_retires_the_old_key_at_once(acme, as_user, publisher):
    owner = as_user(acme.owner)
    rotated = owner.post(
        f"/api/v1/orgs/acme/keys/{acme.api_key.pk}/rotate/", {"grace_seconds": 0}, format="json"
    )
    assert legacy_publish(publisher, acme.secret, "acme-live").status_code == 400
    assert legacy_publish(publisher, rotated.json()["key"], "acme-live").status_code == 200
    again = owner.post(f"/api/v1/orgs/acme/keys/{acme.api_key.pk}/rotate/", {}, format="json")
    assert again.status_code == 400


def test_networks_are_created_validated_and_edited(acme, as_user):
    admin = as_user(acme.admin)
    created = admin.post(
        "/api/v1/orgs/acme/networks/",
        {
            "slug": "tide-gauges",
            "name": "Tide gauges",
            "is_public": False,
            "max_message_bytes": 2048,
        },
        format="json",
    )
    assert created.status_code == 201
    assert created.json()["max_message_bytes"] == 2048
    assert created.json()["is_public"] is False
    bad = admin.post("/api/v1/orgs/acme/networks/", {"slug": "Bad Slug"}, format="json")
    assert bad.status_code == 400
    taken = admin.post("/api/v1/orgs/acme/networks/", {"slug": "tide-gauges"}, format="json")
    assert taken.status_code == 400
    too_big = admin.patch(
        "/api/v1/orgs/acme/networks/tide-gauges/", {"max_message_bytes": 10**9}, format="json"
    )
    assert too_big.status_code == 400
    renamed = admin.patch(
        "/api/v1/orgs/acme/networks/tide-gauges/", {"description": "Every 10 min"}, format="json"
    )
    assert renamed.json()["description"] == "Every 10 min"
    slug_change = admin.patch(
        "/api/v1/orgs/acme/networks/tide-gauges/", {"slug": "other"}, format="json"
    )
    assert slug_change.status_code == 400


def test_a_provider_chooses_what_slow_listeners_get(acme, as_user):
    admin = as_user(acme.admin)
    url = f"/api/v1/orgs/acme/networks/{acme.network.slug}/"
    assert admin.get(url).json()["backpressure"] == "conflate"  # the default: latest only
    changed = admin.patch(url, {"backpressure": "drop", "backpressure_buffer": 20}, format="json")
    assert changed.status_code == 200
    assert (changed.json()["backpressure"], changed.json()["backpressure_buffer"]) == ("drop", 20)
    unknown = admin.patch(url, {"backpressure": "block"}, format="json")
    assert unknown.status_code == 400
    assert "backpressure" in str(unknown.json())  # the error names the field
    zero = admin.patch(url, {"backpressure_buffer": 0}, format="json")
    assert zero.status_code == 400
    member = as_user(acme.member).patch(url, {"backpressure": "disconnect"}, format="json")
    assert member.status_code == 403


def test_a_network_size_limit_applies_to_publishes(acme, as_user, publisher):
    as_user(acme.admin).patch(
        "/api/v1/orgs/acme/networks/acme-live/", {"max_message_bytes": 256}, format="json"
    )
    small = legacy_publish(publisher, acme.secret, "acme-live", {"x": "y" * 10})
    big = legacy_publish(publisher, acme.secret, "acme-live", {"x": "y" * 300})
    assert small.status_code == 200
    assert big.status_code == 413
    assert "256" in big.json()["error"]


def test_an_archived_network_refuses_publishes_until_restored(acme, as_user, publisher):
    admin = as_user(acme.admin)
    archived = admin.post("/api/v1/orgs/acme/networks/acme-live/archive/")
    assert archived.json()["archived"] is True
    legacy = legacy_publish(publisher, acme.secret, "acme-live")
    rest = rest_publish(publisher, acme.secret, "acme-live")
    assert (legacy.status_code, legacy.json()) == (409, {"error": "This network is archived"})
    assert (rest.status_code, rest.json()["code"]) == (409, "network_archived")
    restored = admin.delete("/api/v1/orgs/acme/networks/acme-live/archive/")
    assert restored.json()["archived"] is False
    assert legacy_publish(publisher, acme.secret, "acme-live").status_code == 200


def test_personal_tokens_authenticate_scripts_until_revoked(acme, as_user):
    from rest_framework.test import APIClient

    created = as_user(acme.member).post("/api/v1/me/tokens/", {"name": "cron job"}, format="json")
    assert created.status_code == 201
    secret = created.json()["token"]
    script = APIClient()
    script.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert script.get("/api/v1/orgs/acme/networks/").status_code == 200
    listed = as_user(acme.member).get("/api/v1/me/tokens/").json()["results"]
    assert listed[0]["last_used_at"] is not None
    assert secret not in json.dumps(listed)
    as_user(acme.member).delete(f"/api/v1/me/tokens/{created.json()['id']}/")
    refused = script.get("/api/v1/orgs/acme/networks/")
    assert refused.status_code == 401
    assert refused["WWW-Authenticate"].startswith("Bearer")


def test_a_mistyped_personal_token_is_refused(db):
    from rest_framework.test import APIClient

    script = APIClient()
    script.credentials(HTTP_AUTHORIZATION="Bearer kdjp_" + "x" * 36)
    assert script.get("/api/v1/orgs/").status_code == 401


def test_people_see_only_their_own_personal_tokens(acme, as_user):
    created = as_user(acme.member).post("/api/v1/me/tokens/", {"name": "mine"}, format="json")
    assert as_user(acme.owner).get("/api/v1/me/tokens/").json()["results"] == []
    assert (
        as_user(acme.owner).delete(f"/api/v1/me/tokens/{created.json()['id']}/").status_code == 404
    )
