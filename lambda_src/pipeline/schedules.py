"""AWS schedule expressions read back: when did a schedule last fire before a given time?

An API source's first window is one schedule period long, so the handler needs the fire before this one.
Cron fields follow EventBridge (minutes hours day-of-month month day-of-week year, day-of-week 1-7 = SUN-SAT)
and are evaluated in the schedule's time zone, as EventBridge Scheduler does with ScheduleExpressionTimezone.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_MONTHS = {m: i for i, m in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV",
                                        "DEC"), 1)}
_DAYS = {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), 1)}


def _field(text: str, low: int, high: int, names: dict[str, int] | None = None) -> set[int] | None:
    """The values a cron field allows; None for any (* or ?). L, W and # are not supported (ValueError)."""
    if text in ("*", "?"):
        return None
    values: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            step = int(step_text)
        if part == "*":
            start, end = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = _value(a, names), _value(b, names)
        else:
            start = _value(part, names)
            end = high if step > 1 else start
        values.update(range(start, end + 1, step))
    return values


def _value(text: str, names: dict[str, int] | None) -> int:
    if names and text.upper() in names:
        return names[text.upper()]
    if not text.isdigit():
        raise ValueError(f"cron value {text!r} is not supported here")
    return int(text)


def previous_fire(expression: str, before: datetime, timezone: str = "UTC") -> datetime:
    """The last time the schedule fired strictly before `before` (an aware datetime)."""
    rate = _RATE.match(expression)
    if rate:
        n, unit = int(rate.group(1)), rate.group(2).rstrip("s")
        return before - timedelta(**{f"{unit}s": n})
    fields = expression[len("cron("):-1].split()
    minutes, hours = _field(fields[0], 0, 59), _field(fields[1], 0, 23)
    dom, month = _field(fields[2], 1, 31), _field(fields[3], 1, 12, _MONTHS)
    dow, years = _field(fields[4], 1, 7, _DAYS), _field(fields[5], 1970, 2199)
    local = before.astimezone(ZoneInfo(timezone))
    day = local.date()
    for _ in range(366 * 2):
        if ((dom is None or day.day in dom) and (month is None or day.month in month)
                and (dow is None or (day.isoweekday() % 7) + 1 in dow) and (years is None or day.year in years)):
            for hour in sorted(hours if hours is not None else range(24), reverse=True):
                for minute in sorted(minutes if minutes is not None else range(60), reverse=True):
                    at = datetime(day.year, day.month, day.day, hour, minute, tzinfo=local.tzinfo)
                    if at < local:
                        return at.astimezone(before.tzinfo)
        day -= timedelta(days=1)
    raise ValueError(f"{expression} does not fire in the two years before {before.isoformat()}")


def schedule_period(expression: str, at: datetime, timezone: str = "UTC", fallback_days: int = 1) -> timedelta:
    """The gap between the schedule's last two fires at or before `at` (a late or manual run keeps the period);
    `fallback_days` for cron features not read here."""
    try:
        last = previous_fire(expression, at.replace(second=0, microsecond=0) + timedelta(minutes=1), timezone)
        return last - previous_fire(expression, last, timezone)
    except ValueError:
        return timedelta(days=fallback_days)
