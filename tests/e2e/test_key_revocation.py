"""Revoking a key takes effect on every server process within about a second."""

from __future__ import annotations

import time

import pytest

from .harness import manage

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("stack", ["production"], indirect=True)
def test_a_key_revoked_elsewhere_is_refused_by_another_process_within_a_second(stack):
    secret = manage(
        stack.env,
        "create_api_key",
        "--org",
        "katiedj-demo",
        "--name",
        "doomed",
        "--network",
        "sample_net",
    ).strip()
    body = {"network": "sample_net", "data": {"v": 1}}
    # Both processes have the key in their memory tier.
    for server in range(len(stack.servers)):
        assert stack.publish(body, secret, server)[0] == 200
    prefix = secret[:12]
    manage(stack.env, "revoke_api_key", prefix, "--org", "katiedj-demo")
    revoked_at = time.monotonic()
    refused_after = {}
    while len(refused_after) < len(stack.servers) and time.monotonic() - revoked_at < 5:
        for server in range(len(stack.servers)):
            if server not in refused_after and stack.publish(body, secret, server)[0] == 400:
                refused_after[server] = time.monotonic() - revoked_at
        time.sleep(0.05)
    assert len(refused_after) == len(stack.servers), refused_after
    # PUBLISH_LOCAL_CACHE_SECONDS is 1 s; allow for the polling and process scheduling.
    assert max(refused_after.values()) < 1.5, refused_after
