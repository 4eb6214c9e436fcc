"""Each role can do its job and nothing else; logins come from Secrets Manager; reporting is allow-listed."""

from __future__ import annotations

import contextlib
import fnmatch
import json
from collections.abc import Iterator
from datetime import date
from decimal import Decimal

import boto3
import psycopg2
import pytest
from psycopg2 import errors, sql

from pipeline.db import connection_kwargs
from pipeline.marts import refresh_marts
from playbook import warehouse
from playbook.local.tls import RELAY_SOURCE
from tests.pipeline import synthetic_core

pytestmark = pytest.mark.stack

INGEST, REPORTING, MONITOR = warehouse.INGEST_ROLE, warehouse.REPORTING_ROLE, warehouse.MONITOR_ROLE


@pytest.fixture(scope="module")
def logins(stack) -> dict[str, str]:
    return warehouse.ensure_role_logins(stack["database_url"])


def connect_as(logins, role: str):
    return psycopg2.connect(logins[role], connect_timeout=5)


@contextlib.contextmanager
def owner_did(db, setup: str, undo: str) -> Iterator[None]:
    """`setup` run and committed by the owner for the body; `undo` after it, whatever happened there."""
    with db.cursor() as cur:
        cur.execute(setup)
    db.commit()
    try:
        yield
    finally:
        db.rollback()
        with db.cursor() as cur:
            cur.execute(undo)
        db.commit()


def refused(conn, statement: str, params=(), error=errors.InsufficientPrivilege) -> str:
    """Run a statement that must fail with `error`; returns the server's message."""
    with pytest.raises(error) as caught, conn.cursor() as cur:
        cur.execute(statement, params)
    conn.rollback()
    return str(caught.value)


def test_logins_are_secrets_in_the_shape_the_handlers_read(stack, logins):
    client = boto3.client("secretsmanager")
    for role, name in warehouse.SECRET_NAMES.items():
        secret = json.loads(client.get_secret_value(SecretId=name)["SecretString"])
        assert secret == {"url": logins[role]}
        assert secret["url"].startswith(f"postgresql://{role}:") and "@127.0.0.1:" in secret["url"]
        assert connection_kwargs(warehouse.secret_arn(role)) == {"dsn": logins[role]}
        with psycopg2.connect(logins[role]) as conn, conn.cursor() as cur:
            cur.execute("select current_user")
            assert cur.fetchone() == (role,)
        conn.close()


def test_logins_are_idempotent_and_the_server_never_sees_the_password(stack, logins, db):
    client = boto3.client("secretsmanager")
    versions = {n: len(client.list_secret_version_ids(SecretId=n)["Versions"]) for n in warehouse.SECRET_NAMES.values()}
    assert warehouse.ensure_role_logins(stack["database_url"]) == logins
    assert {n: len(client.list_secret_version_ids(SecretId=n)["Versions"])
            for n in warehouse.SECRET_NAMES.values()} == versions
    with db.cursor() as cur:  # only a SCRAM verifier is stored (pg_authid is superuser-only: check the role flags)
        cur.execute("select rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb from pg_roles "
                    "where rolname = any(%s) order by 1", ([INGEST, REPORTING, MONITOR],))
        assert cur.fetchall() == [(INGEST, True, False, False, False), (MONITOR, True, False, False, False),
                                  (REPORTING, True, False, False, False)]
    db.rollback()
    verifier = warehouse.scram_verifier("pencil", salt=b"0123456789abcdef")
    assert verifier.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$") and "pencil" not in verifier


def test_the_roles_command_prints_no_password(stack, logins, capsys):
    from playbook.cli import main

    assert main(["roles"]) == 0
    out = capsys.readouterr().out
    for url in logins.values():
        password = url.split(":")[2].split("@")[0]
        assert password not in out
    assert "playbook/db/reporting" in out and f"pipeline_reporting {RELAY_SOURCE}/32 scram-sha-256" in out
    assert "playbook/db/monitor" in out


def test_reporting_reads_marts_only(stack, logins):
    conn = connect_as(logins, REPORTING)
    try:
        with conn.cursor() as cur:
            cur.execute("select count(*) from marts.company_daily")
            cur.execute("select count(*) from marts.data_freshness")  # freshness without reading meta
            cur.execute("select count(*) from marts.top_clients('2024-01-01', '2024-12-31')")
        conn.rollback()
        for table in ("core.sales", "core.clients", "meta.batches", "meta.mart_refreshes", "meta.schema_migrations"):
            assert "permission denied for schema" in refused(conn, f"select count(*) from {table}")
        with conn.cursor() as cur:
            cur.execute("select has_schema_privilege('staging', 'usage'), has_schema_privilege('core', 'usage'), "
                        "has_schema_privilege('meta', 'usage'), has_schema_privilege('marts', 'usage')")
            assert cur.fetchone() == (False, False, False, True)
        conn.rollback()
        refused(conn, "call marts.refresh()")
        refused(conn, "select * from marts.refresh_one('company_daily')")
    finally:
        conn.close()


