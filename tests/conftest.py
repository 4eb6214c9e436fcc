"""Test fixtures: one local stack for the whole session, on ports and a state directory of its own."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def state_dir() -> Path:
    """A state directory of its own (0700, as any may be: as root the embedded PostgreSQL keeps its data in a
    directory of its system user's, playbook.local.postgres)."""
    return Path(tempfile.mkdtemp(prefix="playbook-state-"))


def stack_env(state_dir: Path) -> dict[str, str]:
    return {
        "PLAYBOOK_STATE_DIR": str(state_dir),
        "PLAYBOOK_MOTO_PORT": str(free_port()),
        "PLAYBOOK_PG_PORT": str(free_port()),
        "AWS_DEFAULT_REGION": "eu-west-2",
    }


# a stack already running (its state directory, ports in PLAYBOOK_MOTO_PORT and PLAYBOOK_PG_PORT) that the
# session uses and leaves running: many short sessions in a row, as mutation testing runs, start none
REUSED_STACK = "PLAYBOOK_TEST_STACK_DIR"


@pytest.fixture(scope="session")
def stack() -> Iterator[dict]:
    """A running local stack (moto server + embedded PostgreSQL), migrated, shared by the session."""
    from playbook.database import migrate
    from playbook.local import stack as local_stack

    reused = os.environ.get(REUSED_STACK)
    directory = Path(reused) if reused else state_dir()
    saved = dict(os.environ)
    os.environ.update({"PLAYBOOK_STATE_DIR": str(directory), "AWS_DEFAULT_REGION": "eu-west-2"} if reused
                      else stack_env(directory))
    os.environ.pop("PLAYBOOK_DATABASE_URL", None)
    st = local_stack.current()
    try:  # whatever fails from here on, the processes `up` started are stopped
        status = st.up()
        os.environ.update(local_stack.environment(status))
        if reused:
            fresh_state(st, status)
        else:
            migrate(status["database_url"])
        yield status
    finally:
        if not reused:
            st.down(delete_data=True)
        os.environ.clear()
        os.environ.update(saved)
        if not reused:
            shutil.rmtree(directory, ignore_errors=True)


def fresh_state(st, status: dict) -> None:
    """A reused stack as a new one is: moto emptied, the database made again from a migrated template."""
    import psycopg2
    import requests
    from psycopg2 import sql

    from playbook.database import migrate
    from playbook.local.postgres import DATABASE, OWNER_ROLE, SUPERUSER

    requests.post(f"{status['aws_endpoint_url']}/moto-api/reset", timeout=30).raise_for_status()
    template = f"{DATABASE}_template"
    admin = psycopg2.connect(st.pg.url(SUPERUSER, database="postgres"))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("select exists (select from pg_database where datname = %s)", (template,))
            if not cur.fetchone()[0]:
                cur.execute(sql.SQL("create database {} owner {}").format(sql.Identifier(template),
                                                                         sql.Identifier(OWNER_ROLE)))
                migrate(st.pg.url(database=template))
            cur.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(DATABASE)))
            cur.execute(sql.SQL("create database {} template {} owner {}").format(
                sql.Identifier(DATABASE), sql.Identifier(template), sql.Identifier(OWNER_ROLE)))
            # what migrations 004 and 015 grant on the database itself, which a copy does not inherit
            cur.execute(sql.SQL("revoke all on database {db} from public; grant connect, temporary on database {db} "
                                "to pipeline_ingest; grant connect on database {db} to pipeline_reporting, "
                                "pipeline_monitor").format(db=sql.Identifier(DATABASE)))
    finally:
        admin.close()


@pytest.fixture()
def db(stack):
    import psycopg2

    conn = psycopg2.connect(stack["database_url"])
    try:
        yield conn
    finally:
        conn.close()


# the chain's own stack (tests/chain_fixtures.py), shared by the chain and notebook tests
from tests.chain_fixtures import chain_stack, chained, nbval_run  # noqa: E402,F401
