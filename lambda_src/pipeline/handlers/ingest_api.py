"""Lambda: load one window of a business system's REST API through the same loader as the files.

Events:
- scheduled: an EventBridge rule event ({"source": "aws.events", "time": ...}) or the Scheduler's input
  ({"source": "<name>", "trigger": "schedule"}, optionally "time"): the window runs from the saved cursor
  (or one schedule period before the event's time, for a first run) to the event's time;
- explicit, for backfills: {"source": "sales_api", "from": "2024-01-01", "to": "2024-02-01"}.
The source comes from the event's `source`, else from PIPELINE_SOURCE (or SOURCE_NAME).

The cursor lives in meta.source_state and is written by the batch's own transaction, so it advances only
when the batch commits. When the time budget runs short, fetching stops at a page boundary, the complete
pages commit, and the state says where the next invocation resumes the same window. When the API's call limit
needs a longer wait than the budget allows, the batch fails whole (nothing of the window commits, the cursor
stays) with the time the API takes calls again. That time outlives the function instance: it is kept in
meta.api_call_limits, which the next invocation reads before its first call.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

import psycopg2
import psycopg2.extras

from pipeline.attempts import attempted
from pipeline.config import PipelineConfig, SourceConfig
from pipeline.db import connect, time_left
from pipeline.loader import BatchLoad, Delivery, TimeBudgetExceeded
from pipeline.logs import get_logger, log
from pipeline.model import TABLES
from pipeline.runtime_config import landing_bucket, pipeline_config
from pipeline.schedules import schedule_period
from pipeline.sources import LoadError, reading_columns, reading_types
from pipeline.sources.rest_api import ApiReader, PageKeeper, load_call_limit, pg_refresh_lock, save_call_limit

logger = get_logger("pipeline.ingest_api")
ENV_SOURCE = "PIPELINE_SOURCE"
ENV_SOURCE_ALIASES = ("SOURCE_NAME",)
COMMIT_MARGIN_S = 5.0


@dataclass(frozen=True)
class Plan:
    window: tuple[datetime, datetime]
    resume: dict | None  # the saved pending state this run continues
    explicit: bool


def parse_moment(value: object, field: str) -> datetime:
    """An ISO date (midnight UTC) or date-time (UTC when it names no offset)."""
    text = str(value).strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise LoadError(f"{field}: {text!r} is not an ISO date or date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def source_for(event: dict, config: PipelineConfig) -> tuple[str, SourceConfig]:
    name = event.get("source")
    if not name or str(name).startswith("aws."):
        name = next((os.environ[v] for v in (ENV_SOURCE, *ENV_SOURCE_ALIASES) if os.environ.get(v)), None)
    if not name:
        raise LoadError(f"the event names no source and {ENV_SOURCE} is not set")
    source = config.sources.get(name)
    if source is None:
        raise LoadError(f"source {name!r} is not in the configuration (sources: {', '.join(config.sources)})")
    if source.delivers != "api":
        raise LoadError(f"source {name!r} is a {source.kind} source: its deliveries are files, not API windows")
    return name, source


def read_state(conn, source: str) -> dict | None:
    with conn.cursor() as cur:
        cur.execute("select cursor from meta.source_state where source = %s", (source,))
        row = cur.fetchone()
    conn.rollback()  # no snapshot held open while the API is read
    return row[0] if row else None


def plan_window(event: dict, source: SourceConfig, state: dict | None, timezone: str,
                now: datetime | None = None) -> Plan:
    pending = (state or {}).get("pending")
    if "from" in event or "to" in event:
        if not event.get("from") or not event.get("to"):
            raise LoadError("an explicit window needs both from and to")
        window = (parse_moment(event["from"], "from"), parse_moment(event["to"], "to"))
        if window[1] <= window[0]:
            raise LoadError(f"to ({event['to']}) must come after from ({event['from']})")
        same = pending and (pending.get("from"), pending.get("to")) == tuple(w.isoformat() for w in window)
        return Plan(window, pending if same else None, True)
    if pending:  # a window cut short by the time budget: finish it first
        return Plan((parse_moment(pending["from"], "pending.from"), parse_moment(pending["to"], "pending.to")),
                    pending, False)
    moment = event.get("time") or event.get("scheduled_time")
    end = parse_moment(moment, "time") if moment else (now or datetime.now(UTC))
    end = end.replace(microsecond=0)
    inc = source.api.incremental
    if state and state.get("next_from"):
        start = parse_moment(state["next_from"], "meta.source_state.next_from")
    elif inc and inc.initial_from:
        start = parse_moment(inc.initial_from, "api.incremental.initial_from")
    else:
        start = end - schedule_period(source.schedule, end, timezone, source.expected_every_days or 1,
                                       source.starts(timezone))
    return Plan((start, max(start, end)), None, False)


def state_after(state: dict | None, plan: Plan, reader: ApiReader) -> dict:
    """The state this batch commits: the pending window, or the cursor moved to the end of a complete one."""
    new = dict(state or {})
    pending = reader.pending()
    if pending is not None:
        new["pending"] = pending
        return new
    if plan.resume is not None or not plan.explicit:
        new["pending"] = None
    end = plan.window[1]
    old = new.get("next_from")
    new["next_from"] = max(parse_moment(old, "next_from"), end).isoformat() if old else end.isoformat()
    new["last_window"] = {"from": plan.window[0].isoformat(), "to": end.isoformat()}
    return new


def ingest_window(conn, config: PipelineConfig, name: str, source: SourceConfig, plan: Plan, state: dict | None,
                  remaining, request_id: str | None = None) -> dict:
    if remaining() < source.api.reserve_s:
        raise TimeBudgetExceeded(f"{name}: less than api.reserve_s ({source.api.reserve_s:g} s) left to start")
    columns, required = reading_columns(source)
    # an OAuth refresh token is spent under a PostgreSQL advisory lock on this connection (idle while the API is
    # read), so two runs of the source never spend the same one
    types = {c.name: c.type for c in TABLES[source.table].columns} | reading_types(source)
    reader = ApiReader(name, source.api, columns, required, plan.window, plan.resume, remaining,
                       lock=pg_refresh_lock(conn), types=types)
    delivery = Delivery(name, source, source.kind, reader.ref, reader.display, window=plan.window)

    def save_state(cur, batch_id: int) -> None:
        cur.execute("select cursor from meta.source_state where source = %s for update", (name,))
        row = cur.fetchone()
        if (row[0] if row else None) != state:
            raise LoadError(f"{name}: meta.source_state changed while this run read the API (another run of the "
                            "source?); rolled back so the state stays that run's")
        cur.execute("insert into meta.source_state (source, cursor, batch_id, updated_at) values (%s, %s, %s, now())"
                    " on conflict (source) do update set cursor = excluded.cursor, batch_id = excluded.batch_id,"
                    " updated_at = excluded.updated_at",
                    (name, psycopg2.extras.Json(new_state), batch_id))

    with attempted(conn, delivery, request_id, remaining) as attempt:
        pages = PageKeeper(landing_bucket(), name, attempt.batch_id, reader.client.hidden_value)
        reader.keep = pages.put
        try:
            reader.fetch()
        except BaseException:
            pages.close()  # the pages fetched so far stay, for whoever looks into the failure
            raise
        attempt.plan["api_pages"] = pages.summary()
        if reader.pages == 0 and not reader.complete:
            raise TimeBudgetExceeded(f"{reader.display}: no complete page within the time budget")
        new_state = state_after(state, plan, reader)
        result = BatchLoad(conn, delivery, reader, config.company, attempt, remaining,
                           before_commit=save_state).run(COMMIT_MARGIN_S)
    return {"source": name, "window": {"from": plan.window[0].isoformat(), "to": plan.window[1].isoformat()},
            "pages": reader.pages, "records": len(reader.rows), "requests": reader.client.requests,
            "retries": reader.client.retries, "waited_for_limit_s": round(reader.client.waited_s, 3),
            "quarantined_by_reader": len(reader.rejects), "complete": reader.complete,
            "resumed": plan.resume is not None,
            "stopped_for_time": reader.stopped_for_time, "batch": result, "resume": new_state.get("pending"),
            "state": new_state}


def handler(event: dict, context=None) -> dict:
    started = time.monotonic()
    event = event or {}
    config = pipeline_config()
    remaining = time_left(context)
    request_id = getattr(context, "aws_request_id", None)
    name, source = source_for(event, config)
    conn = connect(remaining=remaining)
    try:
        state = read_state(conn, name)
        plan = plan_window(event, source, state, config.company.timezone)
        limited = source.api.rate_limit is not None  # only a declared limit is read from the headers
        if limited:
            load_call_limit(conn, source.api.base_url)
        try:
            summary = ingest_window(conn, config, name, source, plan, state, remaining, request_id)
        except (LoadError, TimeBudgetExceeded) as exc:
            logger.error("api window failed", extra={"fields": {
                "source": name, "window": [w.isoformat() for w in plan.window], "error": str(exc),
                "error_type": type(exc).__name__}})
            raise
        finally:
            if limited:
                _keep_call_limit(conn, name, source.api.base_url)
    finally:
        conn.close()
    summary["seconds"] = round(time.monotonic() - started, 3)
    log(logger, "api window processed", **{k: v for k, v in summary.items() if k != "state"})
    return json_ready(summary)


def _keep_call_limit(conn, name: str, base_url: str) -> None:
    """The call limit this run learned, for the next run; a failure to keep it is logged, never the run's error."""
    try:
        save_call_limit(conn, name, base_url)
    except psycopg2.Error as exc:
        logger.warning("api call limit not kept", extra={"fields": {"source": name, "error": str(exc)}})


def json_ready(value):
    """What Lambda can marshal: money sums stay exact as text, never floats."""
    return json.loads(json.dumps(value, default=lambda v: str(v) if isinstance(v, Decimal) else v.isoformat()))
