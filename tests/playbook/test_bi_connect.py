"""`playbook bi connect`: real clients of each kind (libpq's psql, unixODBC's isql with psqlODBC, the driver Excel,
Power BI and Tableau use on Windows) read marts.top_clients through the BI proxy over verified TLS, and get the
rows the reports read; the files Power BI and Tableau open have their documented shapes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import psycopg2
import pytest

from playbook import cli
from playbook.errors import PlaybookError
from playbook.local import tls
from tests.conftest import free_port
from tests.readme import bash_block
from tests.reporting_data import reporting_url, synthetic_company

pytestmark = pytest.mark.stack

SECTION = "## Connect your BI tool"

TOP = "select client_id, client_name, sales_amount from marts.top_clients('2024-01-01', '2024-03-31', 10, 'GBP', '{}')"
# Microsoft's documented .pbids shape ("Use PBIDS files to get data"): version 0.1, exactly one connection, its
# protocol and address, and a mode of Import or DirectQuery
PBIDS_SCHEMA = {
    "type": "object", "required": ["version", "connections"], "additionalProperties": False,
    "properties": {
        "version": {"const": "0.1"},
        "connections": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object", "required": ["details"], "additionalProperties": False,
            "properties": {
                "details": {"type": "object", "required": ["protocol", "address"], "additionalProperties": False,
                            "properties": {"protocol": {"const": "postgresql"},
                                           "address": {"type": "object", "required": ["server", "database"],
                                                       "additionalProperties": False,
                                                       "properties": {"server": {"type": "string"},
                                                                      "database": {"type": "string"}}}}},
                "options": {"type": "object"},
                "mode": {"enum": ["Import", "DirectQuery"]}}}}}}


@pytest.fixture(scope="module")
def company(stack):
    with synthetic_company(stack["database_url"]) as made:
        yield made


@pytest.fixture(scope="module")
def proxy(stack):
    port = str(free_port())
    env = {"PLAYBOOK_PROXY_PORT": port}
    run = subprocess.run([sys.executable, "-m", "playbook", "proxy", "up", "--allow-cidr", "127.0.0.1/32"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert run.returncode == 0, run.stderr
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLAYBOOK_PROXY_PORT", port)
        yield int(port)
        subprocess.run([sys.executable, "-m", "playbook", "proxy", "down"], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def connect(stack, company, proxy, tmp_path_factory):
    """`playbook bi connect` run as a user runs it: its printed lines and the files it wrote."""
    reporting_url(stack["database_url"])  # the role's login, as provisioning gives it
    out = tmp_path_factory.mktemp("bi")

    def run(*args: str) -> str:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert cli.main(["bi", "connect", "--out", str(out), *args]) == 0
        return printed.getvalue()

    return run, out


def test_without_the_proxy_it_says_how_to_start_it(stack, company, monkeypatch, capsys, tmp_path):
    """(First in the module: the proxy the other tests share is not started yet.)"""
    reporting_url(stack["database_url"])
    monkeypatch.setenv("PLAYBOOK_PROXY_PORT", str(free_port()))
    assert cli.main(["bi", "connect", "--tool", "psql", "--out", str(tmp_path)]) == 2
    assert "the local BI proxy is not running: start it with `playbook proxy up`" in capsys.readouterr().err


def expected_rows(stack) -> list[tuple[str, str, str]]:
    """The rows the reports read: the reporting role's own session, the way the report stage connects."""
    with psycopg2.connect(reporting_url(stack["database_url"])) as conn, conn.cursor() as cur:
        cur.execute(TOP)
        rows = [(c, n or "", str(a)) for c, n, a in cur.fetchall()]  # a client without a name prints empty
    conn.close()
    assert len(rows) == 10
    return rows


