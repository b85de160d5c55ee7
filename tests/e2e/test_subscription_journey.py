"""The whole paid-listening journey through real processes.

Sign up (email verified through the link the server prints) → Stripe Checkout on the local
fake → signed webhooks → Celery worker → entitlement token → the WebSocket hears data →
the subscription is cancelled (webhook) → the connection closes with 4403 and a reconnect
with the old token is refused.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from urllib.parse import urlsplit

import httpx
import pytest
import websockets

from tests.stripe_fake import FakeStripeProcess

from .harness import celery_worker, manage, require_production_services, start_production_stack

pytestmark = pytest.mark.e2e
WEBHOOK_SECRET = "whsec_journey"
PASSWORD = "journey passphrase 2026"


@pytest.fixture(scope="module")
def billing_stack(tmp_path_factory):
    require_production_services()
    tmp = tmp_path_factory.mktemp("journey")
    with FakeStripeProcess(webhook_secret=WEBHOOK_SECRET) as fake:
        env = {
            "STRIPE_SECRET_KEY": "sk_test_journey",
            "STRIPE_API_BASE": fake.api_base,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "LOG_LEVEL": "INFO",  # the console email backend prints the verification link
        }
        stack = start_production_stack(tmp, processes=1, extra_env=env)
        fake.configure(webhook_url=stack.servers[0].http + "/billing/webhook/")
        try:
            with celery_worker(stack.env, tmp / "worker.log"):
                yield stack, fake
        finally:
            stack.stop()


def csrf(client: httpx.Client, path: str) -> str:
    client.get(path)
    return client.cookies["csrftoken"]


def sign_up_and_verify(stack, client: httpx.Client, email: str) -> None:
    token = csrf(client, "/accounts/signup/")
    client.post(
        "/accounts/signup/",
        data={"email": email, "password1": PASSWORD, "password2": PASSWORD,
              "csrfmiddlewaretoken": token},
    )  # fmt: skip
    deadline = time.monotonic() + 10
    link = None
    while link is None and time.monotonic() < deadline:
        log = stack.servers[0].log_path.read_text(errors="replace")
        found = re.findall(r"(/accounts/confirm-email/[^\s/]+/)", log)
        link = found[-1] if found else None
        time.sleep(0.1)
    assert link, "no verification email in the server log"
    token = csrf(client, link)
    client.post(link, data={"csrfmiddlewaretoken": token})
    token = csrf(client, "/accounts/login/")
    login = client.post(
        "/accounts/login/",
        data={"login": email, "password": PASSWORD, "csrfmiddlewaretoken": token},
    )
    assert login.status_code == 302, login.text[:500]


def entitlement(client: httpx.Client) -> dict:
    response = client.post(
        "/api/v1/entitlements/token", headers={"X-CSRFToken": client.cookies["csrftoken"]}
    )
    assert response.status_code == 200, response.text
    return response.json()


def subscribe_through_checkout(stack, fake) -> tuple[dict, dict, str]:
    """Sign up, pay on the fake Checkout, wait for the webhooks: (token, subscription, key)."""
    server = stack.servers[0]
    manage(
        stack.env, "shell", "-v", "0", "-c",
        "from billing.services import price_set; from networks.models import Network; "
        "price_set(network=Network.objects.get(slug='paid-net'), interval='month', amount=900)",
    )  # fmt: skip
    key = manage(
        stack.env, "create_api_key", "--org", "katiedj-demo", "--name", "journey",
        "--network", "paid-net",
    ).strip()  # fmt: skip
    with httpx.Client(base_url=server.http, follow_redirects=False, timeout=10) as client:
        sign_up_and_verify(stack, client, f"journey-{time.time_ns()}@example.com")
        assert entitlement(client)["networks"] == []
        token = csrf(client, "/networks/paid-net/")
        checkout = client.post(
            "/networks/paid-net/subscribe/",
            data={"interval": "month", "csrfmiddlewaretoken": token},
        )
        assert checkout.status_code == 302
        session_id = urlsplit(checkout.headers["location"]).path.rsplit("/", 1)[-1]
        subscription = fake.complete_checkout(session_id)
        deadline = time.monotonic() + 20
        while (granted := entitlement(client))["networks"] != ["paid-net"]:
            assert time.monotonic() < deadline, "the webhooks never made the subscription active"
            time.sleep(0.2)
    return granted, subscription, key


async def test_sign_up_subscribe_listen_cancel(billing_stack):
    stack, fake = billing_stack
    granted, subscription, key = await asyncio.to_thread(subscribe_through_checkout, stack, fake)
    url = stack.servers[0].ws + "/ws/networks/paid-net/?token=" + granted["token"]
    async with websockets.connect(url) as ws:
        status, _ = await asyncio.to_thread(
            stack.publish, {"network": "paid-net", "data": {"tick": 1}}, key
        )
        assert status == 200
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"tick": 1}

        await asyncio.to_thread(fake.end, subscription["id"])
        await asyncio.wait_for(ws.wait_closed(), 15)
    assert ws.close_code == 4403

    async with websockets.connect(url) as again:
        await asyncio.wait_for(again.wait_closed(), 5)
    assert again.close_code == 4408
