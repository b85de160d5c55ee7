"""Hostile publishers: rejected bodies leave nothing behind, JSON is strict, key guessing is
bounded, history parameters and archived networks answer cleanly."""

from __future__ import annotations

import gc
import importlib
import json
import pkgutil
import tracemalloc

import httpx
import pytest
from django.conf import settings
from django.test import Client, override_settings

import networks
from accounts.models import Role
from accounts.services import personal_token_create
from accounts.tokens import hash_secret
from networks import lookup_cache
from networks.selectors import api_key_cache_key, network_get_by_slug
from networks.services import api_key_create, message_publish, network_archive
from tests.asgi_client import AsgiTestClient
from tests.factories import MembershipFactory, NetworkFactory, UserFactory

pytestmark = pytest.mark.django_db

NOT_JSON = "POST data is not JSON"


class ClientAt(AsgiTestClient):
    """The real ASGI app, seen from another client address."""

    def __init__(self, address: str) -> None:
        super().__init__()
        from katiedj.asgi import application

        self._transport = httpx.ASGITransport(app=application, client=(address, 40_000))


def legacy(publisher, key, body):
    body = body if isinstance(body, (str, bytes)) else json.dumps(body)
    headers = {"API-KEY": key} if key is not None else {}
    return publisher.post("/api/publish", data=body, headers=headers)


def rest(publisher, key, slug, body):
    body = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return publisher.post(
        f"/api/v1/networks/{slug}/messages", data=body, headers={"Authorization": f"Bearer {key}"}
    )


def nested(depth: int) -> str:
    """A publish body whose deepest value sits ``depth`` levels down (the body is level 1)."""
    inner = "1"
    for _ in range(depth - 2):
        inner = f"[{inner}]"
    return f'{{"network": "city-traffic", "data": {{"deep": {inner}}}}}'


# --- 1. A rejected publish leaves nothing behind ------------------------------------------


def test_no_networks_module_holds_an_exception_instance():
    # A module-level exception raised again and again chains every raise's frames (and the
    # request bodies in them) onto its one __traceback__: none may exist.
    for module_info in pkgutil.walk_packages(networks.__path__, "networks."):
        module = importlib.import_module(module_info.name)
        shared = [name for name, value in vars(module).items() if isinstance(value, BaseException)]
        assert shared == [], f"{module_info.name} holds exception instances: {shared}"


@pytest.mark.parametrize(
    ("route", "body", "status"),
    [
        ("legacy", b"x" * 60_000, 400),  # not JSON
        ("legacy", json.dumps({"network": "city-traffic", "data": ["y" * 60_000]}), 400),
        ("legacy", json.dumps({"network": "globex-weather", "data": {"z": "z" * 60_000}}), 403),
        ("rest", b"{" * 60_000, 400),
    ],
)
def test_rejected_publishes_do_not_retain_their_bodies(
    publisher, api_key, network, other_network, route, body, status
):
    def send(times: int) -> None:
        for _ in range(times):
            if route == "legacy":
                response = legacy(publisher, api_key.secret, body)
            else:
                response = rest(publisher, api_key.secret, network.slug, body)
            assert response.status_code == status

    send(5)  # warm caches, imports and pools first
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        send(60)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Retaining them would be 60 x 60 KB = 3.6 MB at least.
    assert grown < 600_000, f"{grown} bytes still held after 60 rejected publishes"


# --- 2. Strict JSON ------------------------------------------------------------------------

STRICTLY_NOT_JSON = [
    '{"network": "city-traffic", "data": {"x": 1e999}}',
    '{"network": "city-traffic", "data": {"x": -1e999}}',
    '{"network": "city-traffic", "data": {"x": 1000e306}}',
    '{"network": "city-traffic", "data": {"x": ' + "9" * 400 + "}}",
    '{"network": "city-traffic", "data": {"x": Infinity}}',
    '{"network": "city-traffic", "data": {"x": -Infinity}}',
    '{"network": "city-traffic", "data": {"x": [NaN]}}',
    '{"network": "city-traffic", "data": {"x": "\\ud800"}}',
    '{"network": "city-traffic", "data": {"x": "a\\udfffb"}}',
    '{"network": "city-traffic", "data": {"\\udc00": 1}}',
    '{"network": "city-traffic", "data": {"x": "\\ude00\\ud83d"}}',
    b'{"network": "city-traffic", "data": {"x": "\xed\xa0\x80"}}',  # a surrogate, UTF-8-coded
]


