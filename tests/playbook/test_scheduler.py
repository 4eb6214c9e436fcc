"""The local scheduler: AWS cron and rate expressions in their time zones, replays and real-clock runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from pipeline.schedules import croniter_expression
from playbook.scheduler import (
    Schedule,
    ScheduleError,
    occurrences,
    replay,
    run_once,
    scheduled_event,
)
from tests.playbook.deployed import PREFIX

LONDON = ZoneInfo("Europe/London")
Q1_FROM, Q1_TO = datetime(2024, 1, 1, tzinfo=LONDON), datetime(2024, 4, 1, tzinfo=LONDON)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def days(start: date, end: date):
    d = start
    while d < end:
        yield d
        d += timedelta(days=1)


# -- expressions, counted independently with the calendar ------------------------------------------------
@pytest.mark.parametrize(("expression", "keep"), [
    ("cron(0 10 ? * 6L *)", lambda d: d.weekday() == 4 and (d + timedelta(days=7)).month != d.month),  # last Fri
    ("cron(0 10 ? * 2#1 *)", lambda d: d.weekday() == 0 and d.day <= 7),  # first Monday
    ("cron(0 10 ? * 2-6 *)", lambda d: d.weekday() < 5),  # MON-FRI as AWS numbers them (1 = Sunday)
    ("cron(0 10 ? * MON,WED *)", lambda d: d.weekday() in (0, 2)),
    ("cron(0 10 ? * 1 *)", lambda d: d.weekday() == 6),  # 1 is Sunday
    ("cron(0 10 ? * L *)", lambda d: d.weekday() == 5),  # the last day of the week: Saturday
    ("cron(0 10 L * ? *)", lambda d: (d + timedelta(days=1)).day == 1),
    ("cron(0 10 1,15 * ? *)", lambda d: d.day in (1, 15)),
    ("cron(0 10 1 */3 ? *)", lambda d: d.day == 1 and d.month in (1, 4, 7, 10)),
    ("cron(0 10 * * ? 2025)", lambda d: d.year == 2025),
])
def test_aws_cron_fires_on_the_days_the_calendar_says(expression, keep):
    start, end = date(2024, 1, 1), date(2026, 1, 1)
    expected = [datetime(d.year, d.month, d.day, 10, tzinfo=UTC) for d in days(start, end) if keep(d)]
    assert occurrences(expression, "UTC", utc(2024, 1, 1) - timedelta(seconds=1), utc(2025, 12, 31, 23, 59)) == expected


def test_nearest_weekday():
    got = occurrences("cron(0 10 15W * ? *)", "UTC", utc(2024, 6, 1), utc(2024, 10, 1))
    # 15 June 2024 is a Saturday (-> Fri 14th), 15 Sept a Sunday (-> Mon 16th)
    assert [t.day for t in got] == [14, 15, 15, 16]


def test_day_of_week_is_translated_to_croniter():
    assert croniter_expression("cron(0 8 ? * 2#1 *)") == "0 8 * * 1#1 0 *"
    assert croniter_expression("cron(15 6 ? * 6L 2030)") == "15 6 * * L5 0 2030"
    assert croniter_expression("cron(0/5 * * * ? *)") == "0/5 * * * * 0 *"


@pytest.mark.parametrize("bad", ["cron(0 8 * * *)", "cron(0 8 * * * *)", "cron(0 8 ? * ? *)", "cron(0 8 ? * 8 *)",
                                 "cron(0 25 * * ? *)", "rate(5 fortnights)", "rate(0 minutes)", "every day"])
def test_expressions_aws_rejects_are_rejected(bad):
    with pytest.raises(ScheduleError):
        occurrences(bad, "UTC", utc(2024, 1, 1), utc(2024, 2, 1))


def test_rate_counts_from_its_start_date():
    start = utc(2024, 5, 1, 0, 7)
    got = occurrences("rate(15 minutes)", "UTC", utc(2024, 5, 1, 0, 0), utc(2024, 5, 1, 1, 0), start_date=start)
    assert got == [start + timedelta(minutes=15 * k) for k in range(4)]
    day = occurrences("rate(1 day)", "Europe/London", utc(2024, 3, 29), utc(2024, 4, 2))
    assert all(t.hour == 0 for t in day) and len(day) == 4  # 24 h apart, whatever the clocks do


def test_daylight_saving_skipped_hour_does_not_fire_and_repeated_hour_fires_once():
    spring = occurrences("cron(30 1 * * ? *)", "Europe/London", utc(2024, 3, 30), utc(2024, 4, 1, 12))
    assert spring == [utc(2024, 3, 30, 1, 30), utc(2024, 4, 1, 0, 30)]  # 01:30 on 31 March does not exist
    autumn = occurrences("cron(30 1 * * ? *)", "Europe/London", utc(2024, 10, 26), utc(2024, 10, 28))
    assert autumn == [utc(2024, 10, 26, 0, 30), utc(2024, 10, 27, 0, 30)]  # the first 01:30 of the 27th, once


# -- the deployed schedules ----------------------------------------------------------------------------------
def expected_quarter(config) -> list[tuple[str, datetime]]:
    """The demo company's schedules over Q1 2024, from the calendar (not from cron)."""
    rules = {
        "ingest-sales": ((5, 30), lambda d: True), "ingest-trade-invoices": ((5, 30), lambda d: True),
        "ingest-interactions": ((5, 0), lambda d: True),
        "ingest-clients": ((5, 0), lambda d: d.weekday() == 0),
        "ingest-operating-costs": ((6, 0), lambda d: d.weekday() == 0),
        "ingest-payments": ((6, 0), lambda d: d.day in (1, 15)), "ingest-tax": ((6, 0), lambda d: d.day == 5),
        "ingest-euro-account": ((6, 0), lambda d: d.day == 1),
        "refresh-marts": ((7, 30), lambda d: True), "send-expense-email": ((8, 0), lambda d: True),
    }
    assert config.sources["sales"].schedule == "cron(30 5 * * ? *)"
    assert config.reports.email.schedule == "cron(0 8 * * ? *)"
    out = []
    for d in days(date(2024, 1, 1), date(2024, 4, 1)):
        for name, ((hour, minute), keep) in rules.items():
            if keep(d):
                out.append((f"{PREFIX}-{name}", datetime(d.year, d.month, d.day, hour, minute, tzinfo=LONDON)
                            .astimezone(UTC)))
    return sorted(out, key=lambda x: (x[1], x[0]))


