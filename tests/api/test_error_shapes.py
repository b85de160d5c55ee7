"""Whatever reaches the API, the answer is a documented status in the ``{"error", "code"}``
shape: found by fuzzing the schema (tests/e2e/test_api_fuzz.py) against a real server."""

from __future__ import annotations

import base64

import pytest
from rest_framework.test import APIClient

from networks.selectors import network_get_by_slug
from networks.services import api_key_revoke
from tests.asgi_client import AsgiTestClient

pytestmark = pytest.mark.django_db


def test_a_url_under_api_that_matches_no_route_answers_json_404(acme, as_user):
    # Was Django's HTML page: /api/v1/orgs/acme/keys/null,null/ (a key id that is no int).
    for client in (APIClient(), as_user(acme.owner)):
        response = client.get("/api/v1/orgs/acme/keys/null,null/")
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json"
        assert response.json() == {"error": "Not found.", "code": "not_found"}
    # The portal keeps its own page.
    page = APIClient().get("/no-such-page/")
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("position", ["garbage", "2026-13-45", "a\x00b", "1e999"])
def test_a_tampered_cursor_is_an_invalid_cursor_not_a_garbled_400(acme, as_user, position):
    # Was 400 {"error": "[ErrorDetail(string='“garbage” value has an invalid format…')]",
    # "code": "error"}: the position went to the database as a timestamp.
    cursor = base64.b64encode(f"p={position}".encode()).decode()
    response = as_user(acme.owner).get("/api/v1/orgs/acme/networks/", {"cursor": cursor})
    assert response.status_code == 404
    assert response.json() == {"error": "Invalid cursor", "code": "not_found"}


def test_a_single_message_error_reads_as_that_message(acme, as_user):
    # Was {"error": "[ErrorDetail(string='Only an active key can be rotated.', …)]"}.
    api_key_revoke(api_key=acme.api_key)
    response = as_user(acme.owner).post(
        f"/api/v1/orgs/acme/keys/{acme.api_key.pk}/rotate/", {}, format="json"
    )
    assert response.status_code == 400
    assert response.json() == {"error": "Only an active key can be rotated.", "code": "invalid"}


def test_a_nul_in_a_network_slug_names_no_network(acme, as_user, django_assert_num_queries):
    # PostgreSQL refuses NUL in text: each of these was a 500 there (DataError).
    owner = as_user(acme.owner)
    assert owner.get("/api/v1/orgs/acme/networks/a%00b/").status_code == 404
    with django_assert_num_queries(0):  # refused before any view looks it up
        assert APIClient().get("/networks/a%00b/").status_code == 404  # the portal's page
    asgi = AsgiTestClient()
    history = asgi.get("/api/v1/networks/a%00b/messages")
    assert history.status_code == 404
    assert history.json()["code"] == "network_not_found"
    publish = asgi.post(
        "/api/v1/networks/a%00b/messages",
        data={"data": {"x": 1}},
        headers={"Authorization": f"Bearer {acme.secret}"},
    )
    assert publish.status_code == 404
    # No database lookup for a slug no network can have (nor one longer than the column).
    with django_assert_num_queries(0):
        assert network_get_by_slug(slug="a\x00b") is None
        assert network_get_by_slug(slug="x" * 61) is None
