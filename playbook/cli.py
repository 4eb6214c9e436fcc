"""The `playbook` command: a thin layer that parses arguments and calls the functions notebooks call."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable

from pipeline.config import ConfigError
from playbook.errors import PlaybookError
from playbook.local.processes import StackError

Command = Callable[[argparse.Namespace], int]

# Modules that add their own subcommands: each defines `register_commands(subparsers)` and keeps its heavy
# imports inside the command functions, so `playbook --help` stays fast.
COMMAND_MODULES: list[str] = ["playbook.warehouse", "playbook.reports.commands", "playbook.demo.commands",
                               "playbook.provision", "playbook.proxy", "playbook.runtime", "playbook.deploy",
                               "playbook.scheduler", "playbook.backfill", "playbook.chain",
                               "playbook.demo.api_commands", "playbook.accuracy", "playbook.ingest",
                               "playbook.secret", "playbook.suggest", "playbook.bi",
                               "playbook.cost"]


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


# -- local stack ------------------------------------------------------------------------------------
def cmd_local_up(args: argparse.Namespace) -> int:
    from playbook.local.stack import current, redact

    status = current().up()
    print(f"local stack is up (state: {status['state_file']})")
    print(f"  AWS endpoint : {status['aws_endpoint_url']}  ({status['moto'].get('version', '')})")
    print(f"  database     : {redact(status['database_url'])}  ({status['postgres'].get('version', 'external')})")
    if status.get("tls"):
        print(f"  TLS          : every login but the superuser's; clients verify with {status['tls'].get('ca')}")
    return 0


def cmd_local_status(args: argparse.Namespace) -> int:
    from playbook.local.stack import current, redact

    status = current().status()
    if args.json:
        _print_json(status)
    else:
        print(f"moto server : {'healthy' if status['moto']['healthy'] else 'down'}  {status['aws_endpoint_url']}")
        print(f"postgres    : {'healthy' if status['postgres']['healthy'] else 'down'}  "
              f"{redact(status['database_url'])}")
        print(f"state file  : {status['state_file']}")
        kept = status["moto"]["recording"]
        print(f"moto state  : {(kept['recording_bytes'] + kept['bodies_bytes']) / 2**20:.1f} MiB recorded "
              f"({kept['recording_bytes'] / 2**20:.1f} MiB of requests, {kept['bodies']} bodies kept once each "
              f"in {kept['bodies_bytes'] / 2**20:.1f} MiB), replayed on the next `local up`")
    return 0 if status["healthy"] else 3


def cmd_local_down(args: argparse.Namespace) -> int:
    from playbook.local.stack import current

    stopped = current().down(force=args.force, delete_data=args.delete_data)
    print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    if args.delete_data:
        print("deleted: the database's files and moto's recorded state")
    return 0


# -- warehouse and configuration --------------------------------------------------------------------
def cmd_migrate(args: argparse.Namespace) -> int:
    from playbook.targets import resolve_target

    done = resolve_target("local").migrate()  # the deployed migrate function: schema, time zone, logins
    applied = done.get("applied", [])
    print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from playbook.config import load_config

    config = load_config(args.config)
    print(f"{config.company.name}: {len(config.sources)} sources ({', '.join(config.sources)}) - valid")
    if args.target:  # and what its changes since the deployment need
        from playbook.deploy import changes_needed
        from playbook.targets import resolve_target

        needs = changes_needed(resolve_target(args.target), config)
        print("\n".join(n.text for n in needs) if needs else f"the deployment on {args.target} runs this configuration")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the local default: stack up, then the whole pipeline on the demo company."""
    from playbook.main_job import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="playbook", description="SME Analytics Playbook: own your analytics "
                                     "pipeline on AWS, or fully offline on the local stack.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    local = sub.add_parser("local", help="the local stack: moto server + embedded PostgreSQL")
    local_sub = local.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = local_sub.add_parser("up", help="start (or reuse) the local stack")
    p.set_defaults(func=cmd_local_up)
    p = local_sub.add_parser("status", help="endpoints and health of the local stack")
    p.add_argument("--json", action="store_true", help="machine-readable (database_url, aws_endpoint_url, ...)")
    p.set_defaults(func=cmd_local_status)
    p = local_sub.add_parser("down", help="stop exactly the processes `up` started")
    p.add_argument("--force", action="store_true", help="also clear an unreadable state file")
    p.add_argument("--delete-data", action="store_true",
                   help="also delete the stack's data: the database's files (wherever they are kept) and moto's "
                        "recorded state; the next `up` starts empty")
    p.set_defaults(func=cmd_local_down)

    p = sub.add_parser("demo", help="the main job: local stack up, whole pipeline on the demo company")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("migrate", help="apply pending database migrations (the deployed migrate function)")
    p.set_defaults(func=cmd_migrate)

    config = sub.add_parser("config", help="the company configuration")
    config_sub = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = config_sub.add_parser("check", help="validate a configuration file (with --target: and name what its "
                              "changes need, provision or deploy)")
    p.add_argument("--config", help="configuration file (default: $PLAYBOOK_CONFIG or playbook.yaml)")
    p.add_argument("--target", choices=("local", "aws"), help="compare with the deployment on this target")
    p.set_defaults(func=cmd_config_check)

    for name in COMMAND_MODULES:
        importlib.import_module(name).register_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (StackError, ConfigError, PlaybookError) as exc:
        print(f"playbook: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
