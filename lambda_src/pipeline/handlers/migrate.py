"""Lambda: apply the SQL migrations from inside the VPC (the database is never reachable from outside).

Runs as the owner (the cluster's master secret); re-running is a no-op. Also sets the company (the
database's time zone, so dates of timestamps are the company's in every session, and meta.company with its
currency), and gives the
ingest, reporting and monitor roles their logins from their secrets (ROLE_SECRET_ARNS: {"role": "secret ARN"}).
"""

from __future__ import annotations

import json
import os

from pipeline.db import connect, time_left
from pipeline.logs import get_logger, log
from pipeline.migrations import apply_migrations, set_company
from pipeline.roles import apply_role_logins
from pipeline.runtime_config import pipeline_config

logger = get_logger("pipeline.migrate")


def handler(event: dict | None = None, context=None) -> dict:
    config = pipeline_config()
    conn = connect(remaining=time_left(context))
    try:
        applied = apply_migrations(conn)
        set_company(conn, config.company.name, config.company.timezone, config.company.currency)
        logins = apply_role_logins(conn, json.loads(os.environ.get("ROLE_SECRET_ARNS") or "{}"))
    finally:
        conn.close()
    summary = {"applied": applied, "timezone": config.company.timezone, "logins": logins}
    log(logger, "migrations applied", **summary)
    return summary
