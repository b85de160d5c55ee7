"""Outages of a backing service are logged once when they start and once when they end."""

from __future__ import annotations

import logging

import pytest

from katiedj import outages

SECRET = "kdj_" + "a1B2c3D4e5" * 3 + "f6G7h8"


@pytest.fixture(autouse=True)
def _fresh_outages():
    outages.reset()
    yield
    outages.reset()


def lines(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "katiedj.outages"]


def test_an_outage_is_logged_when_it_starts_and_when_it_ends(caplog):
    caplog.set_level(logging.INFO, logger="katiedj.outages")
    assert outages.note_outage("database", ConnectionRefusedError("refused")) is True
    for _ in range(50):  # every failing request of the outage
        assert outages.note_outage("database", ConnectionRefusedError("refused")) is False
    assert outages.is_down("database")
    assert outages.note_recovered("database") is True
    assert outages.note_recovered("database") is False  # every request after it
    assert not outages.is_down("database")
    logged = lines(caplog)
    assert [record.levelno for record in logged] == [logging.WARNING, logging.WARNING]
    assert "database unavailable" in logged[0].getMessage()
    assert "ConnectionRefusedError: refused" in logged[0].getMessage()
    assert "database reachable again" in logged[1].getMessage()
    assert all(record.exc_info is None for record in logged), "a line, not a traceback"


def test_each_component_has_its_own_state(caplog):
    caplog.set_level(logging.INFO, logger="katiedj.outages")
    outages.note_outage("redis", OSError("down"))
    outages.note_outage("database", OSError("down"))
    outages.note_recovered("redis")
    assert outages.is_down("database") and not outages.is_down("redis")
    assert len(lines(caplog)) == 3


def test_a_new_outage_after_recovery_is_logged_again(caplog):
    caplog.set_level(logging.INFO, logger="katiedj.outages")
    outages.note_outage("redis", OSError("down"))
    outages.note_recovered("redis")
    outages.note_outage("redis", OSError("down again"))
    assert len(lines(caplog)) == 3


def test_secrets_in_an_error_never_reach_the_log(caplog):
    caplog.set_level(logging.INFO, logger="katiedj.outages")
    outages.note_outage("database", RuntimeError(f"key {SECRET} refused\nsecond line"))
    assert SECRET not in caplog.text
    assert "second line" not in caplog.text  # one line per outage, whatever the error says


def test_the_database_pool_never_stops_reconnecting():
    class Pool:
        checks = 0

        def check(self) -> None:
            self.checks += 1  # psycopg's check() lets the pool start a new attempt

    pool = Pool()
    outages.keep_reconnecting(pool)
    assert pool.checks == 1