def test_reporting_cannot_write_or_create_anything(stack, logins, db):
    # a plain table in marts: writable in principle, so the grant is what stops it
    with owner_did(db, "create table marts.targets (year int primary key, target numeric); "
                       "insert into marts.targets values (2024, 1000000.01)", "drop table marts.targets"), \
            contextlib.closing(connect_as(logins, REPORTING)) as conn:
        refused(conn, "insert into marts.targets values (2025, 1)")
        refused(conn, "update marts.targets set target = 0")
        refused(conn, "delete from marts.targets")
        refused(conn, "truncate marts.targets")
        refused(conn, "refresh materialized view marts.company_daily", error=errors.InsufficientPrivilege)
        for schema in ("public", "marts", "core", "staging", "meta"):
            assert "permission denied for schema" in refused(conn, f"create table {schema}.x (n int)")
            refused(conn, f"create view {schema}.v as select 1 as n")
            refused(conn, f"create function {schema}.f() returns int language sql as 'select 1'")
        assert "temporary" in refused(conn, "create temp table scratch (n int)")
        refused(conn, "create schema mine")


def test_reporting_reads_a_mart_created_after_the_grants(stack, logins, db):
    with owner_did(db, "create materialized view marts.later_mart as select 1::int as n, 2.50::numeric as amount;"
                       " create unique index later_mart_n on marts.later_mart (n)",
                   "drop materialized view marts.later_mart"), \
            contextlib.closing(connect_as(logins, REPORTING)) as conn, conn.cursor() as cur:
        cur.execute("select n, amount from marts.later_mart")
        assert cur.fetchall() == [(1, Decimal("2.50"))]


def test_ingest_writes_core_and_meta_without_ddl(stack, logins, db):
    conn = connect_as(logins, INGEST)
    try:
        with conn.cursor() as cur:
            cur.execute("insert into meta.batches (source, source_kind, target_table, source_ref, status) "
                        "values ('grants_test', 'test', 'sales', 'test', 'started') returning batch_id")
            batch_id = cur.fetchone()[0]
            cur.execute("insert into core.sales (order_id, line_no, order_date, client_id, quantity, unit_price, "
                        "amount, _batch_id, _row_hash, _key) "
                        "values ('G1', 1, %s, 'G', 1, 1.5, 1.5, %s, 'h1', 'G1' || chr(31) || '1')",
                        (date(2024, 5, 1), batch_id))
            cur.execute("update core.sales set amount = 1.75, _row_hash = 'h2' where order_id = 'G1'")
            cur.execute("select count(*) from core.sales_history where order_id = 'G1'")  # the trigger ran
            assert cur.fetchone() == (1,)
            cur.execute("update meta.batches set status = 'committed' where batch_id = %s", (batch_id,))
            cur.execute("create temp table scratch (n int)")  # temporary tables are the loader's scratch space
        conn.rollback()
        for schema in ("public", "staging", "core", "meta", "marts"):
            refused(conn, f"create table {schema}.x (n int)")
        refused(conn, "alter table core.sales add column x int", error=errors.InsufficientPrivilege)
        refused(conn, "drop table core.tax")
        refused(conn, "create schema mine")
        assert "permission denied for materialized view" in refused(conn, "select * from marts.company_daily")
    finally:
        conn.close()


def test_ingest_takes_a_primary_key_off_only_by_the_rules_and_always_puts_it_back(stack, logins, db):
    """core.defer_primary_key runs with the owner's rights: an empty core table held exclusively, the same key
    back from a ledger the ingest role cannot touch, and no commit while a key is still off."""
    key = ("select pg_get_constraintdef(oid) from pg_constraint where conrelid = 'core.probe'::regclass "
           "and contype = 'p'")
    with owner_did(db, "create table core.probe (n int primary key, note text)", "drop table core.probe"), \
            contextlib.closing(connect_as(logins, INGEST)) as conn:
        with conn.cursor() as cur:
            cur.execute("select core.defer_primary_key('core.probe')")
            assert cur.fetchone() == (True,)
            cur.execute(key)
            assert cur.fetchall() == []
            cur.execute("insert into core.probe values (1, 'a'), (2, 'b')")
            cur.execute("select core.restore_primary_key('core.probe')")
            cur.execute(key)
            assert cur.fetchall() == [("PRIMARY KEY (n)",)]
        conn.commit()
        with conn.cursor() as cur:  # a table with rows keeps its key
            cur.execute("select core.defer_primary_key('core.probe')")
            assert cur.fetchone() == (False,)
        conn.rollback()
        with db.cursor() as cur:
            cur.execute("truncate core.probe")
        db.commit()
        with conn.cursor() as cur:  # a key left off cannot commit
            cur.execute("select core.defer_primary_key('core.probe')")
            cur.execute("insert into core.probe values (1, 'a'), (1, 'again')")
        with pytest.raises(errors.RaiseException, match="not put back"):
            conn.commit()
        with conn.cursor() as cur:  # a repeated key fails the build, as the insert would have
            cur.execute("select core.defer_primary_key('core.probe')")
            cur.execute("insert into core.probe values (1, 'a'), (1, 'again')")
            with pytest.raises(errors.UniqueViolation):
                cur.execute("select core.restore_primary_key('core.probe')")
        conn.rollback()
        assert "took no primary key off" in refused(conn, "select core.restore_primary_key('core.probe')",
                                                    error=errors.RaiseException)
        assert "not a core table" in refused(conn, "select core.defer_primary_key('meta.batches')",
                                             error=errors.RaiseException)
        for statement in ("select * from meta.deferred_keys",
                          "insert into meta.deferred_keys values ('core.probe', 'x', 'primary key (note)')"):
            refused(conn, statement)
        with db.cursor() as cur:
            cur.execute(key)
            assert cur.fetchall() == [("PRIMARY KEY (n)",)]
            cur.execute("select count(*) from core.probe")
            assert cur.fetchone() == (0,)
        db.rollback()


