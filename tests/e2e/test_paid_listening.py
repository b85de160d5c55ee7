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

# However the row changes, access follows: the service, a bulk update, a delete.
ENDINGS = {
    "service": """
from billing.models import Subscription
from billing.services import subscription_end
for subscription in Subscription.objects.filter(user__email="{email}", status="active"):
    subscription_end(subscription=subscription)
""",
    "queryset update": """
from billing.models import Subscription
Subscription.objects.filter(user__email="{email}").update(status="canceled")
""",
    "row delete": """
from billing.models import Subscription
for subscription in Subscription.objects.filter(user__email="{email}"):
    subscription.delete()
""",
}


@pytest.mark.parametrize("stack", ["production"], indirect=True)
@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_ending_a_subscription_closes_listeners_on_every_process_within_two_seconds(
    stack, ending
):
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
            manage, stack.env, "shell", "-v", "0", "-c", ENDINGS[ending].format(email=email)
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


CLIENT_SETUP = """
from accounts.models import User
from accounts.services import personal_token_create
from billing.services import subscription_grant
from networks.models import Network
user, _ = User.objects.get_or_create(email="{email}")
subscription_grant(user=user, network=Network.objects.get(slug="paid-net"))
print(personal_token_create(user=user, name="client")[1])
"""

# Rights unchanged for paid-net, but every token minted so far is void (epoch bumped).
VOID_TOKENS = """
from accounts.models import User
from billing.entitlement import entitlements_changed
entitlements_changed(user_id=User.objects.get(email="{email}").pk, network_ids=[])
"""


async def publish_until_heard(stack, secret, heard, marker):
    async with asyncio.timeout(20):
        while True:
            status, _ = await asyncio.to_thread(
                stack.publish, {"network": "paid-net", "data": {"m": marker}}, secret
            )
            assert status == 200
            try:
                while (await asyncio.wait_for(heard.get(), 0.3)).get("m") != marker:
                    pass
                return
            except TimeoutError:
                continue


@pytest.mark.parametrize("stack", ["production"], indirect=True)
async def test_the_python_client_exchanges_and_refreshes_its_token(stack):
    from katiedj_client import Listener, ListenerRejected

    email = f"client-{time.time_ns()}@example.com"
    shell = ["shell", "-v", "0", "-c"]
    personal = (
        await asyncio.to_thread(manage, stack.env, *shell, CLIENT_SETUP.format(email=email))
    ).strip()
    create_key = ["create_api_key", "--org", "katiedj-demo", "--network", "paid-net"]
    name = f"client-{time.time_ns()}"
    secret = (await asyncio.to_thread(manage, stack.env, *create_key, "--name", name)).strip()

    server = stack.servers[0]
    listener = Listener(
        server.ws + "/ws/networks/paid-net/", token=personal, min_backoff=0.05, max_backoff=0.5
    )
    heard: asyncio.Queue = asyncio.Queue()
    outcome: list[BaseException] = []

    async def consume():
        try:
            async for message in listener:
                await heard.put(message)
        except ListenerRejected as rejected:
            outcome.append(rejected)

    consumer = asyncio.create_task(consume())
    try:
        await publish_until_heard(stack, secret, heard, "first")
        # Void the cached token and make the client reconnect: it must refresh and go on.
        await asyncio.to_thread(manage, stack.env, *shell, VOID_TOKENS.format(email=email))
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        await publish_until_heard(stack, secret, heard, "after-refresh")
        assert listener.reconnects >= 1
        # Once the subscription ends, the client stops with the documented code.
        await asyncio.to_thread(manage, stack.env, *shell, ENDINGS["service"].format(email=email))
        await asyncio.wait_for(consumer, 10)
        assert outcome and outcome[0].status_or_code == 4403
    finally:
        await listener.aclose()
        if not consumer.done():
            consumer.cancel()
