"""Refreshing the marts: `CALL marts.refresh()` and what it recorded, one row per mart.

The procedure commits after each mart (so a failure is on record even though the call raises), which
means it must run outside an explicit transaction: the connection is switched to autocommit for it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg2

_RUN_ROWS = """
    select mart, position, status, rows, concurrent, started_at, finished_at,
           extract(epoch from finished_at - started_at)::float8 as seconds, error
    from meta.mart_refreshes where run_id = %s order by position
"""


class MartRefreshError(RuntimeError):
    """One or more marts failed to refresh; they keep their previous snapshot. `marts` has every row."""

    def __init__(self, message: str, run_id: int, marts: list[dict[str, Any]]):
        super().__init__(message)
        self.run_id = run_id
        self.marts = marts


def _run_rows(cur, run_id: int) -> list[dict[str, Any]]:
    cur.execute(_RUN_ROWS, (run_id,))
    names = [d.name for d in cur.description]
    return [{"run_id": run_id, **dict(zip(names, row, strict=True))} for row in cur.fetchall()]


def refresh_marts(conn) -> list[dict[str, Any]]:
    """Refresh every mart in dependency order; returns per mart its status, rows, seconds and error.

    Raises MartRefreshError (with the same rows) when any mart failed.
    """
    if conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        raise RuntimeError("refresh_marts needs a connection outside a transaction: commit or roll back first")
    was_autocommit = conn.autocommit
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("select nextval('meta.mart_refresh_runs')")
            run_id = cur.fetchone()[0]
            try:
                cur.execute("call marts.refresh(%s)", (run_id,))
            except psycopg2.Error as exc:
                # a refresh stopped outside a mart's own step must not leave the marts' lock with this session
                cur.execute("select pg_advisory_unlock(7341003) from pg_locks where locktype = 'advisory'"
                            " and pid = pg_backend_pid() and objid = 7341003 and granted")
                rows = _run_rows(cur, run_id)
                message = (exc.diag.message_primary or str(exc)).strip()
                detail = (exc.diag.message_detail or "").strip()
                raise MartRefreshError(f"{message}: {detail}" if detail else message, run_id, rows) from exc
            return _run_rows(cur, run_id)
    finally:
        conn.autocommit = was_autocommit


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A JSON-ready summary of one run (timestamps as ISO text)."""
    def plain(value):
        return value.isoformat() if isinstance(value, datetime) else value

    failed = [r["mart"] for r in rows if r["status"] in ("failed", "skipped")]
    return {
        "run_id": rows[0]["run_id"] if rows else None,
        "status": "failed" if failed else "ok",
        "failed": failed,
        "seconds": round(sum(r["seconds"] or 0.0 for r in rows), 3),
        "marts": [{k: plain(v) for k, v in r.items() if k != "run_id"} for r in rows],
    }
