"""Migrations apply in order, re-run as a no-op, and a failing file rolls back whole, named."""

from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest

from pipeline.migrations import MIGRATIONS_DIR, MigrationError, apply_migrations, discover
from pipeline.model import METADATA_COLUMNS, TABLES


def test_rerun_is_a_no_op(stack, db):
    assert apply_migrations(db) == []
    with db.cursor() as cur:
        cur.execute("select filename from meta.schema_migrations order by version")
        assert [r[0] for r in cur.fetchall()] == [m.path.name for m in discover()]


def test_core_tables_match_the_canonical_model(stack, db):
    with db.cursor() as cur:
        for table in TABLES.values():
            cur.execute("select column_name, is_nullable = 'NO', data_type from information_schema.columns "
                        "where table_schema = 'core' and table_name = %s order by ordinal_position", (table.name,))
            found = {name: (not_null, kind) for name, not_null, kind in cur.fetchall()}
            # the canonical columns (in the model's order: row hashes take them in it), and what differs per row
            # of where it came from (the rest is its batch's)
            assert sorted(found) == sorted([*table.column_names, *METADATA_COLUMNS])
            assert [c for c in found if c in table.column_names] == list(table.column_names)
            # only what a row cannot exist without is NOT NULL; each type as the loader types it
            assert {c.name: found[c.name] for c in table.columns} == {
                c.name: (c.required, "timestamp with time zone" if c.type == "timestamp" else
                         {"text": "text", "integer": "bigint", "date": "date"}.get(c.type, "numeric"))
                for c in table.columns}
            cur.execute("select pg_get_constraintdef(oid) from pg_constraint where conrelid = %s::regclass "
                        "and contype = 'p'", (f"core.{table.name}",))
            assert cur.fetchall() == [("PRIMARY KEY (_key)",)]


def test_failing_migration_rolls_back_and_names_the_file(stack, tmp_path: Path):
    for m in discover():
        (tmp_path / m.path.name).write_bytes(m.path.read_bytes())
    bad = tmp_path / "900_half_done.sql"
    bad.write_text("create table meta.half_done (n int);\nselect no_such_function();\n")
    conn = psycopg2.connect(stack["database_url"])
    try:
        with pytest.raises(MigrationError, match=r"900_half_done.sql: .*no_such_function.*rolled back"):
            apply_migrations(conn, tmp_path)
        with conn.cursor() as cur:
            cur.execute("select to_regclass('meta.half_done'), "
                        "(select count(*) from meta.schema_migrations where version = 900)")
            assert cur.fetchone() == (None, 0)
    finally:
        conn.close()


