"""The loader's two heaviest statements run by hand on a 1M-row batch, as written and in variants, each
inside a savepoint rolled back afterwards (nothing is kept), to measure where their time goes:

    python -m bench loader-sql [--rows N]

The statements are the loader's own, captured from a real ingest by bench/profile.py's timed cursor.
"""

from __future__ import annotations

import io
import time

import psycopg2

from bench import profile
from bench.data import sales_csv
from bench.stack import BenchStack


def _timed(cur, statement: str, params=None) -> float:
    started = time.perf_counter()
    cur.execute(statement, params)
    return time.perf_counter() - started


def run(stack: BenchStack, rows: int) -> str:
    profiled = profile.run(stack, rows, explain=False)
    log = profile.TimedCursor.log
    typed_insert = next(e["statement"] for e in log if e["statement"].startswith("insert into typed"))
    create_typed = next(e["statement"] for e in log if e["statement"].startswith("create temp table typed"))
    upsert = next(e["statement"] for e in log if e["statement"].startswith("with up as (insert into"))
    header = ", ".join(f"c{i}" for i in range(9))
    conn = psycopg2.connect(stack.database_url)
    out = io.StringIO()
    out.write(f"# the loader's statements by hand, {rows} rows (seconds; each variant rolled back)\n\n")
    with conn.cursor() as cur:
        cur.execute("select max(batch_id) from meta.batches where status = 'committed'")
        batch = cur.fetchone()[0]
        cur.execute("create temp sequence raw_row start with 2 minvalue 0")
        cur.execute(f"create temp table raw (_sheet text, _row bigint default nextval('raw_row'), "
                    f"{', '.join(f'c{i} text' for i in range(9))})")
        with open(sales_csv(stack.work_dir, rows), "rb") as fh:
            started = time.perf_counter()
            cur.copy_expert(f"copy raw ({header}) from stdin with (format csv, header true)", fh, size=1 << 20)
            out.write(f"- raw COPY into the text staging table: {time.perf_counter() - started:.2f}\n")
        cur.execute(create_typed.replace(" on commit drop", ""))
        cur.execute("analyze raw")

        def variant(label: str, setup: list[str], statement: str, params=None) -> None:
            cur.execute("savepoint v")
            for s in setup:
                cur.execute(s)
            seconds = _timed(cur, statement, params)
            cur.execute("rollback to savepoint v")
            out.write(f"- {label}: {seconds:.2f}\n")

        variant("typing insert, as written (planner's Memoize over the fenced LATERAL)", [], typed_insert)
        variant("typing insert, enable_memoize off", ["set local enable_memoize = off"], typed_insert)
        variant("typing insert, enable_memoize off and jit off",
                ["set local enable_memoize = off", "set local jit = off"], typed_insert)
        casts = ("c0, c1::bigint, c2::date, c3, c4, c5::bigint, c6::numeric, c7::numeric, c8")
        floor = ("insert into typed (_row, order_id, line_no, order_date, client_id, product, quantity, unit_price,"
                 " amount, currency, _reasons, _skip, _row_hash) select _row, {}, '{{}}', false, {} from raw")
        variant("floor: bare casts of the nine columns, no normalising or checks, no hash",
                [], floor.format(casts, "null"))
        variant("floor plus the md5 row hash", [], floor.format(
            casts, "md5(row(c0, c1::bigint, c2::date, c3, c4, c5::bigint, trim_scale(c6::numeric), "
                   "trim_scale(c7::numeric), c8)::text)"))
        cur.execute("set local enable_memoize = off")
        cur.execute(typed_insert)
        cur.execute("reset enable_memoize")
        cur.execute("analyze typed")
        params = (batch, "sales", "s3://bench")
        empty = ["truncate core.sales, core.sales_history"]
        variant("merge into empty core.sales, as written", empty, upsert, params)
        variant("merge without the sales_by_batch index", [*empty, "drop index core.sales_by_batch"], upsert, params)
        plain = upsert.split("with up as (", 1)[1].rsplit(" returning", 1)[0].split(" on conflict", 1)[0]
        variant("plain INSERT ... SELECT (no ON CONFLICT, no RETURNING CTE), same constraints", empty, plain, params)
        variant("merge when every row conflicts and none changed (core holds the batch)", [], upsert, params)
    conn.rollback()
    conn.close()
    return profiled + "\n" + out.getvalue()
