"""Synthetic core rows for the warehouse tests: awkward decimals, refunds, quiet days, a leap day.

Every row belongs to a committed meta.batches row of its own source (`synthetic_<table>`), so the rows
can be removed again by batch.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from psycopg2 import sql
from psycopg2.extras import execute_values

from pipeline.model import KEY_SEPARATOR, TABLES

SOURCE_PREFIX = "synthetic_"
FIRST_DAY = date(2021, 12, 31)     # one sale in 2021, then nothing but a cost in 2022: growth from a zero year
QUIET = (date(2024, 1, 10), date(2024, 1, 16))  # no activity at all in between (inclusive)
LEAP_DAY = date(2024, 2, 29)
TIE_DAY = date(2024, 3, 16)  # two clients sell the same amount, nobody else sells
CATEGORIES = ("rent", "payroll", "software", "travel", "utilities")

_COLUMNS = {
    "clients": ("client_id", "name", "segment", "country", "created_on"),
    "sales": ("order_id", "line_no", "order_date", "client_id", "product", "quantity", "unit_price", "amount",
              "currency"),
    "payments": ("payment_id", "payment_date", "client_id", "invoice_ref", "method", "amount"),
    "operating_costs": ("cost_id", "cost_date", "category", "vendor", "amount"),
    "tax": ("period", "tax_type", "amount", "due_date"),
    "interactions": ("interaction_id", "occurred_at", "client_id", "channel", "outcome"),
}


def _money(rng: random.Random, low: str, high: str, places: int = 4) -> Decimal:
    scale = 10 ** places
    value = rng.randint(int(Decimal(low) * scale), int(Decimal(high) * scale))
    return Decimal(value) / scale


def _busy_days(rng: random.Random, start: date, end: date) -> list[date]:
    days = []
    d = start
    while d <= end:
        if not (QUIET[0] <= d <= QUIET[1]) and (d == LEAP_DAY or rng.random() < 0.7):
            days.append(d)
        d += timedelta(days=1)
    return days


def generate(seed: int = 20240229, tag: str = "S") -> dict[str, list[tuple]]:
    """Rows per core table (without metadata). `tag` keeps natural keys apart between data sets."""
    rng = random.Random(seed)
    clients = [(f"{tag}{i:04d}", f"Client {tag}{i:04d} Ltd", rng.choice(("retail", "trade", None)), "GB",
                date(2020, 1, 1) + timedelta(days=i)) for i in range(1, 41)]
    client_ids = [c[0] for c in clients] + [f"{tag}9999"]  # one client missing from core.clients
    days = _busy_days(rng, date(2023, 11, 1), date(2024, 3, 15))
    sales = []
    for orders in range(1, 261):
        day = LEAP_DAY if orders <= 3 else rng.choice(days)
        client = rng.choice(client_ids)
        for line in range(1, rng.randint(1, 4) + 1):
            qty = rng.randint(-2, 9) or 1
            price = _money(rng, "0.0001", "999.9999")
            amount = (price * qty) if rng.random() < 0.9 else -_money(rng, "0.01", "50.005", 3)
            sales.append((f"{tag}O{orders:05d}", line, day, client, rng.choice(("tea", "jam", None)), qty, price,
                          amount, "GBP"))
    for n, client in enumerate((client_ids[2], client_ids[1]), start=1):  # a tie, on a day of its own
        sales.append((f"{tag}O9990{n}", 1, TIE_DAY, client, "jam", 7, Decimal("11.11"), Decimal("77.77"), "GBP"))
    sales.append((f"{tag}O99999", 1, FIRST_DAY, client_ids[0], "tea", 1, Decimal("10.10"), Decimal("10.10"), "GBP"))
    payments = [(f"{tag}P{i:05d}", rng.choice(days), rng.choice(client_ids), f"INV{i}", "bank",
                 _money(rng, "-20", "5000", 2) if i % 9 else Decimal("0.005")) for i in range(1, 151)]
    costs = [(f"{tag}C{i:05d}", rng.choice(days), rng.choice(CATEGORIES), f"Vendor {i % 7}",
              _money(rng, "-100", "3000", 3)) for i in range(1, 151)]
    costs.append((f"{tag}C99999", date(2022, 6, 1), "rent", "Landlord", Decimal("1234.5678")))
    tax = []
    for month in (date(2023, 11, 1), date(2023, 12, 1), date(2024, 1, 1), LEAP_DAY):  # Feb filed on its last day
        for tax_type in ("VAT", "PAYE"):
            tax.append((month, f"{tag}{tax_type}", _money(rng, "-500", "9000", 2), month + timedelta(days=30)))
    interactions = [(f"{tag}I{i:05d}", datetime.combine(rng.choice(days), datetime.min.time(), UTC)
                     + timedelta(hours=rng.randint(9, 17), minutes=rng.randint(0, 59)),
                     rng.choice(client_ids), rng.choice(("email", "phone")), "ok") for i in range(1, 121)]
    return {"clients": clients, "sales": sales, "payments": payments, "operating_costs": costs, "tax": tax,
            "interactions": interactions}


def empty_warehouse(conn) -> None:
    """Start from an empty core and ledger, so every total in a test is the test's own data."""
    tables = [("core", t) for t in _COLUMNS] + [("core", f"{t}_history") for t in _COLUMNS]
    tables += [("meta", "quarantine"), ("meta", "source_state"), ("meta", "batches")]
    with conn.cursor() as cur:
        cur.execute(sql.SQL("truncate {} cascade").format(sql.SQL(", ").join(sql.Identifier(*t) for t in tables)))
    conn.commit()


def insert(conn, rows: dict[str, list[tuple]], tag: str = "S") -> list[int]:
    """Insert the rows, one committed batch per table; returns the batch ids."""
    batch_ids = []
    with conn.cursor() as cur:
        for table, table_rows in rows.items():
            cur.execute(
                "insert into meta.batches (source, source_kind, target_table, source_ref, rows_read, rows_inserted,"
                " status, finished_at) values (%s, 'synthetic', %s, %s, %s, %s, 'committed', clock_timestamp())"
                " returning batch_id",
                (f"{SOURCE_PREFIX}{table}", table, f"tests/pipeline/synthetic_core.py#{tag}", len(table_rows),
                 len(table_rows)),
            )
            batch_id = cur.fetchone()[0]
            batch_ids.append(batch_id)
            columns = _COLUMNS[table]
            statement = sql.SQL(
                "insert into core.{} ({}, _batch_id, _source_row, _row_hash, _key) values %s"
            ).format(sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
            key = [columns.index(k) for k in TABLES[table].natural_key]
            values = [(*row, batch_id, n, f"{tag}-{n}", KEY_SEPARATOR.join(str(row[i]) for i in key))
                      for n, row in enumerate(table_rows, start=1)]
            execute_values(cur, statement.as_string(conn), values, page_size=500)
    conn.commit()
    return batch_ids


def remove(conn, batch_ids: list[int]) -> None:
    with conn.cursor() as cur:
        for table in _COLUMNS:
            cur.execute(sql.SQL("delete from core.{} where _batch_id = any(%s)").format(sql.Identifier(table)),
                        (batch_ids,))
        cur.execute("delete from meta.batches where batch_id = any(%s)", (batch_ids,))
    conn.commit()
