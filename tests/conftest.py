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
    """A state directory outside pytest's tmp root: pytest keeps that root 0700, and the embedded
    PostgreSQL runs as its own system user when the tests run as root."""
    return Path(tempfile.mkdtemp(prefix="playbook-state-"))


def stack_env(state_dir: Path) -> dict[str, str]:
    return {
        "PLAYBOOK_STATE_DIR": str(state_dir),
        "PLAYBOOK_MOTO_PORT": str(free_port()),
        "PLAYBOOK_PG_PORT": str(free_port()),
        "AWS_DEFAULT_REGION": "eu-west-2",
    }


@pytest.fixture(scope="session")
def stack() -> Iterator[dict]:
    """A running local stack (moto server + embedded PostgreSQL), migrated, shared by the session."""
    from playbook.database import migrate
    from playbook.local import stack as local_stack

    directory = state_dir()
    saved = dict(os.environ)
    os.environ.update(stack_env(directory))
    os.environ.pop("PLAYBOOK_DATABASE_URL", None)
    st = local_stack.current()
    status = st.up()
    os.environ.update(local_stack.environment(status))
    migrate(status["database_url"])
    try:
        yield status
    finally:
        st.down()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(directory, ignore_errors=True)


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
