"""Cron schedules: `*/5 * * * *`, `0 9 * * mon-fri`, `@hourly`, `@daily`, `@weekly`, `@monthly`,
in a time zone, as exact instants.

Guarantees:
- Five fields (minute, hour, day of month, month, day of week) with `*`, lists, ranges and
  steps; months and weekdays by number or three-letter name. Sunday is `0`, `7` or `sun`
  (`@weekly` is Sunday 00:00): periodiq 0.14.0 compares ISO weekdays (Sunday = 7) with a list
  in which Sunday is 0, so its Sunday never fires; this one does (`mon-sun` too). When both
  day fields are restricted a day matches either; a field that starts with `*` (`*/2`) is not
  a restriction (classic cron).
- Ticks are instants: wall-clock times in the schedule's zone (UTC by default). A time that a
  spring-forward transition skips fires once, shifted by the gap (02:30 in a 02:00 -> 03:00
  gap fires at 03:30); a time that a fall-back transition repeats fires once, at its first
  occurrence, unless the spec runs every hour (hour field `*` or `*/n`, as in classic cron):
  then both occurrences fire, and an hourly job runs each of the day's 25 hours. Two ticks
  are never the same instant.
- `next_after(t)` is the first tick strictly after `t`; `latest_at_or_before(t)` the last tick
  at or before it; `is_tick(t)` whether `t`'s minute is one. A spec that never fires (such as
  `0 0 30 2 *`) is refused at parse time, like every malformed field, with a `CronError` that
  names the field.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = dt.UTC
MINUTE = dt.timedelta(minutes=1)
SEARCH_DAYS = 366 * 8  # enough for any spec that fires at all (29 February: every 4 to 8 years)
NAMED = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, lowest, highest, names for lowest.. ) per field
FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, DAYS),
)


class CronError(ValueError):
    """A cron spec that cannot be parsed, or that never fires; the message names the field."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r} (an IANA name such as UTC or Europe/Paris)") from None


@dataclass(frozen=True)
class Cron:
    spec: str
    tz: ZoneInfo
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool
    every_hour: bool  # the hour field is * (or */n): a repeated wall-clock hour fires twice
    _cache: dict[dt.date, list[dt.datetime]] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def parse(cls, spec: str, tz: str = "UTC") -> Cron:
        text = NAMED.get(spec.strip().lower(), spec.strip())
        parts = text.split()
        if len(parts) != 5:
            raise CronError(f"cron spec {spec!r}: needs 5 fields (minute hour day month weekday) or @hourly/@daily/...")
        values = [_field(part, *field, spec=spec) for part, field in zip(parts, FIELDS, strict=True)]
        minutes, hours, days, months, weekdays = values
        cron = cls(
            spec=spec.strip(),
            tz=zone(tz),
            minutes=tuple(sorted(minutes)),
            hours=tuple(sorted(hours)),
            days=frozenset(days),
            months=frozenset(months),
            weekdays=frozenset(day % 7 for day in weekdays),
            days_restricted=not parts[2].startswith("*"),  # `*/2` is not a restriction (classic cron)
            weekdays_restricted=not parts[4].startswith("*"),
            every_hour=parts[1].startswith("*"),
        )
        if cron.next_after(dt.datetime(2000, 1, 1, tzinfo=UTC)) is None:
            raise CronError(f"cron spec {spec!r} never fires (no such day)")
        return cron

    def __str__(self) -> str:
        return self.spec if self.tz.key == "UTC" else f"{self.spec} ({self.tz.key})"

    def day_matches(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        by_day, by_weekday = day.day in self.days, day.isoweekday() % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return by_day or by_weekday
        return by_day and by_weekday

    def _ticks_of(self, day: dt.date) -> list[dt.datetime]:
        """The day's ticks, as UTC instants, in order (fold 0: a skipped time is shifted by the
        gap, a repeated one taken at its first occurrence; both occurrences of a repeated time,
        for a spec that runs every hour). Cached per spec, a few days at a time."""
        cached = self._cache.get(day)
        if cached is None:
            if len(self._cache) > 16:
                self._cache.clear()
            ticks: set[dt.datetime] = set()
            for hour in self.hours:
                for minute in self.minutes:
                    wall = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=self.tz)
                    ticks.add(wall.astimezone(UTC))
                    if self.every_hour and _repeated(wall):
                        ticks.add(wall.replace(fold=1).astimezone(UTC))
            cached = self._cache[day] = sorted(ticks)
        return cached

    def _days(self, start: dt.date, step: int) -> Iterator[dt.date]:
        for offset in range(SEARCH_DAYS):
            day = start + dt.timedelta(days=offset * step)
            if self.day_matches(day):
                yield day

    def next_after(self, t: dt.datetime) -> dt.datetime | None:
        """The first tick strictly after `t` (aware), as a UTC instant; None if there is none."""
        t = t.astimezone(UTC)
        start = t.astimezone(self.tz).date() - dt.timedelta(days=1)  # a shifted tick may cross midnight
        for day in self._days(start, 1):
            later = [tick for tick in self._ticks_of(day) if tick > t]
            if later:
                return later[0]
        return None

    def latest_at_or_before(self, t: dt.datetime) -> dt.datetime | None:
        """The last tick at or before `t` (aware), as a UTC instant; None if there is none."""
        t = t.astimezone(UTC)
        start = t.astimezone(self.tz).date() + dt.timedelta(days=1)
        for day in self._days(start, -1):
            earlier = [tick for tick in self._ticks_of(day) if tick <= t]
            if earlier:
                return earlier[-1]
        return None

    def is_tick(self, t: dt.datetime) -> bool:
        """Whether the minute of `t` is a tick."""
        minute = t.astimezone(UTC).replace(second=0, microsecond=0)
        return self.next_after(minute - MINUTE) == minute

    def period_at(self, tick: dt.datetime) -> dt.timedelta:
        """Time from `tick` to the next one (a day's gap for a daily spec, an hour for hourly)."""
        following = self.next_after(tick)
        return following - tick if following is not None else dt.timedelta(days=366)


def _repeated(wall: dt.datetime) -> bool:
    """Whether a wall-clock time happens twice (a fall-back transition): both folds are real
    times with different offsets (in a spring-forward gap neither maps back to itself)."""
    later = wall.replace(fold=1)
    if wall.utcoffset() == later.utcoffset():
        return False
    return later.astimezone(UTC).astimezone(wall.tzinfo).replace(tzinfo=None) == wall.replace(tzinfo=None)


def _field(text: str, name: str, low: int, high: int, names: tuple[str, ...], *, spec: str) -> set[int]:
    where = f"cron spec {spec!r}, {name} field {text!r}"
    found: set[int] = set()
    for part in text.lower().split(","):
        span, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            top = 6 if names is DAYS else high  # a weekday range or step without an end stops at Saturday
            if span == "*":
                first, last = low, top
            else:
                first_text, dash, last_text = span.partition("-")
                if dash and not last_text:
                    raise ValueError(span)
                first = _value(first_text, names, low)
                last = _value(last_text, names, low) if last_text else (top if step_text else first)
                if names is DAYS and last_text == "sun" and first > 0:
                    last = 7  # mon-sun: Sunday at the end of a range is 7
        except ValueError:
            raise CronError(f"{where}: not a number, range, step or name") from None
        if step < 1 or not (low <= first <= last <= high):
            raise CronError(f"{where}: values must be {low}-{high}, ranges low-high, steps 1 or more")
        found.update(range(first, last + 1, step))
    return found


def _value(text: str, names: tuple[str, ...], low: int) -> int:
    if text in names:
        return names.index(text) + low
    return int(text)