@pytest.mark.parametrize("body", STRICTLY_NOT_JSON)
def test_non_finite_numbers_and_lone_surrogates_are_not_json(publisher, api_key, network, body):
    response = legacy(publisher, api_key.secret, body)
    assert (response.status_code, response.json()) == (400, {"error": NOT_JSON})
    body = body.replace(b'"network": "city-traffic", ', b"") if isinstance(body, bytes) else body
    response = rest(publisher, api_key.secret, network.slug, body)
    assert response.status_code == 400
    assert response.json() == {"error": NOT_JSON, "code": "invalid_json"}
    history = publisher.get(f"/api/v1/networks/{network.slug}/messages")
    assert history.json()["messages"] == []


def test_escaped_surrogate_pairs_and_large_finite_numbers_are_accepted(publisher, api_key, network):
    body = '{"network": "city-traffic", "data": {"smile": "\\ud83d\\ude00", "big": 1.7e308}}'
    assert legacy(publisher, api_key.secret, body).status_code == 200
    history = publisher.get(f"/api/v1/networks/{network.slug}/messages")
    assert history.json()["messages"][0]["data"] == {"smile": "\U0001f600", "big": 1.7e308}


def test_nesting_up_to_the_limit_is_accepted(publisher, api_key, network):
    assert settings.JSON_MAX_DEPTH == 64
    assert legacy(publisher, api_key.secret, nested(64)).status_code == 200
    # Brackets inside strings are text, not nesting.
    body = {"network": network.slug, "data": {"text": "[{" * 5_000}}
    assert legacy(publisher, api_key.secret, body).status_code == 200


@pytest.mark.parametrize("depth", [65, 5_000, 30_000])
def test_nesting_deeper_than_the_limit_is_a_clear_400(publisher, api_key, network, depth):
    response = legacy(publisher, api_key.secret, nested(depth))
    # The original contract has one string for every unreadable body.
    assert (response.status_code, response.json()) == (400, {"error": NOT_JSON})
    rest_body = nested(depth).replace('"network": "city-traffic", ', "")
    response = rest(publisher, api_key.secret, network.slug, rest_body)
    assert response.status_code == 400
    assert response.json() == {
        "error": "JSON nested deeper than 64 levels",
        "code": "json_too_deep",
    }


def test_a_lower_depth_limit_applies(publisher, api_key, network):
    with override_settings(JSON_MAX_DEPTH=4):
        assert legacy(publisher, api_key.secret, nested(4)).status_code == 200
        assert legacy(publisher, api_key.secret, nested(5)).status_code == 400


def test_sync_publishers_cannot_emit_non_finite_numbers(network):
    info = network_get_by_slug(slug=network.slug)
    with pytest.raises(ValueError, match="not JSON"):
        message_publish(network=info, data={"x": float("nan")})
    with pytest.raises(ValueError, match="not JSON"):
        message_publish(network=info, data={"x": float("inf")})


# --- 3. Failed key lookups are bounded per client address ----------------------------------


def guess(index: int) -> str:
    return f"guessed-key-{index}"


def test_failed_keys_past_the_limit_get_429_without_any_lookup(
    publisher, network, django_assert_num_queries
):
    assert settings.PUBLISH_KEY_FAILURES_PER_ADDRESS == 20
    body = {"network": network.slug, "data": {}}
    for index in range(20):
        response = legacy(publisher, guess(index), body)
        assert (response.status_code, response.json()) == (400, {"error": "API-KEY not valid"})
    with django_assert_num_queries(0):
        for index in range(20, 40):
            response = legacy(publisher, guess(index), body)
            assert response.status_code == 429
            assert response.json() == {
                "error": "Too many invalid API keys from this address: retry later"
            }
            assert 1 <= int(response.headers["Retry-After"]) <= 60
        # A malformed key-shaped string too: the address is over its limit.
        assert legacy(publisher, "kdj_" + "z" * 36, body).status_code == 429


