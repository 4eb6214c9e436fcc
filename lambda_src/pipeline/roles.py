"""Role logins from secrets: the passwords live in Secrets Manager, PostgreSQL only sees SCRAM verifiers.

The ingest, reporting and monitor roles are created NOLOGIN by the migrations. Whoever can reach the database
gives them their login: the migrate function inside the VPC on AWS, the playbook locally.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from urllib.parse import unquote, urlsplit

from psycopg2 import sql

ITERATIONS = 4096


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier for a password, as `ALTER ROLE ... PASSWORD` accepts it."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
            f"${b64(hashlib.sha256(client_key).digest()).decode()}:{b64(server_key).decode()}")


def password_in(secret: dict) -> str:
    """The password a role secret holds: `password`, or the one inside its `url`."""
    if secret.get("password"):
        return secret["password"]
    url = secret.get("url") or secret.get("dsn") or ""
    password = urlsplit(url).password
    if not password:
        raise ValueError("the role secret holds neither a password nor a url with one")
    return unquote(password)


def apply_role_logins(conn, role_secrets: dict[str, str]) -> list[str]:
    """ALTER ROLE ... LOGIN PASSWORD for each {role: secret ARN}; the values never leave this function."""
    import boto3

    client = boto3.client("secretsmanager")
    done = []
    with conn, conn.cursor() as cur:
        for role, arn in role_secrets.items():
            secret = json.loads(client.get_secret_value(SecretId=arn)["SecretString"])
            cur.execute(sql.SQL("alter role {} login password %s").format(sql.Identifier(role)),
                        (scram_verifier(password_in(secret)),))
            done.append(role)
    return done
