"""How long `CALL marts.refresh()` takes as core grows: a throwaway local stack, N synthetic sales lines.

    .venv/bin/python bench/refresh_marts.py [lines ...]     (default: 10000 100000 300000)

It starts a stack of its own (temporary state directory, free ports), so no existing data is touched.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grow(conn, lines: int, start: int) -> None:
    """Sales lines for 500 clients over five years (three lines an order), and a tenth as many costs."""
    with conn.cursor() as cur:
        cur.execute("insert into meta.batches (source, source_kind, target_table, source_ref, status) "
                    "values ('bench', 'bench', 'sales', 'bench/refresh_marts.py', 'committed') returning batch_id")
        batch_id = cur.fetchone()[0]
        cur.execute(
            "insert into core.sales (order_id, line_no, order_date, client_id, quantity, unit_price, amount,"
            " _batch_id, _row_hash)"
            " select 'B' || (g / 3), g %% 3, date '2020-01-01' + (g / 3 %% 1826), 'C' || (g / 3 %% 500), 1, 1.2345,"
            " round((random() * 1000)::numeric, 4), %s, md5(g::text)"
            " from generate_series(%s, %s) g", (batch_id, start, start + lines - 1))
        cur.execute(
            "insert into core.operating_costs (cost_id, cost_date, category, amount, _batch_id, _row_hash)"
            " select 'K' || g, date '2020-01-01' + (g %% 1826), 'category ' || (g %% 8),"
            " round((random() * 500)::numeric, 2), %s, md5(g::text)"
            " from generate_series(%s, %s) g", (batch_id, start, start + lines // 10 - 1))
    conn.commit()


def main(sizes: list[int]) -> None:
    os.environ.update({"PLAYBOOK_STATE_DIR": tempfile.mkdtemp(prefix="bench-refresh-"),
                       "PLAYBOOK_MOTO_PORT": str(_free_port()), "PLAYBOOK_PG_PORT": str(_free_port())})
    os.environ.pop("PLAYBOOK_DATABASE_URL", None)
    import psycopg2

    from pipeline.marts import refresh_marts
    from playbook.database import migrate
    from playbook.local import stack

    st = stack.current()
    url = st.up()["database_url"]
    try:
        migrate(url)
        conn = psycopg2.connect(url)
        loaded = 0
        for size in sorted(sizes):
            _grow(conn, size - loaded, loaded)
            loaded = size
            started = time.monotonic()
            rows = refresh_marts(conn)
            total = time.monotonic() - started
            marts = ", ".join(f"{r['mart']} {r['rows']} rows {r['seconds']:.2f}s" for r in rows)
            print(f"{size:>9} sales lines: refresh {total:.2f}s  ({marts})")
        conn.close()
    finally:
        st.down(delete_data=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10_000, 100_000, 300_000])
