"""Lambda: load the Excel workbooks and CSV exports that land in S3, each object exactly once.

Accepts S3 ObjectCreated notifications (one or many records), EventBridge S3 events, or an explicit
{"bucket", "key"} (or {"objects": [...]}, as backfills send). Returns a JSON summary per object.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal

from pipeline.attempts import attempted, describe
from pipeline.config import PipelineConfig
from pipeline.db import connect
from pipeline.loader import BatchLoad, Delivery, TimeBudgetExceeded, already_loaded
from pipeline.logs import get_logger, log
from pipeline.model import TABLES
from pipeline.runtime_config import pipeline_config
from pipeline.sources import LoadError
from pipeline.sources.kinds import source_kind
from pipeline.sources.objects import ObjectRef, download, head, objects_in_event

logger = get_logger("pipeline.ingest_object")
COMMIT_MARGIN_S = 5.0


class IngestFailed(RuntimeError):
    """One or more objects did not load; each was rolled back and recorded as a failed batch."""


def _remaining(context) -> callable:
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):
        return lambda: context.get_remaining_time_in_millis() / 1000.0
    return lambda: float("inf")


def reader_for(delivery: Delivery, path):
    """The source kind's reader of a delivered file (pipeline.sources.kinds)."""
    cfg = delivery.config
    kind = source_kind(cfg.kind)
    if kind.delivers != "files":
        raise LoadError(f"{delivery.display}: a {cfg.kind} source does not take files")
    table = TABLES[cfg.table]
    return kind.reader_class()(path=path, display=delivery.display, options=cfg.read, columns=cfg.columns,
                               table=table, required={c.name for c in table.columns if c.required})


def ingest(conn, config: PipelineConfig, ref: ObjectRef, remaining, request_id: str | None = None) -> dict:
    try:
        source, cfg = config.source_for_key(ref.key)
    except KeyError as exc:
        raise LoadError(str(exc.args[0])) from None
    try:
        ref = head(ref)
    except Exception:
        # the object cannot be found or read (deleted since, no permission): a failed attempt in the ledger
        with attempted(conn, Delivery(source, cfg, cfg.kind, ref.uri, ref.key, object_key=ref.key,
                                      version=ref.version), request_id, remaining):
            raise
    delivery = Delivery(source, cfg, cfg.kind, ref.uri, ref.key, object_key=ref.key, etag=ref.etag,
                        version=ref.version)
    with conn.cursor() as cur:  # the same object again: known by its ETag before any byte is read
        existing = already_loaded(cur, source, ref.key, etag=ref.etag)
    conn.rollback()
    if existing:
        return {"status": "already_loaded", "batch_id": existing, "source": source, "ref": ref.uri}
    if remaining() < COMMIT_MARGIN_S * 2:
        raise TimeBudgetExceeded(f"{ref.key}: not enough time left to start loading it")
    with attempted(conn, delivery, request_id, remaining) as attempt:
        path, delivery.sha256 = download(ref)
        reader = None
        try:
            reader = reader_for(delivery, path)
            return BatchLoad(conn, delivery, reader, config.company, attempt, remaining).run(COMMIT_MARGIN_S)
        finally:
            if reader is not None and hasattr(reader, "close"):
                reader.close()
            path.unlink(missing_ok=True)


def handler(event: dict, context=None) -> dict:
    """Each object of the event has its own outcome and its own ledger row: one that fails never stops the
    others. The invocation fails (so S3 retries it) when any object failed; the objects already loaded then
    answer already_loaded."""
    started = time.monotonic()
    config = pipeline_config()
    remaining = _remaining(context)
    request_id = getattr(context, "aws_request_id", None)
    results, errors = [], []
    conn = connect()
    try:
        for ref in objects_in_event(event):
            try:
                result = ingest(conn, config, ref, remaining, request_id)
            except Exception as exc:  # noqa: BLE001 - every failure is this object's outcome, in the ledger too
                reason = describe(exc, ref.key)
                result = {"status": "failed", "ref": f"s3://{ref.bucket}/{ref.key}", "error": reason,
                          "error_type": type(exc).__name__}
                errors.append(reason)
                if conn.closed:  # the connection was lost: the next object gets a new one
                    conn = connect()
            log(logger, "object processed", **result)
            results.append(result)
    finally:
        conn.close()
    summary = {"objects": len(results), "results": results, "seconds": round(time.monotonic() - started, 3),
               "committed": sum(r["status"] == "committed" for r in results),
               "already_loaded": sum(r["status"] == "already_loaded" for r in results),
               "failed": len(errors)}
    if errors:
        raise IngestFailed("; ".join(errors))
    return json_ready(summary)


def json_ready(value):
    """What Lambda can marshal: money sums stay exact as text, never floats."""
    return json.loads(json.dumps(value, default=lambda v: str(v) if isinstance(v, Decimal) else v.isoformat()))