def test_tables_created_later_reach_the_ingest_role(stack, logins, db):
    with owner_did(db, "create table staging.later_batch (n int)", "drop table staging.later_batch"), \
            contextlib.closing(connect_as(logins, INGEST)) as ingest, \
            contextlib.closing(connect_as(logins, REPORTING)) as reporting:
        with ingest.cursor() as cur:
            cur.execute("insert into staging.later_batch values (1)")
            cur.execute("truncate staging.later_batch")
        ingest.commit()
        refused(reporting, "select * from staging.later_batch")


def test_public_has_nothing(stack, db):
    with db.cursor() as cur:
        cur.execute("select n.nspname, p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
                    "where n.nspname in ('core', 'meta', 'staging', 'marts') and has_function_privilege('public', "
                    "p.oid, 'execute')")
        assert cur.fetchall() == []
        cur.execute("select nspname from pg_namespace where nspname in ('public', 'core', 'meta', 'staging', 'marts') "
                    "and (has_schema_privilege('public', oid, 'usage') "
                    "     or has_schema_privilege('public', oid, 'create'))")
        assert cur.fetchall() == []
        cur.execute("select has_database_privilege('public', current_database(), 'connect'), "
                    "has_database_privilege('public', current_database(), 'temporary')")
        assert cur.fetchone() == (False, False)
    db.rollback()


def test_reporting_connects_only_from_the_allow_listed_proxy(stack, logins):
    try:
        warehouse.apply_reporting_allow_list(["10.20.30.40/32"])  # a proxy elsewhere: loopback is refused
        with pytest.raises(psycopg2.OperationalError, match="pg_hba.conf rejects connection"):
            connect_as(logins, REPORTING)
        connect_as(logins, INGEST).close()  # the other roles are unaffected
    finally:
        rules = warehouse.apply_reporting_allow_list()
    # locally every login reaches the server from the TLS front's relay address (playbook.local.tls)
    assert rules[1] == f"host all pipeline_reporting {RELAY_SOURCE}/32 scram-sha-256"
    assert rules[-2:] == ["host all pipeline_reporting 0.0.0.0/0 reject", "host all pipeline_reporting ::/0 reject"]
    connect_as(logins, REPORTING).close()
    with pytest.raises(ValueError):
        warehouse.reporting_hba_rules(["10.0.0.1/8"])  # a host address with a prefix is a typo, not a network


# -- the monitor role: the consultant side's login on AWS (ledger polling, validation) ------------------------------
def test_monitor_reads_meta_core_and_marts_and_nothing_in_staging(stack, logins, db):
    with owner_did(db, "create table staging.monitor_probe (n int); insert into staging.monitor_probe values (1)",
                   "drop table staging.monitor_probe"), \
            contextlib.closing(connect_as(logins, MONITOR)) as conn:
        with conn.cursor() as cur:
            for table in ("meta.batches", "meta.quarantine", "meta.mart_refreshes", "meta.accuracy_results",
                          "meta.schema_migrations", "core.sales", "core.clients", "core.sales_history",
                          "core.sales_lineage", "marts.company_daily", "marts.client_day_sales",
                          "marts.data_freshness"):
                cur.execute(f"select count(*) from {table}")
            cur.execute("select has_schema_privilege('staging', 'usage'), has_schema_privilege('core', 'usage'), "
                        "has_schema_privilege('meta', 'usage'), has_schema_privilege('marts', 'usage'), "
                        "has_schema_privilege('public', 'usage')")
            assert cur.fetchone() == (False, True, True, True, False)
        conn.rollback()
        assert "permission denied for schema staging" in refused(conn, "select * from staging.monitor_probe")
        refused(conn, "call marts.refresh()")
        refused(conn, "select * from marts.refresh_one('company_daily')")
        refused(conn, "select * from marts.top_clients('2024-01-01', '2024-12-31')")  # the reports' role calls it
        refused(conn, "select core.defer_primary_key('core.sales')")


def test_monitor_writes_only_validation_results(stack, logins, db):
    with contextlib.closing(connect_as(logins, MONITOR)) as conn:
        with conn.cursor() as cur:  # what playbook.accuracy.report.store_results does, identity column included
            cur.execute("delete from meta.accuracy_results where run_id = 'grants-monitor'")
            cur.execute("insert into meta.accuracy_results (run_id, check_name, subject, status, observed, threshold,"
                        " details) values ('grants-monitor', 'probe', 'x', 'pass', 0, 0, '{}') returning result_id")
            assert cur.fetchone()[0] is not None
        conn.rollback()
        refused(conn, "update meta.accuracy_results set status = 'fail'")
        refused(conn, "truncate meta.accuracy_results")
        refused(conn, "insert into meta.batches (source, source_kind, target_table, source_ref, status) "
                      "values ('grants_test', 'test', 'sales', 'test', 'started')")
        refused(conn, "update meta.batches set status = 'failed'")
        refused(conn, "delete from meta.batches")
        refused(conn, "delete from meta.quarantine")
        refused(conn, "update core.sales set amount = 0")
        refused(conn, "delete from core.clients")
        refused(conn, "insert into core.clients (client_id) values ('G')")
        refused(conn, "truncate core.sales")
        refused(conn, "refresh materialized view marts.company_daily")
        refused(conn, "select nextval('meta.mart_refresh_runs')")


