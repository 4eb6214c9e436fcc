"""Database connections for the handlers: credentials come from Secrets Manager, never from code.

`DB_SECRET_ARN` names the secret. It holds either a `url` (the local stack's DSN) or the fields RDS and
Aurora use (`username`, `password`, and optionally `host`, `port`, `dbname`); missing fields come from
`DB_HOST`, `DB_PORT`, `DB_NAME`. The secret is read once per container and cached.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import lru_cache

import boto3
import psycopg2

TEMP_BUFFERS = "256MB"
SESSION_MARGIN_S = 5.0  # a function's seconds kept after its session's last statement: record the failure, answer
ENV_SECRET_ARN = "DB_SECRET_ARN"  # noqa: S105 - the name of a variable, not a secret


@lru_cache(maxsize=4)
def _secret(arn: str) -> dict:
    value = boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
    return json.loads(value)


def connection_kwargs(secret_arn: str | None = None) -> dict:
    arn = secret_arn or os.environ.get(ENV_SECRET_ARN)
    if not arn:
        raise RuntimeError(f"{ENV_SECRET_ARN} is not set: the function does not know its database secret")
    secret = _secret(arn)
    if secret.get("url") or secret.get("dsn"):
        return {"dsn": secret.get("url") or secret["dsn"]}
    return {
        "host": secret.get("host") or os.environ["DB_HOST"],
        "port": int(secret.get("port") or os.environ.get("DB_PORT", 5432)),
        "dbname": secret.get("dbname") or os.environ.get("DB_NAME", "playbook"),
        "user": secret["username"],
        "password": secret["password"],
        "sslmode": os.environ.get("DB_SSLMODE", "require"),
    }


def time_left(context) -> Callable[[], float]:
    """Seconds the invocation has left (Lambda's context), or no limit when called without one."""
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):
        return lambda: context.get_remaining_time_in_millis() / 1000.0
    return lambda: float("inf")


def session_timeouts(seconds_left: float, lock_share: float = 1.0) -> dict[str, int]:
    """Milliseconds a session may spend, sized to what its function has left: no statement outlives the
    function (SESSION_MARGIN_S kept to record a failure and answer), so the backend of a function that was
    killed cancels its own work; a wait for a lock takes at most `lock_share` of that (a load waits its turn as
    long as it can; the marts refresh, a quarter, so one held mart leaves time for the others)."""
    statement = max(1.0, seconds_left - SESSION_MARGIN_S)
    return {"statement_timeout": int(statement * 1000),
            "lock_timeout": int(max(1.0, statement * lock_share) * 1000),
            "idle_in_transaction_session_timeout": int(statement * 1000)}


def connect(secret_arn: str | None = None, application_name: str | None = None,
            remaining: Callable[[], float] | None = None, lock_share: float = 1.0):
    """A new psycopg2 connection (autocommit off): one transaction per batch is the caller's to manage.

    The secret is cached for the container's life; a password rotated since is read again on the first
    authentication failure. With `remaining` (the function's time left), the session's statement, lock and
    idle-in-transaction timeouts are sized to it (session_timeouts).

    A batch stages its rows in temporary tables; `temp_buffers` lets the session keep them in memory (it is
    a ceiling the session grows into, and can only be set before its first temporary table).
    """
    name = application_name or os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "pipeline")
    settings = {"temp_buffers": TEMP_BUFFERS}
    left = remaining() if remaining is not None else float("inf")
    if left != float("inf"):
        settings.update(session_timeouts(left, lock_share))
    options = " ".join(f"-c {key}={value}" for key, value in settings.items())

    def attempt():
        return psycopg2.connect(**connection_kwargs(secret_arn), connect_timeout=10, application_name=name[:60],
                                options=options)

    try:
        return attempt()
    except psycopg2.OperationalError as exc:
        if "authentication failed" not in str(exc):
            raise
        _secret.cache_clear()  # a warm container may hold a password rotated since: read it again, once
        return attempt()
