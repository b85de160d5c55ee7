"""Access follows every change of a subscription row, whichever code path makes it.

A save, a delete, a queryset update, the admin's edit page: whoever loses a network's rights
is disconnected and their old tokens are void. Rights are per person and network.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from billing.entitlement import mint_entitlement_token
from billing.models import Subscription, SubscriptionStatus
from billing.services import subscription_end, subscription_grant
from katiedj.asgi import application
from networks.selectors import network_get_by_slug
from networks.services import message_publish
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


async def listen(user) -> tuple[WebsocketCommunicator, str]:
    token = (await sync_to_async(mint_entitlement_token)(user=user))[0]
    communicator = WebsocketCommunicator(application, f"/ws/networks/premium/?token={token}")
    connected, _ = await communicator.connect()
    assert connected
    return communicator, token


async def closed_with(communicator) -> int:
    message = await communicator.receive_output(timeout=3)
    assert message["type"] == "websocket.close"
    return message["code"]


async def still_hears(communicator) -> bool:
    network = await sync_to_async(network_get_by_slug)(slug="premium")
    await sync_to_async(message_publish)(network=network, data={"paid": True})
    return json.loads(await communicator.receive_from(timeout=3)) == {"paid": True}


async def refused_with(token: str) -> int:
    communicator = WebsocketCommunicator(application, f"/ws/networks/premium/?token={token}")
    await communicator.connect()
    return await closed_with(communicator)


async def test_a_queryset_update_of_the_status_disconnects_and_voids_tokens(premium, listener):
    await sync_to_async(subscription_grant)(user=listener, network=premium)
    communicator, token = await listen(listener)
    await sync_to_async(
        Subscription.objects.filter(user=listener).update
    )(status=SubscriptionStatus.CANCELED)  # fmt: skip
    assert await closed_with(communicator) == 4403
    assert await refused_with(token) == 4408


async def test_deleting_the_row_disconnects_and_voids_tokens(premium, listener):
    subscription = await sync_to_async(subscription_grant)(user=listener, network=premium)
    communicator, token = await listen(listener)
    await sync_to_async(subscription.delete)()
    assert await closed_with(communicator) == 4403
    assert await refused_with(token) == 4408


async def test_a_queryset_delete_disconnects_too(premium, listener):
    await sync_to_async(subscription_grant)(user=listener, network=premium)
    communicator, _ = await listen(listener)
    await sync_to_async(Subscription.objects.filter(user=listener).delete)()
    assert await closed_with(communicator) == 4403


async def test_one_of_two_subscriptions_ending_takes_nothing_away(premium, listener):
    first = await sync_to_async(subscription_grant)(user=listener, network=premium, days=10)
    await sync_to_async(subscription_grant)(user=listener, network=premium, days=30)
    communicator, token = await listen(listener)
    await sync_to_async(subscription_end)(subscription=first)
    assert await still_hears(communicator)
    await communicator.disconnect()
    again = WebsocketCommunicator(application, f"/ws/networks/premium/?token={token}")
    connected, _ = await again.connect()
    assert connected and await still_hears(again)  # the token was not voided either
    await again.disconnect()


async def test_the_admin_edit_page_canceling_a_grant_disconnects(premium, listener):
    staff = await sync_to_async(UserFactory)(is_staff=True, is_superuser=True)
    subscription = await sync_to_async(subscription_grant)(user=listener, network=premium)
    communicator, token = await listen(listener)

    def edit() -> int:
        browser = Client()
        browser.force_login(staff)
        url = f"/admin/billing/subscription/{subscription.pk}/change/"
        form = {
            "user": listener.pk, "network": premium.pk, "price": "", "status": "canceled",
            "current_period_end_0": "2030-01-01", "current_period_end_1": "00:00:00",
            "stripe_item_id": "",
        }  # fmt: skip
        return browser.post(url, form).status_code

    assert await sync_to_async(edit)() == 302
    assert await closed_with(communicator) == 4403
    assert await refused_with(token) == 4408


def test_a_bulk_update_of_access_fields_is_refused(premium, listener):
    subscription = subscription_grant(user=listener, network=premium)
    subscription.status = SubscriptionStatus.CANCELED
    with pytest.raises(TypeError):
        Subscription.objects.bulk_update([subscription], ["status"])
