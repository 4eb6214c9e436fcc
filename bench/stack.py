"""A throwaway local stack for one benchmark run: its own state directory and free ports, provisioned
so the deployed functions exist, and stopped (its state removed) afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from playbook.local.postgres import SUPERUSER

CORE_RESET = ("truncate meta.quarantine, core.sales, core.sales_history, core.payments, core.payments_history, "
              "meta.batches cascade")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class BenchStack:
    work_dir: Path  # generated inputs
    database_url: str  # the owner's
    superuser_url: str  # for CHECKPOINT, which the owner may not run
    outputs: dict[str, str]  # the provisioned stacks' outputs (empty when not provisioned)

    @property
    def landing_bucket(self) -> str:
        return self.outputs["LandingBucketName"]

    def function(self, logical: str) -> str:
        return self.outputs[f"{logical}FunctionName"]

    def execute(self, statement: str, params=None, autocommit: bool = False) -> list[tuple]:
        conn = psycopg2.connect(self.database_url)
        conn.autocommit = autocommit
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                rows = cur.fetchall() if cur.description else []
            if not autocommit:
                conn.commit()
            return rows
        finally:
            conn.close()

    def checkpoint(self) -> None:
        """Write out the dirty pages of the previous load, so the next one starts on a quiet server."""
        conn = psycopg2.connect(self.superuser_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("checkpoint")
        finally:
            conn.close()

    def reset_core(self) -> None:
        self.execute(CORE_RESET)
        self.execute("vacuum analyze core.sales", autocommit=True)

    def put(self, key: str, path: Path) -> str:
        import boto3

        boto3.client("s3").upload_file(str(path), self.landing_bucket, key)
        return key


def psql_binary() -> str:
    """A psql built with TLS (the local database accepts TLS logins only): the system's, Debian's postgresql-client
    (pgserver's own psql is built without OpenSSL)."""
    found = shutil.which("psql")
    if not found:
        raise RuntimeError("no psql on PATH: install postgresql-client (`make system-deps`)")
    return found


@contextlib.contextmanager
def bench_stack(provisioned: bool = True) -> Iterator[BenchStack]:
    """Moto server and PostgreSQL on free ports, migrated, and (by default) `playbook provision --target local`."""
    state = Path(tempfile.mkdtemp(prefix="bench-state-"))
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    saved = dict(os.environ)
    os.environ.update({"PLAYBOOK_STATE_DIR": str(state), "PLAYBOOK_MOTO_PORT": str(free_port()),
                       "PLAYBOOK_PG_PORT": str(free_port()), "AWS_DEFAULT_REGION": "eu-west-2"})
    os.environ.pop("PLAYBOOK_DATABASE_URL", None)
    from playbook.database import migrate
    from playbook.local import stack as local_stack

    st = local_stack.current()
    try:
        status = st.up()
        os.environ.update(local_stack.environment(status))
        migrate(status["database_url"])
        outputs: dict[str, str] = {}
        if provisioned:
            from playbook.provision import provision
            from playbook.targets import resolve_target

            target = resolve_target("local")
            outputs = provision(target).outputs
            target.migrate()  # the deployed migrate function gives the roles their logins
        yield BenchStack(work, status["database_url"], st.pg.url(SUPERUSER), outputs)
    finally:
        from playbook import runtime

        runtime.shutdown_environments()  # warm handler processes of this stack's functions
        with contextlib.suppress(Exception):
            st.down(delete_data=True)
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
