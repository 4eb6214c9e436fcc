"""TLS for the embedded PostgreSQL, as Aurora with `rds.force_ssl` serves it: a local CA, a server certificate,
and the TLS front that every login but the superuser's goes through.

pgserver's PostgreSQL is built without OpenSSL (`ssl = on` is refused), so TLS is terminated in front of it,
in PostgreSQL's own wire protocol: a client asks for TLS with an SSLRequest, the front answers "S" and
completes the handshake with the server certificate, then relays the session to the server. A client that
does not ask for TLS gets PostgreSQL's own error, naming the setting to change (sslmode), and is never relayed.

Addresses (all on loopback, one port number, PLAYBOOK_PG_PORT):
- 127.0.0.1:port, the front: what every URL the stack hands out names (sslmode=verify-full, the local CA);
- 127.0.0.2:port, the server itself: pg_hba admits the superuser from 127.0.0.1 in plain text (the stack's
  own administration, as a cluster's host does), and every other login only from 127.0.0.3,
- 127.0.0.3, the address the front relays from: a login that reaches the server otherwise is refused.

The CA and the server certificate are kept in <state>/tls/: ca.pem (what clients verify the server with,
not secret), ca.key and server.key (readable by their owner only), server.pem (names localhost and 127.0.0.1),
made again by the `local up` that starts the front within a month of its expiry.

    python -m playbook.local.tls --listen 127.0.0.1:P --upstream 127.0.0.2:P --source 127.0.0.3 --tls-dir D
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import shutil
import socket
import ssl
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from playbook.local.processes import StackError, require_free_port, wait_until, write_private

FRONT_HOST = "127.0.0.1"  # where clients connect: the address every URL names
SERVER_HOST = "127.0.0.2"  # where the server listens
RELAY_SOURCE = "127.0.0.3"  # the front's own address towards the server: pg_hba admits logins from it only
SERVER_NAMES = ("localhost",)
SERVER_ADDRESSES = (FRONT_HOST,)
CA_DAYS = 3650
SERVER_DAYS = 397  # what browsers and most clients accept for a leaf certificate
RENEW_BEFORE = dt.timedelta(days=30)

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
CHUNK = 256 * 1024
OPENING_S = 30  # what a client may take to ask for TLS and complete the handshake


# -- certificates -----------------------------------------------------------------------------------------
@dataclass
class Certificates:
    root: Path  # <state>/tls

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def key(self) -> Path:
        return self.root / "server.key"

    def ensure(self) -> None:
        """The CA (made once) and a server certificate it signed, made again when it is missing, about to
        expire, or signed by another CA."""
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature

        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        if not (self.ca.exists() and self.ca_key.exists()):
            self._make_ca()
        if self.cert.exists() and self.key.exists():
            cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
            ca = x509.load_pem_x509_certificate(self.ca.read_bytes())
            try:
                cert.verify_directly_issued_by(ca)  # every CA made here has the same name: its signature tells
                signed = True
            except (ValueError, TypeError, InvalidSignature):
                signed = False
            if signed and cert.not_valid_after_utc - _now() > RENEW_BEFORE:
                return
        self._make_server()

    def _make_ca(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SME Analytics Playbook local CA")])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=True, crl_sign=True, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, _sha256()))
        write_private(self.ca_key, _private_pem(key))
        self.ca.write_bytes(_public_pem(cert))
        self.cert.unlink(missing_ok=True)  # signed by the CA that was replaced

    def _make_server(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        ca = x509.load_pem_x509_certificate(self.ca.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        names = [x509.DNSName(n) for n in SERVER_NAMES] + \
                [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVER_ADDRESSES]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAMES[0])]))
                .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, _sha256()))
        write_private(self.key, _private_pem(key))
        self.cert.write_bytes(_public_pem(cert))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sha256():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _private_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


# -- the front, as a part of the local stack ------------------------------------------------------------------
@dataclass
class TlsFront:
    root: Path  # <state>/tls
    port: int

    @property
    def certificates(self) -> Certificates:
        return Certificates(self.root)

    @property
    def log_file(self) -> Path:
        return self.root / "front.log"

    def start(self) -> int:
        require_free_port(self.port, "the database's TLS front", "PLAYBOOK_PG_PORT")
        self.certificates.ensure()
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "playbook.local.tls", "--listen", f"{FRONT_HOST}:{self.port}",
                 "--upstream", f"{SERVER_HOST}:{self.port}", "--source", RELAY_SOURCE, "--tls-dir", str(self.root)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_until(lambda: proc.poll() is None and self.healthy(), 30, "the database's TLS front")
        except StackError:
            proc.kill()
            proc.wait(10)
            tail = self.log_file.read_text(errors="replace").splitlines()[-5:]
            raise StackError(f"the database's TLS front did not start on {FRONT_HOST}:{self.port}: "
                             f"{' | '.join(tail)}") from None
        return proc.pid

    def delete_data(self) -> None:
        """The CA and the certificate (`local down --delete-data`): the next start makes new ones."""
        shutil.rmtree(self.root, ignore_errors=True)

    def healthy(self) -> bool:
        """It answers an SSLRequest with "S" (the handshake is then abandoned)."""
        try:
            with socket.create_connection((FRONT_HOST, self.port), timeout=2) as sock:
                sock.sendall(struct.pack("!II", 8, SSL_REQUEST))
                return sock.recv(1) == b"S"
        except OSError:
            return False


# -- the front's process ----------------------------------------------------------------------------------------
def _refusal(message: str) -> bytes:
    """A PostgreSQL ErrorResponse (FATAL, SQLSTATE 28000), what libpq prints as `FATAL:  <message>`."""
    fields = b"".join(code + text.encode() + b"\0" for code, text in
                      ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", "28000"), (b"M", message)))
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def _startup_fields(payload: bytes) -> dict[str, str]:
    parts = payload.split(b"\0")
    return {parts[i].decode(errors="replace"): parts[i + 1].decode(errors="replace")
            for i in range(0, len(parts) - 1, 2) if parts[i]}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()


class Front:
    def __init__(self, upstream: tuple[str, int], source: str, context: ssl.SSLContext, ca: Path) -> None:
        self.upstream, self.source, self.context, self.ca = upstream, source, context, ca

    async def _relay(self, reader, writer, first: bytes) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream, local_addr=(self.source, 0))
        except OSError as exc:
            host, port = self.upstream
            writer.write(_refusal(f"the database behind the TLS front ({host}:{port}) does not answer ({exc}): "
                                  "`playbook local up` starts it again"))
            await writer.drain()
            return
        if first:
            up_writer.write(first)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        up_writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            session = await asyncio.wait_for(self._opening(reader, writer), OPENING_S)
            if session is not None:
                await self._relay(reader, writer, session)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            pass  # a client that went away, stalled, or failed its handshake (it says why on its side)
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _opening(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
        """The opening (within OPENING_S): the bytes to send the server first when a session is to be relayed
        (b"" after a TLS handshake, a cancel request as it came), None when the client was answered here."""
        while True:
            length, code = struct.unpack("!II", await reader.readexactly(8))
            if code == GSSENC_REQUEST:  # no GSSAPI here: the client goes on to ask for TLS
                writer.write(b"N")
                await writer.drain()
                continue
            break
        if code == SSL_REQUEST:
            if length != 8 or _buffered(reader):  # bytes sent before the handshake would be relayed as if
                # encrypted (PostgreSQL's CVE-2021-23214): refused, as PostgreSQL refuses them
                writer.write(_refusal("received unencrypted data after SSL request"))
                await writer.drain()
                return None
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(self.context, ssl_handshake_timeout=OPENING_S)
            return b""
        if code == CANCEL_REQUEST and length == 16:  # a query's cancel, sent in plain text by libpq: no login
            return struct.pack("!II", length, code) + await reader.readexactly(8)
        if 8 <= length <= 10_000:
            fields = _startup_fields(await reader.readexactly(length - 8))
            writer.write(_refusal(
                f"the database accepts TLS connections only, as Aurora with rds.force_ssl does: connect "
                f"\"{fields.get('user', '')}\" with sslmode=verify-full and sslrootcert={self.ca}"))
            await writer.drain()
        return None


def _buffered(reader: asyncio.StreamReader) -> bool:
    """Whether the client sent more than the packet just read (asyncio keeps no public count of it)."""
    return bool(getattr(reader, "_buffer", b""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m playbook.local.tls", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--tls-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    certs = Certificates(args.tls_dir)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certs.cert, certs.key)
    host, port = args.listen.rsplit(":", 1)
    up_host, up_port = args.upstream.rsplit(":", 1)
    front = Front((up_host, int(up_port)), args.source, context, certs.ca)

    async def serve() -> None:
        server = await asyncio.start_server(front.handle, host, int(port), reuse_address=True)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
