"""A worker killed while it holds a task loses nothing: periodic sweeps finish what a lost task
left undone (stored Stripe events never applied, networks no longer sold still billing), and
doing any of it twice is harmless."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from celery.exceptions import Retry
from django.db.models import F
from django.utils import timezone

from billing.entitlement import user_may_hear
from billing.models import Payment, Price, Subscription, SubscriptionStatus, WebhookEvent
from billing.services import network_subscriptions_end, price_set, subscription_cancel
from billing.sync import webhook_event_apply, webhook_event_claim, webhook_events_sweep
from billing.tasks import (
    backoff_seconds,
    end_network_subscriptions,
    process_webhook_event,
    sweep_unsold_networks,
    sweep_webhook_events,
)
from networks.services import network_archive, network_update
from tests.factories import NetworkFactory, UserFactory

from .conftest import deliver_all, post_event, session_id_of, start_checkout

pytestmark = pytest.mark.django_db
GRACE = 300


@pytest.fixture(autouse=True)
def sweep_settings(settings):
    settings.BILLING_SWEEP_GRACE_SECONDS = GRACE
    settings.BILLING_SWEEP_BATCH = 100


def make_old(queryset, seconds: int = GRACE + 60) -> None:
    """Received (and last attempted) ``seconds`` ago: past the sweep's grace period."""
    then = timezone.now() - timedelta(seconds=seconds)
    queryset.update(received_at=then)
    queryset.filter(attempted_at__isnull=False).update(attempted_at=then)


def stripe_writes(stripe_on) -> list[dict]:
    return [r for r in stripe_on.requests_log() if r["method"] != "GET"]


@pytest.fixture
def paid_not_applied(stripe_on, client, premium, listener):
    """A Checkout paid at Stripe whose events reached us (stored, answered 200) but whose
    tasks were lost: the on-commit hook that queues them never runs here."""
    price_set(network=premium, interval="month", amount=900)
    url = start_checkout(listener, premium)
    stripe_subscription = stripe_on.complete_checkout(session_id_of(url))
    assert set(deliver_all(stripe_on, client)) == {200}
    assert WebhookEvent.objects.count() >= 3 and not Subscription.objects.exists()
    return stripe_subscription


def ignored_event(n: int) -> WebhookEvent:
    """A stored event of a type we acknowledge and ignore (applying it asks Stripe nothing)."""
    return WebhookEvent.objects.create(
        stripe_event_id=f"evt_ignored{n}", type="customer.tax_id.created",
        created=timezone.now(), payload={"data": {"object": {"id": f"txi_{n}"}}},
    )  # fmt: skip


# --- Stored webhook events -------------------------------------------------------------------


def test_events_stored_but_never_applied_are_applied_by_the_sweep(
    paid_not_applied, premium, listener, caplog
):
    stored = WebhookEvent.objects.count()
    make_old(WebhookEvent.objects.all())
    with caplog.at_level(logging.INFO, logger="billing"):
        assert sweep_webhook_events.apply().get() == stored
    assert not WebhookEvent.objects.filter(processed_at__isnull=True).exists()
    assert Subscription.objects.get().status == SubscriptionStatus.ACTIVE
    assert user_may_hear(user=listener, network=premium)
    assert Payment.objects.count() == 1
    swept = [r.getMessage() for r in caplog.records if "never applied" in r.getMessage()]
    assert len(swept) == 1 and f"{stored} applied" in swept[0], caplog.text


def test_events_within_their_grace_period_are_left_to_their_task(paid_not_applied, stripe_on):
    stripe_on.clear_requests_log()
    assert sweep_webhook_events.apply().get() == 0
    assert not stripe_on.requests_log()
    assert not WebhookEvent.objects.filter(processed_at__isnull=False).exists()


def test_an_applied_event_is_not_applied_again_and_a_quiet_sweep_logs_nothing(
    paid_not_applied, stripe_on, caplog
):
    make_old(WebhookEvent.objects.all())
    sweep_webhook_events.apply().get()
    make_old(WebhookEvent.objects.all(), seconds=10 * GRACE)
    stripe_on.clear_requests_log()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="billing"):
        assert sweep_webhook_events.apply().get() == 0
    assert not stripe_on.requests_log()
    assert "never applied" not in caplog.text
    # The task queued for it (or a redelivered copy) does nothing either.
    row = WebhookEvent.objects.first()
    assert process_webhook_event.apply(args=[row.pk]).get() == "already processed"