def test_a_replayed_quarter_fires_exactly_the_expected_invocations(pipeline_stack):
    from playbook.config import load_config

    done = subprocess.run([sys.executable, "-m", "playbook", "schedule", "run", "--from", Q1_FROM.isoformat(), "--to",
                           Q1_TO.isoformat(), "--dry-run"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PLAYBOOK_STACK_PREFIX": PREFIX})
    assert done.returncode == 0, done.stdout + done.stderr
    fired = [(m.group(2), datetime.fromisoformat(m.group(1).replace("Z", "+00:00")))
             for m in re.finditer(r"^(\S+Z)  \(.*?\)  (\S+) +lambda \2  planned$", done.stdout, re.M)]
    expected = expected_quarter(load_config())
    assert fired == expected
    counts = {name: sum(1 for n, _ in fired if n == name) for name, _ in fired}
    assert counts[f"{PREFIX}-ingest-sales"] == counts[f"{PREFIX}-send-expense-email"] == 91
    assert counts[f"{PREFIX}-ingest-trade-invoices"] == 91
    assert counts[f"{PREFIX}-ingest-operating-costs"] == 13 and counts[f"{PREFIX}-ingest-payments"] == 6
    assert counts[f"{PREFIX}-ingest-tax"] == 3
    assert f"{len(expected)} firings planned (dry run), 0 failed" in done.stdout


def test_the_email_fires_at_eight_london_time_on_both_sides_of_each_clock_change(pipeline_stack):
    from playbook.scheduler import deployed_schedules

    email = [s for s in deployed_schedules() if s.name == f"{PREFIX}-send-expense-email"]
    assert len(email) == 1 and email[0].timezone == "Europe/London"
    spring = replay(utc(2024, 3, 30), utc(2024, 4, 1), dry_run=True, schedules=email)
    autumn = replay(utc(2024, 10, 26), utc(2024, 10, 28), dry_run=True, schedules=email)
    assert [f.time for f in spring] == [utc(2024, 3, 30, 8), utc(2024, 3, 31, 7)]  # GMT, then BST
    assert [f.time for f in autumn] == [utc(2024, 10, 26, 7), utc(2024, 10, 27, 8)]  # BST, then GMT
    # the target receives the schedule's Input, its context attributes filled in as Scheduler does
    event = autumn[1].event
    assert event["time"] == "2024-10-27T08:00:00Z" and "<aws.scheduler" not in json.dumps(event)
    assert event["job"] == "send_expense_email" and event["trigger"] == "schedule" and event["period"] == "week"
    assert event["id"] != autumn[0].event["id"] and event["id"] == replay(
        utc(2024, 10, 27), utc(2024, 10, 28), dry_run=True, schedules=email)[0].event["id"]  # stable per run


def test_a_schedule_without_input_delivers_the_scheduled_event_envelope():
    """As AWS does: Scheduler and EventBridge rules with no Input send their scheduled-event envelope; a rule
    with a constant Input sends that alone, its placeholders untouched (only Scheduler fills them in)."""
    arn = "arn:aws:scheduler:eu-west-2:123456789012:schedule/default/nightly"
    when = datetime(2024, 7, 1, 9, 0, tzinfo=ZoneInfo("Europe/London"))
    event = scheduled_event(Schedule(name="nightly", expression="cron(0 9 * * ? *)", arn=arn), when)
    assert {k: event[k] for k in ("version", "detail-type", "source", "account", "time", "region", "resources",
                                  "detail")} == {
        "version": "0", "detail-type": "Scheduled Event", "source": "aws.scheduler", "account": "123456789012",
        "time": "2024-07-01T08:00:00Z", "region": "eu-west-2", "resources": [arn], "detail": {}}
    assert event["id"] == scheduled_event(Schedule(name="nightly", expression="cron(0 9 * * ? *)", arn=arn),
                                          when)["id"]  # the same firing, the same id
    rule = Schedule(name="rule", expression="rate(1 day)", origin="events",
                    arn="arn:aws:events:eu-west-2:123456789012:rule/nightly")
    assert scheduled_event(rule, when)["source"] == "aws.events"
    constant = {"job": "x", "time": "<aws.scheduler.scheduled-time>"}
    rule.input = constant
    assert scheduled_event(rule, when) == constant


def test_schedules_fire_lambda_and_command_targets(pipeline_stack, tmp_path):
    out = tmp_path / "fired.txt"
    script = f"import os; open({str(out)!r}, 'a').write(os.environ['PLAYBOOK_SCHEDULED_TIME'] + '\\n')"
    (tmp_path / "schedules.json").write_text(json.dumps({"schedules": [
        {"name": "report-run", "expression": "cron(0 9 * * ? *)", "timezone": "Europe/London",
         "target": {"type": "command", "argv": [sys.executable, "-c", script]}},
        {"name": "probe", "expression": "rate(12 hours)",
         "input": {"ping": 1, "time": "<aws.scheduler.scheduled-time>"},
         "target": {"type": "lambda", "function": f"{PREFIX}-probe-echo"}},
    ]}))
    from playbook.scheduler import local_schedules

    schedules = local_schedules(tmp_path / "schedules.json")
    firings = replay(utc(2024, 7, 1), utc(2024, 7, 3), schedules=schedules)
    assert out.read_text().split() == ["2024-07-01T08:00:00Z", "2024-07-02T08:00:00Z"]
    probes = [f for f in firings if f.schedule.name == "probe"]
    assert [f.time for f in probes] == [utc(2024, 7, 1), utc(2024, 7, 1, 12), utc(2024, 7, 2), utc(2024, 7, 2, 12)]
    assert all(f.status == "ok" for f in firings)
    from playbook.runtime import invoke

    echoed = invoke(f"{PREFIX}-probe-echo", probes[0].event).payload["event"]
    assert echoed["ping"] == 1 and echoed["time"] == "2024-07-01T00:00:00Z"


def test_once_fires_what_is_due_since_the_last_run(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("PLAYBOOK_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("PLAYBOOK_STACK_PREFIX", "pbonce")
    out = tmp_path / "fired.txt"
    script = f"import os; open({str(out)!r}, 'a').write(os.environ['PLAYBOOK_SCHEDULED_TIME'] + '\\n')"
    every_minute = [Schedule(name="tick", expression="rate(1 minute)", origin="local",
                             target={"type": "command", "argv": [sys.executable, "-c", script]})]
    t0 = utc(2024, 5, 1, 12, 0, 30)
    assert [f.time for f in run_once(t0, schedules=every_minute)] == [utc(2024, 5, 1, 12, 0)]  # first run: now only
    assert run_once(t0 + timedelta(seconds=20), schedules=every_minute) == []
    later = run_once(t0 + timedelta(minutes=3), schedules=every_minute)
    assert [f.time for f in later] == [utc(2024, 5, 1, 12, m) for m in (1, 2, 3)]
    assert len(out.read_text().split()) == 4
    assert run_once(t0 + timedelta(minutes=5), dry_run=True, schedules=every_minute)[-1].status == "planned"
    assert len(out.read_text().split()) == 4  # a dry run fires nothing


def test_a_provision_or_deploy_for_another_zone_brings_the_registered_report_run_to_it(tmp_path, monkeypatch):
    import yaml

    from pipeline.config import PipelineConfig
    from playbook.settings import DEFAULT_CONFIG
    from playbook.stages import REPORT_SCHEDULE_NAME, refresh_report_schedule, register_report_schedule
    from playbook.targets import target_named

    monkeypatch.setenv("PLAYBOOK_STATE_DIR", str(tmp_path))
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    local, aws = target_named("local"), target_named("aws")
    london = PipelineConfig.model_validate(data)
    assert refresh_report_schedule(local, london) is None  # nothing registered: nothing to bring along
    register_report_schedule(local, london)
    data["company"]["timezone"] = "America/New_York"
    data["reports"]["schedule"] = "cron(0 7 * * ? *)"
    refresh_report_schedule(local, PipelineConfig.model_validate(data))
    from playbook.scheduler import local_schedules

    [entry] = [s for s in local_schedules() if s.name == REPORT_SCHEDULE_NAME]
    assert (entry.timezone, entry.expression) == ("America/New_York", "cron(0 7 * * ? *)")
    assert refresh_report_schedule(aws, london) is None  # AWS keeps no local entries
