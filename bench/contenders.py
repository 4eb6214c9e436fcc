"""The baselines (and the bare workbook reads), each in a process of its own so its wall time and
peak memory are its alone:

    python -m bench.contenders NAME FILE DATABASE_URL [--rows N]

Each prints one JSON line (rows loaded, inner seconds). Targets live in schema `bench`; the caller empties
them between repetitions.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time

import psycopg2

COLUMNS = ["order_id", "line_no", "order_date", "client_id", "product", "quantity", "unit_price", "amount", "currency"]
TYPED = ("order_id text, line_no bigint, order_date date, client_id text, product text, quantity bigint, "
         "unit_price numeric, amount numeric, currency text")
KEY = ("order_id", "line_no")
CHUNK = 100_000

SETUP = f"""
create schema if not exists bench;
create table if not exists bench.sales_copy ({TYPED});
create table if not exists bench.sales_pandas ({TYPED});
create table if not exists bench.sales_to_sql ({TYPED});
create table if not exists bench.sales_upsert ({TYPED}, row_hash text not null, loaded_at timestamptz not null
    default now(), updated_at timestamptz not null default now(), primary key (order_id, line_no));
-- the floor for loading core.sales: its columns, key, batch index and defaults (lineage from the batch's
-- settings), no history trigger
create table if not exists bench.sales_core (like core.sales including defaults including constraints
    including indexes);
"""
TABLES = ("bench.sales_copy", "bench.sales_pandas", "bench.sales_to_sql", "bench.sales_upsert", "bench.sales_core")


def setup(url: str) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(SETUP)
    conn.close()


def reset(url: str) -> None:
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(f"truncate {', '.join(TABLES)}; drop schema if exists bench_dlt cascade;"
                    "drop schema if exists bench_dlt_staging cascade")
    conn.commit()
    conn.close()


def _chunks(path: str, rows: int | None):
    import pandas as pd

    yield from pd.read_csv(path, chunksize=CHUNK, nrows=rows, dtype=str, keep_default_na=False)


def _copy_frame(cur, frame, table: str) -> None:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False)
    buffer.seek(0)
    cur.copy_expert(f"copy {table} ({', '.join(COLUMNS)}) from stdin with (format csv)", buffer)


def pandas_copy(path: str, url: str, rows: int | None) -> int:
    """pandas in chunks of 100k, each written by COPY into a plain typed table: no validation, no upsert."""
    conn = psycopg2.connect(url)
    n = 0
    with conn.cursor() as cur:
        for frame in _chunks(path, rows):
            _copy_frame(cur, frame, "bench.sales_pandas")
            n += len(frame)
    conn.commit()
    conn.close()
    return n


def pandas_upsert(path: str, url: str, rows: int | None) -> int:
    """pandas chunks COPYed into a temporary staging table, then one ON CONFLICT upsert with an md5 row hash."""
    conn = psycopg2.connect(url)
    n = 0
    with conn.cursor() as cur:
        cur.execute(f"create temp table staging ({TYPED}) on commit drop")
        for frame in _chunks(path, rows):
            _copy_frame(cur, frame, "staging")
            n += len(frame)
        cols = ", ".join(COLUMNS)
        sets = ", ".join(f"{c} = excluded.{c}" for c in [*COLUMNS[2:], "row_hash"])
        cur.execute(f"insert into bench.sales_upsert as t ({cols}, row_hash) "
                    f"select {cols}, md5(row({cols})::text) from staging "
                    f"on conflict (order_id, line_no) do update set {sets}, updated_at = now() "
                    "where t.row_hash is distinct from excluded.row_hash")
    conn.commit()
    conn.close()
    return n


def to_sql(path: str, url: str, rows: int | None) -> int:
    """pandas.DataFrame.to_sql with its defaults (SQLAlchemy, multi-row executemany), whole file in memory."""
    import pandas as pd
    import sqlalchemy

    frame = pd.read_csv(path, nrows=rows)
    frame.columns = COLUMNS
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    frame.to_sql("sales_to_sql", engine, schema="bench", if_exists="append", index=False)
    engine.dispose()
    return len(frame)


def dlt_merge(path: str, url: str, rows: int | None) -> int:
    """dlt: a resource with the natural key merged into postgres (its staging dataset and MERGE)."""
    import tempfile

    import dlt

    try:
        import pyarrow  # noqa: F401

        arrow = True
    except ImportError:
        arrow = False

    @dlt.resource(name="sales", primary_key=list(KEY), write_disposition="merge")
    def sales():
        for frame in _chunks(path, rows):
            frame.columns = COLUMNS
            if arrow:
                yield frame
            else:
                yield frame.to_dict("records")

    with tempfile.TemporaryDirectory(prefix="bench-dlt-") as pipelines_dir:  # its load files: 16 MB a run
        pipeline = dlt.pipeline(pipeline_name="bench_sales", destination=dlt.destinations.postgres(credentials=url),
                                dataset_name="bench_dlt", pipelines_dir=pipelines_dir)
        pipeline.run(sales(), **({"loader_file_format": "csv"} if arrow else {}))
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from bench_dlt.sales")
        n = cur.fetchone()[0]
    conn.close()
    return n


def xlsx_openpyxl(path: str, url: str, rows: int | None) -> int:
    """The bare read most scripts start with: pandas.read_excel on openpyxl, header on row 4."""
    import pandas as pd

    from bench.data import PAYMENTS_SHEET

    return len(pd.read_excel(path, sheet_name=PAYMENTS_SHEET, header=3, engine="openpyxl"))


def xlsx_calamine(path: str, url: str, rows: int | None) -> int:
    """The bare calamine read: the sheet's cells as Python values, nothing else."""
    from python_calamine import CalamineWorkbook

    from bench.data import PAYMENTS_SHEET

    workbook = CalamineWorkbook.from_path(path)
    values = workbook.get_sheet_by_name(PAYMENTS_SHEET).to_python(skip_empty_area=False)
    workbook.close()
    return len(values) - 4


CONTENDERS = {"pandas_copy": pandas_copy, "pandas_upsert": pandas_upsert, "to_sql": to_sql, "dlt": dlt_merge,
              "xlsx_openpyxl": xlsx_openpyxl, "xlsx_calamine": xlsx_calamine}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.contenders")
    p.add_argument("name", choices=sorted(CONTENDERS))
    p.add_argument("file")
    p.add_argument("url")
    p.add_argument("--rows", type=int)
    args = p.parse_args(argv)
    started = time.perf_counter()
    n = CONTENDERS[args.name](args.file, args.url, args.rows)
    print(json.dumps({"rows": n, "inner_s": round(time.perf_counter() - started, 3)}))


if __name__ == "__main__":
    main(sys.argv[1:])
