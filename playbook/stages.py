"""What the chain's notebooks call between the domain functions: the warehouse's schema and logins, the
deployed functions and schedules as tables, the report run's schedule and email. Each takes the target the
notebook resolved (playbook.targets) and returns names, ARNs and counts, never a password or a URL that
carries one, since executed notebooks are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playbook.errors import PlaybookError

REPORT_SCHEDULE_NAME = "playbook-report-run"


def prepare_warehouse(target) -> dict[str, Any]:
    """The schema and the roles' logins by the deployed migrate function (on either target: the playbook never
    changes the schema itself), and locally the reporting role's allow-list; what was applied, the secrets'
    names."""
    from playbook.warehouse import SECRET_NAMES, secret_arn

    done = target.migrate()  # the function gave the roles their logins from their secrets
    return {"migrations_applied": done.get("applied", []), "logins": done.get("logins", []),
            "secrets": {role: {"name": name, "arn": secret_arn(role)} for role, name in SECRET_NAMES.items()},
            "reporting_allow_list": target.restrict_reporting_role()}


def deploy_functions(target, config_file: str | None = None) -> dict[str, Any]:
    """Ship lambda_src to every function (playbook.deploy); each function's name, handler, limits and code hash."""
    import boto3

    from playbook.deploy import deploy, pipeline_functions

    result = deploy(target, config_file)
    lam = boto3.client("lambda")
    functions = []
    for name in pipeline_functions(target.outputs(parts=("pipeline",))):
        conf = lam.get_function_configuration(FunctionName=name)
        functions.append({"function": name, "handler": conf["Handler"], "timeout_s": conf.get("Timeout"),
                          "memory_mb": conf.get("MemorySize"), "code_sha256": conf.get("CodeSha256", "")[:12],
                          "deploy": result.functions.get(name, "-")})
    return {"code_key": result.code_key, "code_sha256": result.code_sha256, "config": result.config,
            "layer": result.layer, "changed": result.changed, "functions": functions}


def check_handlers(target, functions: list[str]) -> list[dict[str, Any]]:
    """Import each deployed handler from the deployed zip, as a cold start would (no call), where the target
    can (locally, through the runtime); and ask the deployed email function whether its runtime's boto3 can
    make the conditional put that claims a run, on either target."""
    checked = []
    for name in functions:
        result = target.check_handler(name)
        if result is None:
            continue
        checked.append({"function": name, "status": result.status, "init_ms": result.init_ms})
        if result.status != "ok":
            raise PlaybookError(f"{name}: the deployed handler does not import: {result.error}")
    email = target.function("SendExpenseEmail")
    runtime = target.call(email, {"check": "runtime"})
    if not runtime.get("conditional_put"):
        raise PlaybookError(f"{email}: the runtime's boto3 {runtime.get('boto3')} cannot make S3's conditional put "
                            "(If-None-Match), which the email's once-per-run claim needs: boto3 1.35 or later")
    checked.append({"function": email, "status": f"boto3 {runtime['boto3']}: conditional put", "init_ms": None})
    return checked


def schedules_table(config) -> list[dict[str, str]]:
    """Every job's schedule, as EventBridge (or the local scheduler) fires it: the sources at their own pace."""
    rows = [{"job": f"ingest {name}", "schedule": s.schedule, "every (days)": str(s.expected_every_days or "-")}
            for name, s in config.sources.items()]
    rows.append({"job": "expense email", "schedule": config.reports.email.schedule, "every (days)": "1"})
    rows.append({"job": "report run (notebook 40)", "schedule": config.reports.schedule, "every (days)": "1"})
    return rows


def report_run_command(target) -> list[str]:
    """The scheduled report run: this playbook's last notebook, on its own, on the same target."""
    import sys

    executable = Path(sys.executable).with_name("playbook")
    return [str(executable) if executable.exists() else "playbook", "run", "--target", target.name, "--only",
            "reports"]


def register_report_schedule(target, config) -> dict[str, Any]:
    """The report run at reports.schedule, registered where the target's scheduler takes a command: locally
    in the scheduler's local schedules file, so `playbook schedule run` fires it beside the deployed ones."""
    from playbook.settings import PROJECT_ROOT

    entry = {"name": REPORT_SCHEDULE_NAME, "expression": config.reports.schedule, "timezone": config.company.timezone,
             "target": {"type": "command", "argv": report_run_command(target), "cwd": str(PROJECT_ROOT)},
             "state": "ENABLED"}
    return target.register_schedule(entry)


def refresh_report_schedule(target, config) -> dict[str, Any] | None:
    """The registered report run brought to the configuration (its time, the company's zone), after a provision or
    a deploy for it; None when no report run is registered where this target keeps one."""
    from playbook.scheduler import local_schedules

    if not target.keeps_local_schedules or REPORT_SCHEDULE_NAME not in {s.name for s in local_schedules()}:
        return None
    return register_report_schedule(target, config)


def accuracy_table(report):
    """One row per check and subject: status, observed against the limit, and what it means."""
    import pandas as pd

    return pd.DataFrame([{"check": r.check, "subject": r.subject, "status": r.status, "observed": r.observed,
                          "limit": r.threshold, "summary": r.summary} for r in report.results])


def reporting_url(target) -> str:
    """The reporting role's connection (carries its password: pass it on, never display it).

    Locally the playbook gives the role its login. On AWS the migrate function did, inside the VPC; the stage
    logs in with the role's secret at the address PLAYBOOK_DATABASE_URL names (the BI proxy)."""
    return target.reporting_url()


def send_expense_email(target, run_dir: str | Path, config, period: str | None = None) -> dict[str, Any]:
    """The operations email for this run, sent once per run (its run key) by the deployed send_expense_email
    function, its .eml kept in the run folder. On AWS the function sends it at its own time, once per period.

    The function reads the configuration deployed with it; where its recipients are not `config`'s, the result
    says so (the company's file changed since the last deploy)."""
    from playbook.reports.email import send_expense_email as send

    run_dir = Path(run_dir)
    event: dict[str, Any] = {"run_key": f"run-{run_dir.name}"}
    if period:
        event["period"] = period
    if not target.sends_run_email:
        return {"status": "skipped", "reason": target.email_note}
    result = send(target, run_dir, event)
    sent = {"status": result["status"], "period": result["period"], "recipients": result["recipients"],
            "eml": str(Path(result["eml"]).relative_to(run_dir)), "in_ses": result["in_ses"]}
    if list(result["recipients"]) != list(config.reports.email.recipients):
        sent["note"] = "the deployed configuration's recipients differ from this run's: deploy the configuration"
    return sent
