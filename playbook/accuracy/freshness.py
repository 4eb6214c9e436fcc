"""Freshness against each source's schedule, read from the data's own dates (never the wall clock).

A scheduled delivery brings the data of the days since the run before it. A delivery that never arrived
leaves a gap in the source's business dates that holds every day of one schedule interval (the days
strictly between two runs; for a daily schedule, the run's day), and that is longer than the grace days.
The data's end is the last business date any source holds, so a source that stopped early is late too.
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
    ends = [rows[-1][0] for rows in dated.values() if rows]
    data_end = max(ends) if ends else None
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
        missed = _missed(name, source, rows, data_end, grace, tz)
        n = sum(len(m["due"]) for m in missed)
        summary = (f"{n} scheduled deliveries missing; the first was due {missed[0]['due'][0]}" if missed else
                   f"data from {rows[0][0]} to {rows[-1][0]}, no scheduled delivery missing up to {data_end}")
        results.append(judge("freshness", name, n, limits.max_missed_deliveries, summary, missed,
                             schedule=source.schedule, data_end=str(data_end)))
    return results, data_end


def _missed(name: str, source, rows: list[tuple[date, str]], data_end: date, grace: int,
            timezone: str) -> list[dict[str, Any]]:
    first = rows[0][0]
    runs = run_days(source.schedule, timezone, first, data_end + timedelta(days=62), source.starts(timezone))
    intervals = _intervals(runs) if runs else None
    # the data's end stands for a delivery right after it: a source that stopped early shows as a last gap
    gaps = [(a, b, ra, rb) for (a, ra), (b, rb) in zip(rows, rows[1:], strict=False)]
    gaps.append((rows[-1][0], data_end + timedelta(days=1), rows[-1][1], None))
    found = []
    for a, b, ref_a, ref_b in gaps:
        uncovered = (b - a).days - 1
        if uncovered <= grace:
            continue
        if intervals is not None:
            due = [d for lo, hi, d in intervals if lo > a and hi < b and d <= data_end + timedelta(days=grace)]
        elif source.expected_every_days and uncovered >= source.expected_every_days + grace:
            due = [a + timedelta(days=source.expected_every_days)]
        else:
            due = []
        if due:
            found.append({"source": name, "due": [str(d) for d in due], "no_data_from": str(a + timedelta(days=1)),
                          "no_data_to": str(b - timedelta(days=1)), "days_without_data": uncovered,
                          "last_before": {"date": str(a), **place(ref_a)},
                          "next_after": {"date": str(b), **place(ref_b)} if ref_b else None})
    return found
