"""Lambda entry point: the operations team's 08:00 operating-costs email (see pipeline.expense_email).

Event: an EventBridge scheduled event (its `time` sets the period's end and makes the run key), or
{"period": "day" | "week" | "month" | "custom", "from": "YYYY-MM-DD", "to": "YYYY-MM-DD", "run_key": "..."}.
Environment: PIPELINE_CONFIG_URI, DB_SECRET_ARN (the reporting role's secret), REPORTS_BUCKET.

{"check": "runtime"} sends nothing: it says whether the runtime's boto3 can make the conditional put that
claims a run (S3's If-None-Match), as deployment asks it before the first 08:00.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

# Lambda's home directory is read-only: matplotlib keeps its font cache in the writable temp directory
os.environ.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "matplotlib"))

from pipeline import db
from pipeline.expense_email import send_expense_email
from pipeline.logs import get_logger, log
from pipeline.runtime_config import pipeline_config

logger = get_logger(__name__)


def runtime_check() -> dict[str, Any]:
    """What the function needs of the runtime's own boto3: put_object's IfNoneMatch (boto3 1.35 and later)."""
    import boto3

    members = boto3.client("s3").meta.service_model.operation_model("PutObject").input_shape.members
    return {"boto3": boto3.__version__, "conditional_put": "IfNoneMatch" in members}


def handler(event: dict[str, Any] | None, context: Any = None) -> dict[str, Any]:
    event = event or {}
    if event.get("check") == "runtime":
        return runtime_check()
    config = pipeline_config()
    conn = db.connect(application_name="send_expense_email", remaining=db.time_left(context))
    try:
        conn.set_session(readonly=True)
        result = send_expense_email(event, config, conn)
    finally:
        conn.close()
    log(logger, "expense email", **{k: v for k, v in result.items() if k not in ("categories", "compared")})
    return result