def test_monitor_creates_nothing(stack, logins):
    with contextlib.closing(connect_as(logins, MONITOR)) as conn:
        for schema in ("public", "marts", "core", "staging", "meta"):
            assert "permission denied for schema" in refused(conn, f"create table {schema}.x (n int)")
            refused(conn, f"create view {schema}.v as select 1 as n")
            refused(conn, f"create function {schema}.f() returns int language sql as 'select 1'")
        assert "temporary" in refused(conn, "create temp table scratch (n int)")
        refused(conn, "create schema mine")
        refused(conn, "alter table meta.accuracy_results add column x int")
        refused(conn, "drop table meta.accuracy_results")
        refused(conn, "drop materialized view marts.company_daily")


def test_monitor_reads_tables_created_later_in_its_schemas_only(stack, logins, db):
    with owner_did(db, "create table core.monitor_later (n int); create table meta.monitor_later (n int); "
                       "create materialized view marts.monitor_later as select 1::int as n; "
                       "create table staging.monitor_later (n int)",
                   "drop table core.monitor_later, meta.monitor_later, staging.monitor_later; "
                   "drop materialized view marts.monitor_later"), \
            contextlib.closing(connect_as(logins, MONITOR)) as conn:
        with conn.cursor() as cur:
            for schema in ("core", "meta", "marts"):
                cur.execute(f"select count(*) from {schema}.monitor_later")
        conn.rollback()
        refused(conn, "insert into core.monitor_later values (1)")
        refused(conn, "insert into meta.monitor_later values (1)")
        refused(conn, "select * from staging.monitor_later")


def test_what_the_consultant_side_does_on_aws_needs_no_more_than_the_monitor_role(stack, logins, tmp_path):
    """On AWS PLAYBOOK_DATABASE_URL is the monitor role's login: the ledger polling of `playbook ingest` and of the
    backfill, the ledger table, and the whole validation (every check's query, and its results stored) run as it."""
    from datetime import UTC, datetime

    from playbook.accuracy import AccuracyBreach, validate
    from playbook.backfill import Window, _ledger_state, _window_state, batches_table
    from playbook.errors import PlaybookError
    from playbook.ingest import awaited_batch
    from playbook.targets import LocalTarget

    url = logins[MONITOR]
    since = datetime.now(UTC)
    with pytest.raises(PlaybookError, match="no batch ended"):  # the ledger was read: no batch, so it timed out
        awaited_batch("sales", "sales/none.csv", since, timeout_s=0, poll_s=0, database_url=url)

    class MonitorTarget(LocalTarget):
        def database_url(self) -> str:
            return url

    assert list(batches_table(MonitorTarget()).columns)[:2] == ["source", "committed"]
    with contextlib.closing(psycopg2.connect(url)) as conn:
        window = Window("sales", "ingest-sales", "2024Q1", {"objects": [{"key": "sales/none.csv"}]},
                        bounds=(since.isoformat(), since.isoformat()))
        assert _ledger_state(conn, window, since) == (0, 0, 0)
        assert _window_state(conn, window, since) == (0, 0, 0)
    try:
        report = validate(database_url=url, run_id="grants-monitor-validation", out_dir=tmp_path, refresh=False,
                          target=MonitorTarget())
    except AccuracyBreach as breach:  # a breach is the data's, not a privilege's: the results were stored
        report = breach.report
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from meta.accuracy_results where run_id = 'grants-monitor-validation'")
        assert cur.fetchone()[0] == len(report.results) > 0
        cur.execute("delete from meta.accuracy_results where run_id = 'grants-monitor-validation'")
        conn.commit()


def refresh_as_owner(url: str) -> None:
    """CALL marts.refresh() as the database owner: the marts as they were before a test changed core."""
    conn = psycopg2.connect(url)
    try:
        refresh_marts(conn)
    finally:
        conn.close()


def test_the_refresh_handler_runs_as_the_ingest_role(stack, logins, db, monkeypatch):
    from pipeline.handlers import refresh_marts as handler_module

    batch_ids = synthetic_core.insert(db, {"sales": [("H1", 1, date(2024, 6, 1), "H", None, 3, Decimal("0.3333"),
                                                      Decimal("0.9999"), "GBP")]}, tag="H")
    monkeypatch.setenv("DB_SECRET_ARN", warehouse.secret_arn(INGEST))
    try:
        result = handler_module.handler({"source": "aws.events"}, None)
        json.dumps(result)  # the summary is plain JSON
        assert result["status"] == "ok" and result["failed"] == []
        by_mart = {m["mart"]: m for m in result["marts"]}
        with db.cursor() as cur:
            cur.execute("select count(*) from marts.company_daily")
            assert by_mart["company_daily"]["rows"] == cur.fetchone()[0]
            cur.execute("select sales_amount from marts.client_day_sales where client_id = 'H'")
            assert cur.fetchone() == (Decimal("0.9999"),)
        db.rollback()
        assert connection_kwargs()["dsn"].startswith("postgresql://pipeline_ingest:")
        assert set(by_mart) == {"company_daily", "daily_activity", "yearly_sales", "client_day_sales",
                                "daily_costs_by_category"}
    finally:
        synthetic_core.remove(db, batch_ids)
        refresh_as_owner(stack["database_url"])


