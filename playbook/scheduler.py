"""`playbook schedule run`: fire the deployed schedules through the local runtime, on a real or simulated clock.

The schedules are the deployment's own: EventBridge Scheduler schedules (through its API where the
emulator has them, and as provisioning recorded the stand-ins in `<state dir>/schedules.json`), EventBridge
rules with a schedule expression, and local entries in `<state dir>/local_schedules.json` whose target may
also be a command (`{"target": {"type": "command", "argv": [...]}}`), for jobs that are not functions.

Expressions are AWS's, read by pipeline.schedules, the one reading the freshness check and an API source's
windows use too (daylight saving as EventBridge Scheduler documents it; a rate from its start date).
A run fires each occurrence once, in time order; it does not retry a failed target.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pipeline import schedules
from playbook.errors import PlaybookError

_EVENT_NAMESPACE = uuid.UUID("6f1c1a5e-9a59-4f0e-8f2f-3f1f6d0e3a11")


class ScheduleError(PlaybookError):
    """A schedule expression or entry the scheduler cannot evaluate."""


# -- expressions: pipeline.schedules reads them, for the scheduler, the freshness check and the API windows --
def _in_playbook_words(read):
    """pipeline.schedules' reading, its errors a ScheduleError the CLI reports."""
    @functools.wraps(read)
    def wrapped(*args, **kwargs):
        try:
            return read(*args, **kwargs)
        except schedules.ScheduleError as exc:
            raise ScheduleError(str(exc)) from None

    return wrapped


occurrences = _in_playbook_words(schedules.occurrences)


@_in_playbook_words
def _parse_time(value: str, tz: ZoneInfo | None = None) -> datetime:
    """ISO 8601; a value without an offset is a wall time in `tz` (UTC when none)."""
    return schedules.local_time(value, str(tz) if tz else "UTC")


# -- the deployed schedules ------------------------------------------------------------------------------------
@dataclass
class Schedule:
    name: str
    expression: str
    timezone: str = "UTC"
    target: dict[str, Any] = field(default_factory=dict)  # {"type": "lambda", "function", "arn"} | command
    input: Any = None
    state: str = "ENABLED"
    origin: str = "scheduler"  # scheduler | events | local
    arn: str = ""
    start_date: datetime | None = None
    end_date: datetime | None = None

    @property
    def enabled(self) -> bool:
        return self.state.upper() == "ENABLED"

    @property
    def target_label(self) -> str:
        if self.target.get("type") == "command":
            return "command " + " ".join(self.target.get("argv", []))
        return f"lambda {self.target.get('function')}"


def _lambda_target(arn: str) -> dict[str, Any]:
    # arn:aws:lambda:<region>:<account>:function:<name>[:qualifier]
    parts = arn.split(":")
    name = parts[6] if len(parts) > 6 and parts[5] == "function" else arn.rsplit(":", 1)[-1]
    return {"type": "lambda", "function": name, "arn": arn}


def _schedule_arn(name: str, target_arn: str) -> str:
    parts = target_arn.split(":")
    region, account = (parts[3], parts[4]) if len(parts) > 4 else ("", "")
    return f"arn:aws:scheduler:{region}:{account}:schedule/default/{name}"


def state_dir() -> Path:
    from playbook.settings import local_settings

    return local_settings().state_dir


def local_schedules_file() -> Path:
    return state_dir() / "local_schedules.json"


def _from_record(record: dict[str, Any], origin: str) -> Schedule:
    target = record.get("target")
    if not isinstance(target, dict):
        target = _lambda_target(record.get("target_arn") or record["function"])
    if target.get("type", "lambda") == "lambda" and "function" not in target:
        target = {**_lambda_target(target["arn"]), **target}
    if target.get("type", "lambda") not in ("lambda", "command"):
        raise ScheduleError(f"schedule {record.get('name')}: target type {target.get('type')!r} is not lambda "
                            "or command")
    if target.get("type") == "command" and not target.get("argv"):
        raise ScheduleError(f"schedule {record.get('name')}: a command target needs argv")
    tz = record.get("timezone") or "UTC"
    return Schedule(
        name=record["name"], expression=record["expression"], timezone=tz,
        target={"type": "lambda", **target}, input=record.get("input"), state=record.get("state", "ENABLED"),
        origin=origin, arn=record.get("arn") or _schedule_arn(record["name"], target.get("arn", "")),
        start_date=_parse_time(record["start_date"], ZoneInfo(tz)) if record.get("start_date") else None,
        end_date=_parse_time(record["end_date"], ZoneInfo(tz)) if record.get("end_date") else None)


