"""The fast lane admits only values the careful lane reads the same way: never more, never otherwise."""

from __future__ import annotations

from dataclasses import replace

import pytest
from psycopg2 import sql

from pipeline.config import ReadOptions
from pipeline.model import TABLES
from pipeline.typing_sql import Mapped, fast_lane, row_hash, typed_select

pytestmark = pytest.mark.stack

# a row in canonical form of each table tried, in its columns' order
CANONICAL = {"sales": ["SO-1", "1", "2024-01-05", "C1", "Widget", "2", "10.50", "21.00", "GBP"],
             "interactions": ["I-1", "2024-01-05T10:30:00Z", "C1", "phone", "won"]}
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
    "occurred_at": ["2024-01-05T10:30:00Z", "2024-01-05 10:30", "2024-01-05T10:30:00+01:00", "2024-13-45T99:99",
                    "2024-02-30T10:30:00Z", "2024-01-05T10:30:00.5Z", "2024-01-05", "now", ""],
}
TABLE_OF = {c: "interactions" if c == "occurred_at" else "sales" for c in TRICKY}


def _lanes(db, column: str, values: list[str], unguarded: bool = False):
    """{row: typed values and hash} the fast lane admits, {row: (typed values and hash, reasons)} the careful one;
    unguarded: also {row: the fast lane's hash of it}, for every row, whether the lane admits it or not."""
    table = TABLES[TABLE_OF[column]]
    order = list(table.column_names)
    # as a source with the table's own key and positive amounts reads them: its key columns required, the
    # columns that carry a row's sign refused below zero
    mapped = [Mapped(replace(table.column(c), required=table.column(c).required or c in table.natural_key,
                             non_negative=table.column(c).non_negative or table.column(c).signed), f"c{i}", c)
              for i, c in enumerate(order)]
    lane = fast_lane(table, mapped, ReadOptions(), len(order))
    careful = typed_select(table, mapped, ReadOptions(), len(order))
    names = sql.SQL(", ").join(sql.Identifier(c) for c in order)
    with db.cursor() as cur:
        cur.execute("set local datestyle = 'ISO'; set local timezone = 'UTC'")
        cur.execute(sql.SQL("create temp table raw (_sheet text, _row bigint, {}) on commit drop").format(
            sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(f"c{i}")) for i in range(len(order)))))
        canonical, pos = CANONICAL[table.name], order.index(column)
        for n, value in enumerate(values):
            row = [*canonical[:pos], value, *canonical[pos + 1:]]
            cur.execute("insert into raw values (null, %s, {})".format(", ".join(["%s"] * len(row))), (n, *row))
        cur.execute(sql.SQL("select r._row, {}, {} from raw r where coalesce({}, false) order by 1").format(
            lane.typed, lane.row_hash, lane.guard))
        fast = {r[0]: r[1:] for r in cur.fetchall()}
        cur.execute(sql.SQL("select s._row, {}, {}, s._reasons from ({}) s order by 1").format(
            names, row_hash(table, order), careful))
        slow = {r[0]: (r[1:-1], r[-1]) for r in cur.fetchall()}
        if unguarded:
            cur.execute(sql.SQL("select r._row, {} from raw r order by 1").format(lane.row_hash))
            hashed = dict(cur.fetchall())
    db.rollback()
    return (fast, slow, hashed) if unguarded else (fast, slow)


@pytest.mark.parametrize("column", sorted(TRICKY))
def test_every_row_the_fast_lane_admits_the_careful_lane_reads_and_hashes_the_same(db, column):
    values = TRICKY[column]
    fast, slow = _lanes(db, column, values)
    for n, typed in fast.items():
        assert slow[n] == (typed, []), f"{column} {values[n]!r}: fast {typed}, careful {slow[n]}"
    # and the lane is not empty: canonical values do take it
    assert 0 in fast, f"{column} {values[0]!r} should be canonical"


def test_what_the_fast_lane_leaves_to_the_careful_one(db):
    admitted = {c: {TRICKY[c][n] for n in _lanes(db, c, TRICKY[c])[0]}
                for c in ("line_no", "order_date", "amount", "occurred_at")}
    assert admitted["line_no"] == {"1", "42", "-3", "123456789012345678"}
    assert admitted["order_date"] == {"2024-01-05"}  # 0999-01-01 is before read.earliest_date
    assert admitted["amount"] == {"21.00", "21", "0.10", "0", "0.00"}
    assert admitted["occurred_at"] == {"2024-01-05T10:30:00Z", "2024-01-05 10:30", "2024-01-05T10:30:00+01:00"}


@pytest.mark.parametrize("column", sorted(c for c in TRICKY if TABLE_OF[c] == "sales"))
def test_a_raw_row_hashes_like_a_loaded_row_only_when_it_would_load_as_that_row(db, column):
    """The fast lane's hash of a raw row, taken from its text with no value tested, equals the hash of an
    accepted row only when the careful lane accepts that raw row, as a row with that same hash: a raw row
    cannot pass for a loaded one."""
    values = TRICKY[column]
    _, slow, hashed = _lanes(db, column, values, unguarded=True)
    accepted = {typed[-1] for typed, reasons in slow.values() if not reasons}
    matching = {n for n, h in hashed.items() if h in accepted}
    for n in matching:
        typed, reasons = slow[n]
        assert not reasons and typed[-1] == hashed[n], f"{column} {values[n]!r} hashes like a loaded row"
    assert 0 in matching  # the canonical spelling is known
