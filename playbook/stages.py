"""What the chain's notebooks call between the domain functions: the target's stack, the warehouse's schema and
logins, the deployed functions and schedules as tables, the report run's schedule and email. Each returns
names, ARNs and counts, never a password or a URL that carries one, since executed notebooks are kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from playbook.errors import PlaybookError

REPORT_SCHEDULE_NAME = "playbook-report-run"


def ensure_stack(target: str) -> dict[str, Any]:
    """Locally: the local stack up and boto3 pointed at it. On AWS: the profile's region, no endpoint override."""
    if target == "local":
        from playbook.local.stack import activate, current, redact

        current().up()
        status = activate()
        return {"target": "local", "aws_endpoint_url": status["aws_endpoint_url"], "region": status["region"],
                "database": redact(status["database_url"])}
    if target != "aws":
        raise PlaybookError(f"unknown target {target!r}: choose local or aws")
    import boto3

    if os.environ.get("AWS_ENDPOINT_URL"):
        raise PlaybookError("AWS_ENDPOINT_URL is set (it points boto3 at the local stack): unset it for --target aws")
    region = boto3.session.Session().region_name
    if not region:
        raise PlaybookError("no AWS region: set AWS_REGION or configure your profile's region")
    return {"target": "aws", "region": region, "account": boto3.client("sts").get_caller_identity()["Account"]}


def prepare_warehouse(target: str, outputs: dict[str, str] | None = None) -> dict[str, Any]:
    """The schema (migrations) and the two roles' logins; returns what was applied and the secrets' names."""
    from playbook.warehouse import SECRET_NAMES, apply_reporting_allow_list, ensure_role_logins, secret_arn

    if target == "aws":
        import json

        import boto3

        function = (outputs or {})["MigrateFunctionName"]
        response = boto3.client("lambda").invoke(FunctionName=function, Payload=b"{}")
        payload = json.loads(response["Payload"].read() or b"{}")
        if response.get("FunctionError"):
            raise PlaybookError(f"{function} failed: {payload.get('errorMessage', payload)}")
        applied = payload.get("applied", [])  # and the function gave the roles their logins from their secrets
    else:
        from playbook.database import migrate

        applied = migrate()
        ensure_role_logins()  # the URLs it returns carry passwords: not kept
    rules = []
    if target == "local" and not os.environ.get("PLAYBOOK_DATABASE_URL"):
        rules = apply_reporting_allow_list()
    return {"migrations_applied": applied, "secrets": {role: {"name": name, "arn": secret_arn(role)}
                                                       for role, name in SECRET_NAMES.items()},
            "reporting_allow_list": rules}


def deploy_functions(target: str, config_file: str | None = None) -> dict[str, Any]:
    """Ship lambda_src to every function (playbook.deploy); each function's name, handler, limits and code hash."""
    import boto3

    from playbook.deploy import deploy, pipeline_functions
    from playbook.stack_outputs import stack_outputs

    result = deploy(target, config_file)
    lam = boto3.client("lambda")
    functions = []
    for name in pipeline_functions(stack_outputs(target)):
        conf = lam.get_function_configuration(FunctionName=name)
        functions.append({"function": name, "handler": conf["Handler"], "timeout_s": conf.get("Timeout"),
                          "memory_mb": conf.get("MemorySize"), "code_sha256": conf.get("CodeSha256", "")[:12],
                          "deploy": result.functions.get(name, "-")})
    return {"code_key": result.code_key, "code_sha256": result.code_sha256, "config": result.config,
            "layer": result.layer, "changed": result.changed, "functions": functions}


def check_handlers(target: str, functions: list[str]) -> list[dict[str, Any]]:
    """Locally: import each deployed handler from the deployed zip, as a cold start would (no call)."""
    if target != "local":
        return []
    from playbook.runtime import check_handler

    checked = []
    for name in functions:
        result = check_handler(name)
        checked.append({"function": name, "status": result.status, "init_ms": result.init_ms})
        if result.status != "ok":
            raise PlaybookError(f"{name}: the deployed handler does not import: {result.error}")
    return checked