def test_applying_every_event_twice_changes_nothing(paid_not_applied, stripe_on):
    def state() -> tuple[list, list]:
        subscriptions = Subscription.objects.values_list(
            "stripe_subscription_id", "status", "current_period_end", "price_id", "user_id"
        )
        payments = Payment.objects.values_list(
            "stripe_invoice_id", "amount_paid", "fee", "amount_refunded"
        )
        return list(subscriptions), list(payments)

    rows = list(WebhookEvent.objects.order_by("pk"))
    for row in rows:
        webhook_event_apply(event_row=row)
    once = state()
    assert len(once[0]) == 1 and len(once[1]) == 1
    stripe_on.clear_requests_log()
    WebhookEvent.objects.update(processed_at=None)
    for row in reversed(rows):  # and in another order
        webhook_event_apply(event_row=row)
    assert state() == once
    assert stripe_writes(stripe_on) == []  # re-reads only: nothing cancelled, nothing refunded
    assert len(stripe_on.events("refund.created")) == 0


def test_a_sweep_applies_at_most_a_batch_oldest_first(settings):
    settings.BILLING_SWEEP_BATCH = 2
    rows = [ignored_event(n) for n in range(5)]
    for age, row in enumerate(rows):
        make_old(WebhookEvent.objects.filter(pk=row.pk), seconds=GRACE + 100 - age)
    applied_per_run = []
    for _ in range(4):
        before = set(WebhookEvent.objects.filter(processed_at__isnull=False).values_list("pk"))
        applied_per_run.append(sweep_webhook_events.apply().get())
        after = set(WebhookEvent.objects.filter(processed_at__isnull=False).values_list("pk"))
        if len(applied_per_run) == 1:
            assert after - before == {(rows[0].pk,), (rows[1].pk,)}  # the oldest two
    assert applied_per_run == [2, 2, 1, 0]


def test_a_sweep_stops_taking_events_when_its_time_is_up():
    for n in range(3):
        ignored_event(n)
    make_old(WebhookEvent.objects.all())
    report = webhook_events_sweep(grace_seconds=GRACE, batch_size=10, budget_seconds=0)
    assert report.applied == 0 and report.left == 3
    assert not WebhookEvent.objects.filter(processed_at__isnull=False).exists()


def test_an_event_whose_retry_was_lost_is_swept_but_one_refused_for_good_is_not(
    paid_not_applied, stripe_on, client, settings
):
    first = WebhookEvent.objects.order_by("pk").first()
    # Stripe is down: the task records why and schedules a retry (lost with its worker).
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"
    with pytest.raises(Retry):
        process_webhook_event.apply(args=[first.pk], throw=True)
    settings.STRIPE_API_BASE = stripe_on.api_base
    first.refresh_from_db()
    assert first.processed_at is None and "StripeUnavailable" in first.error
    assert first.attempted_at is not None and first.failed_at is None
    foreign = {
        "id": "evt_foreign", "type": "customer.subscription.updated",
        "created": int(timezone.now().timestamp()),
        "data": {"object": {"id": "sub_foreign", "customer": "cus_notours"}},
    }  # fmt: skip
    assert post_event(client, foreign).status_code == 200
    refused = WebhookEvent.objects.get(stripe_event_id="evt_foreign")
    assert process_webhook_event.apply(args=[refused.pk]).get() == "not applied: NotOurs"
    refused.refresh_from_db()
    assert refused.failed_at is not None and "NotOurs" in refused.error

    make_old(WebhookEvent.objects.all())
    others = WebhookEvent.objects.exclude(pk=refused.pk).count()
    assert sweep_webhook_events.apply().get() == others
    first.refresh_from_db()
    assert first.processed_at is not None and first.error == ""
    refused.refresh_from_db()
    assert refused.processed_at is None  # given up: visible in the admin, not retried
    assert Subscription.objects.get().status == SubscriptionStatus.ACTIVE


def test_stripe_down_during_a_sweep_leaves_the_events_for_a_later_one(
    paid_not_applied, stripe_on, settings, caplog
):
    make_old(WebhookEvent.objects.all())
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"
    with caplog.at_level(logging.INFO, logger="billing"):
        assert sweep_webhook_events.apply().get() == 0
    assert len([r for r in caplog.records if "never applied" in r.getMessage()]) == 1
    assert WebhookEvent.objects.filter(error__contains="StripeUnavailable").count() == 1
    # The one attempted waits out another grace period; the rest were not touched.
    settings.STRIPE_API_BASE = stripe_on.api_base
    assert sweep_webhook_events.apply().get() == WebhookEvent.objects.count() - 1
    make_old(WebhookEvent.objects.filter(processed_at__isnull=True))
    assert sweep_webhook_events.apply().get() == 1
    assert Subscription.objects.get().status == SubscriptionStatus.ACTIVE


def test_an_event_another_worker_is_applying_is_not_taken():
    row = ignored_event(1)
    make_old(WebhookEvent.objects.all())
    WebhookEvent.objects.filter(pk=row.pk).update(attempted_at=timezone.now())  # just started
    assert sweep_webhook_events.apply().get() == 0
    # Two sweeps that both listed it: only the first to claim it applies it.
    make_old(WebhookEvent.objects.all())
    first, second = (WebhookEvent.objects.get(pk=row.pk) for _ in range(2))
    assert webhook_event_claim(event_row=first) is True
    assert webhook_event_claim(event_row=second) is False


