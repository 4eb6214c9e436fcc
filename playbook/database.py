"""The warehouse as the playbook sees it: which URL, a connection, and the migrations of a throwaway database."""

from __future__ import annotations

import os

import psycopg2

from pipeline.config import Company
from pipeline.migrations import apply_migrations, set_company
from playbook.settings import ENV_DATABASE_URL


def database_url() -> str:
    """$PLAYBOOK_DATABASE_URL when set, else the running local stack's database."""
    url = os.environ.get(ENV_DATABASE_URL)
    if url:
        return url
    from playbook.local.stack import current

    url = current().status()["database_url"]
    if not url:
        from playbook.local.processes import StackError

        raise StackError("no database: run `playbook local up` or set PLAYBOOK_DATABASE_URL")
    return url


def sqlalchemy_url(url: str | None = None) -> str:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; this project speaks psycopg2."""
    url = url or database_url()
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def connect(url: str | None = None):
    return psycopg2.connect(url or database_url(), connect_timeout=10,
                            application_name="playbook")


def migrate(url: str | None = None, company: Company | None = None) -> list[str]:
    """Apply pending migrations and set the company (its time zone, its currency: pipeline.migrations.set_company),
    in this process.

    For a database no deployment serves (the tests' and benchmarks' throwaway ones): a deployment's database is
    migrated by its own migrate function, through the target (`Target.migrate()`, `playbook migrate`)."""
    if company is None:
        from playbook.config import load_config

        company = load_config().company
    conn = connect(url)
    try:
        applied = apply_migrations(conn)
        set_company(conn, company.name, company.timezone, company.currency)
        return applied
    finally:
        conn.close()
