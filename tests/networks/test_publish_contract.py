"""The original Katie DJ publish contract, on both legacy paths, and the REST endpoint.

Status codes, error strings and the order of checks are part of the contract: generators
written for the original server must see exactly the same answers.
"""

from __future__ import annotations

import json

import pytest
from django.test import override_settings

LEGACY_PATHS = ["/api/publish", "/publish"]


def post_legacy(publisher, path, body, key=None, content_type="application/json"):
    headers = {"API-KEY": key} if key is not None else {}
    if not isinstance(body, (str, bytes)):
        body = json.dumps(body)
    return publisher.post(path, data=body, content_type=content_type, headers=headers)


@pytest.fixture(params=LEGACY_PATHS)
def legacy_path(request):
    return request.param


@pytest.mark.django_db
class TestLegacyPublish:
    def test_accepted_sample_answers_ok_with_sequence(
        self, publisher, legacy_path, api_key, network
    ):
        body = {"network": network.slug, "data": {"state": {"0": 1.5}}}
        first = post_legacy(publisher, legacy_path, body, api_key.secret)
        second = post_legacy(publisher, legacy_path, body, api_key.secret)
        assert first.status_code == 200
        assert first.json()["message"] == "OK"
        assert second.json()["seq"] == first.json()["seq"] + 1
        assert first.json()["ts"].endswith("Z")

    @pytest.mark.parametrize(
        ("key", "body", "status", "error"),
        [
            (None, {"network": "city-traffic", "data": {}}, 400, "API-KEY missing in headers"),
            ("", {"network": "city-traffic", "data": {}}, 400, "API-KEY missing in headers"),
            ("wrong", {"network": "city-traffic", "data": {}}, 400, "API-KEY not valid"),
            # A key-shaped string with a broken checksum is refused the same way.
            ("kdj_" + "a" * 36, {"network": "city-traffic", "data": {}}, 400, "API-KEY not valid"),
            # A bad key is reported before a bad body: the original order of checks.
            ("wrong", "not json", 400, "API-KEY not valid"),
            ("VALID", "not json", 400, "POST data is not JSON"),
            ("VALID", "[1, 2]", 400, "POST data is not JSON"),
            (
                "VALID",
                '{"network": "city-traffic", "data": {"x": NaN}}',
                400,
                "POST data is not JSON",
            ),
            ("VALID", {"data": {}}, 400, "*network* key missing"),
            # Permission is checked before the data key, as in the original.
            ("VALID", {"network": "nowhere"}, 403, "You cannot broadcast to this channel"),
            (
                "VALID",
                {"network": "globex-weather", "data": {}},
                403,
                "You cannot broadcast to this channel",
            ),
            ("VALID", {"network": 42, "data": {}}, 403, "You cannot broadcast to this channel"),
            ("VALID", {"network": "city-traffic"}, 400, "*data* key missing"),
            (
                "VALID",
                {"network": "city-traffic", "data": [1, 2]},
                400,
                "Can only broadcast json data",
            ),
            (
                "VALID",
                {"network": "city-traffic", "data": "text"},
                400,
                "Can only broadcast json data",
            ),
            (
                "VALID",
                {"network": "city-traffic", "data": None},
                400,
                "Can only broadcast json data",
            ),
        ],
    )
    def test_rejections_keep_the_original_status_and_error(
        self, publisher, legacy_path, api_key, other_network, key, body, status, error
    ):
        key = api_key.secret if key == "VALID" else key
        response = post_legacy(publisher, legacy_path, body, key)
        assert response.status_code == status
        assert response.json() == {"error": error}

    def test_other_methods_are_refused_with_405(self, publisher, legacy_path, api_key):
        for method in (publisher.get, publisher.put, publisher.delete):
            response = method(legacy_path, headers={"API-KEY": api_key.secret})
            assert response.status_code == 405
            assert response.headers["Allow"] == "POST"

    def test_no_csrf_token_or_session_needed(self, publisher, api_key, network, legacy_path):
        body = json.dumps({"network": network.slug, "data": {"ok": True}})
        # Cookies a browser might attach (a stale session, a CSRF cookie) change nothing.
        headers = {"API-KEY": api_key.secret, "Cookie": "sessionid=bogus; csrftoken=stale"}
        response = publisher.post(legacy_path, data=body, headers=headers)
        assert response.status_code == 200

    def test_oversized_payload_is_413(self, publisher, legacy_path, api_key, network):
        with override_settings(PUBLISH_MAX_BYTES=1024):
            body = {"network": network.slug, "data": {"blob": "x" * 2000}}
            response = post_legacy(publisher, legacy_path, body, api_key.secret)
            assert response.status_code == 413
            assert "1024" in response.json()["error"]
            small = {"network": network.slug, "data": {"blob": "x" * 100}}
            assert post_legacy(publisher, legacy_path, small, api_key.secret).status_code == 200

    def test_default_limit_is_64_kib(self, publisher, legacy_path, api_key, network):
        filler = "x" * (64 * 1024)
        body = {"network": network.slug, "data": {"blob": filler}}
        assert post_legacy(publisher, legacy_path, body, api_key.secret).status_code == 413

    def test_a_revoked_key_is_refused(self, publisher, legacy_path, api_key, network):
        from networks.services import api_key_revoke

        body = {"network": network.slug, "data": {}}
        assert post_legacy(publisher, legacy_path, body, api_key.secret).status_code == 200
        api_key_revoke(api_key=api_key.row)
        response = post_legacy(publisher, legacy_path, body, api_key.secret)
        assert (response.status_code, response.json()) == (400, {"error": "API-KEY not valid"})