def test_the_refresh_handler_fails_loudly_and_logs_the_error(stack, logins, db, monkeypatch):
    import io
    import logging

    from pipeline.handlers import refresh_marts as handler_module
    from pipeline.logs import JsonFormatter
    from pipeline.marts import MartRefreshError

    stream = io.StringIO()
    capture = logging.StreamHandler(stream)
    capture.setFormatter(JsonFormatter())
    handler_module.logger.addHandler(capture)

    monkeypatch.setenv("DB_SECRET_ARN", warehouse.secret_arn(INGEST))
    try:
        with owner_did(db, "revoke select on core.operating_costs from playbook_owner",
                       "grant select on core.operating_costs to playbook_owner"), \
                pytest.raises(MartRefreshError, match="daily_costs_by_category"):
            handler_module.handler({}, None)
    finally:
        handler_module.logger.removeHandler(capture)
    logged = [json.loads(line) for line in stream.getvalue().splitlines()]
    failure = [e for e in logged if e["message"] == "mart refresh failed"]
    assert failure and failure[-1]["status"] == "failed" and failure[-1]["level"] == "ERROR"
    assert {"company_daily", "daily_costs_by_category"} <= set(failure[-1]["failed"])
    refresh_as_owner(stack["database_url"])


# -- exactly the README's privileges, read from the catalog ---------------------------------------------------------
DML = ("SELECT", "INSERT", "UPDATE", "DELETE")
# The README's roles table, object by object: (role, kind, object, privileges). `schema.*` is every object of that
# kind in the schema, now and created later; a routine is named with its argument types. Nothing else is granted
# to any of these roles or to PUBLIC, on any object of any schema.
OUTLIERS = "marts.sales_outliers(numeric, numeric, integer, timestamp with time zone)"
README_ROLES = [
    (INGEST, "database", "*", ("CONNECT", "TEMPORARY")),
    (INGEST, "schema", "staging", ("USAGE",)),
    (INGEST, "schema", "core", ("USAGE",)),
    (INGEST, "schema", "meta", ("USAGE",)),
    (INGEST, "schema", "marts", ("USAGE",)),  # to call marts.refresh(), not to read the marts
    (INGEST, "relation", "staging.*", (*DML, "TRUNCATE")),
    (INGEST, "relation", "core.*", DML),
    (INGEST, "relation", "meta.*", DML),
    (INGEST, "sequence", "staging.*", ("USAGE", "SELECT")),
    (INGEST, "sequence", "core.*", ("USAGE", "SELECT")),
    (INGEST, "sequence", "meta.*", ("USAGE", "SELECT")),
    (INGEST, "routine", "staging.*", ("EXECUTE",)),
    (INGEST, "routine", "core.*", ("EXECUTE",)),
    (INGEST, "routine", "meta.*", ("EXECUTE",)),
    (INGEST, "routine", "marts.refresh(bigint)", ("EXECUTE",)),
    (INGEST, "routine", "marts.refresh_order()", ("EXECUTE",)),  # what marts.refresh() calls
    (INGEST, "routine", "marts.refresh_one(text)", ("EXECUTE",)),
    (REPORTING, "database", "*", ("CONNECT",)),
    (REPORTING, "schema", "marts", ("USAGE",)),
    (REPORTING, "relation", "marts.*", ("SELECT",)),
    (REPORTING, "routine", "marts.top_clients(date, date, integer, text, jsonb)", ("EXECUTE",)),
    (REPORTING, "routine", OUTLIERS, ("EXECUTE",)),
    (MONITOR, "database", "*", ("CONNECT",)),
    (MONITOR, "schema", "meta", ("USAGE",)),
    (MONITOR, "schema", "core", ("USAGE",)),
    (MONITOR, "schema", "marts", ("USAGE",)),
    (MONITOR, "relation", "meta.*", ("SELECT",)),
    (MONITOR, "relation", "core.*", ("SELECT",)),
    (MONITOR, "relation", "marts.*", ("SELECT",)),
    (MONITOR, "relation", "meta.accuracy_results", ("INSERT", "DELETE")),  # validation replaces its run's results
    (MONITOR, "routine", OUTLIERS, ("EXECUTE",)),  # validation's outlier check
]
# Kept from the ingest role inside its own schemas (see the primary-key test above): the ledger of keys taken off
# and the trigger that checks it.
WITHHELD = {(INGEST, "relation meta.deferred_keys"), (INGEST, "routine meta.deferred_key_restored()")}
AUDITED = [INGEST, REPORTING, MONITOR, "PUBLIC"]
OWNER = "playbook_owner"

