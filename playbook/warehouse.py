"""The warehouse's roles and refreshes as the consultant drives them: `playbook roles`, `playbook refresh`.

The migrations create the roles without a login; each gets a random password kept as a secret in Secrets
Manager in the shape `pipeline.db` reads: {"url": "postgresql://role:pw@host:port/db"} where the playbook
reaches the database, RDS's username/password on AWS. The deployed migrate function sets them on the
server as SCRAM verifiers (the password itself never reaches the server or its logs); `playbook roles` does
the same on the local database directly. `playbook refresh` runs the deployed refresh function.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import secrets
import time
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from pipeline.roles import scram_verifier
from playbook.local.tls import RELAY_SOURCE

INGEST_ROLE = "pipeline_ingest"
REPORTING_ROLE = "pipeline_reporting"
# the consultant side's read-only login on AWS (PLAYBOOK_DATABASE_URL at the BI proxy): ledger polling, validation
MONITOR_ROLE = "pipeline_monitor"
SECRET_NAMES = {INGEST_ROLE: "playbook/db/ingest", REPORTING_ROLE: "playbook/db/reporting",
                MONITOR_ROLE: "playbook/db/monitor"}
# Where BI tools come from: the proxy. Locally the proxy runs on loopback, and every login reaches the server
# through the TLS front, from its relay address.
DEFAULT_REPORTING_SOURCES = (f"{RELAY_SOURCE}/32",)


def _role_url(database_url: str, role: str, password: str) -> str:
    parts = urlsplit(database_url)
    host = parts.hostname or "127.0.0.1"
    port = f":{parts.port}" if parts.port else ""
    query = f"?{parts.query}" if parts.query else ""
    return f"postgresql://{quote(role)}:{quote(password, safe='')}@{host}{port}{parts.path}{query}"


def _password_of(url: str) -> str | None:
    password = urlsplit(url).password
    return unquote(password) if password else None


def _secrets_client():
    import boto3

    return boto3.client("secretsmanager")


def secret_arn(role: str) -> str:
    """The ARN of a role's database secret (what a function's DB_SECRET_ARN holds)."""
    return _secrets_client().describe_secret(SecretId=SECRET_NAMES[role])["ARN"]


def role_url_at(role: str, database_url: str) -> str:
    """A role's login from its own secret, at the address of `database_url` (on AWS: the BI proxy). The secret
    holds a `url` (the local stack's) or RDS's `username` and `password`; the password is never printed."""
    secret = json.loads(_secrets_client().get_secret_value(SecretId=SECRET_NAMES[role])["SecretString"])
    if secret.get("url"):
        return _role_url(database_url, role, _password_of(secret["url"]) or "")
    return _role_url(database_url, secret.get("username") or role, secret["password"])


def _role_urls(database_url: str) -> dict[str, tuple[str, str, bool]]:
    """{role: (secret name, url at this database, whether the secret must be written)}: each role's password
    from its secret when there is one (so the database and the secret keep agreeing), else a new one."""
    client = _secrets_client()
    found = {}
    for role, name in SECRET_NAMES.items():
        existing = None
        with contextlib.suppress(client.exceptions.ResourceNotFoundException):
            existing = json.loads(client.get_secret_value(SecretId=name)["SecretString"]).get("url")
        password = (existing and _password_of(existing)) or secrets.token_urlsafe(32)
        url = _role_url(database_url, role, password)
        found[role] = (name, url, existing != url)
    return found


def put_secret(name: str, value: str, description: str) -> tuple[str, str]:
    """A new version of the secret, or the secret created: its ARN, and whether it was updated or created."""
    client = _secrets_client()
    try:
        return client.put_secret_value(SecretId=name, SecretString=value)["ARN"], "updated"
    except client.exceptions.ResourceNotFoundException:
        return client.create_secret(Name=name, SecretString=value, Description=description)["ARN"], "created"


def _write_role_secret(name: str, role: str, url: str) -> None:
    put_secret(name, json.dumps({"url": url}), f"database login of {role}")


def ensure_role_urls(database_url: str) -> dict[str, str]:
    """The ingest, reporting and monitor roles' secrets for a database the playbook reaches (the local one), in
    the shape `pipeline.db` reads ({"url": ...}), without touching the database: the migrate function gives the
    roles these logins. Idempotent like `ensure_role_logins`. Returns {role: secret ARN}."""
    for role, (name, url, changed) in _role_urls(database_url).items():
        if changed:
            _write_role_secret(name, role, url)
    return {role: secret_arn(role) for role in SECRET_NAMES}


def ensure_role_logins(database_url: str | None = None) -> dict[str, str]:
    """Give the ingest, reporting and monitor roles a login and a password kept in Secrets Manager.

    Idempotent: an existing secret's password is reused (and re-applied, so the database and the secret
    agree); its URL is rewritten only when the database's address changed. Returns {role: url}; the
    URLs carry passwords, so callers must not print them.
    """
    import psycopg2
    from psycopg2 import sql

    from playbook.database import database_url as current_database_url

    database_url = database_url or current_database_url()
    urls: dict[str, str] = {}
    conn = psycopg2.connect(database_url, connect_timeout=10, application_name="playbook")
    try:
        with conn, conn.cursor() as cur:
            for role, (name, url, changed) in _role_urls(database_url).items():
                cur.execute("select 1 from pg_roles where rolname = %s", (role,))
                if cur.fetchone() is None:
                    from playbook.errors import PlaybookError

                    raise PlaybookError(f"role {role} does not exist: run `playbook migrate` first")
                cur.execute(sql.SQL("alter role {} login password %s").format(sql.Identifier(role)),
                            (scram_verifier(_password_of(url)),))
                if changed:
                    _write_role_secret(name, role, url)
                urls[role] = url
    finally:
        conn.close()
    return urls


def ensure_role_secrets() -> dict[str, str]:
    """On AWS: a secret per role with a generated password (username/password, as RDS secrets are), created
    once; the migrate function applies them to the cluster. Returns {role: secret ARN}."""
    client = _secrets_client()
    arns = {}
    for role, name in SECRET_NAMES.items():
        try:
            arns[role] = client.describe_secret(SecretId=name)["ARN"]
        except client.exceptions.ResourceNotFoundException:
            value = json.dumps({"username": role, "password": secrets.token_urlsafe(32)})
            arns[role] = client.create_secret(Name=name, SecretString=value,
                                              Description=f"database login of {role}")["ARN"]
    return arns


def reporting_hba_rules(sources: tuple[str, ...] | list[str] = DEFAULT_REPORTING_SOURCES) -> list[str]:
    """pg_hba lines: the reporting role from the proxy's addresses only, rejected from anywhere else."""
    rules = [f"host all {REPORTING_ROLE} {ipaddress.ip_network(s, strict=True)} scram-sha-256" for s in sources]
    return [
        f"# {REPORTING_ROLE}: only through the BI proxy",
        *rules,
        f"host all {REPORTING_ROLE} 0.0.0.0/0 reject",
        f"host all {REPORTING_ROLE} ::/0 reject",
    ]


