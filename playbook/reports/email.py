"""The operations team's email as the deployed send_expense_email function sends it.

The function is invoked through the target (locally from its deployed zip through the runtime, on AWS
through Lambda), with the event the report run gives it (its run key, its period). It claims the run in its
reports bucket with the raw message (`emails/expense/<run key>.eml`), then sends it with SES, once per run
key; that raw message is copied to `<run dir>/expense_email.eml`. Locally its arrival in moto's SES is
checked as well.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from playbook.errors import PlaybookError

EML_NAME = "expense_email.eml"


def ses_raw_messages(endpoint_url: str | None = None) -> list[dict[str, Any]] | None:
    """The raw messages moto's SES has accepted (its data API: ses / RawMessage).

    None when the data API cannot answer: it serialises every service's models at once, and fails as soon as
    the server holds a Lambda function (their attributes reach for a Docker daemon)."""
    import requests

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        raise PlaybookError("AWS_ENDPOINT_URL is not set: the local email check needs the moto server")
    response = requests.get(f"{endpoint.rstrip('/')}/moto-api/data.json", timeout=30)
    if response.status_code != 200:
        return None
    return list(response.json().get("ses", {}).get("RawMessage", []))


def _ses_delivery_attempts() -> int:
    import boto3

    points = boto3.client("ses").get_send_statistics().get("SendDataPoints", [])
    return sum(int(p.get("DeliveryAttempts", 0)) for p in points)


def send_expense_email(target, run_dir: Path | str, event: dict[str, Any] | None = None) -> dict[str, Any]:
    """Invoke the deployed email function through the target; write its raw message to <run_dir>/expense_email.eml.

    Returns the function's result plus `eml` (the file) and `in_ses` (whether SES holds the message: None when
    this invocation sent nothing because the run had already sent, or where SES keeps no list to look in).
    """
    import boto3

    sent_before = target.ses_sent_count()
    result = target.call(target.function("SendExpenseEmail"), event or {})
    raw = boto3.client("s3").get_object(Bucket=result["bucket"], Key=result["key"])["Body"].read()
    path = Path(run_dir) / EML_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    in_ses = None
    if result["status"] == "sent":
        in_ses = target.ses_holds(result["message_id"], sent_before)
        if in_ses is False:
            raise PlaybookError(f"SES accepted message {result['message_id']} but does not list it")
    return {**result, "eml": path, "in_ses": in_ses}
