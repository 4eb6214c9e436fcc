"""Migrations apply in order, re-run as a no-op, and a failing file rolls back whole, named."""

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