def test_every_refused_key_counts_whatever_the_reason(publisher, network):
    body = {"network": network.slug, "data": {}}
    for index in range(10):
        assert legacy(publisher, "kdj_" + str(index) * 36, body).status_code == 400
        assert legacy(publisher, "same-guess", body).status_code == 400
    assert legacy(publisher, "another-guess", body).status_code == 429


def test_a_missing_key_is_not_a_failed_key(publisher, network):
    for _ in range(30):
        response = legacy(publisher, None, {"network": network.slug, "data": {}})
        assert response.json() == {"error": "API-KEY missing in headers"}


def test_the_limit_is_per_address(publisher, network):
    body = {"network": network.slug, "data": {}}
    for index in range(21):
        legacy(publisher, guess(index), body)
    assert legacy(publisher, guess(99), body).status_code == 429
    elsewhere = ClientAt("203.0.113.7")
    assert legacy(elsewhere, guess(100), body).status_code == 400


def test_an_ipv6_client_is_counted_per_64(network):
    # Whoever holds one IPv6 address holds its whole /64.
    body = {"network": network.slug, "data": {}}
    for index in range(20):
        response = legacy(ClientAt(f"2001:db8:1:2::{index + 1:x}"), guess(index), body)
        assert response.status_code == 400
    assert legacy(ClientAt("2001:db8:1:2:ffff::1"), guess(30), body).status_code == 429
    assert legacy(ClientAt("2001:db8:1:3::1"), guess(31), body).status_code == 400


def test_a_known_key_keeps_publishing_from_a_blocked_address(publisher, api_key, network):
    # Generators behind one NAT share an address: one misconfigured neighbour must not stop
    # a key the server already knows.
    body = {"network": network.slug, "data": {"ok": 1}}
    assert legacy(publisher, api_key.secret, body).status_code == 200
    for index in range(25):
        legacy(publisher, guess(index), body)
    assert legacy(publisher, guess(99), body).status_code == 429
    assert legacy(publisher, api_key.secret, body).status_code == 200
    lookup_cache._local.clear()  # another process: only the shared tier knows the key
    assert legacy(publisher, api_key.secret, body).status_code == 200
    assert legacy(publisher, guess(100), body).status_code == 429
    # Its cached row has expired everywhere: a key in use is looked up, not refused.
    cache_key = api_key_cache_key(hash_secret(api_key.secret))
    lookup_cache._local.pop(cache_key)
    lookup_cache.lookup_cache().delete(cache_key)
    assert legacy(publisher, api_key.secret, body).status_code == 200


def test_the_count_is_shared_by_every_process(publisher, network, django_assert_num_queries):
    body = {"network": network.slug, "data": {}}
    for index in range(20):
        assert legacy(publisher, guess(index), body).status_code == 400
    lookup_cache._local.clear()  # what another process knows: only the shared count
    with django_assert_num_queries(0):
        response = legacy(publisher, guess(50), body)
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def test_the_rest_endpoint_says_too_many_failed_keys(publisher, network):
    for index in range(20):
        assert rest(publisher, guess(index), network.slug, {"data": {}}).status_code == 401
    response = rest(publisher, guess(20), network.slug, {"data": {}})
    assert response.status_code == 429
    assert response.json()["code"] == "too_many_failed_keys"
    assert int(response.headers["Retry-After"]) >= 1


def test_the_limit_is_a_setting(publisher, network):
    body = {"network": network.slug, "data": {}}
    with override_settings(PUBLISH_KEY_FAILURES_PER_ADDRESS=3):
        assert [legacy(publisher, guess(i), body).status_code for i in range(5)] == [
            400,
            400,
            400,
            429,
            429,
        ]


def test_history_key_guesses_count_too(publisher, org):
    NetworkFactory(organization=org, slug="paid-feed", is_public=False)
    url = "/api/v1/networks/paid-feed/messages"
    for index in range(20):
        response = publisher.get(url, headers={"Authorization": f"Bearer {guess(index)}"})
        assert response.status_code == 404
    response = publisher.get(url, headers={"Authorization": f"Bearer {guess(20)}"})
    assert response.status_code == 429
    assert response.json()["code"] == "too_many_failed_keys"


