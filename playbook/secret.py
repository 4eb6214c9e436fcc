"""`playbook secret set SOURCE`: store an API source's credential in the target's Secrets Manager.

The value is typed at a hidden prompt (or piped on standard input), never given as an argument, so it is in no
shell history, no log, no state file and no output: the command prints the secret's name and ARN only. Its
JSON holds what the source's `api.auth.type` needs (pipeline.config ApiAuth): `token` (bearer), `api_key`
(api_key_header, api_key_query), `username` and `password` (basic), `client_id` and `client_secret`
(oauth2_client_credentials), and with them the `refresh_token` (oauth2_refresh_token), which the function
rotates in place.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from playbook.errors import PlaybookError


def secret_name(config, source: str) -> tuple[str, tuple[str, ...]]:
    """The secret a source's API authentication names, and the fields its JSON holds."""
    from pipeline.config import SECRET_FIELDS

    cfg = config.sources.get(source)
    if cfg is None:
        raise PlaybookError(f"unknown source {source!r}; the configuration has {', '.join(config.sources)}")
    auth = cfg.api.auth if cfg.api is not None else None
    if auth is None or auth.type == "none":
        raise PlaybookError(f"source {source!r} authenticates with no secret (api.auth)")
    return auth.secret, SECRET_FIELDS[auth.type]


def read_value(field: str, stream=None) -> str:
    """One field: at a hidden prompt when a person types it, else a line of standard input."""
    stream = stream or sys.stdin
    value = getpass.getpass(f"{field}: ") if stream.isatty() else stream.readline().rstrip("\r\n")
    if not value:
        raise PlaybookError(f"{field} is empty: nothing stored")
    return value


def store_secret(name: str, values: dict[str, str]) -> dict[str, Any]:
    """Create the secret, or put a new version of it: its name and ARN (never its value)."""
    from playbook.warehouse import put_secret

    arn, action = put_secret(name, json.dumps(values), "an API source's credential")
    return {"secret": name, "arn": arn, "action": action, "fields": sorted(values)}


def cmd_secret_set(args: argparse.Namespace) -> int:
    from playbook.config import load_config
    from playbook.targets import resolve_target

    name, fields = secret_name(load_config(args.config), args.source)
    resolve_target(args.target)
    values = {field: read_value(field) for field in fields}
    print(json.dumps(store_secret(name, values), indent=2))
    return 0


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("secret", help="an API source's credential in the target's Secrets Manager")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = sub.add_parser("set", help="store the credential of a source's api.auth (typed at a hidden prompt, or "
                                   "on standard input)")
    s.add_argument("source", help="the API source's name in the configuration")
    s.add_argument("--config", help="configuration file (default: $PLAYBOOK_CONFIG or playbook.yaml)")
    s.add_argument("--target", choices=("local", "aws"), default="local")
    s.set_defaults(func=cmd_secret_set)
