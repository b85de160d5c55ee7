"""The publish hot path reads keys and networks from cache, and the cache never lies."""

from __future__ import annotations

import json

import pytest

from networks.models import ApiKey
from networks.services import api_key_create, api_key_revoke
from tests.factories import NetworkFactory


def publish(publisher, key, slug):
    body = json.dumps({"network": slug, "data": {"v": 1}})
    return publisher.post(
        "/api/publish", data=body, content_type="application/json", headers={"API-KEY": key}
    )


@pytest.mark.django_db
def test_a_warm_publish_makes_no_database_query(
    publisher, api_key, network, django_assert_num_queries
):
    assert publish(publisher, api_key.secret, network.slug).status_code == 200
    # Sequence numbers come in reserved blocks, so the warm path is query-free.
    with django_assert_num_queries(0):
        for _ in range(5):
            assert publish(publisher, api_key.secret, network.slug).status_code == 200


@pytest.mark.django_db
def test_unknown_keys_are_not_looked_up_again_and_again(
    publisher, network, django_assert_num_queries
):
    assert publish(publisher, "guess-1", network.slug).status_code == 400
    with django_assert_num_queries(0):
        assert publish(publisher, "guess-1", network.slug).status_code == 400
        # A malformed key-shaped string never reaches the database at all.
        assert publish(publisher, "kdj_" + "z" * 36, network.slug).status_code == 400


@pytest.mark.django_db
def test_revocation_takes_effect_on_the_next_publish(publisher, api_key, network):
    assert publish(publisher, api_key.secret, network.slug).status_code == 200
    api_key_revoke(api_key=ApiKey.objects.get(pk=api_key.row.pk))
    assert publish(publisher, api_key.secret, network.slug).status_code == 400


@pytest.mark.django_db
def test_deleting_a_key_takes_effect_on_the_next_publish(publisher, api_key, network):
    assert publish(publisher, api_key.secret, network.slug).status_code == 200
    ApiKey.objects.get(pk=api_key.row.pk).delete()
    assert publish(publisher, api_key.secret, network.slug).status_code == 400


@pytest.mark.django_db
def test_scope_changes_take_effect_from_either_side(publisher, org, api_key, network):
    second = NetworkFactory(organization=org, slug="second")
    assert publish(publisher, api_key.secret, second.slug).status_code == 403
    api_key.row.networks.add(second)
    assert publish(publisher, api_key.secret, second.slug).status_code == 200
    second.api_keys.remove(api_key.row)
    assert publish(publisher, api_key.secret, second.slug).status_code == 403
    second.api_keys.add(api_key.row)
    assert publish(publisher, api_key.secret, second.slug).status_code == 200
    second.api_keys.clear()
    assert publish(publisher, api_key.secret, second.slug).status_code == 403


@pytest.mark.django_db
def test_a_renamed_network_is_found_only_under_its_new_slug(publisher, api_key, network):
    assert publish(publisher, api_key.secret, network.slug).status_code == 200
    old = network.slug
    network.slug = "renamed"
    network.save()
    assert publish(publisher, api_key.secret, old).status_code == 403
    assert publish(publisher, api_key.secret, "renamed").status_code == 200


@pytest.mark.django_db
def test_a_key_cannot_be_scoped_to_another_tenants_network(org, other_network):
    with pytest.raises(ValueError, match="globex-weather"):
        api_key_create(organization=org, name="sneaky", networks=[other_network])


@pytest.mark.django_db
def test_a_key_smuggled_onto_a_foreign_network_still_cannot_publish_there(
    publisher, api_key, other_network
):
    # Even if a row links a key to another tenant's network (say, a bad admin edit), the
    # publish path only honours networks of the key's own organization.
    api_key.row.networks.add(other_network)
    assert publish(publisher, api_key.secret, other_network.slug).status_code == 403


@pytest.mark.django_db
def test_imported_legacy_key_strings_publish(publisher, org, network):
    api_key_create(
        organization=org, name="imported", networks=[network], raw_key="old-katie-dj-key"
    )
    assert publish(publisher, "old-katie-dj-key", network.slug).status_code == 200
    assert not ApiKey.objects.filter(hashed_secret__contains="old-katie").exists()
    assert not ApiKey.objects.filter(prefix="old-katie-dj-key").exists()
