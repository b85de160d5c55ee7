"""Paid networks admit only entitled listeners, checked before joining, revoked live."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import personal_token_create, personal_token_revoke
from billing.entitlement import mint_entitlement_token, user_may_hear
from billing.models import Subscription, SubscriptionStatus
from billing.services import subscription_end, subscription_grant
from katiedj.asgi import application
from networks.selectors import network_get_by_slug
from networks.services import message_publish
from tests.factories import NetworkFactory

pytestmark = pytest.mark.django_db(transaction=True)


def mint(user) -> str:
    return mint_entitlement_token(user=user)[0]


async def connect(path: str, **kwargs):
    communicator = WebsocketCommunicator(application, path, **kwargs)
    connected, subprotocol = await communicator.connect()
    return communicator, connected, subprotocol


async def close_code(communicator) -> int:
    message = await communicator.receive_output(timeout=3)
    assert message["type"] == "websocket.close"
    return message["code"]


async def publish(slug: str, data: dict) -> None:
    network = await sync_to_async(network_get_by_slug)(slug=slug)
    await sync_to_async(message_publish)(network=network, data=data)


async def test_an_anonymous_listener_is_closed_with_4401(premium):
    communicator, connected, _ = await connect("/ws/networks/premium/")
    assert connected  # accepted only to say why in the close code
    assert await close_code(communicator) == 4401


async def test_a_free_network_stays_open_to_anonymous_listeners():
    await sync_to_async(NetworkFactory)(slug="free-net", is_public=True)
    communicator, connected, _ = await connect("/ws/networks/free-net/")
    assert connected
    await publish("free-net", {"open": True})
    assert json.loads(await communicator.receive_from(timeout=3)) == {"open": True}
    await communicator.disconnect()


@pytest.mark.parametrize("how", ["query", "header", "subprotocol"])
async def test_an_entitled_listener_hears_the_paid_network(premium, listener, how):
    await sync_to_async(subscription_grant)(user=listener, network=premium)
    token = await sync_to_async(mint)(listener)
    path, extra = "/ws/networks/premium/", {}
    if how == "query":
        path += f"?token={token}"
    elif how == "header":
        extra["headers"] = [(b"authorization", f"Bearer {token}".encode())]
    else:
        extra["subprotocols"] = ["katiedj", token]
    communicator, connected, subprotocol = await connect(path, **extra)
    assert connected
    if how == "subprotocol":
        assert subprotocol == "katiedj"  # never echo the token back
    await publish("premium", {"price": 42})
    assert json.loads(await communicator.receive_from(timeout=3)) == {"price": 42}
    await communicator.disconnect()


async def test_a_token_without_this_network_is_4403(premium, listener):
    other = await sync_to_async(NetworkFactory)(slug="other-paid", is_public=False)
    await sync_to_async(subscription_grant)(user=listener, network=other)
    token = await sync_to_async(mint)(listener)
    communicator, _, _ = await connect(f"/ws/networks/premium/?token={token}")
    assert await close_code(communicator) == 4403


async def test_a_tampered_token_is_4401(premium, listener):
    await sync_to_async(subscription_grant)(user=listener, network=premium)
    token = await sync_to_async(mint)(listener)
    prefix, payload, signature = token.split(".")
    forged = f"{prefix}.{payload[:-2]}xx.{signature}"
    communicator, _, _ = await connect(f"/ws/networks/premium/?token={forged}")
    assert await close_code(communicator) == 4401


async def test_an_expired_token_is_4408(premium, listener, settings):
    await sync_to_async(subscription_grant)(user=listener, network=premium)
    settings.ENTITLEMENT_TOKEN_SECONDS = -1
    token = await sync_to_async(mint)(listener)
    communicator, _, _ = await connect(f"/ws/networks/premium/?token={token}")
    assert await close_code(communicator) == 4408


async def test_scripts_may_connect_with_a_personal_token(premium, listener):
    await sync_to_async(subscription_grant)(user=listener, network=premium)
    token_row, secret = await sync_to_async(personal_token_create)(user=listener, name="script")
    communicator, connected, _ = await connect(f"/ws/networks/premium/?token={secret}")
    assert connected
    await publish("premium", {"n": 1})
    assert json.loads(await communicator.receive_from(timeout=3)) == {"n": 1}
    await communicator.disconnect()
    await sync_to_async(personal_token_revoke)(token=token_row)
    refused, _, _ = await connect(f"/ws/networks/premium/?token={secret}")
    assert await close_code(refused) == 4401


async def test_ending_a_subscription_closes_the_connection_and_voids_the_token(premium, listener):
    subscription = await sync_to_async(subscription_grant)(user=listener, network=premium)
    token = await sync_to_async(mint)(listener)
    communicator, connected, _ = await connect(f"/ws/networks/premium/?token={token}")
    assert connected
    await sync_to_async(subscription_end)(subscription=subscription)
    assert await close_code(communicator) == 4403
    # The old token is void; a fresh one no longer opens the network.
    stale, _, _ = await connect(f"/ws/networks/premium/?token={token}")
    assert await close_code(stale) == 4408
    fresh_token = await sync_to_async(mint)(listener)
    fresh, _, _ = await connect(f"/ws/networks/premium/?token={fresh_token}")
    assert await close_code(fresh) == 4403


async def test_the_token_endpoint_names_the_networks_and_expiry(premium, listener):
    await sync_to_async(subscription_grant)(user=listener, network=premium, days=30)

    def call():
        client = APIClient()
        client.force_login(listener)
        return client.post("/api/v1/entitlements/token")

    response = await sync_to_async(call)()
    assert response.status_code == 200
    body = response.json()
    assert body["networks"] == ["premium"]
    assert body["token"].startswith("kdje.")
    anonymous = await sync_to_async(APIClient().post)("/api/v1/entitlements/token")
    assert anonymous.status_code in (401, 403)


def test_past_due_keeps_rights_only_within_the_grace_period(premium, listener, settings):
    settings.BILLING_PAST_DUE_GRACE_SECONDS = 3600
    subscription = Subscription.objects.create(
        user=listener,
        network=premium,
        status=SubscriptionStatus.PAST_DUE,
        past_due_since=timezone.now() - timedelta(minutes=30),
        current_period_end=timezone.now() + timedelta(days=3),
    )
    assert user_may_hear(user=listener, network=premium)
    Subscription.objects.filter(pk=subscription.pk).update(
        past_due_since=timezone.now() - timedelta(hours=2)
    )
    from networks import lookup_cache

    lookup_cache.clear()
    assert not user_may_hear(user=listener, network=premium)


def test_tokens_expire_no_later_than_the_subscription(premium, listener):
    subscription_grant(user=listener, network=premium, days=1)
    Subscription.objects.filter(user=listener).update(
        current_period_end=timezone.now() + timedelta(minutes=5)
    )
    _, expires_at, slugs = mint_entitlement_token(user=listener)
    assert slugs == ["premium"]
    assert expires_at <= timezone.now() + timedelta(minutes=5)


async def test_one_person_may_hold_only_so_many_connections_per_network(
    premium, listener, settings
):
    settings.LISTENER_CONNECTIONS_PER_USER = 2
    await sync_to_async(subscription_grant)(user=listener, network=premium)
    token = await sync_to_async(mint)(listener)
    path = f"/ws/networks/premium/?token={token}"
    first, ok1, _ = await connect(path)
    second, ok2, _ = await connect(path)
    assert ok1 and ok2
    third, _, _ = await connect(path)
    assert await close_code(third) == 4429
    await first.disconnect()
    replacement, ok3, _ = await connect(path)
    assert ok3
    await publish("premium", {"still": "works"})
    assert json.loads(await replacement.receive_from(timeout=3)) == {"still": "works"}
    await second.disconnect()
    await replacement.disconnect()


async def test_revoking_a_personal_token_closes_connections_opened_with_it(premium, listener):
    await sync_to_async(subscription_grant)(user=listener, network=premium)
    token_row, secret = await sync_to_async(personal_token_create)(user=listener, name="script")
    communicator, connected, _ = await connect(f"/ws/networks/premium/?token={secret}")
    assert connected
    await sync_to_async(personal_token_revoke)(token=token_row)
    assert await close_code(communicator) == 4403


async def test_the_end_of_a_grace_period_closes_connections(premium, listener, settings):
    from billing.services import expire_lapsed_access

    settings.BILLING_PAST_DUE_GRACE_SECONDS = 3600
    await sync_to_async(Subscription.objects.create)(
        user=listener,
        network=premium,
        status=SubscriptionStatus.PAST_DUE,
        past_due_since=timezone.now() - timedelta(minutes=30),
        current_period_end=timezone.now() + timedelta(days=3),
    )
    token = await sync_to_async(mint)(listener)
    communicator, connected, _ = await connect(f"/ws/networks/premium/?token={token}")
    assert connected  # still within the grace period
    assert await sync_to_async(expire_lapsed_access)() == 0
    settings.BILLING_PAST_DUE_GRACE_SECONDS = 60  # as if an hour had gone by
    assert await sync_to_async(expire_lapsed_access)() == 1
    assert await close_code(communicator) == 4403
    assert await sync_to_async(expire_lapsed_access)() == 0  # acted on once


async def test_a_period_over_with_no_renewal_closes_connections_after_the_leeway(
    premium, listener, settings
):
    from billing.services import expire_lapsed_access

    settings.BILLING_RENEWAL_LEEWAY_SECONDS = 3600
    await sync_to_async(Subscription.objects.create)(
        user=listener,
        network=premium,
        status=SubscriptionStatus.ACTIVE,
        stripe_subscription_id="sub_renewing",
        current_period_end=timezone.now() - timedelta(minutes=5),
    )
    # Just past the period end, the renewal's webhook not in yet: still admitted.
    token = await sync_to_async(mint)(listener)
    communicator, connected, _ = await connect(f"/ws/networks/premium/?token={token}")
    assert connected
    assert await sync_to_async(expire_lapsed_access)() == 0
    await publish("premium", {"still": "paid for"})
    assert json.loads(await communicator.receive_from(timeout=3)) == {"still": "paid for"}
    settings.BILLING_RENEWAL_LEEWAY_SECONDS = 60  # the leeway is over, no renewal came
    assert await sync_to_async(expire_lapsed_access)() == 1
    assert await close_code(communicator) == 4403


async def test_connecting_right_after_minting_needs_no_database(premium, listener):
    from billing.entitlement import aentitlement_epoch
    from networks import lookup_cache

    await sync_to_async(subscription_grant)(user=listener, network=premium, days=1)
    await sync_to_async(mint)(listener)

    def unreachable() -> None:
        raise AssertionError("the epoch was read from the database, not the shared cache")

    # The connect path's epoch read: served by what minting the token left in the cache.
    epoch = await lookup_cache.afresh_lookup(f"entitle:epoch:{listener.pk}", unreachable)
    assert epoch == await aentitlement_epoch(listener.pk)
    await sync_to_async(listener.refresh_from_db)()
    assert epoch == listener.entitlement_epoch
