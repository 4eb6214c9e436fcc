"""A workbook sheet reaches the raw table by two ways: fastexcel with a binary COPY, or calamine cell by
cell with a CSV COPY. Wherever the first is taken it must give exactly the rows of the second; where it
cannot be sure (mixed columns, time-only or 1900 dates, renamed headers) it must step aside."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import xlsxwriter

from pipeline.config import ReadOptions
from pipeline.model import Column, Table
from pipeline.sources import excel_arrow
from pipeline.sources.excel import ExcelReader, converter

TABLE = Table("t", (Column("ref", "text"), Column("day", "date"), Column("amount", "money"),
                    Column("qty", "integer"), Column("stamp", "timestamp", False), Column("note", "text", False),
                    Column("flag", "text", False)), ("ref",))
COLUMNS = {"ref": "Ref", "day": "Day", "amount": "Amount", "qty": "Qty", "stamp": "Stamp", "note": "Note",
           "flag": "Flag"}
HEADER = ["Ref", "Day", "Amount", "Qty", "Stamp", "Note", "Flag", "Code"]


def _plain_rows(n: int = 40) -> list[list]:
    amounts = [0.1, 12.3, 1e20, -0.0, 3.0, 1234567.891, 2.5e-7, -42.125, 99.99, 1 / 3]
    rows = []
    for i in range(n):
        rows.append([f"R-{i:03d}" if i % 7 else f"Réf ✓ {i}", dt.datetime(2024, 1, 1) + dt.timedelta(days=i * 13),
                     amounts[i % len(amounts)], float(i * 1000), dt.datetime(2023, 6, 1) + dt.timedelta(days=i),
                     "" if i % 3 else f'say "hi", {i}\nnext line\\tab', bool(i % 2), float(100 + i)])
    rows[5][3] = None  # an empty cell in a number column
    rows[6][1] = None
    return rows


def write(path, sheets: dict[str, tuple[list[str], list[list], int]], streamed: bool = False) -> None:
    """sheets: name -> (header, rows, first column); the header on row 4 under a title block, a Total row.
    streamed: written row by row as exports do, the strings inline in the sheet instead of shared."""
    wb = xlsxwriter.Workbook(str(path), {"constant_memory": streamed})
    date_fmt = wb.add_format({"num_format": "yyyy-mm-dd"})
    stamp_fmt = wb.add_format({"num_format": "yyyy-mm-dd hh:mm"})
    shaded = wb.add_format({"bg_color": "#DDDDDD"})
    for name, (header, rows, col0) in sheets.items():
        ws = wb.add_worksheet(name)
        ws.write_string(0, 0, f"{name}: payments")
        for c, title in enumerate(header):
            ws.write_string(3, col0 + c, title)
        for r, row in enumerate(rows, start=4):
            for c, value in enumerate(row):
                if value is None:
                    continue
                if isinstance(value, dt.datetime):
                    ws.write_datetime(r, col0 + c, value, stamp_fmt if value.time() != dt.time() else date_fmt)
                elif isinstance(value, dt.time):
                    ws.write_datetime(r, col0 + c, value, stamp_fmt)
                elif isinstance(value, bool):
                    ws.write_boolean(r, col0 + c, value)
                elif isinstance(value, str):
                    ws.write_string(r, col0 + c, value)
                else:
                    ws.write_number(r, col0 + c, value)
        last = 4 + len(rows)
        ws.write_string(last, col0, "Total")
        amount = [h.strip() for h in header].index("Amount")
        ws.write_number(last, col0 + amount, 123.0)
        if name == "shaded tail":
            for r in range(last + 1, last + 4):
                ws.write_blank(r, col0, None, shaded)
    wb.close()


def raw_rows(db, sheet) -> list[tuple]:
    with db.cursor() as cur:
        cur.execute("drop table if exists lane_raw")
        cur.execute("create temp table lane_raw (_sheet text, _row bigint, "
                    + ", ".join(f"c{i} text" for i in range(len(sheet.header))) + ")")
        sheet.copy(cur, "lane_raw")
        cur.execute("select * from lane_raw order by _row")
        return cur.fetchall()


def lanes(db, path, name: str):
    reader = ExcelReader(path=path, display="book.xlsx", options=ReadOptions(sheets=[name], header_row=3),
                         columns=COLUMNS, table=TABLE, required={"ref", "day", "amount", "qty"})
    arrow, _ = reader._arrow_sheet(name)
    cell = reader._calamine_sheet(reader._workbook, name)
    return arrow, cell


PLAIN = _plain_rows()


@pytest.mark.parametrize("name, header, rows, col0", [
    ("plain", HEADER, PLAIN, 0),
    ("from column C", HEADER, PLAIN, 2),
    ("shaded tail", HEADER, PLAIN, 0),
    ("dates only", HEADER, [r[:4] + [dt.datetime(2023, 1, 2)] + r[5:] for r in PLAIN], 0),
    ("blank columns", ["Ref", "", "Day", "Amount", "Qty"], [[r[0], None, r[1], r[2], r[3]] for r in PLAIN], 1),
    ("text numbers", HEADER, [r[:5] + [float(i), "x" if i == 3 else None] + r[7:] for i, r in enumerate(PLAIN)], 0),
])
@pytest.mark.parametrize("streamed", [False, True], ids=["shared strings", "inline strings"])
def test_the_arrow_lane_gives_the_rows_of_the_cell_by_cell_lane(db, tmp_path, name, header, rows, col0, streamed):
    write(tmp_path / "book.xlsx", {name: (header, rows, col0)}, streamed)
    arrow, cell = lanes(db, tmp_path / "book.xlsx", name)
    assert arrow is not None, "the arrow lane stepped aside"
    assert (arrow.header, arrow.mapping, arrow.first_row) == (cell.header, cell.mapping, cell.first_row)
    got, want = raw_rows(db, arrow), raw_rows(db, cell)
    assert len(got) == len(want) == len(rows) + 1
    assert got == want


@pytest.mark.parametrize("name, header, rows", [
    ("mixed column", HEADER, [r[:2] + ["abc" if i == 9 else r[2]] + r[3:] for i, r in enumerate(PLAIN)]),
    # fastexcel reads 'n/a' in a number column as an empty cell: the typing must see it, and reject the row
    ("na amount", HEADER, [r[:2] + ["n/a" if i == 9 else r[2]] + r[3:] for i, r in enumerate(PLAIN)]),
    ("NULL date", HEADER, [r[:1] + [" NULL " if i == 9 else r[1]] + r[2:] for i, r in enumerate(PLAIN)]),
    ("times of day", HEADER, [r[:4] + [dt.datetime(2024, 3, 1, 9, 30)] + r[5:] for r in PLAIN]),
    ("time only", HEADER, [r[:1] + [dt.time(10, 15) if i == 2 else r[1]] + r[2:] for i, r in enumerate(PLAIN)]),
    ("1900 dates", HEADER, [r[:1] + [dt.datetime(1900, 1, 15) if i == 2 else r[1]] + r[2:]
                            for i, r in enumerate(PLAIN)]),
    ("renamed header", HEADER[:7] + ["Ref"], PLAIN),
    ("spaced header", HEADER[:2] + [" Amount "] + HEADER[3:], PLAIN),
])
@pytest.mark.parametrize("streamed", [False, True], ids=["shared strings", "inline strings"])
def test_the_arrow_lane_steps_aside_where_it_cannot_be_sure(db, tmp_path, name, header, rows, streamed):
    write(tmp_path / "book.xlsx", {name: (header, rows, 0)}, streamed)
    arrow, cell = lanes(db, tmp_path / "book.xlsx", name)
    assert arrow is None
    assert len(raw_rows(db, cell)) == len(rows) + 1


def _texts(column) -> list[str | None]:
    data = column.data.tobytes()
    spans = zip(column.starts.tolist(), column.lengths.tolist(), strict=True)
    return [None if n < 0 else data[s:s + n].decode() for s, n in spans]


@pytest.mark.parametrize("kind", [None, "text", "money", "integer", "date"])
def test_numbers_are_worded_column_wise_exactly_as_cell_by_cell(kind):
    rng = np.random.default_rng(7)
    values = np.concatenate([
        rng.integers(-10**7, 10**7, 3000) / 100,  # amounts in cents, both signs
        rng.integers(0, 10**15, 500).astype(float),  # whole numbers up to 1e15
        rng.integers(0, 10**15, 500) / 100,  # cents near the top of the range
        rng.random(500) * 10.0 ** rng.integers(-8, 22, 500),  # any fraction, tiny to huge
        [0.0, -0.0, 0.005, 0.01, 0.1, 0.3, 1 / 3, 2.5e-7, 1e13, 1e13 + 0.01, 9.99e12 + 0.01, 1e16, 1e20, 45_000.0,
         45_000.5, 60.0, 2_958_465.0],
    ])
    valid = rng.random(len(values)) > 0.05
    column = excel_arrow._numbers(values, valid, kind, converter(kind))
    cells = zip(values.tolist(), valid.tolist(), strict=True)
    want = [(converter(kind)(v) or None) if ok else None for v, ok in cells]
    assert _texts(column) == want
