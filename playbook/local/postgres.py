"""The embedded PostgreSQL: pgserver's bundled binaries, a project-local data directory, loopback TCP.

pgserver ships a full PostgreSQL build as a wheel, so a laptop with only Python gets a real server. We
drive its initdb and pg_ctl ourselves to choose the port, the authentication (scram on loopback only, no
Unix socket) and the pg_hba rules the warehouse's roles need. Every login but the superuser's comes through
the TLS front (playbook.local.tls), as Aurora with rds.force_ssl accepts TLS only: the URLs handed out name
the front with sslmode=verify-full and the local CA.

PostgreSQL refuses to run as root. As root the server runs as a system user of its own (SYSTEM_USER), which
may not reach the project (a clone under /root, a 0700 directory): its binaries are copied once per pgserver
build, and each stack's data and log kept, in a directory made for it (SERVER_HOME, /var/lib/playbook-pgserver),
so no directory of the user's is ever opened up. The state directory keeps the credentials (0600) either way,
and the cluster's name with them: a state folder made again gets a cluster of its own, a moved one keeps its
data. Nothing there is deleted but by `playbook local down --delete-data`; `local up` names the clusters whose
state folder is gone.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg2

from playbook.local.processes import StackError, require_free_port, wait_until, write_private
from playbook.local.tls import FRONT_HOST, RELAY_SOURCE, SERVER_HOST, TlsFront

DATABASE = "playbook"
OWNER_ROLE = "playbook_owner"
SUPERUSER = "postgres"
# pgserver refuses nothing as root, but PostgreSQL does: as root we run it as this system user.
SYSTEM_USER = "pgserver"
ENV_SERVER_HOME = "PLAYBOOK_PG_SERVER_DIR"
# how the lines pg_hba.conf's managed rules begin with (write_hba): other lines are rules added to them
MANAGED_HBA = ("# Managed", f"host all {SUPERUSER} ", "host all all ")


def as_root() -> bool:
    return os.geteuid() == 0


def server_home() -> Path:
    """As root: where the server's system user finds its binaries and keeps each stack's data."""
    return Path(os.environ.get(ENV_SERVER_HOME, "/var/lib/playbook-pgserver"))


def binaries() -> Path:
    try:
        with warnings.catch_warnings():  # pgserver's import asks platformdirs for a runtime dir we never use
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise StackError("pgserver is not installed: run `make install` (or pip install pgserver)") from exc
    if not (POSTGRES_BIN_PATH / "pg_ctl").exists():
        raise StackError(f"PostgreSQL binaries are missing under {POSTGRES_BIN_PATH}: reinstall pgserver")
    return _for_the_server(POSTGRES_BIN_PATH.parent) / "bin" if as_root() else POSTGRES_BIN_PATH


def _for_the_server(pginstall: Path) -> Path:
    """pgserver's build copied once (per version) where the server's system user can read and run it, with the
    shared libraries its binaries find relative to themselves (pgserver.libs, three levels up)."""
    from importlib.metadata import version as dist_version

    copied = server_home() / f"pgserver-{dist_version('pgserver')}"
    target = copied / "pgserver" / "pginstall"
    if (target / "bin" / "pg_ctl").exists():
        return target
    home = server_home()
    try:
        home.mkdir(mode=0o755, parents=True, exist_ok=True)
        staging = home / f".{copied.name}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(pginstall, staging / "pgserver" / "pginstall", symlinks=True)
        libs = pginstall.parent.parent / "pgserver.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "pgserver.libs", symlinks=True)
        try:
            staging.rename(copied)
        except OSError:  # another stack copied it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise StackError(f"as root the embedded PostgreSQL runs as the system user {SYSTEM_USER!r}, from a copy of "
                         f"its binaries in {home}, which could not be made ({exc}); set {ENV_SERVER_HOME} to a "
                         "directory root may create, or run the stack as another user") from exc
    return target


def version() -> str:
    out = subprocess.run([str(binaries() / "postgres"), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@dataclass
class EmbeddedPostgres:
    root: Path  # <state>/pg
    port: int

    @functools.cached_property
    def home(self) -> Path:
        """Where the server's own files are: the state directory's pg/, or as root a directory of the server's
        user (the state directory's data from before stays where it is)."""
        if not as_root() or (self.root / "data" / "PG_VERSION").exists():
            return self.root
        creds = self.credentials()
        key = creds.get("cluster") or hashlib.sha256(creds["superuser"].encode()).hexdigest()[:16]
        return server_home() / "clusters" / key

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "log" / "postgres.log"

    @property
    def secret_file(self) -> Path:
        return self.root / "credentials.json"

    # -- credentials kept beside the data, readable by this user only -------------------------------
    def credentials(self) -> dict[str, str]:
        import json

        if not self.secret_file.exists():
            # the cluster's name: a stack made again (its state folder deleted) never meets the old one's data
            creds = {"superuser": secrets.token_urlsafe(24), "owner": secrets.token_urlsafe(24),
                     "cluster": secrets.token_hex(8)}
            self.secret_file.parent.mkdir(parents=True, exist_ok=True)
            write_private(self.secret_file, json.dumps(creds), exclusive=True)
            return creds
        return json.loads(self.secret_file.read_text())

    @property
    def tls(self) -> TlsFront:
        """The TLS front every login but the superuser's goes through (<state>/tls: the CA, the certificate)."""
        return TlsFront(self.root.parent / "tls", self.port)

    def url(self, role: str = OWNER_ROLE, password: str | None = None, database: str = DATABASE) -> str:
        """A role's login through the TLS front, verifying the server with the local CA; the superuser's is the
        server's own address in plain text (the stack administers its server before the front is up)."""
        creds = self.credentials()
        if password is None:
            password = creds["owner"] if role == OWNER_ROLE else creds["superuser"]
        login = f"postgresql://{quote(role)}:{quote(password, safe='')}"
        if role == SUPERUSER:
            return f"{login}@{SERVER_HOST}:{self.port}/{database}?sslmode=disable"
        ca = quote(str(self.tls.certificates.ca), safe="/")
        return f"{login}@{FRONT_HOST}:{self.port}/{database}?sslmode=verify-full&sslrootcert={ca}"

    # -- lifecycle ----------------------------------------------------------------------------------
    def _run_as(self) -> dict:
        if not as_root():
            return {}
        binaries()  # imports pgserver quietly
        from pgserver.utils import ensure_user_exists

        ensure_user_exists(SYSTEM_USER)
        # its own group only: root's group would shadow the "other" bits that let it traverse parents
        return {"user": SYSTEM_USER, "group": SYSTEM_USER, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if as_root():
            shutil.chown(path, SYSTEM_USER, SYSTEM_USER)

    def _make_home(self) -> None:
        """As root: the cluster's directory, its user's alone, naming the state folder it belongs to (written again
        at every start, so a moved project keeps its data)."""
        if self.home == self.root:
            self.root.mkdir(parents=True, exist_ok=True)
            return
        self.home.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.home.mkdir(mode=0o700, exist_ok=True)
        (self.home / "state_dir").write_text(str(self.root.resolve()) + "\n")
        self._chown(self.home)

    def orphans(self) -> list[str]:
        """As root: clusters whose state folder is gone (deleted, or a project moved and not started since)."""
        clusters = server_home() / "clusters"
        if self.home == self.root or not clusters.is_dir():
            return []
        found = []
        for other in sorted(clusters.iterdir()):
            owner = other / "state_dir"
            named = owner.read_text().strip() if owner.exists() else None
            if other != self.home and named and not Path(named).exists():
                found.append(f"{other} (of {named})")
        return found

    def delete_data(self) -> None:
        """The database's files, wherever they are kept (with the server stopped): `local down --delete-data`."""
        if self.home != self.root:
            shutil.rmtree(self.home, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        creds = self.credentials()
        run_as = self._run_as()
        self._make_home()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._chown(self.log_file.parent)
        pwfile = self.home / "pwfile"
        write_private(pwfile, creds["superuser"])
        self._chown(pwfile)
        try:
            subprocess.run(
                [str(binaries() / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                 "--auth-host=scram-sha-256", "--auth-local=reject", "--encoding=UTF8", "--locale=C"],
                check=True, capture_output=True, text=True, **run_as,
            )
        except subprocess.CalledProcessError as exc:
            raise StackError(f"initdb failed for {self.data_dir}: {exc.stderr.strip()}") from exc
        finally:
            pwfile.unlink(missing_ok=True)
        self.write_hba([])  # initdb's own rules go

    def write_hba(self, extra_rules: list[str] | None = None) -> None:
        """pg_hba: scram passwords; the superuser from loopback, every other login from the TLS front's relay
        address only (a plain-text login to the server itself is refused). `extra_rules` (the reporting role's,
        warehouse.apply_reporting_allow_list) come between; None keeps the ones the file has."""
        hba = self.data_dir / "pg_hba.conf"
        if extra_rules is None:
            kept = hba.read_text().splitlines() if hba.exists() else []
            # a rule for loopback written before the front existed: every loopback login now arrives from its
            # relay address, so it names that (else an upgraded stack would refuse the reporting role)
            extra_rules = [line.replace(" 127.0.0.1/32 ", f" {RELAY_SOURCE}/32 ") for line in kept
                           if line.strip() and not line.startswith(MANAGED_HBA)]
        rules = [
            f"{MANAGED_HBA[0]} by the playbook: scram passwords, no Unix socket; TLS but for the superuser.",
            f"{MANAGED_HBA[1]}127.0.0.1/32 scram-sha-256",
            *extra_rules,
            f"{MANAGED_HBA[2]}{RELAY_SOURCE}/32 scram-sha-256",
        ]
        hba.write_text("\n".join(rules) + "\n")
        self._chown(hba)

    def pid(self) -> int | None:
        pidfile = self.data_dir / "postmaster.pid"
        try:
            return int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> int:
        require_free_port(self.port, "the embedded PostgreSQL", "PLAYBOOK_PG_PORT", host=SERVER_HOST)
        self._make_home()
        self.write_hba()  # the managed rules of this version, whatever an older one wrote
        options = f"-p {self.port} -c listen_addresses={SERVER_HOST} -c unix_socket_directories='' " \
                  "-c max_connections=60 -c shared_buffers=128MB -c fsync=on"
        try:
            subprocess.run(
                [str(binaries() / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                 "-w", "-t", "60", "-o", options, "start"],
                check=True, capture_output=True, text=True, **self._run_as(),
            )
        except subprocess.CalledProcessError as exc:
            tail = self.log_file.read_text().splitlines()[-5:] if self.log_file.exists() else []
            raise StackError(
                f"PostgreSQL did not start on port {self.port}: {exc.stderr.strip() or exc.stdout.strip()} "
                f"{' | '.join(tail)} (log: {self.log_file})"
            ) from exc
        wait_until(self.healthy_superuser, 30, "PostgreSQL")
        self.ensure_database()
        pid = self.pid()
        assert pid is not None
        return pid

    def stop(self) -> None:
        if not self.initialised():
            return
        subprocess.run(
            [str(binaries() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop"],
            capture_output=True, text=True, **self._run_as(),
        )

    def reload(self) -> None:
        subprocess.run([str(binaries() / "pg_ctl"), "-D", str(self.data_dir), "reload"],
                       check=True, capture_output=True, text=True, **self._run_as())

    def healthy_superuser(self) -> bool:
        with psycopg2.connect(self.url(SUPERUSER, database="postgres"), connect_timeout=3) as conn, \
                conn.cursor() as cur:
            cur.execute("select 1")
            return cur.fetchone() == (1,)

    def healthy(self) -> bool:
        try:
            with psycopg2.connect(self.url(), connect_timeout=3) as conn, conn.cursor() as cur:
                cur.execute("select 1")
                return True
        except psycopg2.Error:
            return False

    def ensure_database(self) -> None:
        """The project database and its owner role, created once."""
        from psycopg2 import sql

        conn = psycopg2.connect(self.url(SUPERUSER, database="postgres"), connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("select 1 from pg_roles where rolname = %s", (OWNER_ROLE,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("create role {} login createrole password %s").format(
                        sql.Identifier(OWNER_ROLE)), (self.credentials()["owner"],))
                cur.execute("select 1 from pg_database where datname = %s", (DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("create database {} owner {}").format(
                        sql.Identifier(DATABASE), sql.Identifier(OWNER_ROLE)))
                cur.execute(sql.SQL("revoke all on database {} from public").format(sql.Identifier(DATABASE)))
                # the owner watches its sessions (pg_stat_activity), as rds_superuser can on Aurora
                cur.execute(sql.SQL("grant pg_monitor, pg_signal_backend to {}").format(sql.Identifier(OWNER_ROLE)))
        finally:
            conn.close()


