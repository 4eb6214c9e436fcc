"""Lambda entry point: refresh every mart (`CALL marts.refresh()`) after the loads, on a schedule."""

from __future__ import annotations

from typing import Any

from pipeline import db
from pipeline.logs import get_logger, log
from pipeline.marts import MartRefreshError, refresh_marts, summary

logger = get_logger(__name__)


def handler(event: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    """Returns the run's summary; a failed mart is logged with its error and fails the invocation."""
    conn = db.connect(application_name="refresh_marts", remaining=db.time_left(context), lock_share=0.25)
    try:
        try:
            rows = refresh_marts(conn)
        except MartRefreshError as exc:
            result = summary(exc.marts)
            logger.error("mart refresh failed", extra={"fields": {"error": str(exc), **result}})
            raise
        result = summary(rows)
        log(logger, "marts refreshed", **result)
        return result
    finally:
        conn.close()