def recorded_schedules(prefix: str | None = None) -> list[Schedule]:
    """The Scheduler schedules provisioning recorded as stand-ins, for this deployment's stacks."""
    from playbook.stack_outputs import stack_prefix

    path = state_dir() / "schedules.json"
    if not path.exists():
        return []
    prefix = prefix or stack_prefix()
    data = json.loads(path.read_text())
    return [_from_record(r, "scheduler") for stack, records in sorted(data.items())
            if stack.startswith(f"{prefix}-") for r in records]


def register_local_schedule(entry: dict[str, Any], path: Path | None = None) -> dict[str, Any]:
    """Upsert one entry (by name) into the local schedules file; what was registered, as the scheduler reads it."""
    from playbook.runs import write_json

    path = path or local_schedules_file()
    data = json.loads(path.read_text()) if path.exists() else {}
    records = data.get("schedules", []) if isinstance(data, dict) else list(data)
    records = [r for r in records if r.get("name") != entry["name"]] + [entry]
    write_json(path, {"schedules": records})
    registered = [s for s in local_schedules(path) if s.name == entry["name"]]
    return {"name": entry["name"], "expression": entry["expression"], "timezone": entry.get("timezone", "UTC"),
            "target": registered[0].target_label, "registered": bool(registered), "file": str(path)}


def local_schedules(path: Path | None = None) -> list[Schedule]:
    """Entries of a local schedules file: {"schedules": [{name, expression, timezone, target, input}]}."""
    path = path or local_schedules_file()
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ScheduleError(f"{path}: not JSON ({exc})") from None
    records = data.get("schedules", []) if isinstance(data, dict) else data
    return [_from_record(r, "local") for r in records]