def test_psql_reads_the_top_clients_through_the_proxy_over_verified_tls(stack, connect, proxy):
    run, out = connect
    printed = run("--tool", "psql")
    pgpass = out / "pgpass"
    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600
    password = pgpass.read_text().rstrip("\n").rsplit(":", 1)[1]
    assert password not in printed, "the password is printed only when asked"
    assert password in run("--tool", "psql", "--show-password")
    ca = Path(stack["database_url"].split("sslrootcert=")[1])
    libpq = (f"host=127.0.0.1 port={proxy} dbname=playbook user=pipeline_reporting sslmode=verify-ca "
             f"sslrootcert={ca}")
    assert f'PGPASSFILE={pgpass} psql "{libpq}"' in printed
    client_env = {"PGPASSFILE": str(pgpass), "PATH": "/usr/bin"}
    got = subprocess.run(["psql", libpq, "-X", "-At", "-F", "\t", "-c", TOP, "-c", "\\conninfo"],
                         capture_output=True, text=True, timeout=30, env=client_env)
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert [tuple(line.split("\t")) for line in lines[:-2]] == expected_rows(stack)
    assert lines[-1].startswith("SSL connection (protocol: TLSv1.3")
    plain = subprocess.run(["psql", libpq.replace("sslmode=verify-ca", "sslmode=disable"), "-X", "-Atc", "select 1"],
                           capture_output=True, text=True, timeout=30, env=client_env)
    assert plain.returncode != 0 and "accepts TLS connections only" in plain.stderr


def isql(odbc_ini: Path, dsn: str, password: str, query: str) -> subprocess.CompletedProcess:
    return subprocess.run(["isql", dsn, "pipeline_reporting", password, "-v", "-b", "-d\t"], input=query + "\n",
                          capture_output=True, text=True, timeout=60,
                          env={"ODBCINI": str(odbc_ini), "PATH": "/usr/bin", "HOME": str(odbc_ini.parent)})


def test_isql_reads_the_top_clients_through_the_odbc_dsn(stack, connect, tmp_path):
    run, out = connect
    printed = run("--tool", "odbc")
    assert f"ODBCINI={out / 'odbc.ini'} isql -v playbook-local pipeline_reporting <password>" in printed
    password = run("--tool", "psql", "--show-password").split("password ", 1)[1].split()[0]
    got = isql(out / "odbc.ini", "playbook-local", password, TOP)
    assert got.returncode == 0, got.stdout + got.stderr
    assert [tuple(line.split("\t")) for line in got.stdout.splitlines() if line.strip()] == expected_rows(stack)
    # the DSN's TLS settings are what the driver uses: another CA is refused, and so is plain text
    other = tls.Certificates(tmp_path / "other")
    other.ensure()
    dsn = (out / "odbc.ini").read_text()
    wrong_ca = tmp_path / "wrong-ca.ini"
    wrong_ca.write_text(dsn.replace(f"sslrootcert={Path(stack['database_url'].split('sslrootcert=')[1])}",
                                    f"sslrootcert={other.ca}"))
    refused = isql(wrong_ca, "playbook-local", password, "select 1")
    assert refused.returncode != 0 and "certificate verify failed" in refused.stdout + refused.stderr
    plain = tmp_path / "plain.ini"
    plain.write_text(dsn.replace("SSLmode = verify-ca", "SSLmode = disable"))
    refused = isql(plain, "playbook-local", password, "select 1")
    assert refused.returncode != 0 and "accepts TLS connections only" in refused.stdout + refused.stderr


def test_the_power_bi_and_tableau_files_have_their_documented_shapes(connect, proxy):
    run, out = connect
    run("--tool", "powerbi")
    run("--tool", "tableau")
    pbids = json.loads((out / "playbook.pbids").read_text())
    jsonschema.validate(pbids, PBIDS_SCHEMA)
    assert pbids["connections"][0]["details"]["address"] == {"server": f"127.0.0.1:{proxy}", "database": "playbook"}
    root = ET.parse(out / "playbook.tds").getroot()  # noqa: S314 - the file the command just wrote
    assert root.tag == "datasource" and root.get("version") and root.get("inline") == "true"
    (connection,) = root.findall("connection")
    assert {k: connection.get(k) for k in ("class", "server", "port", "dbname", "username", "authentication",
                                           "sslmode")} == \
        {"class": "postgres", "server": "127.0.0.1", "port": str(proxy), "dbname": "playbook",
         "username": "pipeline_reporting", "authentication": "username-password", "sslmode": "require"}
    password = run("--tool", "psql", "--show-password").split("password ", 1)[1].split()[0]
    assert password not in (out / "playbook.tds").read_text() and password not in json.dumps(pbids)


