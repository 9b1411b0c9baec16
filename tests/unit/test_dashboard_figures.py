"""The figures the dashboard computes: the wait percentile from the per-minute buckets, a card's
status against its SLA, the bar charts, durations for people."""

from __future__ import annotations

import pytest

from triage.admin.dashboard.charts import bars
from triage.admin.dashboard.data import seconds, status_of
from triage.broker.hourly import WAIT_FIELDS, wait_quantile


def waits(**counts: int) -> dict[str, int]:
    return {field: counts.get(field, 0) for field in WAIT_FIELDS}


def test_the_wait_percentile_is_read_within_its_bucket() -> None:
    # 90 waits under 5 ms, 10 between 0.5 s and 1 s: p50 in the first bucket, p95 in the 0.5-1 s one
    sums = waits(wait_le_5=90, wait_le_1000=10)
    assert wait_quantile(sums, 0.5) == pytest.approx(0.005 * 50 / 90)
    assert wait_quantile(sums, 0.95) == pytest.approx(0.5 + 0.5 * 5 / 10)
    assert wait_quantile(waits(), 0.95) is None
    assert wait_quantile(waits(wait_le_inf=3), 0.95) == float("inf")  # past the last bound: by how much, unknown


@pytest.mark.parametrize(
    ("oldest", "p95", "waiting", "workers", "status"),
    [
        (0.1, 0.2, 0, 0, "green"),
        (0.1, None, 5, 1, "green"),
        (1.2, 0.2, 5, 1, "amber"),  # over half the 2 s SLA
        (0.1, 0.2, 5, 0, "amber"),  # work waiting, nobody to do it
        (2.5, 0.2, 5, 1, "red"),
        (0.1, 3.0, 0, 1, "red"),  # the recent p95 missed it
    ],
)
def test_a_cards_status_against_a_2_second_sla(
    oldest: float, p95: float | None, waiting: int, workers: int, status: str
) -> None:
    assert status_of(oldest, p95, 2.0, waiting, workers) == status


def test_bars_are_scaled_to_the_peak_and_named_for_screen_readers() -> None:
    svg = str(bars([0, 5, 10], 'Done per minute <"q">', "done"))
    assert svg.count("<rect") == 2
    assert 'aria-label="Done per minute &lt;&#34;q&#34;&gt;: 15 in all, peak 10 per minute"' in svg
    assert "<script" not in svg
    assert str(bars([], "none", "done")).count("<rect") == 0


def test_durations_read_as_people_say_them() -> None:
    assert [seconds(v) for v in (None, 0.0123, 12.5, 600, 9000, float("inf"))] == [
        "-",
        "12 ms",
        "12.5 s",
        "10.0 min",
        "2.5 h",
        "> 1 h",
    ]
