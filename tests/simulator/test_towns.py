"""The town import task (issue 14): it runs once, always ends (ready or failed with a reason),
and is bounded in time; operators add built-in towns from their own files."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.core.management import CommandError, call_command

from simulator import towns
from simulator.models import Town, TownStatus

pytestmark = pytest.mark.django_db

DATA = Path(__file__).resolve().parent / "data"
CROSS = (DATA / "cross.net.xml").read_bytes()


def _town(data: bytes = CROSS) -> Town:
    return Town.objects.create(name="t", source=data, size_bytes=len(data))


def test_the_import_runs_once_and_a_duplicate_delivery_does_nothing():
    town = _town()
    assert towns.town_import(town_id=town.pk) == "ready"
    assert towns.town_import(town_id=town.pk) is None  # acks-late redelivery, a second worker
    assert towns.town_import(town_id=town.pk + 1000) is None  # deleted meanwhile
    town.refresh_from_db()
    assert town.imported_at is not None and town.topology["format"] == 1
    assert set(town.layout) >= {"C", "N", "S", "E", "W", "W2"}
    assert "warnings" not in town.topology["meta"]  # stored once, on the town


def test_an_import_past_its_time_limit_fails_with_the_reason(monkeypatch, settings):
    settings.TOWN_IMPORT_TIME_LIMIT_SECONDS = 7

    def too_slow(*args, **kwargs):
        raise SoftTimeLimitExceeded

    monkeypatch.setattr(towns, "import_sumo_net", too_slow)
    town = _town()
    assert towns.town_import(town_id=town.pk) == "failed"
    town.refresh_from_db()
    assert "longer than 7 s" in town.error


def test_an_unforeseen_error_fails_the_import_rather_than_leaving_it_processing(
    monkeypatch, caplog
):
    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(towns, "import_sumo_net", broken)
    town = _town()
    assert towns.town_import(town_id=town.pk) == "failed"
    town.refresh_from_db()
    assert "internal error" in town.error and "surprise" not in town.error
    assert "import failed" in caplog.text


def test_the_task_is_bounded_in_time():
    from django.conf import settings

    from simulator.tasks import town_import

    assert town_import.soft_time_limit == settings.TOWN_IMPORT_TIME_LIMIT_SECONDS
    assert town_import.time_limit > town_import.soft_time_limit


def test_an_operator_adds_a_built_in_town_from_a_file(capsys):
    call_command("town", "add", str(DATA / "arterial.net.xml"))
    town = Town.objects.get()
    assert town.builtin and town.name == "arterial" and town.status == TownStatus.READY
    assert "U-turn" in capsys.readouterr().out
    with pytest.raises(CommandError, match="not a SUMO network"):
        call_command("town", "add", str(DATA.parent / "__init__.py"), "--name", "nope")


def test_an_import_killed_at_the_hard_limit_ends_failed_not_processing():
    from celery.exceptions import TimeLimitExceeded

    from simulator.tasks import town_import

    town = _town()
    # What the worker's parent calls once it has killed the child running the import.
    town_import.on_failure(TimeLimitExceeded(75), "task-id", [town.pk], {}, None)
    town.refresh_from_db()
    assert town.status == TownStatus.FAILED and "hard time limit" in town.error