def api_schedules() -> list[Schedule]:
    """Schedules the AWS APIs hold: EventBridge Scheduler schedules and scheduled EventBridge rules."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    found: list[Schedule] = []
    try:
        scheduler = boto3.client("scheduler")
        for page in scheduler.get_paginator("list_schedules").paginate():
            for item in page.get("Schedules", []):
                got = scheduler.get_schedule(Name=item["Name"], GroupName=item.get("GroupName", "default"))
                target = got.get("Target", {})
                raw = target.get("Input")
                found.append(Schedule(
                    name=got["Name"], expression=got["ScheduleExpression"],
                    timezone=got.get("ScheduleExpressionTimezone") or "UTC", target=_lambda_target(target["Arn"]),
                    input=json.loads(raw) if raw else None, state=got.get("State", "ENABLED"), origin="scheduler",
                    arn=got.get("Arn", ""), start_date=got.get("StartDate"), end_date=got.get("EndDate")))
    except (BotoCoreError, ClientError):
        pass  # no Scheduler API at this endpoint: the recorded stand-ins are the schedules
    try:
        events = boto3.client("events")
        for page in events.get_paginator("list_rules").paginate():
            for rule in page.get("Rules", []):
                if not rule.get("ScheduleExpression"):
                    continue
                for target in events.list_targets_by_rule(Rule=rule["Name"]).get("Targets", []):
                    if ":lambda:" not in target["Arn"]:
                        continue
                    found.append(Schedule(
                        name=f"{rule['Name']}/{target['Id']}", expression=rule["ScheduleExpression"], timezone="UTC",
                        target=_lambda_target(target["Arn"]),
                        input=json.loads(target["Input"]) if target.get("Input") else None,
                        state=rule.get("State", "ENABLED"), origin="events", arn=rule["Arn"]))
    except (BotoCoreError, ClientError):
        pass
    return found


def deployed_schedules(prefix: str | None = None, extra: Path | None = None) -> list[Schedule]:
    """Every schedule of the deployment (by name: the API's first, then stand-ins, then local entries)."""
    by_name: dict[str, Schedule] = {}
    for schedule in [*api_schedules(), *recorded_schedules(prefix), *local_schedules(),
                     *(local_schedules(extra) if extra else [])]:
        by_name.setdefault(schedule.name, schedule)
    return sorted(by_name.values(), key=lambda s: s.name)


# -- firing ---------------------------------------------------------------------------------------------------
@dataclass
class Firing:
    schedule: Schedule
    time: datetime
    event: Any
    status: str = "planned"  # planned | ok | error | timeout | out_of_memory
    detail: dict[str, Any] = field(default_factory=dict)


SCHEDULER_CONTEXT = ("<aws.scheduler.scheduled-time>", "<aws.scheduler.execution-id>",
                     "<aws.scheduler.schedule-arn>", "<aws.scheduler.attempt-number>")


def scheduled_event(schedule: Schedule, when: datetime) -> Any:
    """What the target receives, as AWS delivers it. Scheduler: the schedule's Input, its context attributes
    (<aws.scheduler.scheduled-time>, ...) filled in; with no Input, the scheduled-event envelope. A rule with a
    constant Input sends that Input alone, as EventBridge rules do."""
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if schedule.origin == "events" and schedule.input is not None:
        return schedule.input
    execution = str(uuid.uuid5(_EVENT_NAMESPACE, f"{schedule.arn}|{stamp}"))
    if schedule.origin != "events" and isinstance(schedule.input, dict):
        values = dict(zip(SCHEDULER_CONTEXT, (stamp, execution, schedule.arn, "1"), strict=True))
        return json.loads(_fill(json.dumps(schedule.input), values))
    arn_parts = schedule.arn.split(":")
    return {
        "version": "0", "id": execution,
        "detail-type": "Scheduled Event", "source": "aws.events" if schedule.origin == "events" else "aws.scheduler",
        "account": arn_parts[4] if len(arn_parts) > 4 else "", "time": stamp,
        "region": arn_parts[3] if len(arn_parts) > 3 else "", "resources": [schedule.arn], "detail": {},
    }


def _fill(text: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def plan(schedules: list[Schedule], after: datetime, until: datetime) -> list[Firing]:
    firings = []
    for schedule in schedules:
        if not schedule.enabled:
            continue
        for when in occurrences(schedule.expression, schedule.timezone, after, until, schedule.start_date):
            if (schedule.start_date and when < schedule.start_date) or (schedule.end_date and when > schedule.end_date):
                continue
            firings.append(Firing(schedule, when, scheduled_event(schedule, when)))
    return sorted(firings, key=lambda f: (f.time, f.schedule.name))


def fire(firing: Firing, target=None) -> Firing:
    """One occurrence: a command target run as a process; a function target invoked through the target (the
    local one by default: the deployed zip through the runtime), as the scheduler invokes it."""
    if firing.schedule.target.get("type") == "command":
        return _fire_command(firing)
    from playbook.targets import LocalTarget

    result = (target or LocalTarget()).invoke(firing.schedule.target["function"], firing.event)
    firing.status = result.status
    firing.detail = {"request_id": result.request_id, "log": result.log_path, "duration_ms": result.duration_ms,
                     **({"error": result.error} if result.error else {})}
    return firing


def _fire_command(firing: Firing) -> Firing:
    target, stamp = firing.schedule.target, firing.time.strftime("%Y-%m-%dT%H:%M:%SZ")
    logs = state_dir() / "logs" / firing.schedule.name
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{firing.time:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}.log"
    env = {**os.environ, **{k: str(v) for k, v in (target.get("env") or {}).items()},
           "PLAYBOOK_SCHEDULE_NAME": firing.schedule.name, "PLAYBOOK_SCHEDULED_TIME": stamp,
           "PLAYBOOK_SCHEDULED_EVENT": json.dumps(firing.event)}
    with open(log_path, "wb") as log:
        try:
            done = subprocess.run(list(target["argv"]), stdout=log, stderr=subprocess.STDOUT, env=env,
                                  cwd=target.get("cwd"), timeout=target.get("timeout"), check=False)
            firing.status = "ok" if done.returncode == 0 else "error"
            firing.detail = {"returncode": done.returncode, "log": str(log_path)}
        except subprocess.TimeoutExpired:
            firing.status, firing.detail = "timeout", {"log": str(log_path)}
        except OSError as exc:
            firing.status, firing.detail = "error", {"error": str(exc), "log": str(log_path)}
    return firing


# -- runs -------------------------------------------------------------------------------------------------------
def _last_run_file() -> Path:
    return state_dir() / "scheduler.json"


def last_run(prefix: str) -> datetime | None:
    path = _last_run_file()
    if not path.exists():
        return None
    value = json.loads(path.read_text()).get(prefix, {}).get("last_run")
    return _parse_time(value) if value else None


def record_run(prefix: str, when: datetime) -> None:
    path = _last_run_file()
    data = json.loads(path.read_text()) if path.exists() else {}
    data[prefix] = {"last_run": when.astimezone(UTC).isoformat()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def replay(start: datetime, end: datetime, *, dry_run: bool = False, schedules: list[Schedule] | None = None,
           on_firing=None, target=None) -> list[Firing]:
    """Every occurrence with start <= t < end, in time order, fired through the target (or only listed, dry_run)."""
    schedules = deployed_schedules() if schedules is None else schedules
    firings = plan(schedules, start - timedelta(microseconds=1), end - timedelta(microseconds=1))
    for firing in firings:
        if not dry_run:
            fire(firing, target)
        if on_firing:
            on_firing(firing)
    return firings


def run_once(now: datetime | None = None, *, dry_run: bool = False, schedules: list[Schedule] | None = None,
             on_firing=None, target=None) -> list[Firing]:
    """What is due now on the real clock: occurrences since the last recorded run (none before the first)."""
    from playbook.stack_outputs import stack_prefix

    prefix = stack_prefix()
    now = now or datetime.now(UTC)
    since = last_run(prefix) or now - timedelta(minutes=1)
    schedules = deployed_schedules() if schedules is None else schedules
    firings = plan(schedules, since, now)
    for firing in firings:
        if not dry_run:
            fire(firing, target)
        if on_firing:
            on_firing(firing)
    if not dry_run:
        record_run(prefix, now)
    return firings


def serve(dry_run: bool = False, on_firing=None, target=None) -> None:
    """Fire what is due every minute, on the real clock, until interrupted."""
    while True:
        run_once(dry_run=dry_run, on_firing=on_firing, target=target)
        time.sleep(60 - datetime.now(UTC).second + 0.5)


# -- CLI ----------------------------------------------------------------------------------------------------------
def _print_firing(firing: Firing) -> None:
    s = firing.schedule
    local = firing.time.astimezone(ZoneInfo(s.timezone))
    extra = f"  {firing.detail['error']['errorType']}" if firing.detail.get("error") else ""
    print(f"{firing.time:%Y-%m-%dT%H:%M:%SZ}  ({local:%Y-%m-%d %H:%M %Z})  {s.name:<36} {s.target_label}  "
          f"{firing.status}{extra}", flush=True)


def cmd_schedule_run(args: argparse.Namespace) -> int:
    from playbook.targets import resolve_target

    if bool(args.start) != bool(args.end):
        raise ScheduleError("give both --from and --to for a replay")
    target = resolve_target("local")
    extra = Path(args.schedules) if args.schedules else None
    schedules = deployed_schedules(extra=extra)
    if args.start:
        firings = replay(_parse_time(args.start), _parse_time(args.end), dry_run=args.dry_run, schedules=schedules,
                         on_firing=_print_firing, target=target)
    elif args.once:
        firings = run_once(dry_run=args.dry_run, schedules=schedules, on_firing=_print_firing, target=target)
    else:
        print(f"firing {len(schedules)} schedules on the real clock; Ctrl-C stops", flush=True)
        try:
            serve(args.dry_run, on_firing=_print_firing, target=target)
        except KeyboardInterrupt:
            return 0
        return 0
    failed = [f for f in firings if f.status not in ("ok", "planned")]
    print(f"{len(firings)} firings{' planned (dry run)' if args.dry_run else ''}, {len(failed)} failed")
    return 1 if failed else 0


def cmd_schedule_list(args: argparse.Namespace) -> int:
    from playbook.targets import resolve_target

    resolve_target("local")
    now = datetime.now(UTC)
    for s in deployed_schedules(extra=Path(args.schedules) if args.schedules else None):
        upcoming = occurrences(s.expression, s.timezone, now, now + timedelta(days=400), s.start_date)[:1]
        following = f"{upcoming[0]:%Y-%m-%dT%H:%M:%SZ}" if upcoming else "-"
        print(f"{s.name:<36} {s.expression:<24} {s.timezone:<16} {s.state:<8} next {following}  {s.target_label}")
    return 0


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("schedule", help="the deployed schedules, fired through the local runtime")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = sub.add_parser("run", help="fire due schedules: real clock (default), --once, or a --from/--to replay")
    run.add_argument("--from", dest="start", metavar="T", help="replay start (ISO 8601; UTC without an offset)")
    run.add_argument("--to", dest="end", metavar="T", help="replay end, exclusive")
    run.add_argument("--once", action="store_true", help="fire what is due since the last recorded run, then exit")
    run.add_argument("--dry-run", action="store_true", help="list what would fire without firing it")
    run.add_argument("--schedules", metavar="FILE", help="an extra local schedules file")
    run.set_defaults(func=cmd_schedule_run)
    ls = sub.add_parser("list", help="the deployed schedules and their next occurrence")
    ls.add_argument("--schedules", metavar="FILE", help="an extra local schedules file")
    ls.set_defaults(func=cmd_schedule_list)
