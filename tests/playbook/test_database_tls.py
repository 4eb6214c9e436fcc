"""The local database serves TLS as Aurora with rds.force_ssl does: every login but the superuser's on loopback
is encrypted, and the server is verified against the stack's own CA."""

from __future__ import annotations

import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
from cryptography import x509
from psycopg2 import sql

from playbook.local import tls
from playbook.local.processes import wait_until
from playbook.local.stack import current
from tests.conftest import free_port

PROBE = "tls_probe"


def _settings(url: str, **overrides: str) -> dict:
    """libpq keywords of a URL, some replaced: how a client with other settings would connect."""
    parts = urlsplit(url)
    keywords = dict(p.split("=", 1) for p in parts.query.split("&") if p) if parts.query else {}
    return {"host": parts.hostname, "port": parts.port, "dbname": parts.path.lstrip("/"), "user": parts.username,
            "password": psycopg2.extensions.parse_dsn(url)["password"], **keywords, **overrides,
            "connect_timeout": 5}


@pytest.fixture()
def probe_role(stack):
    """A login role of no privilege, as the pipeline's roles are made: its URL at the stack's address."""
    password = "probe-secret-1"  # noqa: S105 - a throwaway role's, dropped at the end
    with psycopg2.connect(stack["database_url"]) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("create role {} login password %s").format(sql.Identifier(PROBE)), (password,))
        cur.execute(sql.SQL("grant connect on database playbook to {}").format(sql.Identifier(PROBE)))
    owner = urlsplit(stack["database_url"])
    yield stack["database_url"].replace(f"{owner.username}:{owner.password}@", f"{PROBE}:{password}@")
    with psycopg2.connect(stack["database_url"]) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("revoke connect on database playbook from {}").format(sql.Identifier(PROBE)))
        cur.execute(sql.SQL("drop role {}").format(sql.Identifier(PROBE)))
    conn.close()


def test_every_login_but_the_superusers_is_refused_in_plain_text(stack, probe_role):
    pg = current().pg
    for url in (stack["database_url"], probe_role):
        user = urlsplit(url).username
        with psycopg2.connect(url) as conn:  # the URL the stack hands out: verify-full against the local CA
            assert conn.info.ssl_in_use and conn.info.ssl_attribute("protocol") == "TLSv1.3"
        conn.close()
        # plain text to the address every URL names: the front answers with PostgreSQL's error, naming the setting
        with pytest.raises(psycopg2.OperationalError) as refused:
            psycopg2.connect(**_settings(url, sslmode="disable"))
        assert (f'accepts TLS connections only, as Aurora with rds.force_ssl does: connect "{user}" with '
                f"sslmode=verify-full and sslrootcert={pg.tls.certificates.ca}") in str(refused.value)
        # plain text to the server's own address: pg_hba admits no other role from there
        with pytest.raises(psycopg2.OperationalError) as refused:
            psycopg2.connect(**_settings(url, host=tls.SERVER_HOST, sslmode="disable"))
        assert f'no pg_hba.conf entry for host "127.0.0.1", user "{user}"' in str(refused.value)
        assert "no encryption" in str(refused.value)
    # the superuser on loopback, in plain text: how the stack administers its server
    with psycopg2.connect(pg.url("postgres", database="postgres")) as conn, conn.cursor() as cur:
        assert not conn.info.ssl_in_use
        cur.execute("select current_user, inet_server_addr()::text")
        assert cur.fetchone() == ("postgres", f"{tls.SERVER_HOST}/32")
    conn.close()


def test_a_client_verifies_the_server_against_the_local_ca_only(stack, tmp_path):
    url = stack["database_url"]
    assert "sslmode=verify-full" in url
    other = tls.Certificates(tmp_path / "other")
    other.ensure()  # a CA of the same name and shape, which did not sign the server's certificate
    with pytest.raises(psycopg2.OperationalError, match="certificate verify failed"):
        psycopg2.connect(**_settings(url, sslrootcert=str(other.ca)))
    # the certificate names the address clients use, not another: verify-full to "localhost" passes too
    with psycopg2.connect(**_settings(url, host="localhost")) as conn:
        assert conn.info.ssl_in_use
    conn.close()


def test_the_ca_and_certificate_are_kept_private_and_renewed_before_they_expire(tmp_path, monkeypatch):
    certs = tls.Certificates(tmp_path / "tls")
    certs.ensure()
    assert stat.S_IMODE(certs.root.stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in (certs.ca_key, certs.key)} == \
        {"ca.key": 0o600, "server.key": 0o600}
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    server = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert (server.not_valid_after_utc - server.not_valid_before_utc).days == tls.SERVER_DAYS
    certs.ensure()
    assert x509.load_pem_x509_certificate(certs.cert.read_bytes()).serial_number == server.serial_number, \
        "a certificate far from its end is kept"
    monkeypatch.setattr(tls, "RENEW_BEFORE", tls.dt.timedelta(days=tls.SERVER_DAYS + 1))
    certs.ensure()
    renewed = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    assert renewed.serial_number != server.serial_number
    renewed.verify_directly_issued_by(ca)  # by the same CA: clients keep trusting it
    # a CA put in its place (of the same name, as every CA made here is): the certificate is signed again by it
    monkeypatch.setattr(tls, "RENEW_BEFORE", tls.dt.timedelta(days=30))
    other = tls.Certificates(tmp_path / "other")
    other.ensure()
    for name in ("ca.pem", "ca.key"):
        (certs.root / name).write_bytes((other.root / name).read_bytes())
    certs.ensure()
    x509.load_pem_x509_certificate(certs.cert.read_bytes()).verify_directly_issued_by(
        x509.load_pem_x509_certificate(other.ca.read_bytes()))