def test_on_aws_it_names_the_proxy_and_the_rds_ca_bundle(stack, company, monkeypatch, tmp_path):
    """The consultant's PLAYBOOK_DATABASE_URL names the proxy: the reporting role's login at that address."""
    from playbook.bi import connection, odbc_ini, pgpass_line
    from playbook.targets import AwsTarget

    reporting_url(stack["database_url"])
    bundle = tmp_path / "rds-global-bundle.pem"
    bundle.write_text(Path(stack["database_url"].split("sslrootcert=")[1]).read_text())
    monkeypatch.setenv("PLAYBOOK_DATABASE_URL", "postgresql://pipeline_monitor:x@proxy.example:5432/playbook"
                                                f"?sslmode=verify-ca&sslrootcert={bundle}")
    conn = connection(AwsTarget())
    assert (conn.target, conn.host, conn.port, conn.database, conn.user, conn.sslmode, conn.ca_file) == \
        ("aws", "proxy.example", 5432, "playbook", "pipeline_reporting", "verify-ca", bundle)
    password = psycopg2.extensions.parse_dsn(reporting_url(stack["database_url"]))["password"]
    assert conn.password == password and password not in repr(conn)
    assert pgpass_line(conn) == f"proxy.example:5432:playbook:pipeline_reporting:{password}\n"
    assert "[playbook-aws]" in odbc_ini(conn) and "Servername = proxy.example" in odbc_ini(conn)
    monkeypatch.setenv("PLAYBOOK_DATABASE_URL", "postgresql://pipeline_monitor:x@proxy.example:5432/playbook")
    monkeypatch.setattr("playbook.templates.RDS_CA_BUNDLE_FILE", tmp_path / "absent.pem")
    with pytest.raises(PlaybookError, match="absent.pem is missing: on AWS `make rds-ca-bundle` fetches"):
        connection(AwsTarget())


@pytest.mark.timeout(600)
def test_the_readme_section_runs_as_written(stack, company, proxy, tmp_path):
    """(Last in the module: it provisions the session's stack, and its `proxy up` is the shared proxy's.)"""
    script = bash_block(SECTION).replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    env = {**os.environ, "PLAYBOOK_REPORTS_DIR": str(tmp_path / "reports"), "PLAYBOOK_PROXY_PORT": str(proxy)}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    with psycopg2.connect(reporting_url(stack["database_url"])) as conn, conn.cursor() as cur:
        cur.execute("select rank, client_name, sales_amount from marts.top_clients('2024-01-01', '2024-03-31', 10,"
                    " null, '{}')")
        rows = cur.fetchall()
    conn.close()
    assert len(rows) == 10
    printed = done.stdout
    for rank, name, amount in rows:  # psql's aligned table: every row the reports read, in order
        assert re.search(rf"^\s*{rank} \| {re.escape(name or '')}\s*\|\s+{re.escape(str(amount))}$", printed, re.M), \
            (rank, name, amount, printed)
    assert re.search(r"^\| 10 +\|$", printed, re.M), "isql counts the same ten rows"
    assert "SSL" not in done.stderr and "FATAL" not in done.stderr


def test_a_ca_file_under_a_folder_with_a_space_is_quoted_as_libpq_reads_it():
    from playbook.bi import Connection, odbc_ini

    conn = Connection(target="aws", host="proxy.example", port=5432, database="playbook", user="pipeline_reporting",
                      ca_file=Path("/home/ana/My Documents/it's ca.pem"), password="x")  # noqa: S106
    parsed = psycopg2.extensions.parse_dsn(conn.libpq())  # libpq's own parser
    assert parsed["sslrootcert"] == "/home/ana/My Documents/it's ca.pem" and parsed["sslmode"] == "verify-ca"
    pqopt = next(line for line in odbc_ini(conn).splitlines() if line.startswith("pqopt = ")).removeprefix("pqopt = ")
    assert psycopg2.extensions.parse_dsn(pqopt) == {"sslrootcert": "/home/ana/My Documents/it's ca.pem"}
