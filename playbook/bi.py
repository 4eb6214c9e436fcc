"""`playbook bi connect`: how a BI tool reaches the warehouse, and the files the tools open.

Every BI tool logs in as the reporting role (SELECT on the marts, nothing else) at the BI proxy, over TLS that
the proxy passes through unchanged: the session is encrypted from the tool to the database, and the proxy
never holds a key. A tool verifies the server with sslmode=verify-ca against the database's CA (AWS: the
RDS CA bundle; locally: the stack's own CA) where it lets the CA be named: libpq, psqlODBC, Metabase and
Superset do; Tableau's file says only "SSL required", Power BI trusts the Windows store. Not verify-full:
the certificate names the database (Aurora's cluster endpoint), and the tool connects to the proxy's address.
The allow-list (security group and nginx) decides who reaches the proxy at all.

Files written to reports/bi/<target>/ (under $PLAYBOOK_REPORTS_DIR when set, or --out); only `pgpass` holds
the password:
- `pgpass`: the libpq password file line (mode 0600), for psql and every libpq client (PGPASSFILE);
- `odbc.ini`: a DSN for psqlODBC ("PostgreSQL Unicode"), the driver Excel, Power BI and Tableau use through
  ODBC (ODBCINI, or the same keys in Windows' ODBC Data Source Administrator);
- `playbook.pbids`: a Power BI data source file (Power BI Desktop opens it on the connection);
- `playbook.tds`: a Tableau data source (Tableau Desktop opens it on the connection).
"""

from __future__ import annotations

import argparse
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from playbook.errors import PlaybookError

BI_SSLMODE = "verify-ca"
ODBC_DRIVER = "PostgreSQL Unicode"  # the name Debian's odbc-postgresql and the Windows installer register
TOOLS = ("psql", "odbc", "excel", "powerbi", "tableau", "metabase", "superset")


@dataclass(frozen=True)
class Connection:
    target: str
    host: str
    port: int
    database: str
    user: str
    ca_file: Path
    password: str = field(repr=False)
    sslmode: str = BI_SSLMODE

    @property
    def dsn_name(self) -> str:
        return f"playbook-{self.target}"

    def libpq(self) -> str:
        """A libpq keyword string (no password: it comes from the pgpass file, or the tool asks); a value with a
        space or quote (a CA file under "My Documents") is quoted as libpq reads it."""
        return " ".join(f"{k}={_conninfo_value(str(v))}" for k, v in (
            ("host", self.host), ("port", self.port), ("dbname", self.database), ("user", self.user),
            ("sslmode", self.sslmode), ("sslrootcert", self.ca_file)))

    def url(self, with_password: bool = False) -> str:
        login = f"{quote(self.user)}:{quote(self.password, safe='')}" if with_password else quote(self.user)
        return (f"postgresql://{login}@{self.host}:{self.port}/{self.database}"
                f"?sslmode={self.sslmode}&sslrootcert={quote(str(self.ca_file), safe='/')}")


def _conninfo_value(value: str) -> str:
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def connection(target) -> Connection:
    """The reporting role's connection at the BI proxy of `target` (the password from the role's secret)."""
    url = target.reporting_url()
    parts = urlsplit(url)
    host, port = target.bi_address(url)
    query = parse_qs(parts.query)
    if "sslrootcert" in query:
        ca = Path(query["sslrootcert"][0])
    else:
        from playbook.templates import RDS_CA_BUNDLE_FILE

        ca = RDS_CA_BUNDLE_FILE
    if not ca.exists():
        raise PlaybookError(f"the CA file {ca} is missing: on AWS `make rds-ca-bundle` fetches AWS's RDS CA bundle")
    return Connection(target=target.name, host=host, port=port, database=parts.path.lstrip("/") or "playbook",
                      user=unquote(parts.username or ""), ca_file=ca.resolve(), password=unquote(parts.password or ""))


# -- what each tool opens -----------------------------------------------------------------------------------
def pgpass_line(conn: Connection) -> str:
    """hostname:port:database:username:password, with ':' and '\\' escaped as libpq reads them."""
    fields = (conn.host, str(conn.port), conn.database, conn.user, conn.password)
    return ":".join(f.replace("\\", "\\\\").replace(":", "\\:") for f in fields) + "\n"


def odbc_ini(conn: Connection) -> str:
    """A DSN for psqlODBC: its own keys, and libpq's for the CA (pqopt)."""
    keys = {"Description": "SME Analytics Playbook: the marts, as the reporting role, through the BI proxy",
            "Driver": ODBC_DRIVER, "Servername": conn.host, "Port": str(conn.port), "Database": conn.database,
            "Username": conn.user, "SSLmode": conn.sslmode,
            "pqopt": f"sslrootcert={_conninfo_value(str(conn.ca_file))}",
            "ReadOnly": "1"}
    return f"[{conn.dsn_name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


def pbids(conn: Connection) -> str:
    """Power BI's data source file: one PostgreSQL connection, imported (the marts are small and refreshed daily)."""
    return json.dumps({"version": "0.1", "connections": [{
        "details": {"protocol": "postgresql",
                    "address": {"server": f"{conn.host}:{conn.port}", "database": conn.database}},
        "options": {}, "mode": "Import"}]}, indent=2) + "\n"


