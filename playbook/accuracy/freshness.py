"""Freshness: each source judged against its own data and its own schedule, read from the data's own dates
(never the wall clock).

The rule, source by source (sources sent whole each time are not judged: their dates are not delivery periods):

1. A scheduled delivery brings the data of the days since the run before it: the days strictly between two
   runs, or, for a daily schedule, the run's own day. That is its schedule interval.
2. Inside the source's own data (its first to its last business date), a gap that holds every day of one or
   more schedule intervals, and is longer than `freshness_grace_days`, is deliveries that never arrived. Each
   gap is ONE finding: the days without data (first, last, count), the deliveries due (first due day, last
   due day, count) and the files on either side. Observed counts the deliveries missed.
3. After its own last date the source is judged against the others: their last business date (the latest of
   any other source) is how far the warehouse has come. A source whose data ends earlier than that is late
   only when its own schedule, counted from its own last date, had a delivery due whose whole interval lies
   before the others' last date, and the days it lacks are more than the grace days. Such a source stopped
   delivering while the others went on: ONE finding (`stopped: true`) with the range of days it is missing
   (its last date + 1 to the others' last date), the deliveries due over it as a range, and the last file it
   sent. Observed counts a stop as one missed delivery, the first one that did not come: the ones after it
   are the same fault, and a long silence does not multiply it.
   A source whose next delivery is not due yet by its schedule (a weekly source whose week is not over when
   the daily sources end) is not late. A source ending on the last date of all is never late.

Findings name ranges, never one entry per day, so the reports' size does not grow with the length of a gap.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from psycopg2 import sql

from pipeline.config import Accuracy, PipelineConfig
from pipeline.model import TABLES
from pipeline.schedules import ScheduleError, occurrences
from playbook.accuracy.results import CheckResult, judge, place


def run_days(expression: str, timezone: str, first: date, last: date,
             start_date: datetime | None = None) -> list[date] | None:
    """The days in [first, last] on which the schedule runs (a rate from its start date), in the company's zone;
    None when the expression is not readable here."""
    zone = ZoneInfo(timezone)
    try:
        fired = occurrences(expression, timezone, datetime.combine(first, time(0), zone) - timedelta(microseconds=1),
                            datetime.combine(last + timedelta(days=1), time(0), zone) - timedelta(microseconds=1),
                            start_date)
    except ScheduleError:
        return None
    return sorted({f.astimezone(zone).date() for f in fired})


def _intervals(runs: list[date]) -> list[tuple[date, date, date]]:
    """(first day, last day, due day) of the data each run brings: the days strictly between it and the run
    before, or the run's own day when runs are a day apart."""
    out = []
    for before, run in zip(runs, runs[1:], strict=False):
        if (run - before).days > 1:
            out.append((before + timedelta(days=1), run - timedelta(days=1), run))
        else:
            out.append((run, run, run))
    return out


def source_dates(cur, name: str, table_name: str, timezone: str) -> list[tuple[date, str]]:
    """Each business date a source's rows hold, with a file that holds it."""
    table = TABLES[table_name]
    column = sql.Identifier(table.date)
    day = (sql.SQL("({} at time zone {})::date").format(column, sql.Literal(timezone))
           if table.column(table.date).type == "timestamp" else column)
    lineage = sql.Identifier("core", f"{table.name}_lineage")
    cur.execute(sql.SQL("select {day}, max(_source_ref) from {lineage} where _source = %s and {col} is not null "
                        "group by 1 order by 1").format(day=day, lineage=lineage, col=column), (name,))
    return cur.fetchall()