def test_the_front_declines_gssapi_then_offers_tls(stack):
    port = urlsplit(stack["database_url"]).port
    with socket.create_connection((tls.FRONT_HOST, port), timeout=5) as sock:
        sock.sendall(struct.pack("!II", 8, tls.GSSENC_REQUEST))
        assert sock.recv(1) == b"N"
        sock.sendall(struct.pack("!II", 8, tls.SSL_REQUEST))
        assert sock.recv(1) == b"S"


def test_a_query_is_cancelled_through_the_front(stack):
    """libpq sends a cancel in plain text on a connection of its own: the front relays it, no login."""
    conn = psycopg2.connect(stack["database_url"])
    try:
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled), conn.cursor() as cur:
            cur.execute("select pg_sleep(30)")
        assert time.monotonic() - started < 20
    finally:
        conn.close()


def test_the_tls_front_is_a_part_of_the_stack(stack):
    status = current().status()
    assert status["tls"]["healthy"] and status["tls"]["port"] == urlsplit(stack["database_url"]).port
    assert Path(status["tls"]["ca"]) == current().pg.tls.certificates.ca


def test_a_front_whose_server_is_down_says_so_in_postgresqls_words(stack):
    """A client that completed its handshake hears why there is no session, not a dropped connection."""
    certs = current().pg.tls.certificates
    port, dead = free_port(), free_port()
    front = subprocess.Popen([sys.executable, "-m", "playbook.local.tls", "--listen", f"{tls.FRONT_HOST}:{port}",
                              "--upstream", f"{tls.SERVER_HOST}:{dead}", "--source", tls.RELAY_SOURCE,
                              "--tls-dir", str(certs.root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: tls.TlsFront(certs.root, port).healthy(), 15, "the test's TLS front")
        with pytest.raises(psycopg2.OperationalError) as refused:
            psycopg2.connect(**_settings(stack["database_url"], port=str(port)))
        assert f"the database behind the TLS front ({tls.SERVER_HOST}:{dead}) does not answer" in str(refused.value)
        assert "`playbook local up` starts it again" in str(refused.value)
    finally:
        front.terminate()
        front.wait(10)


def test_bytes_sent_before_the_handshake_are_refused_not_relayed(stack):
    """Plain text after the SSLRequest would be relayed as if it came through TLS (PostgreSQL's CVE-2021-23214):
    the front refuses it in PostgreSQL's words, as PostgreSQL does; a cancel request of the wrong length is
    refused, not relayed; the front serves the next client either way."""
    port = urlsplit(stack["database_url"]).port
    with socket.create_connection((tls.FRONT_HOST, port), timeout=5) as sock:
        sock.sendall(struct.pack("!II", 8, tls.SSL_REQUEST) + b"Q\0\0\0\x0dselect 1\0")
        answer = sock.recv(4096)
    assert answer[:1] == b"E" and b"received unencrypted data after SSL request" in answer
    with socket.create_connection((tls.FRONT_HOST, port), timeout=5) as sock:
        sock.sendall(struct.pack("!II", 12, tls.CANCEL_REQUEST) + b"\0\0\0\0")
        assert b"accepts TLS connections only" in sock.recv(4096)
    with psycopg2.connect(stack["database_url"]) as conn:
        assert conn.info.ssl_in_use
    conn.close()


def test_pg_hba_written_before_the_front_admits_the_relay_where_it_admitted_loopback(stack):
    """A stack made by an earlier version kept rules for 127.0.0.1 (the reporting role's): at the next start
    they name the relay address, through which every loopback login now arrives."""
    pg = current().pg
    hba = pg.data_dir / "pg_hba.conf"
    before = hba.read_text()
    try:
        hba.write_text("# Managed by the playbook: loopback only, scram passwords, no Unix socket.\n"
                       "host all pipeline_reporting 127.0.0.1/32 scram-sha-256\n"
                       "host all pipeline_reporting 0.0.0.0/0 reject\n"
                       "host all all 127.0.0.1/32 scram-sha-256\n")
        pg.write_hba()
        assert hba.read_text().splitlines()[1:] == [
            "host all postgres 127.0.0.1/32 scram-sha-256",
            f"host all pipeline_reporting {tls.RELAY_SOURCE}/32 scram-sha-256",
            "host all pipeline_reporting 0.0.0.0/0 reject",
            f"host all all {tls.RELAY_SOURCE}/32 scram-sha-256"]
    finally:
        hba.write_text(before)
