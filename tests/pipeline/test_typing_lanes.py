"""The fast lane admits only values the careful lane reads the same way: never more, never otherwise."""

from __future__ import annotations

import pytest
from psycopg2 import sql

from pipeline.config import ReadOptions
from pipeline.model import TABLES
from pipeline.typing_sql import Mapped, fast_lane, fast_row_hash, row_hash, typed_select

pytestmark = pytest.mark.stack

SALES = TABLES["sales"]
ORDER = ["order_id", "line_no", "order_date", "client_id", "product", "quantity", "unit_price", "amount", "currency"]
CANONICAL = ["SO-1", "1", "2024-01-05", "C1", "Widget", "2", "10.50", "21.00", "GBP"]
# what exports really hold, and what PostgreSQL's own input functions would take that the careful lane would not
TRICKY = {
    "line_no": ["1", "42", "007", "+5", " 5", "5 ", "1_000", "0x1F", "-3", "1234567890123456789", "123456789012345678",
                "", "1.0", "x"],
    "quantity": ["2", "0", "-2", "02", "+2", "2e1", ""],
    "order_date": ["2024-01-05", "2024-1-5", "2024-01-5", "20240105", "2025-02-30", "0999-01-01", "10000-01-01",
                   "2024-01-05 00:00", "2024-01-05T00:00:00", " 2024-01-05", "epoch", "today", "infinity",
                   "01/05/2024", "2024-01-05 BC", ""],
    "amount": ["21.00", "21", "0.10", "0", "0.00", "-21.00", "-0", ".5", "5.", "021.00", "+21.00", "1e3", "NaN",
               "Infinity", "-Infinity", "1_000.00", "£21.00", " 21.00", "21.00 ", "(21.00)", "12.3.4", ""],
    "unit_price": ["10.50", "1234567.891", "0.005", "-0.01", "10,50"],
}


def _lanes(db, column: str, values: list[str]):
    """{row: typed values and hash} the fast lane admits, {row: (typed values and hash, reasons)} the careful one."""
    mapped = [Mapped(SALES.column(c), f"c{i}", c) for i, c in enumerate(ORDER)]
    guard, typed = fast_lane(mapped, ReadOptions(), len(ORDER))
    careful = typed_select(SALES, mapped, ReadOptions(), len(ORDER))
    names = sql.SQL(", ").join(sql.Identifier(c) for c in ORDER)
    with db.cursor() as cur:
        cur.execute("set local datestyle = 'ISO'; set local timezone = 'UTC'")
        cur.execute(sql.SQL("create temp table raw (_sheet text, _row bigint, {}) on commit drop").format(
            sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(f"c{i}")) for i in range(len(ORDER)))))
        pos = ORDER.index(column)
        for n, value in enumerate(values):
            row = [*CANONICAL[:pos], value, *CANONICAL[pos + 1:]]
            cur.execute("insert into raw values (null, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", (n, *row))
        cur.execute(sql.SQL("select r._row, {}, {} from raw r where coalesce({}, false) order by 1").format(
            typed, fast_row_hash(SALES, mapped), guard))
        fast = {r[0]: r[1:] for r in cur.fetchall()}
        cur.execute(sql.SQL("select s._row, {}, {}, s._reasons from ({}) s order by 1").format(
            names, row_hash(SALES, ORDER), careful))
        slow = {r[0]: (r[1:-1], r[-1]) for r in cur.fetchall()}
    db.rollback()
    return fast, slow


@pytest.mark.parametrize("column", sorted(TRICKY))
def test_every_row_the_fast_lane_admits_the_careful_lane_reads_and_hashes_the_same(db, column):
    values = TRICKY[column]
    fast, slow = _lanes(db, column, values)
    for n, typed in fast.items():
        assert slow[n] == (typed, []), f"{column} {values[n]!r}: fast {typed}, careful {slow[n]}"
    # and the lane is not empty: canonical values do take it
    assert 0 in fast, f"{column} {values[0]!r} should be canonical"


def test_what_the_fast_lane_leaves_to_the_careful_one(db):
    admitted = {c: {TRICKY[c][n] for n in _lanes(db, c, TRICKY[c])[0]} for c in ("line_no", "order_date", "amount")}
    assert admitted["line_no"] == {"1", "42", "-3", "123456789012345678"}
    assert admitted["order_date"] == {"2024-01-05", "0999-01-01"}
    assert admitted["amount"] == {"21.00", "21", "0.10", "0", "0.00"}
