"""Versioned SQL migrations: numbered .sql files applied in order, each in its own transaction.

Applied files are recorded with their checksum in meta.schema_migrations; re-running is a no-op; a failing
file rolls back whole and the error names it; an applied file that was edited afterwards is refused.
The same runner serves the local database and, from inside the VPC, Aurora.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).parent / "sql" / "migrations"
_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 7_341_002  # advisory lock: one runner at a time


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNN_description.sql")
        found.append(Migration(int(match.group(1)), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number in {directory}")
    return found


def apply_migrations(conn, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply what is pending on a psycopg2 connection; returns the names of the files applied."""
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("select pg_advisory_lock(%s)", (_LOCK_KEY,))
    conn.commit()
    try:
        with conn.cursor() as cur:
            cur.execute("create schema if not exists meta")
            cur.execute(
                "create table if not exists meta.schema_migrations ("
                " version int primary key, filename text not null, checksum text not null,"
                " applied_at timestamptz not null default now())"
            )
            cur.execute("select version, filename, checksum from meta.schema_migrations")
            applied = {v: (f, c) for v, f, c in cur.fetchall()}
        conn.commit()
        done = []
        for migration in discover(directory):
            if migration.version in applied:
                name, checksum = applied[migration.version]
                if checksum != migration.checksum:
                    raise MigrationError(
                        f"{migration.path.name}: already applied (as {name}) but its content changed since; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            try:
                with conn.cursor() as cur:
                    cur.execute(migration.sql)
                    cur.execute(
                        "insert into meta.schema_migrations (version, filename, checksum) values (%s, %s, %s)",
                        (migration.version, migration.path.name, migration.checksum),
                    )
                conn.commit()
            except Exception as exc:
                conn.rollback()
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise MigrationError(f"{migration.path.name}: {first_line} (rolled back)") from exc
            done.append(migration.path.name)
        return done
    finally:
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("select pg_advisory_unlock(%s)", (_LOCK_KEY,))
        conn.commit()


def set_company(conn, name: str, timezone: str, currency: str) -> None:
    """The company as its configuration says, for every session: the database's time zone is the company's (so
    dates of timestamps are its days), meta.company holds its name, zone and currency, and a money row loaded
    before rows had a currency is in the company's."""
    from psycopg2 import sql

    from pipeline.model import TABLES

    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("select current_database()")
            database = cur.fetchone()[0]
            cur.execute(sql.SQL("alter database {} set timezone to {}").format(
                sql.Identifier(database), sql.Literal(timezone)))
            cur.execute("insert into meta.company (name, timezone, currency) values (%s, %s, %s) on conflict (one) "
                        "do update set name = excluded.name, timezone = excluded.timezone, currency = "
                        "excluded.currency, updated_at = now() where (meta.company.name, meta.company.timezone, "
                        "meta.company.currency) is distinct from (excluded.name, excluded.timezone, "
                        "excluded.currency)", (name, timezone, currency))
            for table in (t for t in TABLES.values() if "currency" in t.column_names):
                core = sql.Identifier("core", table.name)
                cur.execute(sql.SQL("select exists (select from {} where currency is null)").format(core))
                if cur.fetchone()[0]:  # a fact, not a change: the row's hash stays, so no history row
                    cur.execute(sql.SQL("update {} set currency = %s where currency is null").format(core),
                                (currency,))
    finally:
        conn.autocommit = False