# --- Networks no longer sold ---------------------------------------------------------------------


@pytest.fixture
def two_subscribers(stripe_on, buy, premium):
    price_set(network=premium, interval="month", amount=900)
    price_set(network=premium, interval="year", amount=9000)
    people = [UserFactory(), UserFactory()]
    for person in people:
        buy(person, premium)
    return people


def make_network_old(network, seconds: int = GRACE + 60) -> None:
    type(network).objects.filter(pk=network.pk).update(
        updated_at=F("updated_at") - timedelta(seconds=seconds)
    )


@pytest.mark.parametrize("change", ["archive", "make free"])
def test_a_network_whose_ending_task_was_lost_is_ended_by_the_sweep(
    two_subscribers, premium, stripe_on, change, caplog
):
    # The task queued on commit is lost with its worker (here: the hook never runs).
    if change == "archive":
        network_archive(network=premium)
    else:
        network_update(network=premium, is_public=True)
    assert Subscription.objects.filter(status=SubscriptionStatus.ACTIVE).count() == 2
    assert sweep_unsold_networks.apply().get() == 0  # still within its task's grace period
    make_network_old(premium)
    with caplog.at_level(logging.INFO, logger="billing"):
        assert sweep_unsold_networks.apply().get() == 2
    assert set(Subscription.objects.values_list("status", flat=True)) == {"canceled"}
    assert len(stripe_on.events("refund.created")) == 2
    assert not Price.objects.filter(network=premium, active=True).exists()
    assert "no longer sold" in caplog.text
    stripe_on.clear_requests_log()
    assert sweep_unsold_networks.apply().get() == 0
    assert stripe_on.requests_log() == []


def test_a_network_still_sold_is_left_alone(two_subscribers, premium, stripe_on):
    make_network_old(premium)
    stripe_on.clear_requests_log()
    assert sweep_unsold_networks.apply().get() == 0
    assert stripe_on.requests_log() == []
    assert Subscription.objects.filter(status=SubscriptionStatus.ACTIVE).count() == 2


def test_ending_a_network_twice_is_harmless(two_subscribers, premium, stripe_on):
    network_archive(network=premium)
    assert network_subscriptions_end(network_id=premium.pk, reason="network archived") == 2
    stripe_on.clear_requests_log()
    # A redelivered task, or a sweep racing the task, finds nothing left to do.
    assert end_network_subscriptions.apply(args=[premium.pk, "network archived"]).get() == 0
    assert stripe_writes(stripe_on) == []
    # And one that listed a row before another ended it asks Stripe nothing for it.
    row = Subscription.objects.first()
    stale = Subscription.objects.get(pk=row.pk)
    stale.status = SubscriptionStatus.ACTIVE  # as listed before the other run ended it
    subscription_cancel(subscription=stale, reason="network archived")
    assert stripe_writes(stripe_on) == []
    assert len(stripe_on.events("refund.created")) == 2


def test_a_grant_on_a_network_archived_while_its_task_was_lost_is_ended(stripe_on):
    from billing.services import subscription_grant

    network = NetworkFactory(is_public=False)
    grant = subscription_grant(user=UserFactory(), network=network)
    network_archive(network=network)
    make_network_old(network)
    assert sweep_unsold_networks.apply().get() == 1
    grant.refresh_from_db()
    assert grant.status == SubscriptionStatus.CANCELED


# --- The broker's side ------------------------------------------------------------------------


def test_retry_countdowns_stay_below_the_visibility_timeout(settings):
    """A task waiting for its retry is held unacked by its worker: redelivered (run twice) if
    the wait outlasted the broker's visibility timeout."""
    from katiedj.celery import app

    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    assert app.conf.broker_transport_options["visibility_timeout"] == timeout
    assert max(backoff_seconds(30) for _ in range(500)) <= timeout / 2
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 300}
    ceiling = max(backoff_seconds(30) for _ in range(500))
    assert 75 < ceiling <= 150


def test_tasks_whose_loss_leaves_state_wrong_come_back_when_their_worker_dies(settings):
    for task in (process_webhook_event, end_network_subscriptions):
        # Run again soon if their pool process dies; a retry, so bounded by max_retries.
        assert task.acks_late and task.reject_on_worker_lost and task.retry_on_worker_lost
        assert task.default_retry_delay <= 10 and task.max_retries
    for task in (sweep_webhook_events, sweep_unsold_networks):
        assert task.time_limit and task.soft_time_limit < task.time_limit
    schedule = {entry["task"]: entry for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    for task in (sweep_webhook_events, sweep_unsold_networks):
        entry = schedule[task.name]
        assert entry["schedule"] == settings.BILLING_SWEEP_SECONDS
        # Beat keeps sending while no worker runs: a stale sweep is dropped, not piled up.
        assert 0 < entry["options"]["expire_seconds"] <= entry["schedule"]
