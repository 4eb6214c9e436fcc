"""The local BI proxy: real nginx on loopback, the same configuration file as the EC2 proxy."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import certifi
import psutil
import pytest

from tests.conftest import free_port

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def playbook(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "playbook", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def ssl_request_from(source: str, port: int) -> bytes:
    """Speak the first packet of the PostgreSQL protocol from a chosen source address; b'' means closed."""
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        sock.sendall(SSL_REQUEST)
        try:
            return sock.recv(1)
        except ConnectionResetError:
            return b""


@pytest.fixture()
def proxy(stack):
    env = {"PLAYBOOK_PROXY_PORT": str(free_port())}
    result = playbook(env, "proxy", "up", "--allow-cidr", "127.0.0.1/32")
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads(playbook(env, "proxy", "status", "--json").stdout)
    yield env, status
    playbook(env, "proxy", "down")


def test_psql_reads_the_database_through_the_proxy_over_verified_tls(proxy, stack, tmp_path):
    env, status = proxy
    assert status["healthy"] and status["allow"] == ["127.0.0.1/32"]
    url = urlsplit(stack["database_url"])
    netloc = url.netloc.replace(f":{url.port}", f":{env['PLAYBOOK_PROXY_PORT']}")
    through_proxy = urlunsplit(url._replace(netloc=netloc))
    # the stack's URL verifies the server's certificate and name (sslmode=verify-full, the local CA): the
    # proxy passes TLS through, so the client's session is encrypted end to end with the database's certificate
    assert "sslmode=verify-full" in through_proxy and "sslrootcert=" in through_proxy
    out = subprocess.run(["psql", through_proxy, "-Atc", "select current_database()", "-c", "\\conninfo"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "playbook", "the answer comes from the database behind the proxy"
    assert "SSL connection (protocol: TLSv1.3" in out.stdout, out.stdout
    # AWS's way (the proxy's address is not the certificate's name): verify-ca with the CA alone, and a
    # client that trusts another CA is refused before it logs in
    verify_ca = through_proxy.replace("sslmode=verify-full", "sslmode=verify-ca")
    out = subprocess.run(["psql", verify_ca, "-Atc", "select 1"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(Path(certifi.where()).read_bytes())  # real CAs, none of them the local one
    out = subprocess.run(["psql", re.sub(r"sslrootcert=[^&]+", f"sslrootcert={other_ca}", verify_ca), "-Atc",
                          "select 1"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "certificate verify failed" in out.stderr, out.stderr


def test_a_client_outside_the_allow_list_is_refused(proxy):
    env, status = proxy
    port = int(env["PLAYBOOK_PROXY_PORT"])
    # the same packet from the allowed address reaches the database, which answers 'S' (TLS, go on)
    assert ssl_request_from("127.0.0.1", port) == b"S"
    assert ssl_request_from("127.0.0.5", port) == b""
    with open(status["error_log"]) as fh:
        log = fh.read()
    assert "access forbidden by rule" in log and "client: 127.0.0.5" in log


def test_down_stops_exactly_the_nginx_it_started(proxy):
    env, status = proxy
    pid = status["pid"]
    assert psutil.Process(pid).name().startswith("nginx")
    assert playbook(env, "proxy", "up", "--allow-cidr", "127.0.0.1/32").returncode == 0
    assert json.loads(playbook(env, "proxy", "status", "--json").stdout)["pid"] == pid, "up twice reuses it"
    assert playbook(env, "proxy", "down").returncode == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert playbook(env, "proxy", "status").returncode == 3
