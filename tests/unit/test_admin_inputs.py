"""What operators type as a rate: a finite number in range, or an error that says why; the
same parser serves the CLI (`--rate`), the dashboard's requeue form and its confirmation."""

from __future__ import annotations

import pytest

from triage.admin.dashboard.actions import rate_of
from triage.admin.dlq_model import MAX_RATE, rate


@pytest.mark.parametrize("text", ["nan", "NaN/s", "inf", "-inf/m", "1e400", "infinity/h", "0", "-5/s", "fast"])
def test_a_rate_that_is_not_a_finite_positive_number_is_refused(text: str) -> None:
    # Given what an operator typed in the requeue form or after --rate
    # When it is read, Then it is refused with a message that quotes it
    with pytest.raises(ValueError, match="is not a rate"):
        rate(text)
    with pytest.raises(ValueError, match="is not a rate"):
        rate_of(text)


def test_a_rate_beyond_any_pace_is_refused_and_the_usual_ones_read() -> None:
    # Given rates per second, minute and hour
    # Then they read as messages per second, up to MAX_RATE and no further
    assert (rate("50/s"), rate("600/m"), rate("3600/h"), rate(str(MAX_RATE))) == (50, 10, 1, MAX_RATE)
    with pytest.raises(ValueError, match="over 100,000 per second"):
        rate(f"{MAX_RATE + 1}/s")
    # And the form's blank field is no rate at all (as fast as Redis takes them)
    assert rate_of("  ") is None
