"""Lambda: load the Excel workbooks and CSV exports that land in S3, each object exactly once.

Accepts S3 ObjectCreated notifications (one or many records), EventBridge S3 events, or an explicit
{"bucket", "key"} (or {"objects": [...]}, as backfills send). Returns a JSON summary per object.

A dry run (`{"bucket", "key", "dry_run": true}`, the object under `dry-run/` + the source's prefix, where no
notification fires) reads and types the object as a load would and reports what would load, be quarantined
(grouped by reason) or skipped, and the money, then rolls everything back: nothing in core, quarantine or the
ledger.

A scheduled firing (an event that names the source, `{"source": ..., "trigger": "schedule", ...}`, and no
object) is a sweep: it lists the source's landing prefix and loads every object not committed yet (one the
bucket's notification missed, or one that came by a channel without one), oldest first, within the
function's time; what is left waits for the next sweep. An object whose same content already failed is
left for its sender to correct (validation lists it). An empty sweep is a success.
"""

from __future__ import annotations

import json
import os
import time
from decimal import Decimal

import boto3

from pipeline.attempts import Attempt, attempted, describe
from pipeline.config import PipelineConfig
from pipeline.db import connect, time_left
from pipeline.loader import BatchLoad, Delivery, TimeBudgetExceeded, already_loaded
from pipeline.logs import get_logger, log
from pipeline.model import ROW_KEY, TABLES
from pipeline.runtime_config import landing_bucket, pipeline_config
from pipeline.sources import LoadError, reading_columns, reading_types
from pipeline.sources.kinds import DRY_RUN_PREFIX, source_kind
from pipeline.sources.lane import LaneSource
from pipeline.sources.objects import ObjectRef, download, head, objects_in_event

logger = get_logger("pipeline.ingest_object")
COMMIT_MARGIN_S = 5.0


class IngestFailed(RuntimeError):
    """One or more objects did not load; each was rolled back and recorded as a failed batch."""


def reader_for(delivery: Delivery, path):
    """The source kind's reader of a delivered file (pipeline.sources.kinds)."""
    cfg = delivery.config
    kind = source_kind(cfg.kind)
    if kind.delivers != "files":
        raise LoadError(f"{delivery.display}: a {cfg.kind} source does not take files")
    columns, required = reading_columns(cfg)
    return kind.reader_class()(path=path, display=delivery.display, options=cfg.read, columns=columns,
                               table=TABLES[cfg.table], required=required, lane=handler_lane(cfg),
                               types=reading_types(cfg))


def handler_lane(cfg) -> LaneSource | None:
    """What the handler's lane needs of the source, or None where only SQL reads it: compositions, attributes,
    amounts to turn or to take from a debit and a credit, or a key by each row's place."""
    if cfg.compose or cfg.attributes or cfg.amounts not in ("positive", "signed") or cfg.key == (ROW_KEY,):
        return None
    currency = ("currency",) if "currency" in cfg.columns else ()
    return LaneSource(key=cfg.key, negatives=cfg.amounts == "signed", required=currency)




class _Uncommitted:
    """A connection whose commits do nothing: a dry run's batch, ledger row included, stays one transaction that
    is rolled back at the end."""

    def __init__(self, conn):
        self._conn = conn

    def commit(self) -> None:
        pass

    def __getattr__(self, name):
        return getattr(self._conn, name)


class DryRunAttempt:
    """A dry run's attempt: its ledger row lives and dies in the rolled-back transaction; a failure is reported,
    never recorded."""

    def __init__(self, attempt):
        self._attempt = attempt

    def failed(self, exc: BaseException) -> None:
        self._attempt.conn.rollback()

    def __getattr__(self, name):
        return getattr(self._attempt, name)


def dry_run(conn, config: PipelineConfig, ref: ObjectRef, remaining) -> dict:
    """What loading the object would do, rolled back whole (see the module)."""
    if not ref.key.startswith(DRY_RUN_PREFIX):
        raise LoadError(f"{ref.key}: a dry run reads an object under {DRY_RUN_PREFIX}<the source's prefix>")
    try:
        source, cfg = config.source_for_key(ref.key[len(DRY_RUN_PREFIX):])
    except KeyError as exc:
        raise LoadError(str(exc.args[0])) from None
    ref = head(ref)
    delivery = Delivery(source, cfg, cfg.kind, ref.uri, ref.key, object_key=ref.key, etag=ref.etag,
                        version=ref.version)
    with conn.cursor() as cur:  # the same bytes already loaded under the source's prefix: say so
        cur.execute("select batch_id, object_key from meta.batches where source = %s and status = 'committed' "
                    "and object_etag = %s order by batch_id desc limit 1", (source, ref.etag))
        loaded = cur.fetchone()
    conn.rollback()
    quiet = _Uncommitted(conn)
    attempt = Attempt(quiet, delivery, None, remaining)
    reasons: list[dict] = []

    def read_reasons(cur, batch_id: int) -> None:
        cur.execute("select reason_code, count(*), (array_agg(reason order by source_row))[1:5] from meta.quarantine "
                    "where batch_id = %s group by 1 order by 2 desc, 1", (batch_id,))
        reasons.extend({"reason_code": code, "rows": n, "examples": examples} for code, n, examples in cur.fetchall())

    path, delivery.sha256 = download(ref)
    reader = None
    try:
        attempt.start()
        reader = reader_for(delivery, path)
        summary = BatchLoad(quiet, delivery, reader, config.company, DryRunAttempt(attempt), remaining,
                            before_commit=read_reasons).run(COMMIT_MARGIN_S)
    finally:
        conn.rollback()
        if reader is not None and hasattr(reader, "close"):
            reader.close()
        path.unlink(missing_ok=True)
    if summary["status"] == "already_loaded":  # these very bytes under this dry-run key: nothing to add
        return {"status": "dry_run", "source": source, "ref": ref.uri, "already_loaded": summary["batch_id"]}
    summary = {k: v for k, v in summary.items() if k != "batch_id"}
    return {**summary, "status": "dry_run", "quarantine_reasons": reasons,
            "loaded_before": {"batch_id": loaded[0], "key": loaded[1]} if loaded else None}


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


