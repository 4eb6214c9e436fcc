"""Report periods: inclusive ranges of calendar days in the company's time zone, written the same way everywhere."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta


@dataclass(frozen=True)
class Period:
    start: date
    end: date  # inclusive

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"a period cannot end ({self.end}) before it starts ({self.start})")

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def previous(self) -> Period:
        """The period of the same length just before this one (what 'change' is measured against)."""
        return Period(self.start - timedelta(days=self.days), self.start - timedelta(days=1))

    def comparable(self) -> Period:
        """What this period is compared with: the month before for a month (a calendar month, or a month to its
        end day, as `trailing('month', ...)` gives), so that each holds one of every monthly bill; else the
        period of the same length just before."""
        before = self.start - timedelta(days=1)
        if self.start.day == 1 and (self.end + timedelta(days=1)).day == 1 and self.days <= 31:
            return Period(before.replace(day=1), before)
        if self.start == months_before(self.end, 1) + timedelta(days=1):
            return Period(months_before(before, 1) + timedelta(days=1), before)
        return self.previous()

    def each_day(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range(self.days)]

    def year_before(self) -> Period:
        """The same calendar days a year earlier (29 Feb falls back to 28 Feb)."""
        return Period(months_before(self.start, 12), months_before(self.end, 12))

    def describe(self) -> str:
        """'1 Jul 2024 - 7 Jul 2024 (7 days)', or '7 Jul 2024' for a single day."""
        if self.days == 1:
            return format_day(self.start)
        return f"{format_day(self.start)} – {format_day(self.end)} ({self.days} days)"

    def as_dict(self) -> dict[str, str]:
        return {"from": self.start.isoformat(), "to": self.end.isoformat()}


def format_day(day: date) -> str:
    return f"{day.day} {day:%b %Y}"


def months_before(day: date, months: int) -> date:
    """The same day of the month `months` earlier, clamped to the month's last day (31 Mar -> 29 Feb)."""
    index = day.year * 12 + day.month - 1 - months
    year, month = divmod(index, 12)
    month += 1
    following = date(year + (month == 12), month % 12 + 1, 1)
    return min(day.replace(year=year, month=month, day=1) + timedelta(days=day.day - 1),
               following - timedelta(days=1))


def trailing(kind: str, end: date) -> Period:
    """The `day`, `week` (7 days) or `month` (since the same day a month earlier) ending on `end`."""
    if kind == "day":
        return Period(end, end)
    if kind == "week":
        return Period(end - timedelta(days=6), end)
    if kind == "month":
        return Period(months_before(end, 1) + timedelta(days=1), end)
    raise ValueError(f"unknown period {kind!r}: use day, week, month or custom")