def test_an_edited_applied_migration_is_refused(stack, tmp_path: Path):
    for m in discover():
        (tmp_path / m.path.name).write_bytes(m.path.read_bytes())
    first = sorted(tmp_path.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    conn = psycopg2.connect(stack["database_url"])
    try:
        with pytest.raises(MigrationError, match="content changed"):
            apply_migrations(conn, tmp_path)
    finally:
        conn.close()


def test_migration_files_are_numbered():
    assert [m.version for m in discover(MIGRATIONS_DIR)] == sorted(m.version for m in discover(MIGRATIONS_DIR))


def test_migrate_handler_is_a_no_op_on_a_migrated_database_and_pins_the_time_zone(landing_session, monkeypatch):
    import json
    import uuid

    import boto3

    from pipeline.handlers import migrate

    secret = json.dumps({"url": landing_session.database_url})
    arn = boto3.client("secretsmanager").create_secret(Name=f"test/owner-{uuid.uuid4().hex[:6]}",
                                                       SecretString=secret)["ARN"]
    monkeypatch.setenv("DB_SECRET_ARN", arn)
    monkeypatch.delenv("ROLE_SECRET_ARNS", raising=False)
    assert migrate.handler({}, None) == {"applied": [], "timezone": "Europe/London", "logins": []}
    conn = psycopg2.connect(landing_session.database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("show timezone")
            assert cur.fetchone() == ("Europe/London",)
    finally:
        conn.close()


def test_migrate_handler_gives_the_roles_their_logins_from_username_password_secrets(landing_session, monkeypatch):
    """As on AWS: the secrets hold username/password (no URL); the function applies them as SCRAM verifiers."""
    import json
    import uuid

    import boto3

    from pipeline.handlers import migrate

    sm = boto3.client("secretsmanager")
    tag = uuid.uuid4().hex[:6]
    owner = sm.create_secret(Name=f"test/owner-{tag}", SecretString=json.dumps({"url": landing_session.database_url}))
    password = f"pw-{uuid.uuid4().hex}"
    ingest = sm.create_secret(Name=f"test/ingest-{tag}",
                              SecretString=json.dumps({"username": "pipeline_ingest", "password": password}))
    monkeypatch.setenv("DB_SECRET_ARN", owner["ARN"])
    monkeypatch.setenv("ROLE_SECRET_ARNS", json.dumps({"pipeline_ingest": ingest["ARN"]}))
    try:
        assert migrate.handler({}, None)["logins"] == ["pipeline_ingest"]
        url = landing_session.database_url.replace("playbook_owner", "pipeline_ingest", 1)
        url = url.split("//", 1)[0] + "//pipeline_ingest:" + password + "@" + url.split("@", 1)[1]
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("select current_user")
            assert cur.fetchone() == ("pipeline_ingest",)
    finally:  # give the ingest role back the password the other tests' secret holds
        from playbook.warehouse import ensure_role_logins

        ensure_role_logins(landing_session.database_url)


def test_a_warehouse_loaded_before_keys_currencies_and_attributes_moves_forward_without_losing_a_row(stack, tmp_path):
    """A warehouse as migrations 001-013 left it, with rows, a replaced version and a quarantined row, moved
    forward: every row and its money kept, keyed by its table's key, in the company's currency, and hashed as a
    reload of it hashes, so reloading the same file changes nothing."""
    from psycopg2 import sql

    from pipeline.migrations import set_company
    from pipeline.typing_sql import row_hash
    from playbook.local import stack as local_stack
    from playbook.local.postgres import OWNER_ROLE, SUPERUSER

    for m in discover():
        if m.version <= 13:
            (tmp_path / m.path.name).write_bytes(m.path.read_bytes())
    pg = local_stack.current().pg
    admin = psycopg2.connect(pg.url(SUPERUSER, database="postgres"))
    admin.autocommit = True
    name = "warehouse_before_the_model"
    with admin.cursor() as cur:
        cur.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        cur.execute(sql.SQL("create database {} owner {}").format(sql.Identifier(name), sql.Identifier(OWNER_ROLE)))
    conn = psycopg2.connect(pg.url(database=name))
    try:
        assert apply_migrations(conn, tmp_path)[-1] == "013_narrow_lineage.sql"
        with conn.cursor() as cur:
            cur.execute("insert into meta.batches (source, source_kind, target_table, source_ref, status, rows_read,"
                        " rows_inserted) values ('payments', 'excel', 'payments', 's3://l/p.xlsx', 'committed', 3, 3),"
                        " ('operating_costs', 's3_csv', 'operating_costs', 's3://l/c.csv', 'committed', 2, 2),"
                        " ('sales', 's3_csv', 'sales', 's3://l/s.csv', 'committed', 2, 2) returning batch_id")
            payments, costs, sales = (r[0] for r in cur.fetchall())
            # each row hashed as the loader hashed it then: its columns, money by value, in the table's order
            cur.execute(
                "insert into core.payments (payment_id, payment_date, client_id, invoice_ref, method, amount,"
                " _batch_id, _sheet, _source_row, _row_hash) select p, d::date, c, i, m, a, %s, 'Payments', n,"
                " md5(row(p, d::date, c, i, m, trim_scale(a))::text) from (values"
                " ('P1', '2024-01-05', 'C1', 'INV-1', 'BACS', 120.50::numeric, 4),"
                " ('P2', '2024-01-06', 'C2', null, null, 99.999, 5), ('P3', '2024-01-06', 'C1', null, 'Card', 0.01, 6))"
                " v(p, d, c, i, m, a, n)", (payments,))
            cur.execute(
                "insert into core.operating_costs (cost_id, cost_date, category, vendor, amount, _batch_id,"
                " _source_row, _row_hash) select i, d::date, c, v, a, %s, n, md5(row(i, d::date, c, v,"
                " trim_scale(a))::text) from (values ('E1', '2024-01-02', 'Rent', 'Landlord', 1500.00::numeric, 2),"
                " ('E2', '2024-01-03', 'Software', null, 12.34, 3)) x(i, d, c, v, a, n)", (costs,))
            cur.execute(
                "insert into core.sales (order_id, line_no, order_date, client_id, product, quantity, unit_price,"
                " amount, currency, _batch_id, _source_row, _row_hash) values"
                " ('SO-1', 1, '2024-01-05', 'C1', 'Oats', 3, 2.50, 7.50, null, %s, 2, 'h1'),"
                " ('SO-1', 2, '2024-01-05', 'C1', 'Rye', 1, 4.00, 4.00, 'GBP', %s, 3, 'h2')", (sales, sales))
            # a replaced version: the history trigger keeps it
            cur.execute("update core.operating_costs set amount = 1550.00, _row_hash = md5(row('E1', "
                        "'2024-01-02'::date, 'Rent', 'Landlord', trim_scale(1550.00))::text) where cost_id = 'E1'")
            cur.execute("select (select count(*) from core.payments), (select sum(amount) from core.payments),"
                        " (select count(*) from core.operating_costs), (select sum(amount) from core.operating_costs),"
                        " (select count(*) from core.operating_costs_history), (select count(*) from core.sales),"
                        " (select sum(amount) from core.sales)")
            before = cur.fetchone()
        conn.commit()
        assert before[4] == 1

        applied = apply_migrations(conn)
        assert applied == [m.path.name for m in discover() if m.version > 13]
        set_company(conn, "Old Books Ltd", "Europe/London", "GBP")
        with conn.cursor() as cur:
            cur.execute("select (select count(*) from core.payments), (select sum(amount) from core.payments),"
                        " (select count(*) from core.operating_costs), (select sum(amount) from core.operating_costs),"
                        " (select count(*) from core.operating_costs_history), (select count(*) from core.sales),"
                        " (select sum(amount) from core.sales)")
            assert cur.fetchone() == before
            cur.execute("select _key, currency, _deleted_by, attributes from core.payments order by _key")
            assert cur.fetchall() == [("P1", "GBP", None, None), ("P2", "GBP", None, None), ("P3", "GBP", None, None)]
            cur.execute("select _key, currency from core.sales order by _key")
            assert cur.fetchall() == [("SO-1\x1f1", "GBP"), ("SO-1\x1f2", "GBP")]
            cur.execute("select _key, amount from core.operating_costs_history")
            assert cur.fetchall() == [("E1", Decimal("1500.00"))]
            cur.execute("select name, timezone, currency from meta.company")
            assert cur.fetchone() == ("Old Books Ltd", "Europe/London", "GBP")
            # a reload of the same files hashes each row as it is stored: nothing to update, no history row
            for table, names in (("payments", ["payment_id", "payment_date", "client_id", "invoice_ref", "method",
                                               "amount"]),
                                 ("operating_costs", ["cost_id", "cost_date", "category", "vendor", "amount"])):
                cur.execute(sql.SQL("select count(*) from core.{} s where s._row_hash <> {}").format(
                    sql.Identifier(table), row_hash(TABLES[table], names)))
                assert cur.fetchone()[0] == 0, table
        # set again (every migrate run does): nothing changes
        conn.rollback()
        set_company(conn, "Old Books Ltd", "Europe/London", "GBP")
        with conn.cursor() as cur:
            cur.execute("select count(*) from core.operating_costs_history")
            assert cur.fetchone()[0] == 1
    finally:
        conn.close()
        with admin.cursor() as cur:
            cur.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        admin.close()