def swept_source(event: dict, config: PipelineConfig) -> str | None:
    """The file source a scheduled firing sweeps (None: the event names objects)."""
    if any(k in event for k in ("Records", "bucket", "key", "objects")) or event.get("source") == "aws.s3":
        return None
    name = event.get("source") or os.environ.get("SOURCE_NAME")
    if not name:
        return None
    source = config.sources.get(name)
    if source is None or source.delivers != "files":
        raise LoadError(f"a sweep of {name!r}: not a file source of the configuration")
    return name


def unloaded_objects(conn, config: PipelineConfig, name: str, bucket: str) -> tuple[list[ObjectRef], list[dict]]:
    """The objects under the source's landing prefix that no batch has committed, oldest first; and those
    among them whose same content already failed (left for the sender to correct)."""
    prefix = config.sources[name].prefix
    listed = []
    for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        listed += [o for o in page.get("Contents", []) if not o["Key"].endswith("/")]
    with conn.cursor() as cur:
        cur.execute("select object_key, object_etag, status, batch_id from meta.batches where source = %s "
                    "and status in ('committed', 'failed') and object_etag is not null", (name,))
        seen = {(key, etag): (status, batch) for key, etag, status, batch in cur.fetchall()}
    conn.rollback()
    todo, failed_before = [], []
    for o in sorted(listed, key=lambda o: (o["LastModified"], o["Key"])):
        etag = o["ETag"].strip('"')
        status, batch = seen.get((o["Key"], etag), (None, None))
        if status == "committed":
            continue
        if status == "failed":
            failed_before.append({"key": o["Key"], "batch_id": batch})
            continue
        todo.append(ObjectRef(bucket, o["Key"], etag=etag, size=o.get("Size")))
    return todo, failed_before


def sweep(conn, config: PipelineConfig, name: str, remaining, request_id: str | None) -> dict:
    """A scheduled firing of a file source: its unloaded objects loaded in turn while time lasts."""
    bucket = landing_bucket()
    todo, failed_before = unloaded_objects(conn, config, name, bucket)
    results, left = [], []
    current = conn
    try:
        for i, ref in enumerate(todo):
            if remaining() < COMMIT_MARGIN_S * 4:
                left = [r.key for r in todo[i:]]
                break
            try:
                result = ingest(current, config, ref, remaining, request_id)
            except Exception as exc:  # noqa: BLE001 - the object's outcome, in the ledger too
                result = {"status": "failed", "ref": f"s3://{bucket}/{ref.key}", "error": describe(exc, ref.key),
                          "error_type": type(exc).__name__}
                if current.closed:  # the connection was lost: the next object gets a new one
                    current = connect(remaining=remaining)
            log(logger, "object swept", **result)
            results.append(result)
    finally:
        if current is not conn:
            current.close()
    return {"sweep": name, "objects": len(results), "results": results,
            "committed": sum(r["status"] == "committed" for r in results),
            "already_loaded": sum(r["status"] == "already_loaded" for r in results),
            "failed": sum(r["status"] == "failed" for r in results),
            "failed_before": failed_before, "left_for_next_sweep": left}


def handler(event: dict, context=None) -> dict:
    """Each object of the event has its own outcome and its own ledger row: one that fails never stops the
    others. The invocation fails (so S3 retries it) when any object failed; the objects already loaded then
    answer already_loaded. A scheduled firing sweeps the source's prefix (see sweep): its failures are in the
    ledger, and the next sweep goes on where it stopped."""
    started = time.monotonic()
    config = pipeline_config()
    remaining = time_left(context)
    request_id = getattr(context, "aws_request_id", None)
    results, errors = [], []
    conn = connect(remaining=remaining)
    try:
        if (name := swept_source(event, config)) is not None:
            summary = sweep(conn, config, name, remaining, request_id)
            summary["seconds"] = round(time.monotonic() - started, 3)
            return json_ready(summary)
        for ref in objects_in_event(event):
            try:
                result = (dry_run(conn, config, ref, remaining) if event.get("dry_run") else
                          ingest(conn, config, ref, remaining, request_id))
            except Exception as exc:  # noqa: BLE001 - every failure is this object's outcome, in the ledger too
                reason = describe(exc, ref.key)
                result = {"status": "failed", "ref": f"s3://{ref.bucket}/{ref.key}", "error": reason,
                          "error_type": type(exc).__name__}
                errors.append(reason)
                if conn.closed:  # the connection was lost: the next object gets a new one
                    conn = connect(remaining=remaining)
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