# Every privilege each audited role holds, in effect (directly, through PUBLIC or a role it belongs to, with or
# without grant option), on the database and on every schema, relation, sequence and routine outside pg_catalog.
HELD = """
with schemas as (
    select oid, nspname from pg_namespace where nspname !~ '^pg_' and nspname <> 'information_schema'
), objects (kind, name, oid, privileges) as (
    select 'database', datname::text, oid, array['CREATE', 'CONNECT', 'TEMPORARY']
    from pg_database where datname = current_database()
    union all
    select 'schema', quote_ident(nspname), oid, array['USAGE', 'CREATE'] from schemas
    union all
    select case c.relkind when 'S' then 'sequence' else 'relation' end,
           quote_ident(s.nspname) || '.' || quote_ident(c.relname), c.oid,
           case c.relkind when 'S' then array['USAGE', 'SELECT', 'UPDATE']
                else array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']
                     || case when current_setting('server_version_num')::int >= 170000
                             then array['MAINTAIN'] else '{}' end end
    from pg_class c join schemas s on s.oid = c.relnamespace where c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
    union all
    select 'routine', quote_ident(s.nspname) || '.' || quote_ident(p.proname) || '(' || oidvectortypes(p.proargtypes)
           || ')', p.oid, array['EXECUTE']
    from pg_proc p join schemas s on s.oid = p.pronamespace
), asked as (
    select o.kind, o.name, o.oid, g.role, x.privilege
    from objects o cross join unnest(%(roles)s::text[]) g (role)
    cross join lateral unnest(o.privileges || array(select p || ' WITH GRANT OPTION' from unnest(o.privileges) p))
        x (privilege)
)
select kind, name, role, privilege, case kind
    when 'database' then has_database_privilege(role, oid, privilege)
    when 'schema' then has_schema_privilege(role, oid, privilege)
    when 'relation' then has_table_privilege(role, oid, privilege)
    when 'sequence' then has_sequence_privilege(role, oid, privilege)
    else has_function_privilege(role, oid, privilege) end
from asked
"""
# Grants on single columns (which has_table_privilege does not show), straight from the ACLs.
COLUMN_GRANTS = """
select quote_ident(n.nspname) || '.' || quote_ident(c.relname) || '.' || quote_ident(a.attname),
       coalesce(r.rolname, 'PUBLIC'), x.privilege_type || case when x.is_grantable then ' WITH GRANT OPTION' else '' end
from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
cross join lateral aclexplode(a.attacl) x left join pg_roles r on r.oid = x.grantee
where a.attacl is not null and n.nspname !~ '^pg_' and n.nspname <> 'information_schema'
  and coalesce(r.rolname, 'PUBLIC') = any(%(roles)s::text[])
"""
# What objects created later will grant, by creator, schema and kind of object.
DEFAULT_GRANTS = """
select pg_get_userbyid(d.defaclrole), coalesce(quote_ident(n.nspname), 'any schema'), d.defaclobjtype::text,
       coalesce(r.rolname, 'PUBLIC'), x.privilege_type || case when x.is_grantable then ' WITH GRANT OPTION' else '' end
from pg_default_acl d left join pg_namespace n on n.oid = d.defaclnamespace
cross join lateral aclexplode(d.defaclacl) x left join pg_roles r on r.oid = x.grantee
where coalesce(r.rolname, 'PUBLIC') = any(%(roles)s::text[])
"""
MEMBERSHIPS = "select m.roleid::regrole::text, r.rolname from pg_auth_members m join pg_roles r on r.oid = m.member " \
              "where r.rolname = any(%(roles)s::text[])"
DEFAULT_KINDS = {"r": "relations", "S": "sequences", "f": "routines", "T": "types", "n": "schemas",
                 "L": "large objects"}


def audit(conn) -> tuple[set[str], set[tuple[str, str, str]]]:
    """The audited objects ("kind name") and every (role, object, privilege) the catalog grants an audited role."""
    params = {"roles": [r.lower() for r in AUDITED]}
    role_of = {r.lower(): r for r in AUDITED}
    with conn.cursor() as cur:
        cur.execute(HELD, params)
        rows = cur.fetchall()
        objects = {f"{kind} {name}" for kind, name, *_ in rows}
        held = {(role_of[role], f"{kind} {name}", privilege) for kind, name, role, privilege, has in rows if has}
        cur.execute(COLUMN_GRANTS, params)
        held |= {(role, f"column {column}", privilege) for column, role, privilege in cur.fetchall()}
        cur.execute(DEFAULT_GRANTS, params)
        held |= {(role, f"default for new {DEFAULT_KINDS[kind]} of {creator} in {schema}", privilege)
                 for creator, schema, kind, role, privilege in cur.fetchall()}
        cur.execute(MEMBERSHIPS, params)
        held |= {(role, f"role {granted}", "MEMBER") for granted, role in cur.fetchall()}
    return objects, held


def readme_privileges(objects: set[str]) -> set[tuple[str, str, str]]:
    """What the README's roles table grants on these objects, and by default on those the owner creates later."""
    expected = set()
    for role, kind, pattern, privileges in README_ROLES:
        for obj in objects:
            obj_kind, name = obj.split(" ", 1)
            if obj_kind == kind and (pattern == "*" or fnmatch.fnmatchcase(name, pattern)) \
                    and (role, obj) not in WITHHELD:
                expected |= {(role, obj, privilege) for privilege in privileges}
        if pattern.endswith(".*"):
            expected |= {(role, f"default for new {kind}s of {OWNER} in {pattern[:-2]}", privilege)
                         for privilege in privileges}
    return expected


