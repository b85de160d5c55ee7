"""Rate limits, usage counters and last use: kept off the database on the publish path."""

from __future__ import annotations

import json

import pytest

from networks import accounting
from networks.models import ApiKey, UsageHour

pytestmark = pytest.mark.django_db


def publish(publisher, key, slug, data=None):
    body = json.dumps({"network": slug, "data": data or {"v": 1}})
    return publisher.post("/api/publish", data=body, headers={"API-KEY": key})


def rest_publish(publisher, key, slug):
    return publisher.post(
        f"/api/v1/networks/{slug}/messages",
        data=json.dumps({"data": {"v": 1}}),
        headers={"Authorization": f"Bearer {key}"},
    )


def test_a_key_over_its_rate_gets_429_with_retry_after(publisher, api_key, network):
    ApiKey.objects.filter(pk=api_key.row.pk).update(rate_limit_per_second=2)
    api_key.row.refresh_from_db()
    api_key.row.save()  # drops the cached key, as an edit in the admin or API would
    statuses = [publish(publisher, api_key.secret, network.slug).status_code for _ in range(6)]
    # A burst of twice the rate passes, then the bucket is empty.
    assert statuses[:4] == [200] * 4
    assert 429 in statuses[4:]
    limited = publish(publisher, api_key.secret, network.slug)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.json() == {"error": "Too many messages: slow down and retry after a moment"}
    rest = rest_publish(publisher, api_key.secret, network.slug)
    assert (rest.status_code, rest.json()["code"]) == (429, "rate_limited")


def test_rate_limits_are_per_key(publisher, org, network, api_key):
    from networks.services import api_key_create

    ApiKey.objects.filter(pk=api_key.row.pk).update(rate_limit_per_second=1)
    api_key.row.refresh_from_db()
    api_key.row.save()
    _, other_secret = api_key_create(organization=org, name="other", networks=[network])
    for _ in range(3):
        publish(publisher, api_key.secret, network.slug)
    assert publish(publisher, api_key.secret, network.slug).status_code == 429
    assert publish(publisher, other_secret, network.slug).status_code == 200


def test_usage_is_counted_per_network_and_rolled_up_idempotently(publisher, api_key, network):
    for index in range(3):
        assert publish(publisher, api_key.secret, network.slug, {"i": index}).status_code == 200
    assert UsageHour.objects.count() == 0  # nothing written on the publish path
    assert accounting.rollup_usage() == 1
    accounting.rollup_usage()  # running twice changes nothing
    usage = UsageHour.objects.get(network=network)
    assert usage.messages == 3
    assert usage.organization_id == network.organization_id
    body_size = len(json.dumps({"network": network.slug, "data": {"i": 0}}))
    assert usage.bytes == 3 * body_size
    publish(publisher, api_key.secret, network.slug)
    accounting.rollup_usage()
    assert UsageHour.objects.get(network=network).messages == 4


def test_rejected_publishes_are_not_counted(publisher, api_key, network):
    publish(publisher, "wrong", network.slug)
    publisher.post("/api/publish", data="{", headers={"API-KEY": api_key.secret})
    accounting.rollup_usage()
    assert not UsageHour.objects.exists()


def test_last_use_reaches_the_database_only_when_flushed(publisher, api_key, network):
    assert publish(publisher, api_key.secret, network.slug).status_code == 200
    api_key.row.refresh_from_db()
    assert api_key.row.last_used_at is None
    assert accounting.flush_last_used() == 1
    api_key.row.refresh_from_db()
    first = api_key.row.last_used_at
    assert first is not None
    assert accounting.flush_last_used() == 0  # nothing new since
    publish(publisher, api_key.secret, network.slug)
    accounting.flush_last_used()
    api_key.row.refresh_from_db()
    assert api_key.row.last_used_at >= first


def test_the_periodic_tasks_run_through_celery(publisher, api_key, network):
    from networks.tasks import flush_key_last_used, rollup_usage

    publish(publisher, api_key.secret, network.slug)
    assert rollup_usage.apply().get() == 1
    assert flush_key_last_used.apply().get() == 1


def test_the_in_process_beat_runs_due_entries_only(settings):
    from katiedj.celery import app
    from katiedj.periodic import run_due_tasks

    app.loader.import_default_modules()  # as start_in_process_beat does
    schedule = settings.CELERY_BEAT_SCHEDULE
    last_run = {name: 1000.0 for name in schedule}
    assert run_due_tasks(last_run, 1001.0) == []
    due_within_a_minute = sorted(
        name for name, entry in schedule.items() if entry["schedule"] <= 61
    )
    assert "rollup-usage" in due_within_a_minute
    assert "reconcile-subscriptions" not in due_within_a_minute
    assert sorted(run_due_tasks(last_run, 1000.0 + 61)) == due_within_a_minute
    assert run_due_tasks(last_run, 1000.0 + 62) == []