def post_v1(publisher, slug, body, headers):
    if not isinstance(body, (str, bytes)):
        body = json.dumps(body)
    return publisher.post(
        f"/api/v1/networks/{slug}/messages",
        data=body,
        content_type="application/json",
        headers=headers,
    )


@pytest.mark.django_db
class TestRestPublish:
    def test_bearer_and_api_key_headers_both_publish(self, publisher, api_key, network):
        bearer = post_v1(
            publisher,
            network.slug,
            {"data": {"a": 1}},
            {"Authorization": f"Bearer {api_key.secret}"},
        )
        header = post_v1(publisher, network.slug, {"data": {"a": 2}}, {"API-KEY": api_key.secret})
        assert bearer.status_code == 201
        assert header.status_code == 201
        assert header.json()["seq"] == bearer.json()["seq"] + 1
        assert bearer.json()["network"] == network.slug

    @pytest.mark.parametrize(
        ("headers", "body", "status", "code"),
        [
            ({}, {"data": {}}, 401, "api_key_missing"),
            ({"Authorization": "Bearer nope"}, {"data": {}}, 401, "api_key_invalid"),
            ({"Authorization": "Basic abc"}, {"data": {}}, 401, "api_key_missing"),
            ("VALID", "{oops", 400, "invalid_json"),
            ("VALID", {"payload": {}}, 400, "data_missing"),
            ("VALID", {"data": 3}, 400, "data_not_object"),
        ],
    )
    def test_errors_are_json_with_a_stable_code(
        self, publisher, api_key, network, headers, body, status, code
    ):
        if headers == "VALID":
            headers = {"Authorization": f"Bearer {api_key.secret}"}
        response = post_v1(publisher, network.slug, body, headers)
        assert response.status_code == status
        assert response.json()["code"] == code
        assert response.json()["error"]
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")

    def test_another_tenants_network_is_forbidden_like_a_missing_one(
        self, publisher, api_key, other_network
    ):
        headers = {"Authorization": f"Bearer {api_key.secret}"}
        foreign = post_v1(publisher, other_network.slug, {"data": {}}, headers)
        missing = post_v1(publisher, "does-not-exist", {"data": {}}, headers)
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json() == missing.json()

    def test_oversized_payload_is_413(self, publisher, api_key, network):
        with override_settings(PUBLISH_MAX_BYTES=512):
            headers = {"Authorization": f"Bearer {api_key.secret}"}
            response = post_v1(publisher, network.slug, {"data": {"blob": "y" * 600}}, headers)
        assert response.status_code == 413
        assert response.json()["code"] == "payload_too_large"

    def test_other_methods_than_get_and_post_are_not_allowed(self, publisher, api_key, network):
        response = publisher.put(
            f"/api/v1/networks/{network.slug}/messages", headers={"API-KEY": api_key.secret}
        )
        assert response.status_code == 405
        assert response.headers["Allow"] == "GET, POST"
