"""`playbook ingest SOURCE PATH`: deliver one local file the way the source would, and load it.

The file goes to the landing bucket under the source's prefix (from the stack outputs and the company
configuration), then the source's *deployed* ingest function runs on it, as the target has it run
(`landed`): locally the playbook plays the landing bucket's notification (which moto records but does not
run) and invokes the function with S3's event through the Lambda runtime (the deployed zip in a handler
process). On AWS the upload itself starts the function (the S3 notification), so the command does not invoke
it a second time: it waits for that delivery's batch in the ledger (meta.batches, through
PLAYBOOK_DATABASE_URL, the BI proxy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from playbook.errors import PlaybookError


def ingest_file(target, source: str, path: str | Path, config_file: str | None = None,
                key: str | None = None) -> dict[str, Any]:
    """Deliver one file to a source's landing prefix on a target and report the batch it made."""
    import boto3

    from playbook.backfill import function_output_key
    from playbook.config import load_config

    config = load_config(config_file)
    if source not in config.sources:
        raise PlaybookError(f"unknown source {source!r}; the configuration has {', '.join(config.sources)}")
    cfg = config.sources[source]
    if cfg.delivers != "files":
        raise PlaybookError(f"source {source!r} is a {cfg.kind} source: it does not take files")
    file = Path(path)
    if not file.is_file():
        raise PlaybookError(f"{file}: no such file")
    outputs = target.outputs()
    bucket, function = outputs.get("LandingBucketName"), outputs.get(function_output_key(source))
    if not bucket or not function:
        raise PlaybookError(f"the {target} stacks are not provisioned: run `playbook provision --target {target}`")
    object_key = key or f"{cfg.prefix}{file.name}"
    if not object_key.startswith(cfg.prefix):
        raise PlaybookError(f"--key {object_key!r} must lie under the source's prefix {cfg.prefix!r}")
    since = datetime.now(UTC)
    boto3.client("s3").upload_file(str(file), bucket, object_key)
    result = target.landed(function, bucket, object_key)
    if result is not None:
        return {"function": function, "key": object_key, "status": result.status, "log": result.log_path,
                "summary": result.payload if result.ok else None, "error": result.error}
    return {"function": function, "key": object_key,
            **awaited_batch(source, object_key, since, database_url=target.database_url())}


def awaited_batch(source: str, object_key: str, since: datetime, timeout_s: float = 900,
                  poll_s: float = 5, database_url: str | None = None) -> dict[str, Any]:
    """The outcome of the first batch of `object_key` that started after `since`, once it ended."""
    import psycopg2
    import psycopg2.extras

    from playbook.database import database_url as default_database_url

    deadline = time.monotonic() + timeout_s
    conn = psycopg2.connect(database_url or default_database_url(), connect_timeout=10, application_name="playbook")
    try:
        while True:
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute("select batch_id, status, error, rows_read, rows_inserted, rows_updated, rows_unchanged,"
                            " rows_quarantined from meta.batches where source = %s and object_key = %s"
                            " and started_at >= %s and status <> 'started' order by batch_id limit 1",
                            (source, object_key, since))
                batch = cur.fetchone()
            conn.rollback()
            if batch:
                failed = batch["status"] != "committed"  # failed, or abandoned: the attempt died
                return {"status": "error" if failed else "ok", "summary": None if failed else dict(batch),
                        "error": {"errorMessage": batch["error"]} if failed else None}
            if time.monotonic() > deadline:
                raise PlaybookError(f"{object_key}: no batch ended within {timeout_s:.0f} s of the upload; see the "
                                    "ingest function's log group in CloudWatch")
            time.sleep(poll_s)
    finally:
        conn.close()


def cmd_ingest(args: argparse.Namespace) -> int:
    from playbook.targets import resolve_target

    result = ingest_file(resolve_target(args.target), args.source, args.path, args.config, args.key)
    print(json.dumps(result, indent=2, default=str))
    if result["status"] != "ok":
        error = result.get("error") or {}
        print(f"playbook: {args.path} did not load: {error.get('errorMessage', result['status'])}", file=sys.stderr)
        return 1
    return 0


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("ingest", help="deliver a local file to a source's landing prefix and load it")
    p.add_argument("source", help="the source's name in the configuration, e.g. payments")
    p.add_argument("path", help="the file to deliver")
    p.add_argument("--config", help="configuration file (default: $PLAYBOOK_CONFIG or playbook.yaml)")
    p.add_argument("--target", choices=("local", "aws"), default="local")
    p.add_argument("--key", help="object key (default: the source's prefix + the file name)")
    p.set_defaults(func=cmd_ingest)