def privilege_findings(conn) -> set[tuple[str, str, str, str]]:
    """("+", role, object, privilege) for each privilege beyond the README, ("-", ...) for each one it lacks."""
    objects, held = audit(conn)
    expected = readme_privileges(objects)
    return {("+", *x) for x in held - expected} | {("-", *x) for x in expected - held}


def assert_exactly_the_readme(conn) -> None:
    findings = privilege_findings(conn)
    assert not findings, "privileges that differ from the README's roles table (+ extra, - missing):\n" + "\n".join(
        "  ".join(finding) for finding in sorted(findings, key=lambda f: f[1:]))


def test_each_role_holds_exactly_the_readme_privileges_on_every_object(stack, logins, db):
    """Read from the catalog for the database and every schema, table, view, materialized view, sequence and routine
    (and their columns, role memberships and default privileges): the ingest, reporting and monitor roles and PUBLIC
    hold what the README's roles table says, no more and no fewer. A grant the behaviour tests cannot see (one behind a
    missing schema USAGE, a grant option, a column, a function reached only through PUBLIC) is still a finding."""
    try:
        objects, _held = audit(db)
        assert {"relation core.sales", "relation marts.company_daily", "sequence meta.mart_refresh_runs",
                "routine marts.refresh(bigint)", "routine marts.top_clients(date, date, integer, text, jsonb)",
                "schema public"} <= objects, "the audit sees every kind of object"
        assert_exactly_the_readme(db)
    finally:
        db.rollback()


PROBES = """
create table {schema}.privilege_probe_table (n int generated always as identity primary key);
create view {schema}.privilege_probe_view as select 1 as n;
create materialized view {schema}.privilege_probe_mart as select 1 as n;
create sequence {schema}.privilege_probe_sequence;
create function {schema}.privilege_probe_function() returns int language sql as 'select 1';
create procedure {schema}.privilege_probe_procedure() language sql as 'select 1';
"""


def test_objects_the_owner_creates_later_get_exactly_the_readme_privileges(stack, logins, db):
    """A table, view, materialized view, sequence (and an identity's), function and procedure created by the owner in
    every schema after the migrations (in a transaction rolled back) get from the default privileges exactly what the
    README grants there: DML (and TRUNCATE in staging) and EXECUTE for ingest in its schemas, SELECT on a new mart for
    reporting, SELECT on a new relation in meta, core and marts for monitor (nothing on its sequences or routines), and
    nothing for anyone in public or on a new routine in marts."""
    try:
        with db.cursor() as cur:
            cur.execute("select nspname from pg_namespace where nspname !~ '^pg_' and nspname <> 'information_schema'")
            schemas = sorted(s for (s,) in cur.fetchall())
            assert {"meta", "staging", "core", "marts", "public"} <= set(schemas)
            for schema in schemas:
                cur.execute(sql.SQL(PROBES).format(schema=sql.Identifier(schema)))
        objects, _held = audit(db)
        probes = {o for o in objects if ".privilege_probe_" in o}
        assert len(probes) == 7 * len(schemas), sorted(probes)
        assert_exactly_the_readme(db)
    finally:
        db.rollback()


@pytest.mark.parametrize(("planted", "found"), [
    ("grant select on core.sales to pipeline_reporting", {("+", REPORTING, "relation core.sales", "SELECT")}),
    ("revoke select on marts.daily_activity from pipeline_reporting",
     {("-", REPORTING, "relation marts.daily_activity", "SELECT")}),
    ("grant select on marts.company_daily to pipeline_ingest",
     {("+", INGEST, "relation marts.company_daily", "SELECT")}),
    ("grant usage on schema core to pipeline_reporting", {("+", REPORTING, "schema core", "USAGE")}),
    ("grant create on schema staging to pipeline_ingest", {("+", INGEST, "schema staging", "CREATE")}),
    ("grant usage, select, update on sequence meta.mart_refresh_runs to pipeline_ingest",
     {("+", INGEST, "sequence meta.mart_refresh_runs", "UPDATE")}),
    ("revoke execute on procedure marts.refresh(bigint) from pipeline_ingest",
     {("-", INGEST, "routine marts.refresh(bigint)", "EXECUTE")}),
    ("grant execute on function marts.top_clients(date, date, int, text, jsonb) to public",
     {("+", "PUBLIC", "routine marts.top_clients(date, date, integer, text, jsonb)", "EXECUTE"),
      ("+", INGEST, "routine marts.top_clients(date, date, integer, text, jsonb)", "EXECUTE"),
      ("+", MONITOR, "routine marts.top_clients(date, date, integer, text, jsonb)", "EXECUTE")}),
    ("grant select on marts.yearly_sales to pipeline_reporting with grant option",
     {("+", REPORTING, "relation marts.yearly_sales", "SELECT WITH GRANT OPTION")}),
    ("grant select (amount) on core.sales to pipeline_reporting",
     {("+", REPORTING, "column core.sales.amount", "SELECT")}),
    ("grant temporary on database {database} to pipeline_reporting",
     {("+", REPORTING, "database {database}", "TEMPORARY")}),
    ("alter default privileges for role playbook_owner in schema core grant select on tables to pipeline_reporting",
     {("+", REPORTING, "default for new relations of playbook_owner in core", "SELECT")}),
    ("alter default privileges for role playbook_owner in schema marts revoke select on tables from pipeline_reporting",
     {("-", REPORTING, "default for new relations of playbook_owner in marts", "SELECT")}),
    ("grant update on meta.accuracy_results to pipeline_monitor",
     {("+", MONITOR, "relation meta.accuracy_results", "UPDATE")}),
    ("grant insert on meta.batches to pipeline_monitor", {("+", MONITOR, "relation meta.batches", "INSERT")}),
    ("grant usage on schema staging to pipeline_monitor", {("+", MONITOR, "schema staging", "USAGE")}),
    ("revoke delete on meta.accuracy_results from pipeline_monitor",
     {("-", MONITOR, "relation meta.accuracy_results", "DELETE")}),
    ("alter default privileges for role playbook_owner in schema core revoke select on tables from pipeline_monitor",
     {("-", MONITOR, "default for new relations of playbook_owner in core", "SELECT")}),
    ("grant pipeline_ingest to pipeline_reporting",
     {("+", REPORTING, "role pipeline_ingest", "MEMBER"), ("+", REPORTING, "relation core.sales", "SELECT")}),
])
def test_the_audit_names_each_planted_privilege(stack, logins, db, planted, found):
    """Each planted grant or revoke (made by the owner in a transaction rolled back) is reported as the extra or
    missing (role, object, privilege) it is, and the audit is clean again once it is rolled back."""
    with db.cursor() as cur:
        cur.execute("select current_database()")
        database = cur.fetchone()[0]
    planted = planted.format(database=database)
    found = {tuple(part.format(database=database) for part in finding) for finding in found}
    try:
        with db.cursor() as cur:
            cur.execute(planted)
        findings = privilege_findings(db)
        assert found <= findings
        if "pipeline_ingest to" not in planted:  # a membership brings every privilege of the role with it
            assert findings == found
    finally:
        db.rollback()
    assert privilege_findings(db) == set()
    db.rollback()


