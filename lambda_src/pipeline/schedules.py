"""When a schedule fires: the one reading of AWS schedule expressions, for the local scheduler, the freshness
check and an API source's windows.

Expressions are AWS's: `cron(min hour day-of-month month day-of-week year)` (day-of-week 1-7 = SUN-SAT),
`rate(n unit)` and `at(time)`, evaluated in the schedule's time zone as EventBridge Scheduler does with
ScheduleExpressionTimezone. cron fields are handed to croniter (see `croniter_expression`); daylight saving is
handled as EventBridge Scheduler documents it: croniter walks the local wall clock, a wall time the spring
change skips does not fire, and one the autumn change repeats fires once (its first instant). A `rate`
schedule fires every n units from its start date (the source's `start_date`, the schedule's StartDate on
AWS), a day being 24 h; without one it counts from the Unix epoch, which is why a rate of more than a day
needs a start date to mean the same days everywhere.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

DOW_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
RATE_UNITS = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86400, "days": 86400}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ScheduleError(ValueError):
    """A schedule expression that cannot be evaluated, in its own words."""


def _dow_value(token: str, expression: str) -> str:
    """One AWS day-of-week value (1-7 = SUN-SAT, or a name) as croniter's (0-6 = SUN-SAT, or a name)."""
    if token.upper() in DOW_NAMES:
        return token.lower()
    if token.isdigit() and 1 <= int(token) <= 7:
        return str(int(token) - 1)
    raise ScheduleError(f"{expression}: day-of-week {token!r} is not 1-7 or SUN-SAT")


def _dow_item(item: str, expression: str) -> str:
    if item in ("*", "?"):
        return "*"
    if item.upper() == "L":  # the last day of the week
        return "6"
    if "#" in item:  # the nth given weekday of the month: 6#3 = the third Friday
        day, nth = item.split("#", 1)
        return f"{_dow_value(day, expression)}#{nth}"
    if item.upper().endswith("L"):  # the last given weekday of the month: 6L = the last Friday
        day = _dow_value(item[:-1], expression)
        return f"L{DOW_NAMES.index(day.upper()) if not day.isdigit() else day}"
    step = ""
    if "/" in item:
        item, step = item.split("/", 1)
        step = f"/{step}"
    if item == "*":
        return f"*{step}"
    if "-" in item:
        low, high = item.split("-", 1)
        return f"{_dow_value(low, expression)}-{_dow_value(high, expression)}{step}"
    return _dow_value(item, expression) + step


def croniter_expression(expression: str) -> str:
    """`cron(min hour dom month dow year)` as croniter's seven fields `min hour dom month dow second year`.

    Only day-of-week needs translating (AWS counts 1-7 from Sunday, croniter 0-6); `?` means "any" in
    both. AWS requires `?` in day-of-month or day-of-week, so croniter's OR of the two never applies.
    """
    match = re.fullmatch(r"cron\((.*)\)", expression.strip())
    if not match:
        raise ScheduleError(f"{expression!r} is not a cron(...) expression")
    fields = match.group(1).split()
    if len(fields) != 6:
        raise ScheduleError(f"{expression}: AWS cron has six fields (minutes hours day-of-month month "
                            f"day-of-week year), not {len(fields)}")
    minute, hour, dom, month, dow, year = fields
    if (dom == "?") == (dow == "?"):
        raise ScheduleError(f"{expression}: exactly one of day-of-month and day-of-week must be '?'")
    if "LW" in dom.upper():
        raise ScheduleError(f"{expression}: 'LW' is not supported here; use 'L' or a day with 'W'")
    dow = ",".join(_dow_item(item, expression) for item in dow.split(","))
    result = " ".join([minute, hour, "*" if dom == "?" else dom, month, dow, "0", year])
    from croniter import croniter

    if not croniter.is_valid(result):
        raise ScheduleError(f"{expression}: not a valid AWS cron expression")
    return result


