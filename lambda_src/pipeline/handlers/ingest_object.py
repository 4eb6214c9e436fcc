"""Lambda: load the Excel workbooks and CSV exports that land in S3, each object exactly once.

Accepts S3 ObjectCreated notifications (one or many records), EventBridge S3 events, or an explicit
{"bucket", "key"} (or {"objects": [...]}, as backfills send). Returns a JSON summary per object.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal

from pipeline.config import PipelineConfig
from pipeline.db import connect
from pipeline.loader import BatchLoad, Delivery, TimeBudgetExceeded, already_loaded, failures_recorded
from pipeline.logs import get_logger, log
from pipeline.model import TABLES
from pipeline.runtime_config import pipeline_config
from pipeline.sources import LoadError
from pipeline.sources.excel import ExcelReader
from pipeline.sources.objects import ObjectRef, download, head, objects_in_event
from pipeline.sources.s3_csv import CsvReader

logger = get_logger("pipeline.ingest_object")
COMMIT_MARGIN_S = 5.0


class IngestFailed(RuntimeError):
    """One or more objects did not load; each was rolled back and recorded as a failed batch."""


def _remaining(context) -> callable:
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):
        return lambda: context.get_remaining_time_in_millis() / 1000.0
    return lambda: float("inf")


def reader_for(delivery: Delivery, path):
    cfg = delivery.config
    table = TABLES[cfg.table]
    required = {c.name for c in table.columns if c.required}
    if cfg.kind == "excel":
        return ExcelReader(path, delivery.display, cfg.read, cfg.columns, table, required)
    if cfg.kind == "s3_csv":
        return CsvReader(path, delivery.display, cfg.read, cfg.columns, required, table)
    raise LoadError(f"{delivery.display}: source kind {cfg.kind!r} does not deliver files")


def ingest(conn, config: PipelineConfig, ref: ObjectRef, remaining, request_id: str | None = None) -> dict:
    try:
        source, cfg = config.source_for_key(ref.key)
    except KeyError as exc:
        raise LoadError(str(exc.args[0])) from None
    ref = head(ref)
    delivery = Delivery(source, cfg, cfg.kind, ref.uri, ref.key, object_key=ref.key, etag=ref.etag,
                        version=ref.version)
    with conn.cursor() as cur:  # the same object again: known by its ETag before any byte is read
        existing = already_loaded(cur, source, ref.key, etag=ref.etag)
    conn.rollback()
    if existing:
        return {"status": "already_loaded", "batch_id": existing, "source": source, "ref": ref.uri}
    if remaining() < COMMIT_MARGIN_S * 2:
        raise TimeBudgetExceeded(f"{ref.key}: not enough time left to start loading it")
    path, delivery.sha256 = download(ref)
    try:
        with failures_recorded(conn, delivery, request_id):
            return BatchLoad(conn, delivery, reader_for(delivery, path), config.company.timezone, remaining,
                             request_id).run(COMMIT_MARGIN_S)
    finally:
        path.unlink(missing_ok=True)


def handler(event: dict, context=None) -> dict:
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
            except (LoadError, TimeBudgetExceeded) as exc:
                result = {"status": "failed", "ref": f"s3://{ref.bucket}/{ref.key}", "error": str(exc),
                          "error_type": type(exc).__name__}
                errors.append(str(exc))
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