def check_freshness(cur, config: PipelineConfig, limits: Accuracy) -> tuple[list[CheckResult], date | None]:
    tz = config.company.timezone
    grace = limits.freshness_grace_days
    dated = {}
    for name, source in config.sources.items():
        if source.table in limits.snapshot_tables or not TABLES[source.table].date:
            continue
        dated[name] = source_dates(cur, name, source.table, tz)
    ends = {name: rows[-1][0] for name, rows in dated.items() if rows}
    data_end = max(ends.values()) if ends else None
    results = []
    for name, source in config.sources.items():
        if name not in dated:
            results.append(judge("freshness", name, 0, limits.max_missed_deliveries,
                                 f"{source.table} is sent whole each time: its dates are not delivery periods"))
            continue
        rows = dated[name]
        if not rows:
            results.append(judge("freshness", name, 0, limits.max_missed_deliveries, "no data delivered yet"))
            continue
        others_end = max((end for other, end in ends.items() if other != name), default=None)
        missed = _missed(name, source, rows, others_end, grace, tz)
        n = sum(1 if m["stopped"] else m["deliveries"] for m in missed)
        results.append(judge("freshness", name, n, limits.max_missed_deliveries,
                             _summary(rows, missed, others_end), missed, schedule=source.schedule,
                             data_from=str(rows[0][0]), data_to=str(rows[-1][0]),
                             others_end=None if others_end is None else str(others_end),
                             data_end=str(data_end)))
    return results, data_end


def _summary(rows: list[tuple[date, str]], missed: list[dict[str, Any]], others_end: date | None) -> str:
    own = f"data from {rows[0][0]} to {rows[-1][0]}"
    if not missed:
        behind = (f"; the other sources go on to {others_end}, its next delivery is not due yet by its schedule"
                  if others_end is not None and others_end > rows[-1][0] else "")
        return f"{own}, no scheduled delivery missing{behind}"
    gaps = [m for m in missed if not m["stopped"]]
    parts = []
    if gaps:
        deliveries = sum(m["deliveries"] for m in gaps)
        parts.append(f"{deliveries} scheduled deliveries missing in {len(gaps)} gap{'s' if len(gaps) > 1 else ''}"
                     f", the first due {gaps[0]['due_from']}")
    for m in missed:
        if m["stopped"]:
            parts.append(f"stopped delivering: no data from {m['no_data_from']} to {m['no_data_to']} "
                         f"({m['days_without_data']} days) while the other sources go on; "
                         f"{m['deliveries']} deliveries due from {m['due_from']} to {m['due_to']}")
    return f"{own}; " + "; ".join(parts)


def _missed(name: str, source, rows: list[tuple[date, str]], others_end: date | None, grace: int,
            timezone: str) -> list[dict[str, Any]]:
    first, last = rows[0][0], rows[-1][0]
    horizon = max(last, others_end or last)
    runs = run_days(source.schedule, timezone, first, horizon + timedelta(days=62), source.starts(timezone))
    intervals = _intervals(runs) if runs else None
    # gaps inside the source's own data; then the days after its last date that the other sources have
    gaps = [(a, b, ra, rb, False) for (a, ra), (b, rb) in zip(rows, rows[1:], strict=False)]
    if others_end is not None and others_end > last:
        gaps.append((last, others_end + timedelta(days=1), rows[-1][1], None, True))
    found = []
    for a, b, ref_a, ref_b, stopped in gaps:
        uncovered = (b - a).days - 1
        if uncovered <= grace:
            continue
        if intervals is not None:
            # after its last date, a delivery counts once it was due by the others' last date (and grace days)
            due = [d for lo, hi, d in intervals
                   if lo > a and hi < b and (not stopped or d <= b + timedelta(days=grace - 1))]
        elif source.expected_every_days and uncovered >= source.expected_every_days + grace:
            due = [a + timedelta(days=source.expected_every_days)]
        else:
            due = []
        if due:
            found.append({"source": name, "stopped": stopped, "due_from": str(due[0]), "due_to": str(due[-1]),
                          "deliveries": len(due), "no_data_from": str(a + timedelta(days=1)),
                          "no_data_to": str(b - timedelta(days=1)), "days_without_data": uncovered,
                          "last_before": {"date": str(a), **place(ref_a)},
                          "next_after": {"date": str(b), **place(ref_b)} if ref_b else None})
    return found
