"""Paid listening across server processes: a subscription ends, connections close everywhere."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets

from .harness import manage

pytestmark = pytest.mark.e2e

SETUP = """
from accounts.models import User
from billing.entitlement import mint_entitlement_token
from billing.services import subscription_grant
from networks.models import Network
user, _ = User.objects.get_or_create(email="{email}")
subscription_grant(user=user, network=Network.objects.get(slug="paid-net"))
print(mint_entitlement_token(user=user)[0])
"""

END = """
from billing.models import Subscription
from billing.services import subscription_end
for subscription in Subscription.objects.filter(user__email="{email}", status="active"):
    subscription_end(subscription=subscription)
"""


@pytest.mark.parametrize("stack", ["production"], indirect=True)
async def test_ending_a_subscription_closes_listeners_on_every_process_within_two_seconds(stack):
    email = f"payer-{time.time_ns()}@example.com"
    token = (
        await asyncio.to_thread(
            manage, stack.env, "shell", "-v", "0", "-c", SETUP.format(email=email)
        )
    ).strip()
    url = "/ws/networks/paid-net/?token=" + token
    async with (
        websockets.connect(stack.servers[0].ws + url) as first,
        websockets.connect(stack.servers[1].ws + url) as second,
    ):
        # The demo key may not publish to paid-net; a key of its own does.
        create_key = ["create_api_key", "--org", "katiedj-demo", "--network", "paid-net"]
        name = f"paid-{time.time_ns()}"
        secret = (await asyncio.to_thread(manage, stack.env, *create_key, "--name", name)).strip()
        status, _ = await asyncio.to_thread(
            stack.publish, {"network": "paid-net", "data": {"paid": 1}}, secret
        )
        assert status == 200
        for ws in (first, second):
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"paid": 1}

        await asyncio.to_thread(
            manage, stack.env, "shell", "-v", "0", "-c", END.format(email=email)
        )
        ended = time.monotonic()
        for ws in (first, second):
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 4403
        assert time.monotonic() - ended < 2.0

    # Reconnecting with the old token is refused.
    async with websockets.connect(stack.servers[1].ws + url) as again:
        await asyncio.wait_for(again.wait_closed(), 5)
    assert again.close_code == 4408
