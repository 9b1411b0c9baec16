"""Cron schedules as instants: Sunday in every spelling (periodiq 0.14.0's Sunday never fires),
the DST transitions of a real zone, the next and latest ticks, and specs refused by name."""

from __future__ import annotations

import datetime as dt
import itertools

import pendulum
import periodiq  # type: ignore[import-untyped]
import pytest

from triage.cron import UTC, Cron, CronError

SUNDAY_MIDNIGHT = dt.datetime(2026, 11, 29, 0, 0, tzinfo=UTC)  # a Sunday


@pytest.mark.parametrize("spec", ["@weekly", "0 0 * * 0", "0 0 * * 7", "0 0 * * sun", "0 0 * * SUN", "0 0 * * 6-7"])
def test_sunday_fires_however_it_is_written(spec: str) -> None:
    # Given a Sunday at midnight
    # When a spec naming Sunday is asked whether that minute is a tick
    # Then it is, and the next tick is a week (or, for 6-7, six days) later
    cron = Cron.parse(spec)
    assert SUNDAY_MIDNIGHT.strftime("%a") == "Sun"
    assert cron.is_tick(SUNDAY_MIDNIGHT)
    assert cron.next_after(SUNDAY_MIDNIGHT) in (
        SUNDAY_MIDNIGHT + dt.timedelta(days=7),
        SUNDAY_MIDNIGHT + dt.timedelta(days=6),
    )


def test_stock_periodiq_never_fires_on_sunday() -> None:
    # The bug the cron above fixes, still in the periodiq the service pins: if it is fixed
    # upstream, this fails, and the workaround can go.
    assert not periodiq.cron("@weekly").validate(pendulum.instance(SUNDAY_MIDNIGHT))
    assert not periodiq.cron("0 0 * * 0").validate(pendulum.instance(SUNDAY_MIDNIGHT))


def test_next_and_latest_ticks() -> None:
    cron = Cron.parse("*/15 9-17 * * mon-fri")
    friday_evening = dt.datetime(2026, 11, 27, 17, 50, tzinfo=UTC)
    assert cron.next_after(friday_evening) == dt.datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # Monday
    assert cron.latest_at_or_before(friday_evening) == dt.datetime(2026, 11, 27, 17, 45, tzinfo=UTC)
    assert cron.is_tick(dt.datetime(2026, 11, 27, 17, 45, 30, tzinfo=UTC))  # any second of the minute
    assert not cron.is_tick(dt.datetime(2026, 11, 27, 17, 46, tzinfo=UTC))
    assert cron.period_at(dt.datetime(2026, 11, 27, 9, 0, tzinfo=UTC)) == dt.timedelta(minutes=15)


def test_both_day_fields_restricted_means_either() -> None:
    cron = Cron.parse("0 0 1 * mon")  # the 1st, and every Monday
    assert cron.is_tick(dt.datetime(2026, 12, 1, tzinfo=UTC))  # a Tuesday, the 1st
    assert cron.is_tick(dt.datetime(2026, 12, 7, tzinfo=UTC))  # a Monday


def test_spring_forward_fires_once_shifted_by_the_gap() -> None:
    # Given 02:30 every day in Paris, where 2026-03-29 02:00 jumps to 03:00
    cron = Cron.parse("30 2 * * *", "Europe/Paris")
    ticks = _ticks(cron, dt.datetime(2026, 3, 27, 12, tzinfo=UTC), 4)
    # Then each day fires once; on the transition day at 03:30 local (the gap's hour later)
    local = [t.astimezone(cron.tz).strftime("%d %H:%M %Z") for t in ticks]
    assert local == ["28 02:30 CET", "29 03:30 CEST", "30 02:30 CEST", "31 02:30 CEST"]


def test_fall_back_fires_once_at_the_first_occurrence() -> None:
    # Given 02:30 every day in Paris, where 2026-10-25 03:00 goes back to 02:00 (02:30 twice)
    cron = Cron.parse("30 2 * * *", "Europe/Paris")
    ticks = _ticks(cron, dt.datetime(2026, 10, 23, 12, tzinfo=UTC), 4)
    local = [t.astimezone(cron.tz).strftime("%d %H:%M %Z") for t in ticks]
    # Then the repeated 02:30 fires once, the first time (CEST)
    assert local == ["24 02:30 CEST", "25 02:30 CEST", "26 02:30 CET", "27 02:30 CET"]
    # And an hourly spec (hour field *) fires every hour of the 25-hour day, each instant once
    hourly = _ticks(Cron.parse("0 * * * *", "Europe/Paris"), dt.datetime(2026, 10, 24, 21, 30, tzinfo=UTC), 26)
    assert [b - a for a, b in itertools.pairwise(hourly)] == [dt.timedelta(hours=1)] * 25


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("0 0 30 2 *", "never fires"),
        ("61 * * * *", "minute field '61'"),
        ("* * *", "needs 5 fields"),
        ("x * * * *", "minute field 'x'"),
        ("*/0 * * * *", "steps 1 or more"),
        ("0 0 * 13 *", "month field '13'"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(spec: str, problem: str) -> None:
    with pytest.raises(CronError, match=problem):
        Cron.parse(spec)


def test_an_unknown_zone_is_refused() -> None:
    with pytest.raises(CronError, match="unknown time zone 'Mars/Olympus'"):
        Cron.parse("@daily", "Mars/Olympus")


def _ticks(cron: Cron, start: dt.datetime, count: int) -> list[dt.datetime]:
    ticks: list[dt.datetime] = []
    at: dt.datetime | None = start
    for _ in range(count):
        assert at is not None
        at = cron.next_after(at)
        assert at is not None
        ticks.append(at)
    return ticks


def test_a_skipped_even_hour_fires_once_shifted() -> None:
    # Given every two hours in Paris across the spring-forward night (02:00 does not exist)
    cron = Cron.parse("0 */2 * * *", "Europe/Paris")
    ticks = _ticks(cron, dt.datetime(2026, 3, 28, 21, 30, tzinfo=UTC), 4)
    # Then 02:00 fires once, at 03:00 CEST (shifted by the gap), and no tick is doubled
    local = [t.astimezone(cron.tz).strftime("%d %H:%M %Z") for t in ticks]
    assert local == ["29 00:00 CET", "29 03:00 CEST", "29 04:00 CEST", "29 06:00 CEST"]


def test_day_fields_and_ranges_as_classic_cron_reads_them() -> None:
    # */2 in the day of month is no restriction for the OR rule: both fields must match
    assert not Cron.parse("0 0 */2 * mon").is_tick(dt.datetime(2026, 12, 1, tzinfo=UTC))  # the 1st, a Tuesday
    # mon-sun is every day; 5- is refused
    assert Cron.parse("0 0 * * mon-sun").is_tick(SUNDAY_MIDNIGHT)
    with pytest.raises(CronError, match="day of week field '5-'"):
        Cron.parse("0 0 * * 5-")