def rate_seconds(expression: str) -> int | None:
    """A rate expression's step in seconds; None for another kind of expression."""
    if not expression.strip().startswith("rate("):
        return None
    match = re.fullmatch(r"rate\((\d+)\s+(\w+)\)", expression.strip())
    if not match or match.group(2) not in RATE_UNITS or int(match.group(1)) < 1:
        raise ScheduleError(f"{expression}: a rate is rate(<n> minutes|hours|days)")
    return int(match.group(1)) * RATE_UNITS[match.group(2)]


def local_time(value: str | datetime, timezone: str) -> datetime:
    """An ISO 8601 time (or a datetime); one without an offset is a wall time in `timezone`, and in the hour
    the autumn change repeats it is the first of the two instants, as a schedule fires."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ScheduleError(f"{value!r} is not an ISO 8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=ZoneInfo(timezone or "UTC"), fold=0)


def _exists(local: datetime, tz: ZoneInfo) -> bool:
    """False for a wall time the spring change skips (it does not survive a round trip through UTC)."""
    aware = local.replace(tzinfo=tz)
    return aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == local


def occurrences(expression: str, timezone: str, after: datetime, until: datetime,
                start_date: datetime | None = None) -> list[datetime]:
    """Every time (UTC) the expression fires with after < t <= until (and not before start_date)."""
    from croniter import CroniterBadDateError, croniter

    tz = ZoneInfo(timezone or "UTC")
    after, until = after.astimezone(UTC), until.astimezone(UTC)
    if start_date is not None:
        after = max(after, start_date.astimezone(UTC) - timedelta(microseconds=1))
    expression = expression.strip()
    step = rate_seconds(expression)
    if step is not None:
        anchor = (start_date or EPOCH).astimezone(UTC)
        first = max(0, math.floor((after - anchor).total_seconds() / step) + 1)
        times, k = [], first
        while (t := anchor + timedelta(seconds=k * step)) <= until:
            if t > after:
                times.append(t)
            k += 1
        return times
    if expression.startswith("at("):
        match = re.fullmatch(r"at\((.+)\)", expression)
        when = local_time(match.group(1), timezone).astimezone(UTC) if match else None
        return [when] if when and after < when <= until else []
    cron = croniter_expression(expression)
    # walk the local wall clock from a little before the window (a DST change moves it by an hour)
    local_start = after.astimezone(tz).replace(tzinfo=None) - timedelta(hours=3)
    it = croniter(cron, local_start)
    times = []
    while True:
        try:
            local = it.get_next(datetime)
        except CroniterBadDateError:  # no further match (a past year)
            break
        if not _exists(local, tz):
            continue
        instant = local.replace(tzinfo=tz).astimezone(UTC)  # fold=0: a repeated wall time fires once, first
        if instant > until + timedelta(hours=3):
            break
        if after < instant <= until:
            times.append(instant)
    return sorted(times)


def previous_fire(expression: str, before: datetime, timezone: str = "UTC",
                  start_date: datetime | None = None) -> datetime:
    """The last time the schedule fired strictly before `before` (an aware datetime), in before's zone."""
    until = before - timedelta(microseconds=1)
    for span in (timedelta(days=2), timedelta(days=40), timedelta(days=800)):
        fired = occurrences(expression, timezone, until - span, until, start_date)
        if fired:
            return fired[-1].astimezone(before.tzinfo)
    raise ScheduleError(f"{expression} does not fire in the two years before {before.isoformat()}")


def schedule_period(expression: str, at: datetime, timezone: str = "UTC", fallback_days: int = 1,
                    start_date: datetime | None = None) -> timedelta:
    """The gap between the schedule's last two fires at or before `at` (a late or manual run keeps the period);
    `fallback_days` when it has not fired twice yet."""
    try:
        last = previous_fire(expression, at.replace(second=0, microsecond=0) + timedelta(minutes=1), timezone,
                             start_date)
        return last - previous_fire(expression, last, timezone, start_date)
    except ScheduleError:
        return timedelta(days=fallback_days)
