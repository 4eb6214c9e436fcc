"""`playbook report`: the charts, the dashboard and the operations email for one run, under reports/.

The email is the deployed send_expense_email function's, invoked through the local target."""

from __future__ import annotations

import argparse


def cmd_report(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime
    from pathlib import Path

    from playbook.config import load_config
    from playbook.reports import build_reports, new_run_dir
    from playbook.targets import resolve_target

    target = resolve_target("local")
    config = load_config(args.config)
    out = Path(args.out) if args.out else new_run_dir()
    written = build_reports(out, config, target.reporting_url())
    for name, path in sorted(written.items()):
        print(f"  {name:<18} {path}")
    if not args.no_email:
        from playbook.reports.email import send_expense_email

        event = {"run_key": f"report-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"}
        if args.email_period:
            event["period"] = args.email_period
        result = send_expense_email(target, out, event)  # the deployed function, through the target
        print(f"  {'expense_email':<18} {result['eml']}  ({result['status']}: {result['period']['from']} to "
              f"{result['period']['to']}, to {', '.join(result['recipients'])})")
    print(f"reports written to {out}")
    return 0


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("report", help="charts, dashboard and the operations email, from the marts")
    p.add_argument("--out", metavar="DIR", help="output folder (default: reports/runs/<UTC time>/, "
                   "with reports/latest pointing at it)")
    p.add_argument("--config", help="configuration file (default: $PLAYBOOK_CONFIG or playbook.yaml)")
    p.add_argument("--no-email", action="store_true", help="do not send the operations email")
    p.add_argument("--email-period", choices=["day", "week", "month"],
                   help="the email's period (default: reports.email.period)")
    p.set_defaults(func=cmd_report)
