"""`playbook backfill`: load the history already in the landing bucket, window by window, then refresh the marts.

The history is split per source into windows: for file sources, the landed objects (every version, oldest
first) grouped by the month or quarter their key names (their LastModified when the key names none); for
REST sources, date windows. Each window is one function invocation, sized to the deployed function's timeout
(`window_limits`) so that none comes near it, and the windows fan out with bounded concurrency through the
target (playbook.targets): locally each waited for, through the Lambda runtime (the deployed zip, run as a
Lambda would run it); on AWS as asynchronous invokes while the ledger (meta.batches) is polled for their
batches. The marts are then refreshed by the deployed refresh function. A second backfill changes nothing:
every object answers `already_loaded`.
"""

from __future__ import annotations

import argparse
import re
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any

from pipeline.periods import months_before
from playbook.errors import PlaybookError
from playbook.targets import LAMBDA_LIMIT_S, error_text

GRAINS = ("month", "quarter")
MAX_RESUMES = 20  # invocations after the first that one API window may take to complete
# one window's budget for a function that may run Lambda's whole 15 minutes: far below it even on the slowest
# object seen so far. A function with a shorter timeout gets windows smaller in proportion (window_limits).
MAX_OBJECTS_PER_WINDOW = 40
MAX_BYTES_PER_WINDOW = 48 * 1024 * 1024
_DATE_IN_KEY = re.compile(r"(?<!\d)(20\d{2}|19\d{2})[-_]?(0[1-9]|1[0-2])(?:[-_]?(0[1-9]|[12]\d|3[01]))?(?!\d)")


class BackfillFailed(PlaybookError):
    """At least one window failed; the others are loaded, and a rerun retries only what is not loaded."""


@dataclass
class Window:
    """One invocation's worth of history: a source, a period and the objects (or date range) in it."""

    source: str
    function: str
    period: str
    event: dict[str, Any]
    objects: int = 0
    bytes: int = 0
    bounds: tuple[str, str] | None = None  # an API window's instants, as its batches record them
    # filled in when the window has run
    status: str = "pending"  # pending | ok | failed
    committed: int = 0
    already_loaded: int = 0
    failed: int = 0
    seconds: float = 0.0
    error: str | None = None
    log: str | None = None


@dataclass
class BackfillResult:
    target: str
    grain: str
    windows: list[Window]
    seconds: float = 0.0
    refresh: dict[str, Any] = field(default_factory=dict)
    invoked_through: str = ""

    @property
    def totals(self) -> dict[str, int]:
        return {"windows": len(self.windows), "api_windows": sum(w.bounds is not None for w in self.windows),
                "objects": sum(w.objects for w in self.windows),
                "committed": sum(w.committed for w in self.windows),
                "already_loaded": sum(w.already_loaded for w in self.windows),
                "failed": sum(w.failed for w in self.windows),
                "failed_windows": sum(w.status == "failed" for w in self.windows)}

    def table(self):
        """One row per source and period: what the notebook shows."""
        import pandas as pd

        rows = [{"source": w.source, "period": w.period, "objects": w.objects, "committed": w.committed,
                 "already_loaded": w.already_loaded, "failed": w.failed, "seconds": round(w.seconds, 2),
                 "status": w.status} for w in self.windows]
        return pd.DataFrame(rows, columns=["source", "period", "objects", "committed", "already_loaded", "failed",
                                           "seconds", "status"])

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "grain": self.grain, "seconds": round(self.seconds, 2),
                "invoked_through": self.invoked_through, "totals": self.totals, "refresh": self.refresh,
                "windows": [asdict(w) | {"event": None} for w in self.windows]}


# -- planning ----------------------------------------------------------------------------------------
def function_output_key(source: str) -> str:
    """The stack output naming a source's ingest function: sales -> IngestSalesFunctionName."""
    return "Ingest" + "".join(part.capitalize() for part in source.split("_")) + "FunctionName"