def tds(conn: Connection) -> str:
    """A Tableau data source: the PostgreSQL connector, username and password, SSL required (Tableau's own
    setting: the session is encrypted; Tableau does not check the server against the CA file)."""
    root = ET.Element("datasource", {"formatted-name": f"SME Analytics Playbook ({conn.target})", "inline": "true",
                                     "version": "18.1", "xmlns:user": "http://www.tableausoftware.com/xml/user"})
    ET.SubElement(root, "connection", {
        "class": "postgres", "server": conn.host, "port": str(conn.port), "dbname": conn.database,
        "username": conn.user, "authentication": "username-password", "sslmode": "require",
        "one-time-sql": "", "odbc-native-protocol": ""})
    ET.indent(root)
    return "<?xml version='1.0' encoding='utf-8' ?>\n" + ET.tostring(root, encoding="unicode") + "\n"


def write_files(conn: Connection, out: Path, tools: tuple[str, ...]) -> dict[str, Path]:
    """The files of the chosen tools, in `out`: {what: path}."""
    from playbook.local.processes import write_private

    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "psql" in tools:
        path = out / "pgpass"
        path.unlink(missing_ok=True)
        write_private(path, pgpass_line(conn))
        written["pgpass"] = path
    files = {"odbc": ("odbc.ini", odbc_ini), "excel": ("odbc.ini", odbc_ini), "powerbi": ("playbook.pbids", pbids),
             "tableau": ("playbook.tds", tds)}
    for tool in tools:
        if tool in files:
            name, render = files[tool]
            (out / name).write_text(render(conn))
            written[name] = out / name
    return written


def instructions(conn: Connection, tool: str, files: dict[str, Path]) -> list[str]:
    steps = {
        "psql": [f'PGPASSFILE={files.get("pgpass", "pgpass")} psql "{conn.libpq()}"'],
        "odbc": [f"ODBCINI={files.get('odbc.ini', 'odbc.ini')} isql -v {conn.dsn_name} {conn.user} <password>",
                 f"on Windows: ODBC Data Source Administrator > Add > {ODBC_DRIVER}, with the keys of odbc.ini "
                 "(SSL Mode verify-ca; the CA file in the driver's pqopt)"],
        "excel": ["Data > Get Data > From Other Sources > From ODBC, the DSN " f"{conn.dsn_name} (odbc.ini), "
                  "then the marts' tables"],
        "powerbi": [f"open {files.get('playbook.pbids', 'playbook.pbids')} in Power BI Desktop, sign in with "
                    "Database credentials; Windows must trust the CA: import "
                    f"{conn.ca_file.name} into Trusted Root Certification Authorities"],
        "tableau": [f"open {files.get('playbook.tds', 'playbook.tds')} in Tableau Desktop (PostgreSQL connector, "
                    "Require SSL)"],
        "metabase": ["Admin > Databases > Add: PostgreSQL, the host, port, database and user above, Use a secure "
                     f"connection (SSL), SSL Mode verify-ca, SSL Root Certificate {conn.ca_file}"],
        "superset": ["Settings > Database Connections > + Database > PostgreSQL, SQLAlchemy URI "
                     + conn.url(with_password=False).replace("postgresql://", "postgresql+psycopg2://", 1)
                     .replace(f"{quote(conn.user)}@", f"{quote(conn.user)}:<password>@", 1)],
    }
    return [f"  {tool}: {line}" for line in steps[tool]]


def summary(conn: Connection, show_password: bool) -> list[str]:
    password = conn.password if show_password else "(the reporting secret's; --show-password prints it)"
    return [f"  host {conn.host}  port {conn.port}  database {conn.database}  user {conn.user}",
            f"  password {password}", f"  TLS: sslmode={conn.sslmode}, CA file {conn.ca_file}"]


# -- CLI -------------------------------------------------------------------------------------------------------------
def cmd_bi_connect(args: argparse.Namespace) -> int:
    from playbook.settings import reports_root
    from playbook.targets import resolve_target

    target = resolve_target(args.target)
    conn = connection(target)
    if args.print:  # one value, for a script: `psql "$(playbook bi connect --print libpq)"`
        print({"libpq": conn.libpq, "url": conn.url, "password": lambda: conn.password}[args.print]())
        return 0
    tools = (args.tool,) if args.tool else TOOLS
    out = Path(args.out) if args.out else reports_root() / "bi" / target.name
    files = write_files(conn, out, tools)
    print(f"the reporting role at the BI proxy ({target.name}):")
    print(*summary(conn, args.show_password), sep=os.linesep)
    print(f"  files in {out}: " + (", ".join(sorted(p.name for p in files.values())) or "none for this tool"))
    for tool in tools:
        print(*instructions(conn, tool, files), sep=os.linesep)
    return 0


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("bi", help="BI tools: how they connect to the marts, and their connection files")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = sub.add_parser("connect", help="the reporting role's connection at the BI proxy, and the files each tool "
                                       "opens (pgpass, odbc.ini, playbook.pbids, playbook.tds)")
    c.add_argument("--tool", choices=TOOLS, help="one tool (default: all)")
    c.add_argument("--target", choices=("local", "aws"), default="local")
    c.add_argument("--out", help="folder for the files (default: reports/bi/<target>/)")
    c.add_argument("--show-password", action="store_true", help="print the reporting role's password")
    c.add_argument("--print", choices=("libpq", "url", "password"),
                   help="print only this (a libpq keyword string, a URL without the password, or the password) "
                        "and write no file")
    c.set_defaults(func=cmd_bi_connect)