def schedules_table(config) -> list[dict[str, str]]:
    """Every job's schedule, as EventBridge (or the local scheduler) fires it: the sources at their own pace."""
    rows = [{"job": f"ingest {name}", "schedule": s.schedule, "every (days)": str(s.expected_every_days or "-")}
            for name, s in config.sources.items()]
    rows.append({"job": "expense email", "schedule": config.reports.email.schedule, "every (days)": "1"})
    rows.append({"job": "report run (notebook 40)", "schedule": config.reports.schedule, "every (days)": "1"})
    return rows


def report_run_command(target: str) -> list[str]:
    """The scheduled report run: this playbook's last notebook, on its own."""
    import sys

    executable = Path(sys.executable).with_name("playbook")
    return [str(executable) if executable.exists() else "playbook", "run", "--target", target, "--only", "reports"]


def register_report_schedule(target: str, config) -> dict[str, Any]:
    """The report run at reports.schedule: locally an entry with a command target in the scheduler's local
    schedules file (upserted by name), so `playbook schedule run` fires it beside the deployed schedules."""
    import json

    from playbook.runs import write_json
    from playbook.settings import PROJECT_ROOT

    entry = {"name": REPORT_SCHEDULE_NAME, "expression": config.reports.schedule, "timezone": config.company.timezone,
             "target": {"type": "command", "argv": report_run_command(target), "cwd": str(PROJECT_ROOT)},
             "state": "ENABLED"}
    if target != "local":
        return {**entry, "registered": False,
                "note": "on AWS the same command runs as a scheduled job (README: Scheduled report runs)"}
    from playbook import scheduler

    path = scheduler.local_schedules_file()
    data = json.loads(path.read_text()) if path.exists() else {}
    records = data.get("schedules", []) if isinstance(data, dict) else list(data)
    records = [r for r in records if r.get("name") != REPORT_SCHEDULE_NAME] + [entry]
    write_json(path, {"schedules": records})
    registered = [s for s in scheduler.local_schedules(path) if s.name == REPORT_SCHEDULE_NAME]
    return {"name": REPORT_SCHEDULE_NAME, "expression": entry["expression"], "timezone": entry["timezone"],
            "target": registered[0].target_label, "registered": bool(registered), "file": str(path)}


def accuracy_table(report):
    """One row per check and subject: status, observed against the limit, and what it means."""
    import pandas as pd

    return pd.DataFrame([{"check": r.check, "subject": r.subject, "status": r.status, "observed": r.observed,
                          "limit": r.threshold, "summary": r.summary} for r in report.results])


def reporting_url(target: str) -> str:
    """The reporting role's connection (carries its password: pass it on, never display it).

    Locally the playbook gives the role its login. On AWS the migrate function did, inside the VPC; the stage
    logs in with the role's secret at the address PLAYBOOK_DATABASE_URL names (the BI proxy)."""
    from playbook.database import database_url
    from playbook.warehouse import REPORTING_ROLE, ensure_role_logins, role_url_at

    if target == "local":
        return ensure_role_logins()[REPORTING_ROLE]
    return role_url_at(REPORTING_ROLE, database_url())


def send_expense_email(target: str, run_dir: str | Path, config, period: str | None = None) -> dict[str, Any]:
    """The operations email for this run, sent once per run (its run key), its .eml kept in the run folder."""
    from playbook.reports.email import ensure_email_resources, send_expense_email_locally
    from playbook.warehouse import REPORTING_ROLE, secret_arn

    run_dir = Path(run_dir)
    event: dict[str, Any] = {"run_key": f"run-{run_dir.name}"}
    if period:
        event["period"] = period
    if target != "local":  # the function sends it at its own time, once per period
        return {"status": "skipped", "reason": "on AWS the send_expense_email function sends it on its schedule"}
    environment = ensure_email_resources(config, secret_arn(REPORTING_ROLE))
    result = send_expense_email_locally(run_dir, event, environment)
    return {"status": result["status"], "period": result["period"], "recipients": result["recipients"],
            "eml": str(Path(result["eml"]).relative_to(run_dir)), "in_ses": result["in_ses"]}