def period_of(key: str, last_modified: datetime | None, grain: str) -> str:
    """The month (2026-03) or quarter (2026-Q1) an object belongs to: the first date its key names."""
    found = _DATE_IN_KEY.search(key.rsplit("/", 1)[-1]) or _DATE_IN_KEY.search(key)
    if found:
        year, month = int(found.group(1)), int(found.group(2))
    elif last_modified is not None:
        year, month = last_modified.year, last_modified.month
    else:
        return "undated"
    return f"{year}-{month:02d}" if grain == "month" else f"{year}-Q{(month - 1) // 3 + 1}"


def landed_versions(s3, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every version of every object under a prefix (delete markers aside), oldest first per key."""
    versions = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        versions += [v for v in page.get("Versions", []) if not v["Key"].endswith("/")]
    return sorted(versions, key=lambda v: (v["Key"], v["LastModified"]))


def _chunks(items: list[dict[str, Any]], max_objects: int, max_bytes: int) -> list[list[dict[str, Any]]]:
    """Split a period's objects into invocations; the versions of one key always travel together, in order."""
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        by_key[item["Key"]].append(item)
    chunks: list[list[dict[str, Any]]] = [[]]
    for key in sorted(by_key):
        group = by_key[key]
        current = chunks[-1]
        if current and (len(current) + len(group) > max_objects
                        or sum(v["Size"] for v in current + group) > max_bytes):
            chunks.append([])
        chunks[-1].extend(group)
    return [c for c in chunks if c]


def window_limits(timeout_s: float) -> tuple[int, int]:
    """(objects, bytes) one invocation of a function with this timeout is given: the 15-minute budget in
    proportion, so the margin below the timeout is the same (at 300 s: 13 objects, 16 MiB). A single object
    larger than that still goes, alone."""
    share = min(1.0, max(timeout_s, 1) / LAMBDA_LIMIT_S)
    return max(1, int(MAX_OBJECTS_PER_WINDOW * share)), max(1, int(MAX_BYTES_PER_WINDOW * share))


def function_timeouts(functions: list[str]) -> dict[str, int]:
    """The deployed timeout of each function, in seconds (the Lambda API's, locally moto's)."""
    import boto3

    client = boto3.client("lambda")
    return {name: int(client.get_function_configuration(FunctionName=name)["Timeout"]) for name in functions}


def date_windows(start: date, end: date, grain: str) -> list[tuple[date, date]]:
    """[from, to) windows covering start..end, aligned to months or quarters."""
    step = 1 if grain == "month" else 3
    first = date(start.year, ((start.month - 1) // step) * step + 1, 1)
    windows = []
    while first <= end:
        month = first.month - 1 + step
        after = date(first.year + month // 12, month % 12 + 1, 1)
        windows.append((max(first, start), min(after, end + timedelta(days=1))))
        first = after
    return windows


def plan_windows(config, outputs: dict[str, str], *, grain: str = "quarter", sources: list[str] | None = None,
                 api_start: date | None = None, max_objects: int = MAX_OBJECTS_PER_WINDOW,
                 max_bytes: int = MAX_BYTES_PER_WINDOW, timeouts: dict[str, int] | None = None) -> list[Window]:
    """The windows of the whole history, from the landing bucket the stack outputs name. With `timeouts`
    ({function: seconds}), a file source's windows are sized to its function's timeout (window_limits) within
    max_objects and max_bytes."""
    import boto3

    if grain not in GRAINS:
        raise PlaybookError(f"grain {grain!r}: choose one of {', '.join(GRAINS)}")
    bucket = outputs["LandingBucketName"]
    s3 = boto3.client("s3")
    windows: list[Window] = []
    for name, source in config.sources.items():
        if sources and name not in sources:
            continue
        function = outputs.get(function_output_key(name))
        if not function:
            raise PlaybookError(f"no ingest function for source {name!r} in the stack outputs "
                                f"({function_output_key(name)}): provision and deploy first")
        if source.delivers == "files":
            periods: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for version in landed_versions(s3, bucket, source.prefix):
                periods[period_of(version["Key"], version.get("LastModified"), grain)].append(version)
            objects, size = max_objects, max_bytes
            if timeouts and function in timeouts:
                fitted = window_limits(timeouts[function])
                objects, size = min(objects, fitted[0]), min(size, fitted[1])
            for period in sorted(periods):
                chunks = _chunks(periods[period], objects, size)
                for i, chunk in enumerate(chunks, 1):
                    label = period if len(chunks) == 1 else f"{period} ({i}/{len(chunks)})"
                    event = {"objects": [{"bucket": bucket, "key": v["Key"], "version": v["VersionId"]}
                                         if v.get("VersionId") not in (None, "null") else
                                         {"bucket": bucket, "key": v["Key"]} for v in chunk]}
                    windows.append(Window(name, function, label, event, len(chunk), sum(v["Size"] for v in chunk)))
        else:
            start = api_start or source.api.history_from or months_before(date.today(), 36)
            # the last window ends now, not at midnight: what changes later today is the next scheduled run's
            now = datetime.now(UTC).replace(microsecond=0)
            for window_from, window_to in date_windows(start, date.today(), grain):
                end = min(datetime.fromisoformat(_midnight_utc(window_to)), now)
                event = {"source": name, "from": window_from.isoformat(),
                         "to": window_to.isoformat() if end < now else end.isoformat()}
                windows.append(Window(name, function, window_from.isoformat()[:7], event,
                                      bounds=(_midnight_utc(window_from), end.isoformat())))
    return windows


def _midnight_utc(day: date) -> str:
    """An explicit window's bound as its batch records it: the API function reads a date as midnight UTC."""
    return datetime.combine(day, dt_time.min, UTC).isoformat()


# -- running -----------------------------------------------------------------------------------------
def _apply(window: Window, status: str, payload: dict[str, Any] | None, error: str | None, seconds: float,
           log: str | None) -> Window:
    payload = payload or {}
    window.status, window.seconds, window.error, window.log = status, seconds, error, log
    if window.bounds:  # an API window: one batch, read again from the API on every backfill
        batch = payload.get("batch") or {}
        window.committed = int(batch.get("status") == "committed")
        window.failed = int(status == "failed")
        return window
    window.committed = int(payload.get("committed", 0))
    window.already_loaded = int(payload.get("already_loaded", 0))
    window.failed = int(payload.get("failed", 0)) or (window.objects if status == "failed" and not payload else 0)
    return window


def _run_waiting(target, windows: list[Window], concurrency: int, log_dir: Path | None, progress,
                 timeout_s: float, poll_s: float) -> str:
    """Each window's invocation waited for, `concurrency` at a time (locally: warm handler processes)."""
    def one(window: Window) -> Window:
        seconds = 0.0
        # an API window its function's time did not cover: the same event again resumes it where it stopped
        for _ in range(MAX_RESUMES + 1):
            result = target.invoke(window.function, window.event, log_dir=log_dir)
            seconds += result.duration_ms / 1000.0
            payload = result.payload if isinstance(result.payload, dict) else None
            unfinished = bool(result.status == "ok" and window.bounds and payload
                              and payload.get("complete") is False)
            if not unfinished:
                break
        ok = result.status == "ok" and not unfinished
        error = None if ok else (f"still incomplete after {MAX_RESUMES + 1} invocations; run the backfill again"
                                 if unfinished else error_text(result))
        return _apply(window, "ok" if ok else "failed", payload, error, seconds, result.log_path or None)

    shown = threading.Lock()

    def lane(windows: list[Window]) -> None:
        for window in windows:
            done = one(window)
            with shown:
                progress(done)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for future in as_completed([pool.submit(lane, each) for each in lanes(windows)]):
            future.result()
    return f"{target.runs_functions}, each invocation waited for"


def next_window(pending: list[Window], running: list[Window]) -> Window | None:
    """The first pending window that may start beside the running ones: the head of a lane (see lanes) whose
    API source has no window running."""
    busy = {w.source for w in running if w.bounds}
    return next((lane[0] for lane in lanes(pending) if lane[0].bounds is None or lane[0].source not in busy), None)


def lanes(windows: list[Window]) -> list[list[Window]]:
    """What may run at once: every file window alone; one API source's windows one after another, in date order,
    since each run of a source reads and writes its cursor (meta.source_state). The API lanes go first."""
    by_source: dict[str, list[Window]] = defaultdict(list)
    files = []
    for window in windows:
        if window.bounds is None:
            files.append([window])
        else:
            by_source[window.source].append(window)
    return [sorted(each, key=lambda w: w.bounds) for each in by_source.values()] + files


def _ledger_state(conn, window: Window, since: datetime) -> tuple[int, int, int]:
    """(loaded before, committed since, failed since) for a window's objects, from meta.batches."""
    keys = [o["key"] for o in window.event["objects"]]
    with conn.cursor() as cur:
        cur.execute("""
            select object_key, object_version, status, started_at >= %s as recent
              from meta.batches where object_key = any(%s) and status <> 'started'""", (since, keys))
        rows = cur.fetchall()
    conn.rollback()
    done: dict[tuple[str, str | None], str] = {}
    for key, version, status, recent in rows:
        mark = ("committed_now" if recent else "loaded_before") if status == "committed" else (
            "failed_now" if recent else None)
        if mark:
            done[(key, version)] = mark if done.get((key, version)) != "committed_now" else "committed_now"
            done.setdefault((key, None), mark)
    marks = [done.get((o["key"], o.get("version"))) or done.get((o["key"], None)) for o in window.event["objects"]]
    return marks.count("loaded_before"), marks.count("committed_now"), marks.count("failed_now")


def _window_state(conn, window: Window, since: datetime) -> tuple[int, int, int]:
    """(0, committed since, failed since) for an API window: the latest batch of exactly its window."""
    with conn.cursor() as cur:
        cur.execute("select status from meta.batches where source = %s and window_from = %s and window_to = %s"
                    " and started_at >= %s and status <> 'started' order by batch_id desc limit 1",
                    (window.source, *window.bounds, since))
        row = cur.fetchone()
    conn.rollback()
    status = row[0] if row else None
    return 0, int(status == "committed"), int(status == "failed")


def _run_queued(target, windows: list[Window], concurrency: int, log_dir: Path | None, progress,
                timeout_s: float, poll_s: float) -> str:
    """Asynchronous invokes, at most `concurrency` windows in flight, each finished when the ledger says so."""
    from playbook.database import connect

    conn = connect(target.database_url())
    pending = list(windows)
    in_flight: dict[int, tuple[Window, float, datetime]] = {}
    try:
        while pending or in_flight:
            while len(in_flight) < concurrency:
                window = next_window(pending, [w for w, _, _ in in_flight.values()])
                if window is None:
                    break
                pending.remove(window)
                since = datetime.now(UTC) - timedelta(seconds=5)
                target.invoke(window.function, window.event, wait=False)
                in_flight[id(window)] = (window, time.monotonic(), since)
            time.sleep(poll_s)
            for key, (window, started, since) in list(in_flight.items()):
                if window.bounds:  # an API window: its batch, by the window it records
                    before, now, failed = _window_state(conn, window, since)
                    expected = 1
                else:
                    before, now, failed = _ledger_state(conn, window, since)
                    expected = window.objects
                elapsed = time.monotonic() - started
                if before + now + failed >= expected:
                    window.committed, window.already_loaded, window.failed = now, before, failed
                    window.status, window.seconds = ("failed" if failed else "ok"), elapsed
                    del in_flight[key]
                    progress(window)
                elif elapsed > timeout_s:
                    window.status, window.seconds = "failed", elapsed
                    window.error = f"no ledger entry for every object after {timeout_s:.0f}s"
                    window.failed = expected - before - now
                    del in_flight[key]
                    progress(window)
    finally:
        conn.close()
    return "asynchronous Lambda invokes (InvocationType=Event), completion read from meta.batches"


def backfill(target, config_file: str | None = None, *, grain: str = "quarter",
             concurrency: int = 2, sources: list[str] | None = None, log_dir: str | Path | None = None,
             refresh: bool = True, progress: bool = True, timeout_s: float = LAMBDA_LIMIT_S + 60,
             poll_s: float = 5.0) -> BackfillResult:
    """Load every landed object (every window) through the target's deployed functions, then refresh the marts
    through its refresh function; raises BackfillFailed on a failed window."""
    import sys
    import warnings

    from tqdm import TqdmWarning

    from playbook.config import load_config

    started = time.monotonic()
    config = load_config(config_file)
    outputs = target.outputs()
    ingest = sorted({outputs[function_output_key(name)] for name, source in config.sources.items()
                     if source.delivers == "files" and (not sources or name in sources)
                     and outputs.get(function_output_key(name))})
    windows = plan_windows(config, outputs, grain=grain, sources=sources, timeouts=function_timeouts(ingest))
    log_path = Path(log_dir) if log_dir else None
    if log_path:
        log_path.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # without ipywidgets a notebook gets the text bar, which is all it needs
        warnings.simplefilter("ignore", TqdmWarning)
        from tqdm.auto import tqdm
    bar = tqdm(total=len(windows), desc="backfill", unit="window", disable=not progress,
               mininterval=0.1 if sys.stderr.isatty() else 2.0)

    def advance(window: Window) -> None:
        bar.set_postfix_str(f"{window.source} {window.period}: {window.status}", refresh=False)
        bar.update(1)

    run = _run_queued if target.asynchronous_fan_out else _run_waiting
    try:
        through = run(target, windows, concurrency, log_path, advance, timeout_s, poll_s)
    finally:
        bar.close()
    result = BackfillResult(target.name, grain, windows, invoked_through=through)
    failed = [w for w in windows if w.status == "failed"]
    if failed:
        result.seconds = time.monotonic() - started
        first = failed[0]
        raise BackfillFailed(f"{len(failed)} of {len(windows)} windows failed, e.g. {first.source} {first.period}: "
                             f"{first.error}" + (f" (log: {first.log})" if first.log else ""))
    if refresh:
        result.refresh = target.refresh_marts(log_path)
    result.seconds = time.monotonic() - started
    return result


def batches_table(target=None, since: datetime | None = None):
    """The ledger per source: batches, rows and money in and out, quarantined rows (meta.batches), read where
    the target's warehouse is (the local database by default)."""
    import pandas as pd

    from playbook.database import connect

    conn = connect(target.database_url() if target is not None else None)
    try:
        with conn.cursor() as cur:
            cur.execute("""
                select source, count(*) filter (where status = 'committed') as committed,
                       count(*) filter (where status in ('failed', 'abandoned')) as failed,
                       coalesce(sum(rows_read), 0) as rows_read, coalesce(sum(rows_inserted), 0) as inserted,
                       coalesce(sum(rows_updated), 0) as updated, coalesce(sum(rows_quarantined), 0) as quarantined,
                       sum(amount_in) as amount_in, sum(amount_loaded) as amount_loaded, max(finished_at) as last_batch
                  from meta.batches where %s::timestamptz is null or started_at >= %s
                 group by source order by source""", (since, since))
            columns = [c.name for c in cur.description]
            rows = cur.fetchall()
    finally:
        conn.close()
    return pd.DataFrame(rows, columns=columns)


# -- CLI ---------------------------------------------------------------------------------------------
def cmd_backfill(args: argparse.Namespace) -> int:
    from playbook.targets import resolve_target

    result = backfill(resolve_target(args.target), args.config, grain=args.grain, concurrency=args.concurrency,
                      sources=args.source or None)
    print(result.table().to_string(index=False))
    totals = result.totals
    print(f"{totals['windows']} windows, {totals['objects']} objects: {totals['committed']} committed, "
          f"{totals['already_loaded']} already loaded, {totals['failed']} failed ({result.seconds:.1f}s, "
          f"{result.invoked_through}); marts refreshed: {result.refresh.get('status', '-')}")
    return 0


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("backfill", help="load the history in the landing bucket, window by window")
    p.add_argument("--target", choices=["local", "aws"], default="local")
    p.add_argument("--config", help="configuration file (default: $PLAYBOOK_CONFIG or playbook.yaml)")
    p.add_argument("--grain", choices=GRAINS, default="quarter", help="window size per source (default quarter)")
    p.add_argument("--concurrency", type=int, default=2, help="invocations in flight (default 2)")
    p.add_argument("--source", action="append", help="only this source (repeatable)")
    p.set_defaults(func=cmd_backfill)
