"""A small 5-field crontab matcher for ``CRON_FREQUENCY``: extra check times, in UTC.

Fields: minute hour day-of-month month day-of-week, each ``*``, ``N``, ``A-B``, ``*/S``, ``A-B/S``
or a comma list of those; month and weekday names (``jan``, ``mon``) and ``7`` for Sunday; the macros
``@hourly``, ``@daily``/``@midnight``, ``@weekly``, ``@monthly``, ``@yearly``/``@annually``. As in cron,
when both day fields are restricted a day matches if either does.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from certkeeper.errors import ConfigError

MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
MONTHS = {
    m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)
}
DAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, DAYS),
)


def _value(text: str, names: dict[str, int], low: int, high: int, what: str, expr: str) -> int:
    lowered = text.lower()
    if lowered in names:
        return names[lowered]
    if not text.isdigit():
        raise ConfigError(f"CRON_FREQUENCY {expr!r}: {what} {text!r} is not a number", "e.g. 0 3 * * *")
    number = int(text)
    if not low <= number <= high:
        raise ConfigError(f"CRON_FREQUENCY {expr!r}: {what} {number} is outside {low}-{high}")
    return number


def _field(text: str, what: str, low: int, high: int, names: dict[str, int], expr: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ConfigError(f"CRON_FREQUENCY {expr!r}: step {step_text!r} in the {what} is not a positive number")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _value(a, names, low, high, what, expr), _value(b, names, low, high, what, expr)
            if start > end:
                raise ConfigError(f"CRON_FREQUENCY {expr!r}: range {base!r} in the {what} runs backwards")
        else:
            start = _value(base, names, low, high, what, expr)
            end = high if slash else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        text = MACROS.get(expression.strip().lower(), expression.strip())
        parts = text.split()
        if len(parts) != 5:
            raise ConfigError(
                f"CRON_FREQUENCY {expression!r} has {len(parts)} field{'' if len(parts) == 1 else 's'}, not 5",
                "give minute hour day-of-month month day-of-week, e.g. 0 3 * * *",
            )
        sets = [
            _field(p, what, low, high, names, expression)
            for p, (what, low, high, names) in zip(parts, FIELDS, strict=True)
        ]
        weekdays = frozenset(0 if d == 7 else d for d in sets[4])
        return cls(expression, sets[0], sets[1], sets[2], sets[3], weekdays, parts[2] == "*", parts[4] == "*")

    def _day_matches(self, day: datetime.date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow

    def next_after(self, moment: datetime.datetime) -> datetime.datetime | None:
        """The first matching minute strictly after ``moment`` (UTC), within five years."""
        moment = moment.astimezone(datetime.UTC)
        start = moment.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
        day = start.date()
        for _ in range(366 * 5):
            if self._day_matches(day):
                first = start if day == start.date() else None
                for hour in sorted(self.hours):
                    if first is not None and hour < first.hour:
                        continue
                    for minute in sorted(self.minutes):
                        if first is not None and hour == first.hour and minute < first.minute:
                            continue
                        return datetime.datetime(day.year, day.month, day.day, hour, minute, tzinfo=datetime.UTC)
            day += datetime.timedelta(days=1)
        return None
