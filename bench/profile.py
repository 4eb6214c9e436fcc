"""Where the loader's time goes: the ingest handler's code in this process on a psycopg2 cursor that times
every statement it sends (and, with --explain, EXPLAIN ANALYZEs each one first inside a savepoint that is
rolled back, so the batch itself still runs exactly as written), plus cProfile of the Python side."""

from __future__ import annotations

import cProfile
import io
import pstats
import time

import psycopg2
import psycopg2.extensions

from bench.data import payments_xlsx, reordered_csv, sales_csv
from bench.stack import BenchStack

EXPLAINABLE = ("insert", "with", "select", "update", "delete")


class TimedCursor(psycopg2.extensions.cursor):
    log: list[dict] = []
    explain = False

    def _text(self, query) -> str:
        return query if isinstance(query, str) else query.as_string(self)

    def execute(self, query, params=None):
        text = self._text(query)
        plan = None
        if self.explain and text.lstrip().lower().startswith(EXPLAINABLE) and "pg_advisory" not in text:
            super().execute("savepoint bench_explain")
            super().execute("explain (analyze, buffers, timing off) " + text, params)
            plan = "\n".join(r[0] for r in self.fetchall())
            super().execute("rollback to savepoint bench_explain")
        started = time.perf_counter()
        value = super().execute(text, params)
        self.log.append({"seconds": time.perf_counter() - started, "statement": text, "plan": plan,
                         "rows": self.rowcount})
        return value

    def copy_expert(self, sql, file, size=8192):
        text = self._text(sql)
        started = time.perf_counter()
        value = super().copy_expert(text, file, size)
        self.log.append({"seconds": time.perf_counter() - started, "statement": text, "plan": None,
                         "rows": self.rowcount})
        return value


def run(stack: BenchStack, rows: int, explain: bool = False, top: int = 12, excel: bool = False,
        again: bool = False) -> str:
    """again: profile the same rows again, in another order under a second key, once the first is loaded
    (every row unchanged)."""
    import os

    from pipeline.db import connect
    from pipeline.handlers import ingest_object
    from pipeline.runtime_config import pipeline_config
    from pipeline.sources.objects import ObjectRef
    from playbook import runtime

    # the deployed function's settings, and a connection made as the function makes its own
    env = runtime.describe(stack.function("IngestPayments" if excel else "IngestSales")).environment
    os.environ.update({k: env[k] for k in ("PIPELINE_CONFIG_URI", "DB_SECRET_ARN") if k in env})
    if excel:
        key = stack.put(f"landing/payments/profile-{rows}.xlsx", payments_xlsx(stack.work_dir, rows))
    else:
        key = stack.put(f"landing/sales/profile-{rows}.csv", sales_csv(stack.work_dir, rows))
    config = pipeline_config()
    if again:
        conn = connect()
        try:
            first = ingest_object.ingest(conn, config, ObjectRef(stack.landing_bucket, key), lambda: float("inf"))
        finally:
            conn.close()
        if first["status"] != "committed":
            raise RuntimeError(f"the first load of {key}: {first}")
        # a re-export: the same rows in another order (a workbook: the same file again)
        path = payments_xlsx(stack.work_dir, rows) if excel else reordered_csv(sales_csv(stack.work_dir, rows))
        key = stack.put(key.replace("profile-", "profile-again-"), path)
    TimedCursor.log, TimedCursor.explain = [], explain
    conn = connect()
    conn.cursor_factory = TimedCursor
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    try:
        result = ingest_object.ingest(conn, config, ObjectRef(stack.landing_bucket, key), lambda: float("inf"))
    finally:
        profiler.disable()
        conn.close()
    total = time.perf_counter() - started
    in_sql = sum(e["seconds"] for e in TimedCursor.log)
    out = io.StringIO()
    what = ("a workbook" if excel else "CSV") + (", its rows again under a new key" if again else "")
    out.write(f"# loader profile: {rows} rows of {what}, {result['status']}, {total:.2f}s in ingest() "
              f"({in_sql:.2f}s waiting on PostgreSQL{', statements EXPLAINed first' if explain else ''})\n\n")
    out.write("## statements by time\n\n| s | share | statement |\n| ---: | ---: | --- |\n")
    for e in sorted(TimedCursor.log, key=lambda e: -e["seconds"])[:top]:
        statement = " ".join(e["statement"].split())
        out.write(f"| {e['seconds']:.2f} | {e['seconds'] / total:.0%} | `{statement[:150]}` |\n")
    if explain:
        out.write("\n## plans of the slowest statements\n")
        for e in sorted(TimedCursor.log, key=lambda e: -e["seconds"])[:4]:
            if e["plan"]:
                out.write(f"\n{' '.join(e['statement'].split())[:200]}\n```\n{e['plan']}\n```\n")
    stats = io.StringIO()
    pstats.Stats(profiler, stream=stats).sort_stats("tottime").print_stats(12)
    out.write("\n## Python (cProfile, by own time)\n```\n" + stats.getvalue().split("\n\n", 1)[-1].strip() + "\n```\n")
    return out.getvalue()
