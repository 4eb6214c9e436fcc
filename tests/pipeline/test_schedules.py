"""When a schedule fires, read one way everywhere: across the 2025 clock changes in four zones, and a rate of
fourteen days counted from its configured start by the template, the local scheduler and the freshness check.

The expected times come from the calendar (zoneinfo), not from croniter: each day's wall time, skipped when the
spring change jumps over it, and its first instant when the autumn change repeats it."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import yaml

from pipeline.config import PipelineConfig
from pipeline.schedules import previous_fire
from playbook.accuracy.freshness import run_days
from playbook.scheduler import _from_record, occurrences
from playbook.settings import DEFAULT_CONFIG
from playbook.templates import render_pipeline

# each zone's 2025 changes: (spring day, autumn day); Kolkata keeps one offset all year
CHANGES = {
    "Europe/London": (date(2025, 3, 30), date(2025, 10, 26)),
    "America/New_York": (date(2025, 3, 9), date(2025, 11, 2)),
    "Australia/Sydney": (date(2025, 10, 5), date(2025, 4, 6)),
    "Asia/Kolkata": (date(2025, 3, 30), date(2025, 10, 26)),
}


def calendar_fires(zone: str, wall: time, first: date, last: date) -> list[datetime]:
    """The instants (UTC) a daily schedule at `wall` fires, from the calendar."""
    tz = ZoneInfo(zone)
    out = []
    day = first
    while day <= last:
        local = datetime.combine(day, wall)
        instant = local.replace(tzinfo=tz, fold=0).astimezone(UTC)
        if instant.astimezone(tz).replace(tzinfo=None) == local:  # not skipped by the spring change
            out.append(instant)
        day += timedelta(days=1)
    return out


@pytest.mark.parametrize("zone", sorted(CHANGES))
@pytest.mark.parametrize("wall", [time(1, 30), time(2, 30)])
def test_previous_fire_and_the_scheduler_agree_with_the_calendar_across_both_clock_changes(zone, wall):
    expression = f"cron({wall.minute} {wall.hour} * * ? *)"
    for change in CHANGES[zone]:
        first, last = change - timedelta(days=3), change + timedelta(days=3)
        expected = calendar_fires(zone, wall, first, last)
        window = (datetime.combine(first, time(0), ZoneInfo(zone)), datetime.combine(last, time(23, 59),
                                                                                       ZoneInfo(zone)))
        assert occurrences(expression, zone, *window) == expected
        # every quarter of an hour of the week (stepped in UTC: wall-clock steps land in the gap): the last fire
        # strictly before it
        at = window[0].astimezone(UTC) + timedelta(days=1)
        while at < window[1]:
            before = [e for e in expected if e < at]
            # compared in UTC: Python never calls a time in the repeated hour equal to one in another zone
            assert previous_fire(expression, at, zone).astimezone(UTC) == before[-1], (zone, expression, at)
            at += timedelta(minutes=15)
    if zone == "Europe/London":  # the skipped 01:30 of 30 March, the first 01:30 (BST) of 26 October
        fired = occurrences(expression, zone, datetime(2025, 3, 29, tzinfo=UTC), datetime(2025, 3, 31, 12, tzinfo=UTC))
        assert [f.date() for f in fired] == ([date(2025, 3, 29), date(2025, 3, 31)] if wall.hour == 1 else
                                             [date(2025, 3, 29), date(2025, 3, 30), date(2025, 3, 31)])
        if wall.hour == 1:
            assert datetime(2025, 10, 26, 0, 30, tzinfo=UTC) in occurrences(
                expression, zone, datetime(2025, 10, 25, tzinfo=UTC), datetime(2025, 10, 27, tzinfo=UTC))


def _company(schedule: str, start: str | None) -> PipelineConfig:
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["sources"]["payments"]["schedule"] = schedule
    if start:
        data["sources"]["payments"]["start_date"] = start
    return PipelineConfig.model_validate(data)


def test_a_fourteen_day_rate_fires_on_the_same_days_in_the_template_the_scheduler_and_the_freshness_check():
    config = _company("rate(14 days)", "2025-01-06T06:00")  # a Monday, 06:00 in London
    zone = config.company.timezone
    source = config.sources["payments"]
    start = source.starts(zone)
    assert start == datetime(2025, 1, 6, 6, 0, tzinfo=ZoneInfo(zone))
    # the template's StartDate: EventBridge Scheduler refuses one in the past, so the cycle's next fire, on cycle
    template = render_pipeline(config)
    [props] = [r["Properties"] for r in template["Resources"].values()
               if r["Type"] == "AWS::Scheduler::Schedule" and '"payments"' in r["Properties"]["Target"]["Input"]]
    assert props["ScheduleExpression"] == "rate(14 days)"
    start_date = datetime.fromisoformat(props["StartDate"].replace("Z", "+00:00"))
    assert start_date > datetime.now(UTC) and (start_date - start).total_seconds() % (14 * 86400) == 0
    # the local scheduler reads the schedule as provisioning records it (stand_ins: the template's properties)
    local = _from_record({"name": "p", "expression": props["ScheduleExpression"], "start_date": props["StartDate"],
                          "timezone": props["ScheduleExpressionTimezone"], "function": "f"}, "scheduler")
    first, last = start_date.date(), start_date.date() + timedelta(days=120)
    scheduler_days = [f.date() for f in occurrences(local.expression, local.timezone,
                                                    datetime.combine(first, time(0), UTC) - timedelta(seconds=1),
                                                    datetime.combine(last, time(23, 59), UTC), local.start_date)]
    freshness_days = run_days(source.schedule, zone, first, last, start)
    assert scheduler_days == freshness_days
    assert len(scheduler_days) == 9 and {d.weekday() for d in scheduler_days} == {0}
    assert all((b - a).days == 14 for a, b in zip(scheduler_days, scheduler_days[1:], strict=False))
    # from the configured start, whatever the window: the same cycle back in 2025
    assert run_days(source.schedule, zone, date(2025, 1, 1), date(2025, 2, 28), start) == [
        date(2025, 1, 6), date(2025, 1, 20), date(2025, 2, 3), date(2025, 2, 17)]


def test_a_rate_of_more_than_a_day_needs_its_start():
    with pytest.raises(ValueError, match=r"start_date: rate\(14 days\) needs the day its cycle counts from"):
        _company("rate(14 days)", None)
    assert _company("rate(1 day)", None).sources["payments"].start_date is None