def apply_reporting_allow_list(sources: tuple[str, ...] | list[str] = DEFAULT_REPORTING_SOURCES,
                               pg=None) -> list[str]:
    """Write the reporting role's rules into the embedded PostgreSQL's pg_hba and reload it.

    Waits until the server has loaded the new file, so the next connection is judged by it.
    """
    import psycopg2

    from playbook.local.stack import current

    pg = pg or current().pg
    rules = reporting_hba_rules(sources)

    def load_time():
        with psycopg2.connect(pg.url(), connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("select pg_conf_load_time()")
            return cur.fetchone()[0]

    before = load_time()
    pg.write_hba(rules)
    pg.reload()
    deadline = time.monotonic() + 10
    while load_time() == before:
        if time.monotonic() > deadline:
            from playbook.local.processes import StackError

            raise StackError(f"PostgreSQL did not reload {pg.data_dir / 'pg_hba.conf'} (see {pg.log_file})")
        time.sleep(0.05)
    return rules


# -- CLI --------------------------------------------------------------------------------------------
def _print_marts(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        rows_text = "-" if r["rows"] is None else str(r["rows"])
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.3f}s"
        line = f"  {r['mart']:<26} {r['status']:<8} {rows_text:>9} rows  {seconds:>9}"
        print(line + (f"  {r['error']}" if r["error"] else ""))


def cmd_refresh(args: argparse.Namespace) -> int:
    from playbook.errors import PlaybookError
    from playbook.targets import resolve_target

    target = resolve_target("local")
    try:
        summary = target.refresh_marts()
    except PlaybookError as exc:
        print(f"refresh failed: {exc}")
        _print_marts(_latest_run(target.database_url()))
        return 1
    print(f"refresh run {summary.get('run_id') or '-'}:")
    _print_marts(summary.get("marts", []))
    return 0


def _latest_run(database_url: str) -> list[dict[str, Any]]:
    """The last refresh run's marts as meta.mart_refreshes recorded them (what a failed run still did)."""
    from playbook.database import connect

    conn = connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("select mart, status, rows, extract(epoch from finished_at - started_at)::float8, error"
                        " from meta.mart_refreshes where run_id = (select max(run_id) from meta.mart_refreshes)"
                        " order by position")
            return [dict(zip(("mart", "status", "rows", "seconds", "error"), row, strict=True))
                    for row in cur.fetchall()]
    finally:
        conn.close()


def cmd_roles(args: argparse.Namespace) -> int:
    from playbook.local.stack import redact
    from playbook.settings import ENV_DATABASE_URL
    from playbook.targets import resolve_target

    urls = ensure_role_logins(resolve_target("local").database_url())
    for role, url in urls.items():
        print(f"{role:<20} {redact(url)}  (secret {SECRET_NAMES[role]})")
    if os.environ.get(ENV_DATABASE_URL):
        print("external database: set the reporting role's network allow-list on the server itself")
        return 0
    rules = apply_reporting_allow_list(args.reporting_from or DEFAULT_REPORTING_SOURCES)
    print("pg_hba rules applied and reloaded:")
    for rule in rules:
        print(f"  {rule}")
    return 0


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("refresh", help="refresh every mart through the deployed refresh function "
                              "(CALL marts.refresh()), rows and seconds each")
    p.set_defaults(func=cmd_refresh)
    p = subparsers.add_parser("roles", help="logins for the ingest, reporting and monitor roles (Secrets Manager), "
                              "and the reporting role's allow-list")
    p.add_argument("--reporting-from", action="append", metavar="CIDR",
                   help="address the reporting role may connect from (the proxy's); repeatable, "
                        "default 127.0.0.1/32")
    p.set_defaults(func=cmd_roles)
