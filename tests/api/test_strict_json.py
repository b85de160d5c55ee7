"""Every REST endpoint parses JSON strictly and answers a bad body with a 400 in the API's
``{"error", "code"}`` shape, never a 500."""

from __future__ import annotations

import pytest
from django.conf import settings

from katiedj import strict_json

pytestmark = pytest.mark.django_db

URL = "/api/v1/orgs/acme/networks/"


def post_raw(client, body):
    return client.post(URL, data=body, content_type="application/json")


def test_the_strict_parser_is_the_default():
    parsers = settings.REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]
    assert "katiedj.strict_json.StrictJSONParser" in parsers
    assert "rest_framework.parsers.JSONParser" not in parsers


@pytest.mark.parametrize(
    "body",
    [
        '{"slug": "nan-net", "max_message_bytes": NaN}',
        '{"slug": "inf-net", "max_message_bytes": Infinity}',
        '{"slug": "inf-net", "max_message_bytes": -Infinity}',
        '{"slug": "big-net", "max_message_bytes": 1e999}',
        '{"slug": "sur-net", "name": "\\ud800"}',
        '{"slug": "broken"',
        b'{"slug": "latin", "name": "caf\xe9"}',  # not UTF-8
    ],
)
def test_not_json_is_a_400_parse_error(acme, as_user, body):
    response = post_raw(as_user(acme.admin), body)
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"
    assert response.json()["error"].startswith("JSON parse error")


@pytest.mark.parametrize("depth", [65, 5_000, 50_000])
def test_deep_json_is_a_400_not_a_500(acme, as_user, depth):
    body = '{"slug": "deep", "description": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    response = post_raw(as_user(acme.admin), body)
    assert response.status_code == 400
    assert response.json() == {
        "error": "JSON nested deeper than 64 levels",
        "code": "json_too_deep",
    }


def test_strict_json_still_takes_ordinary_bodies(acme, as_user):
    body = '{"slug": "emoji-net", "name": "Smile \\ud83d\\ude00", "max_message_bytes": 1024}'
    response = post_raw(as_user(acme.admin), body)
    assert response.status_code == 201
    assert response.json()["name"] == "Smile \U0001f600"


def test_loads_rejects_what_python_json_lets_through():
    for text in ("NaN", "[Infinity]", "1e999", '"\\udfff"', "9" * 400, "[" * 100 + "]" * 100):
        with pytest.raises(strict_json.InvalidJSON):
            strict_json.loads(text)
    assert strict_json.loads('{"a": [1.5, "\\u00e9", null]}') == {"a": [1.5, "\u00e9", None]}
    assert strict_json.loads(b"\xef\xbb\xbf[1]") == [1]  # a UTF-8 BOM, as json.loads allows
    with pytest.raises(strict_json.JSONTooDeep):
        strict_json.loads("[[[1]]]", max_depth=2)
    assert strict_json.loads("[[1]]", max_depth=2) == [[1]]
