"""`playbook ingest SOURCE [PATH]`: deliver one local file the way the source would, and load it; or run an API
source's function for its next window (or `--from/--to`). Then the marts are refreshed, so the reports show it.

`--dry-run` reads and types the file with the deployed function exactly as a load would, and reports what would
load, be quarantined (grouped by reason) or skipped, and the money, committing nothing: the file goes under
`dry-run/` in the landing bucket, where no notification fires, the function rolls its batch back whole, and
the copy is deleted.

Before anything runs, the configuration is compared with the deployed one: a source that is not provisioned
stops the command with the command to run; other changes are named in its output (playbook.deploy
changes_needed).

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

from pipeline.sources.kinds import DRY_RUN_PREFIX
from playbook.errors import PlaybookError


def _source(config, source: str, delivers: str):
    if source not in config.sources:
        raise PlaybookError(f"unknown source {source!r}; the configuration has {', '.join(config.sources)}")
    cfg = config.sources[source]
    if cfg.delivers != delivers:
        raise PlaybookError(f"source {source!r} is a {cfg.kind} source: it does not take files; run "
                            f"`playbook ingest {source}` (with --from/--to for a window)" if delivers == "files" else
                            f"source {source!r} is a {cfg.kind} source: give the file to deliver, "
                            f"`playbook ingest {source} PATH`")
    return cfg


def _deployed_source(target, config, source: str) -> tuple[dict[str, str], str, list[str]]:
    """The target's stack outputs, the source's deployed function, and what the configuration's changes need;
    PlaybookError when the source itself needs provisioning."""
    from playbook.backfill import function_output_key
    from playbook.deploy import changes_needed

    outputs = target.outputs()
    function = outputs.get(function_output_key(source))
    needs = changes_needed(target, config, outputs)
    mine = [n.text for n in needs if n.source in (source, None) and n.command == "provision"]
    if function is None or mine:
        raise PlaybookError("; ".join(mine) or f"source {source} has no function on {target}: run "
                            f"`playbook provision --target {target}`")
    return outputs, function, [n.text for n in needs]


def ingest_file(target, source: str, path: str | Path, config_file: str | None = None,
                key: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Deliver one file to a source's landing prefix on a target and report the batch it made (with dry_run:
    what it would make, nothing committed)."""
    import boto3

    from playbook.config import load_config

    config = load_config(config_file)
    cfg = _source(config, source, "files")
    outputs, function, needs = _deployed_source(target, config, source)
    file = Path(path)
    if not file.is_file():
        raise PlaybookError(f"{file}: no such file")
    bucket = outputs.get("LandingBucketName")
    if not bucket:
        raise PlaybookError(f"the {target} stacks are not provisioned: run `playbook provision --target {target}`")
    if dry_run:
        object_key = f"{DRY_RUN_PREFIX}{cfg.prefix}{file.name}"
        s3 = boto3.client("s3")
        s3.upload_file(str(file), bucket, object_key)
        try:
            payload = target.call(function, {"bucket": bucket, "key": object_key, "dry_run": True})
        finally:
            s3.delete_object(Bucket=bucket, Key=object_key)
        return {"function": function, "key": object_key, "status": "ok", "dry_run": payload["results"][0],
                "configuration": needs}
    object_key = key or f"{cfg.prefix}{file.name}"
    if not object_key.startswith(cfg.prefix):
        raise PlaybookError(f"--key {object_key!r} must lie under the source's prefix {cfg.prefix!r}")
    since = datetime.now(UTC)
    boto3.client("s3").upload_file(str(file), bucket, object_key)
    result = target.landed(function, bucket, object_key)
    if result is not None:
        return {"function": function, "key": object_key, "status": result.status, "log": result.log_path,
                "summary": result.payload if result.ok else None, "error": result.error, "configuration": needs}
    return {"function": function, "key": object_key, "configuration": needs,
            **awaited_batch(source, object_key, since, database_url=target.database_url())}


def ingest_api(target, source: str, window_from: str | None = None, window_to: str | None = None,
               config_file: str | None = None) -> dict[str, Any]:
    """Run an API source's deployed function: its next window (as its schedule would), or [from, to)."""
    from playbook.config import load_config

    config = load_config(config_file)
    _source(config, source, "api")
    if (window_from is None) != (window_to is None):
        raise PlaybookError("give both --from and --to for a window, or neither for the source's next one")
    _, function, needs = _deployed_source(target, config, source)
    event: dict[str, Any] = {"source": source, "trigger": "manual"}
    if window_from is not None:
        event.update({"from": window_from, "to": window_to})
    invoked = target.invoke(function, event)
    return {"function": function, "status": invoked.status, "log": invoked.log_path, "configuration": needs,
            "summary": invoked.payload if invoked.ok else None, "error": invoked.error}


def refreshed(target) -> dict[str, Any]:
    """The marts refreshed after a load (the deployed refresh function), so the reports show it: rows per mart."""
    return {"marts_refreshed": {m["mart"]: m["rows"] for m in target.refresh_marts()["marts"]}}


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

    target = resolve_target(args.target)
    if args.path is None:
        result = ingest_api(target, args.source, args.window_from, args.window_to, args.config)
    else:
        result = ingest_file(target, args.source, args.path, args.config, args.key, dry_run=args.dry_run)
    if result["status"] == "ok" and not args.dry_run and not args.no_refresh:
        result.update(refreshed(target))
    print(json.dumps(result, indent=2, default=str))
    for need in result.get("configuration") or []:
        print(f"playbook: {need}", file=sys.stderr)
    if result["status"] != "ok":
        error = result.get("error") or {}
        what = args.path or f"the {args.source} window"
        print(f"playbook: {what} did not load: {error.get('errorMessage', result['status'])}", file=sys.stderr)
        return 1
    if args.dry_run:
        print("playbook: dry run: nothing was committed (core, quarantine and the ledger are unchanged)",
              file=sys.stderr)
    elif args.no_refresh:
        print("playbook: the marts were not refreshed: `playbook refresh` before the reports", file=sys.stderr)
    return 0


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("ingest", help="deliver a local file to a source's landing prefix and load it (or "
                              "run an API source), then refresh the marts")
    p.add_argument("source", help="the source's name in the configuration, e.g. payments")
    p.add_argument("path", nargs="?", help="the file to deliver (none for an API source)")
    p.add_argument("--dry-run", action="store_true",
                   help="read and type the file as the deployed function would; commit nothing")
    p.add_argument("--from", dest="window_from", help="an API source's window start (ISO), with --to")
    p.add_argument("--to", dest="window_to", help="an API source's window end (ISO), with --from")
    p.add_argument("--no-refresh", action="store_true", help="leave the marts as they are after the load")
    p.add_argument("--config", help="configuration file (default: $PLAYBOOK_CONFIG or playbook.yaml)")
    p.add_argument("--target", choices=("local", "aws"), default="local")
    p.add_argument("--key", help="object key (default: the source's prefix + the file name)")
    p.set_defaults(func=cmd_ingest)
