"""P5: `marts.top_clients` over random periods of the demo's three years (warm, median), `CALL
marts.refresh()` on the same data, and a refresh while a long reader holds a snapshot of the marts.

The data is synthetic core rows of the demo company's size (300 clients, three years, about 40 orders a
day of one to four lines, costs and payments), seeded, so every run reads the same warehouse.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from datetime import date, timedelta

import psycopg2

from bench.measure import Result
from bench.stack import BenchStack

START, DAYS, CLIENTS = date(2022, 1, 1), 1096, 300
SEED = 0.42


def seed_core(stack: BenchStack, lines: int = 0) -> int:
    """Demo-sized core rows (or `lines` sales lines); returns the number of sales lines."""
    orders = (lines // 3) if lines else 40 * DAYS
    with psycopg2.connect(stack.database_url) as conn, conn.cursor() as cur:
        cur.execute("select setseed(%s)", (SEED,))
        cur.execute("insert into meta.batches (source, source_kind, target_table, source_ref, status) "
                    "values ('bench', 'bench', 'sales', 'bench/query.py', 'committed') returning batch_id")
        batch = cur.fetchone()[0]
        lineage = "%s, md5(g::text)"
        cur.execute(f"insert into core.clients (client_id, name, segment, country, created_on, _batch_id,"
                    f" _row_hash) select 'C' || g, 'Client ' || g, (array['retail','trade','online'])"
                    f"[1 + g %% 3], 'GB', %s, {lineage} from generate_series(1, %s) g", (START, batch, CLIENTS))
        cur.execute(f"insert into core.sales (order_id, line_no, order_date, client_id, product, quantity,"
                    f" unit_price, amount, currency, _batch_id, _row_hash)"
                    f" select 'SO-' || o, l, %s + (o * %s / %s), 'C' || (1 + (o * 7919) %% %s),"
                    f" 'P-' || (o %% 500), q, p, q * p, 'GBP', {lineage}"
                    f" from (select o, l, 1 + (random() * 9)::int as q,"
                    f" round((1 + random() * 400)::numeric, 2) as p, o * 4 + l as g"
                    f" from generate_series(0, %s - 1) o, generate_series(1, 1 + (o %% 4)) l) s",
                    (START, DAYS, orders, CLIENTS, batch, orders))
        cur.execute(f"insert into core.operating_costs (cost_id, cost_date, category, vendor, amount, _batch_id,"
                    f" _row_hash) select 'K' || g, %s + g %% %s, 'category ' || (g %% 8),"
                    f" 'vendor ' || (g %% 40), round((random() * 500)::numeric, 2), {lineage}"
                    f" from generate_series(1, %s) g", (START, DAYS, batch, 14 * DAYS))
        cur.execute(f"insert into core.payments (payment_id, payment_date, client_id, invoice_ref, method, amount,"
                    f" _batch_id, _row_hash) select 'PAY-' || g, %s + g %% %s,"
                    f" 'C' || (1 + g %% %s), 'INV-' || g, 'BACS', round((random() * 2000)::numeric, 2), {lineage}"
                    f" from generate_series(1, %s) g", (START, DAYS, CLIENTS, batch, 20 * DAYS))
        cur.execute("select count(*) from core.sales")
        n = cur.fetchone()[0]
    conn.close()
    stack.execute("vacuum analyze", autocommit=True)
    return n


def _refresh(url: str) -> float:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            started = time.perf_counter()
            cur.execute("call marts.refresh()")
            return time.perf_counter() - started
    finally:
        conn.close()


def random_periods(n: int, seed: int = 7) -> list[tuple[date, date]]:
    rng = random.Random(seed)
    periods = []
    for _ in range(n):
        length = rng.choice([1, 7, 30, 31, 90, 91, 182, 365, rng.randint(1, DAYS)])
        start = START + timedelta(days=rng.randint(0, DAYS - 1))
        periods.append((start, min(start + timedelta(days=length - 1), START + timedelta(days=DAYS - 1))))
    return periods


def run(stack: BenchStack, periods: int = 200, lines: int = 0, repeat: int = 3, progress=print) -> list[Result]:
    stack.execute("truncate meta.quarantine, core.clients, core.sales, core.operating_costs, core.payments, "
                  "meta.batches cascade")
    n = seed_core(stack, lines)
    progress(f"  query: {n} sales lines of {CLIENTS} clients over {DAYS} days")
    _refresh(stack.database_url)  # marts populated once; the timed refreshes below are steady-state
    refreshes = []
    for rep in range(repeat):
        refreshes.append(_refresh(stack.database_url))
        progress(f"  query rep {rep + 1}/{repeat} refresh {refreshes[-1]:.2f}s")
    conn = psycopg2.connect(stack.database_url)
    conn.autocommit = True
    chosen = random_periods(periods)
    timings = []
    with conn.cursor() as cur:
        for a, b in chosen[:20]:  # warm: plans cached, pages in shared buffers
            cur.execute("select * from marts.top_clients(%s, %s, 10)", (a, b))
            cur.fetchall()
        for a, b in chosen:
            started = time.perf_counter()
            cur.execute("select * from marts.top_clients(%s, %s, 10)", (a, b))
            cur.fetchall()
            timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    top = Result("query", "top_clients", periods, 1, round(statistics.median(timings) / 1000, 5), 0.0,
                 note=f"{periods} random periods, warm; wall_s is the median", walls=[],
                 extra={"median_ms": round(statistics.median(timings), 2),
                        "p95_ms": round(timings[int(len(timings) * 0.95) - 1], 2), "max_ms": round(timings[-1], 2),
                        "sales_lines": n})
    refresh = Result("query", "refresh", n, repeat, round(statistics.median(refreshes), 3), 0.0,
                     note="CALL marts.refresh() on demo-sized core", walls=[round(r, 3) for r in refreshes])
    blocked = _refresh_beside_reader(stack, conn, chosen)
    conn.close()
    return [top, refresh, blocked]


def _refresh_beside_reader(stack: BenchStack, conn, chosen) -> Result:
    """A reader holds a repeatable-read snapshot of the marts for 8 s; a refresh runs meanwhile, and
    top_clients keeps being asked. Neither the refresh nor the queries may wait on the reader."""
    reader = psycopg2.connect(stack.database_url)
    hold_s = 8.0
    reader_done = threading.Event()

    def long_reader() -> None:
        with reader.cursor() as cur:
            cur.execute("begin isolation level repeatable read")
            cur.execute("select count(*) from marts.client_day_sales")
            cur.execute("select pg_sleep(%s)", (hold_s,))
            cur.execute("select count(*) from marts.company_daily")
            cur.execute("commit")
        reader_done.set()

    thread = threading.Thread(target=long_reader)
    thread.start()
    time.sleep(0.5)
    result: dict[str, float] = {}
    refresher = threading.Thread(target=lambda: result.__setitem__("refresh", _refresh(stack.database_url)))
    started = time.perf_counter()
    refresher.start()
    latencies = []
    with conn.cursor() as cur:
        while refresher.is_alive():
            a, b = chosen[len(latencies) % len(chosen)]
            t0 = time.perf_counter()
            cur.execute("select * from marts.top_clients(%s, %s, 10)", (a, b))
            cur.fetchall()
            latencies.append((time.perf_counter() - t0) * 1000)
    refresher.join()
    refresh_wall = time.perf_counter() - started
    finished_before_reader = not reader_done.is_set()
    thread.join()
    reader.close()
    return Result("query", "refresh_beside_reader", 0, 1, round(result["refresh"], 3), 0.0,
                  note=f"refresh while a repeatable-read reader holds the marts {hold_s:.0f}s", walls=[],
                  extra={"finished_before_reader": finished_before_reader,
                         "queries_during_refresh": len(latencies),
                         "max_query_ms_during_refresh": round(max(latencies), 2) if latencies else None,
                         "refresh_wall_s": round(refresh_wall, 3)})
