"""`playbook local up | status | down`: one stack per project, described by a state file.

The state file records each part's endpoint, pid, process start time and version. `up` reuses a healthy
part and restarts a dead one; `down` stops exactly the processes the file names (pid and start time must
both match, so a recycled pid is never killed).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from playbook.local import moto_server, postgres
from playbook.local.processes import StackError, create_time_of, process_matches, terminate, write_private
from playbook.local.tls import FRONT_HOST, SERVER_HOST
from playbook.settings import LocalSettings, local_settings

STATE_VERSION = 1
AWS_DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}  # noqa: S105


@dataclass
class Stack:
    settings: LocalSettings

    @property
    def moto(self) -> moto_server.MotoServer:
        return moto_server.MotoServer(self.settings.state_dir / "moto", self.settings.moto_port)

    @property
    def pg(self) -> postgres.EmbeddedPostgres:
        return postgres.EmbeddedPostgres(self.settings.state_dir / "pg", self.settings.pg_port)

    # -- state file ---------------------------------------------------------------------------------
    def read_state(self) -> dict[str, Any]:
        path = self.settings.state_file
        if not path.exists():
            return {}
        try:
            state = json.loads(path.read_text())
            if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
                raise ValueError("unknown layout")
            return state
        except (ValueError, OSError) as exc:
            raise StackError(
                f"the state file {path} is unreadable ({exc}). If no stack is running, delete it and run "
                "`playbook local up` again; if one is, stop it with `playbook local down --force`."
            ) from exc

    def write_state(self, state: dict[str, Any]) -> None:
        path = self.settings.state_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        # it holds the database URL with the owner's password
        write_private(tmp, json.dumps({**state, "version": STATE_VERSION}, indent=2, sort_keys=True))
        os.replace(tmp, path)

    # -- lifecycle ----------------------------------------------------------------------------------
    def up(self) -> dict[str, Any]:
        state = self.read_state()
        state.setdefault("parts", {})
        state["region"] = self.settings.region
        self._check_ports_belong_to_us(state)
        moto_part = state["parts"].get("moto", {})
        if not (self._alive(moto_part) and self.moto.healthy() and moto_part.get("port") == self.moto.port):
            self._stop_part(moto_part)
            pid = self.moto.start()
            moto_part = {"pid": pid, "create_time": create_time_of(pid), "port": self.moto.port,
                         "endpoint": self.moto.endpoint, "version": moto_server.version(),
                         "started_at": time.time()}
        state["parts"]["moto"] = moto_part
        self.write_state(state)  # recorded at once: if the database fails to start, `down` still stops moto

        if self.settings.external_database_url:
            state["parts"].pop("postgres", None)
            state["parts"].pop("tls", None)
            state["database_url"] = self.settings.external_database_url
        else:
            pg_part = state["parts"].get("postgres", {})
            if not (self._alive(pg_part) and _server_healthy(self.pg) and pg_part.get("port") == self.pg.port):
                self._stop_part(pg_part, postgres_stop=True)
                if not self.pg.initialised():
                    self.pg.init()
                pid = self.pg.start()
                pg_part = {"pid": pid, "create_time": create_time_of(pid), "port": self.pg.port,
                           "data_dir": str(self.pg.data_dir), "version": postgres.version(),
                           "started_at": time.time()}
            state["parts"]["postgres"] = pg_part
            self.write_state(state)
            tls_part = state["parts"].get("tls", {})
            if not (self._alive(tls_part) and self.pg.tls.healthy() and tls_part.get("port") == self.pg.port):
                self._stop_part(tls_part)
                pid = self.pg.tls.start()
                tls_part = {"pid": pid, "create_time": create_time_of(pid), "port": self.pg.port,
                            "ca": str(self.pg.tls.certificates.ca), "started_at": time.time()}
            state["parts"]["tls"] = tls_part
            state["database_url"] = self.pg.url()
        state["aws_endpoint_url"] = self.moto.endpoint
        self.write_state(state)
        if not self.settings.external_database_url and (orphans := self.pg.orphans()):
            print(f"note: {len(orphans)} database cluster(s) belong to state folders that no longer exist: "
                  f"{'; '.join(orphans[:3])}{' ...' if len(orphans) > 3 else ''}. Delete them if they are not a "
                  "moved project's (`playbook local down --delete-data` deletes a stack's own)", file=sys.stderr)
        return self.status()

    def _check_ports_belong_to_us(self, state: dict[str, Any]) -> None:
        """A busy port is an error unless the state file says that our own live process holds it."""
        from playbook.local.processes import require_free_port

        parts = state.get("parts", {})
        wanted = [("moto", self.settings.moto_port, "the moto server", "PLAYBOOK_MOTO_PORT", "127.0.0.1")]
        if not self.settings.external_database_url:
            wanted += [("postgres", self.settings.pg_port, "the embedded PostgreSQL", "PLAYBOOK_PG_PORT",
                        SERVER_HOST),
                       ("tls", self.settings.pg_port, "the database's TLS front", "PLAYBOOK_PG_PORT", FRONT_HOST)]
        for name, port, what, env_var, host in wanted:
            part = parts.get(name, {})
            if self._alive(part) and part.get("port") == port:
                continue
            require_free_port(port, what, env_var, host=host)

    def down(self, force: bool = False, delete_data: bool = False) -> list[str]:
        try:
            state = self.read_state()
        except StackError:
            if not force:
                raise
            state = {}
        stopped = []
        parts = state.get("parts", {})
        if self._stop_part(parts.get("moto", {})):
            stopped.append("moto")
        if self._stop_part(parts.get("tls", {})):
            stopped.append("tls")
        if self._stop_part(parts.get("postgres", {}), postgres_stop=True):
            stopped.append("postgres")
        if force and not self.settings.external_database_url and self.pg.initialised() and self.pg.pid():
            self.pg.stop()
        if state or force:
            self.write_state({"parts": {}, "region": self.settings.region})
        if delete_data:
            if not self.settings.external_database_url:
                self.pg.delete_data()
                self.pg.tls.delete_data()
            self.moto.delete_data()
        return stopped

    def _alive(self, part: dict[str, Any]) -> bool:
        return process_matches(part.get("pid"), part.get("create_time"))

    def _stop_part(self, part: dict[str, Any], postgres_stop: bool = False) -> bool:
        if not self._alive(part):
            return False
        if postgres_stop:
            self.pg.stop()
            if not self._alive(part):
                return True
        return terminate(part["pid"], part.get("create_time"))

    # -- status -------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        state = self.read_state()
        parts = state.get("parts", {})
        moto_part = parts.get("moto", {})
        moto_ok = self._alive(moto_part) and self.moto.healthy()
        result: dict[str, Any] = {
            "state_file": str(self.settings.state_file),
            "region": state.get("region", self.settings.region),
            "aws_endpoint_url": state.get("aws_endpoint_url", self.moto.endpoint),
            "database_url": state.get("database_url") or (
                self.settings.external_database_url or (self.pg.url() if self.pg.initialised() else None)),
            "moto": {**moto_part, "healthy": moto_ok, "recording": self.moto.recording_size()},
        }
        if self.settings.external_database_url:
            result["postgres"] = {"external": True, "healthy": _db_healthy(result["database_url"])}
        else:
            pg_part, tls_part = parts.get("postgres", {}), parts.get("tls", {})
            result["tls"] = {**tls_part, "healthy": self._alive(tls_part) and self.pg.tls.healthy()}
            result["postgres"] = {**pg_part, "healthy": self._alive(pg_part) and result["tls"]["healthy"]
                                  and self.pg.healthy()}
        result["healthy"] = bool(result["moto"]["healthy"] and result["postgres"]["healthy"])
        return result


def _server_healthy(pg: postgres.EmbeddedPostgres) -> bool:
    """The server answers its superuser (on its own address, whether or not the TLS front is up)."""
    import psycopg2

    try:
        return pg.healthy_superuser()
    except psycopg2.Error:
        return False


def _db_healthy(url: str | None) -> bool:
    import psycopg2

    if not url:
        return False
    try:
        with psycopg2.connect(url, connect_timeout=3):
            return True
    except psycopg2.Error:
        return False


def current() -> Stack:
    return Stack(local_settings())


def environment(status: dict[str, Any] | None = None) -> dict[str, str]:
    """The environment variables that point boto3 and the handlers at the local stack (the local target sets
    them in its process when it is resolved: playbook.targets)."""
    status = status or current().status()
    return {
        "AWS_ENDPOINT_URL": status["aws_endpoint_url"],
        "AWS_DEFAULT_REGION": status["region"],
        "AWS_REGION": status["region"],
        **AWS_DUMMY_CREDENTIALS,
    }


def redact(url: str | None) -> str | None:
    """A database URL with its password hidden, for anything a person reads."""
    if not url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy knows: hide it whole
        return "<hidden>"
