"""The email handler run in the test's own process, for the tests of what it does (its message, its period, its
claim and the race for it): the resources the deployed function gets from its stack, made here, and the
handler called with them as its environment. The playbook itself only ever invokes the deployed function."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig
from playbook.errors import PlaybookError
from playbook.reports.email import EML_NAME, _ses_delivery_attempts, ses_raw_messages

DEFAULT_BUCKET = "playbook-reports"
CONFIG_KEY = "config/pipeline.json"


def ensure_email_resources(config: PipelineConfig, db_secret_arn: str, bucket: str = DEFAULT_BUCKET) -> dict[str, str]:
    """Reports bucket, configuration JSON and verified sender (idempotent); returns the function's environment."""
    import boto3

    s3 = boto3.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError:
        region = s3.meta.region_name
        kwargs = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        s3.create_bucket(Bucket=bucket, **kwargs)
    s3.put_object(Bucket=bucket, Key=CONFIG_KEY, ContentType="application/json",
                  Body=json.dumps(config.model_dump(mode="json")).encode())
    boto3.client("ses").verify_email_identity(EmailAddress=config.reports.email.sender)
    return {"PIPELINE_CONFIG_URI": f"s3://{bucket}/{CONFIG_KEY}", "DB_SECRET_ARN": db_secret_arn,
            "REPORTS_BUCKET": bucket}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def send_expense_email_locally(run_dir: Path | str, event: dict[str, Any] | None = None,
                               environment: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the email handler in this process; write the raw message to <run_dir>/expense_email.eml.

    Returns the handler's result plus `eml` (the file) and `in_ses` (whether moto's SES holds a message with
    the returned id; None when this invocation sent nothing because the run had already sent).
    """
    import boto3

    from pipeline.handlers.send_expense_email import handler

    attempts_before = _ses_delivery_attempts()
    with _environment(environment or {}):
        result = handler(event or {}, None)
    raw = boto3.client("s3").get_object(Bucket=result["bucket"], Key=result["key"])["Body"].read()
    path = Path(run_dir) / EML_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    in_ses = None
    if result["status"] == "sent":
        messages = ses_raw_messages()
        if messages is None:  # SES's own statistics: one more delivery attempt than before this run
            in_ses = _ses_delivery_attempts() > attempts_before
        else:
            in_ses = any(m.get("id") == result["message_id"] for m in messages)
        if not in_ses:
            raise PlaybookError(f"SES accepted message {result['message_id']} but does not list it")
    return {**result, "eml": path, "in_ses": in_ses}