def test_a_refused_key_string_works_as_soon_as_it_is_created(publisher, org, network):
    # Only an imported key string (an original Katie DJ key) can be tried before it exists:
    # its cached refusal must not outlive its creation.
    body = {"network": network.slug, "data": {}}
    assert legacy(publisher, "old-katie-dj-key", body).status_code == 400
    assert legacy(publisher, "old-katie-dj-key", body).status_code == 400
    api_key_create(
        organization=org, name="imported", networks=[network], raw_key="old-katie-dj-key"
    )
    assert legacy(publisher, "old-katie-dj-key", body).status_code == 200


# --- 4. History parameters and archived networks -------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "since=" + "1" * 22,
        "since=9223372036854775808",
        "since=-1",
        "since=1_0",
        "since=%2B5",
        "since=%205",
        "since=%D9%A3",  # an Arabic-Indic digit: int() would take it
        "since=1e3",
        "limit=abc",
        "limit=1_0",
        "limit=-5",
        "limit=" + "9" * 5000,
    ],
)
def test_malformed_since_or_limit_is_a_400(publisher, api_key, network, query):
    legacy(publisher, api_key.secret, {"network": network.slug, "data": {"v": 1}})
    response = publisher.get(f"/api/v1/networks/{network.slug}/messages?{query}")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert "since" in response.json()["error"]


def test_the_largest_since_is_an_empty_page(publisher, network):
    response = publisher.get(f"/api/v1/networks/{network.slug}/messages?since=9223372036854775807")
    assert response.status_code == 200
    assert response.json()["messages"] == []


@pytest.fixture
def archived(publisher, org, network, api_key):
    legacy(publisher, api_key.secret, {"network": network.slug, "data": {"before": 1}})
    network_archive(network=network)
    return network


def test_an_archived_networks_history_is_hidden_like_a_missing_network(
    publisher, org, other_org, archived, api_key
):
    missing = publisher.get("/api/v1/networks/never-was/messages")
    anonymous = publisher.get(f"/api/v1/networks/{archived.slug}/messages")
    assert anonymous.status_code == missing.status_code == 404
    assert anonymous.json() == missing.json()
    # A publish-only key of the owner, another tenant's reader, another tenant's member.
    theirs = NetworkFactory(organization=other_org, slug="theirs")
    _, foreign_reader = api_key_create(
        organization=other_org, name="r", networks=[theirs], scopes=["read_history"]
    )
    stranger = UserFactory(email="stranger@globex.example")
    MembershipFactory(organization=other_org, user=stranger)
    _, stranger_token = personal_token_create(user=stranger, name="script")
    for credential in (api_key.secret, foreign_reader, stranger_token):
        response = publisher.get(
            f"/api/v1/networks/{archived.slug}/messages",
            headers={"Authorization": f"Bearer {credential}"},
        )
        assert (response.status_code, response.json()) == (404, missing.json())


def test_the_owning_organization_still_reads_an_archived_networks_history(publisher, org, archived):
    url = f"/api/v1/networks/{archived.slug}/messages"
    _, reader = api_key_create(
        organization=org, name="archiver", networks=[archived], scopes=["read_history"]
    )
    member = UserFactory(email="member@acme.example")
    MembershipFactory(organization=org, user=member, role=Role.MEMBER)
    _, token = personal_token_create(user=member, name="script")
    browser = Client()
    browser.force_login(member)
    session = browser.cookies[settings.SESSION_COOKIE_NAME].value
    answers = [
        publisher.get(url, headers={"Authorization": f"Bearer {reader}"}),
        publisher.get(url, headers={"Authorization": f"Bearer {token}"}),
        publisher.get(url, headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={session}"}),
    ]
    for response in answers:
        assert response.status_code == 200
        assert [m["data"] for m in response.json()["messages"]] == [{"before": 1}]


def test_members_read_their_paid_networks_history(publisher, org):
    NetworkFactory(organization=org, slug="paid-feed", is_public=False)
    member = UserFactory(email="member@acme.example")
    MembershipFactory(organization=org, user=member, role=Role.MEMBER)
    _, token = personal_token_create(user=member, name="script")
    url = "/api/v1/networks/paid-feed/messages"
    assert publisher.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert publisher.get(url).status_code == 404