def test_a_table_grant_behind_a_missing_schema_usage_is_still_reported(stack, logins, db):
    """SELECT on core.sales granted to reporting does not let it read the table yet (it has no USAGE on core, so
    the query stops at 'permission denied for schema', which is all the behaviour tests look at), but it is one
    USAGE grant away from the company's sales: the catalog audit reports it."""
    with owner_did(db, "grant select on core.sales to pipeline_reporting",
                   "revoke select on core.sales from pipeline_reporting"), \
            contextlib.closing(connect_as(logins, REPORTING)) as conn:
        assert "permission denied for schema core" in refused(conn, "select count(*) from core.sales")
        with conn.cursor() as cur:
            cur.execute("select has_table_privilege(c.oid, 'select') from pg_class c join pg_namespace n "
                        "on n.oid = c.relnamespace where (n.nspname, c.relname) = ('core', 'sales')")
            assert cur.fetchone() == (True,)
        conn.rollback()
        assert privilege_findings(db) == {("+", REPORTING, "relation core.sales", "SELECT")}
        with pytest.raises(AssertionError, match=r"\+  pipeline_reporting  relation core.sales  SELECT"):
            assert_exactly_the_readme(db)
    assert privilege_findings(db) == set()
    db.rollback()


def test_the_reporting_role_s_one_window_into_core_is_the_outlier_function(stack, logins, db):
    """marts.sales_outliers runs as its owner so that the email (as pipeline_reporting) can name outlier lines: it
    is the only SECURITY DEFINER routine the reporting role may call; every such routine pins its search_path so
    that no object of the caller's can stand in for one it reads; and calling it gives the reporting role no
    table of core."""
    with db.cursor() as cur:
        cur.execute("select p.oid::regprocedure::text, p.proconfig,"
                    " has_function_privilege(%s, p.oid, 'EXECUTE') from pg_proc p join pg_namespace n"
                    " on n.oid = p.pronamespace where p.prosecdef and n.nspname not like 'pg\\_%%'"
                    " and n.nspname <> 'information_schema'", (REPORTING,))
        definers = cur.fetchall()
    db.rollback()
    assert [name for name, _config, reporting in definers if reporting] == [
        "marts.sales_outliers(numeric,numeric,integer,timestamp with time zone)"]
    pinned = {name: [c for c in config or [] if c.startswith("search_path=")] for name, config, _r in definers}
    assert {name: paths for name, paths in pinned.items() if paths not in (
        ["search_path=pg_catalog"], ["search_path=pg_catalog, pg_temp"])} == {}
    conn = connect_as(logins, REPORTING)
    try:
        with conn.cursor() as cur:
            cur.execute("select grouped_by, order_id from marts.sales_outliers(10, 50, 8, null)")
            cur.fetchall()  # the reporting role may call it with the configuration's limits
        conn.rollback()
        # but not with limits that would list ordinary lines: the function is no way to read core.sales
        message = refused(conn, "select count(*) from marts.sales_outliers(0.0001, 1.0001, 1, null)",
                          error=errors.InvalidParameterValue)
        assert "limits looser than robust_z 3, ratio 2, min_rows 8 are refused" in message
        refused(conn, "select 1 from core.sales limit 1")
    finally:
        conn.close()
