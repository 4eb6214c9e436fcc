"""Money keeps its last digit in every lane a row can take: amounts such as 12.07, 0.01, 1.234,57, (3,09),
£1,999.99, 0.005 and a workbook's 22.368 load as written, and the ledger's amount_in and amount_loaded are
their exact sums. Each test forces its lane (the handler's, the SQL fast lane, the careful SQL lane) and
its workbook path (fastexcel, or calamine cell by cell), and checks that the rows went that way.

Expected values are the literals written here, summed as Decimals: never anything the loader computed.
Workbooks with several sheets share one read.header_row, as real ones do, but differ above and below it:
title rows, column order and start, repeated column names, footers of several spellings in several
columns, blank rows between data rows.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
import xlsxwriter

from pipeline import loader
from pipeline.loader import BatchLoad
from pipeline.sources.excel import ExcelReader
from tests.pipeline.test_ingest_csv import HEADER, changed_source, ledger, reconciles, with_read
from tests.pipeline.test_rest_api import api, business, company  # noqa: F401 - the demo API server's fixtures

D = Decimal


# -- which lane and which workbook path took the rows --------------------------------------------------------------
@dataclass
class Taken:
    """What each lane typed, by sheet name (None for a CSV): rows the
    handler's lane typed, rows the SQL fast lane typed, rows the careful SQL lane typed (blank rows and
    footers, which it skips, included); and how each workbook sheet was read."""

    handler: dict = field(default_factory=dict)
    fast: dict = field(default_factory=dict)
    careful: dict = field(default_factory=dict)
    read: dict = field(default_factory=dict)


def force(monkeypatch, lane: str, calamine: bool = False) -> Taken:
    """Send the rows that lane's way: `handler` (canonical rows typed in the handler, the rest by the SQL
    lanes), `fast` (the handler's lane off: canonical rows by the SQL fast lane, the rest careful) or
    `careful` (no fast lane at all: every row by typing_sql.typed_select). calamine: every workbook sheet
    read cell by cell, as a sheet fastexcel cannot read exactly is. Returns what each lane took."""
    assert lane in ("handler", "fast", "careful")
    taken = Taken()
    monkeypatch.setattr(BatchLoad, "type_in_handler", lane == "handler")
    if lane == "careful":
        monkeypatch.setattr(loader, "fast_lane", lambda *args, **kwargs: None)

    handed_on = BatchLoad._handed_on

    def spy_handed_on(self, cur, sheet, mapped, stream):
        taken.handler[sheet.name] = taken.handler.get(sheet.name, 0) + stream.rows
        return handed_on(self, cur, sheet, mapped, stream)

    rest = BatchLoad._type_the_rest

    def spy_rest(self, cur, sheet, mapped, fast, done):
        taken.fast[sheet.name] = taken.fast.get(sheet.name, 0) + fast
        return rest(self, cur, sheet, mapped, fast, done)

    typed_rows = BatchLoad._typed_rows

    def spy_typed_rows(self, cur, sheet, mapped, select, hashed=False):
        typed_rows(self, cur, sheet, mapped, select, hashed)
        if not hashed:  # the careful lane's rows (the fast lane's come with their hash)
            taken.careful[sheet.name] = taken.careful.get(sheet.name, 0) + cur.rowcount

    monkeypatch.setattr(BatchLoad, "_handed_on", spy_handed_on)
    monkeypatch.setattr(BatchLoad, "_type_the_rest", spy_rest)
    monkeypatch.setattr(BatchLoad, "_typed_rows", spy_typed_rows)

    arrow, cells = ExcelReader._arrow_sheet, ExcelReader._calamine_sheet

    def spy_arrow(self, name):
        got = (None, None) if calamine else arrow(self, name)
        if got[0] is not None:
            taken.read[name] = "fastexcel"
        return got

    def spy_cells(self, workbook, name, formulas=None):
        taken.read[name] = "calamine"
        return cells(self, workbook, name, formulas)

    monkeypatch.setattr(ExcelReader, "_arrow_sheet", spy_arrow)
    monkeypatch.setattr(ExcelReader, "_calamine_sheet", spy_cells)
    return taken


def lane_split(lane: str, canonical: int, rows: int, sheet=None) -> dict:
    """What force() should record for a sheet of `rows` rows below its header (blank rows and footers
    included) of which `canonical` are accepted rows in their types' own spellings."""
    if lane == "careful":
        return {"handler": {}, "fast": {}, "careful": {sheet: rows}}
    taken = {"handler": {sheet: canonical} if lane == "handler" else {},
             "fast": {sheet: canonical} if lane == "fast" else {}}
    return {**taken, "careful": {sheet: rows - canonical} if rows > canonical else {}}


def split_of(taken: Taken) -> dict:
    return {"handler": taken.handler, "fast": taken.fast, "careful": taken.careful}


def batch_money(landing, batch_id: int) -> tuple[dict, dict]:
    """The batch's ledger, and its money sums as the ledger holds them."""
    entry = ledger(landing, batch_id)
    assert reconciles(entry), entry
    return entry, {k: entry[k] for k in ("amount_in", "amount_loaded", "amount_quarantined")}


def quarantined(landing, batch_id: int) -> list[tuple]:
    """(sheet of the ref, row) of the batch's quarantined rows."""
    return [(ref.rsplit("#", 1)[1] if "#" in ref else None, row) for ref, row in landing.query(
        "select source_ref, source_row from meta.quarantine where batch_id = %s order by source_ref, source_row",
        (batch_id,))]


# -- CSV exports -------------------------------------------------------------------------------------------------
# order, line, date, client, product, quantity, unit price, amount: every amount in its type's own spelling
CANONICAL = [
    ("SO-101", 1, "2024-01-05", "00042", "Widget", 3, "4.69", "14.07"),
    ("SO-101", 2, "2024-01-05", "00042", "Washer", 1, "0.01", "0.01"),
    ("SO-102", 1, "2024-01-06", "00043", "Cabinet", 1, "1999.99", "1999.99"),
    ("SO-103", 1, "2024-01-07", "00044", "Rivet", 1, "0.005", "0.005"),
    ("SO-103", 2, "2024-01-07", "00044", "Bolt", 7, "3.19", "22.33"),
    ("SO-104", 1, "2024-01-08", "00045", "Hinge", 1, "12.07", "12.07"),
    ("SO-105", 1, "2024-01-09", "00046", "Kit", 2, "617.285", "1234.57"),
    ("SO-106", 1, "2024-01-09", "00046", "Tape", 3, "0.15", "0.45"),
    ("SO-107", 1, "2024-01-10", "00047", "Glue", 1, "22.368", "22.368"),
    ("SO-108", 1, "2024-01-10", "00047", "Pin", 9, "0.111", "0.999"),
]
CANONICAL_TOTAL = D("3306.862")  # 14.07 + 0.01 + 1999.99 + 0.005 + 22.33 + 12.07 + 1234.57 + 0.45 + 22.368 + 0.999


def csv_body(rows) -> bytes:
    """The export of these lines, each in pounds."""
    return (HEADER + "".join(",".join(str(v) for v in (*row, "GBP")) + "\n" for row in rows)).encode()


def sales_rows(landing, batch_id: int) -> list[tuple]:
    return landing.query("select order_id, line_no, unit_price, amount, _source_row from core.sales "
                         "where _batch_id = %s order by order_id, line_no", (batch_id,))


def preload_sales(landing) -> None:
    """A table that already holds a row (another key): the batch is staged and merged, not put straight in."""
    landing.ingest("landing/sales/2024/before.csv", csv_body([("SO-001", 1, "2024-01-02", "00042", "Nut", 1,
                                                               "0.07", "0.07")]))


@pytest.mark.parametrize("into", ["empty", "loaded"])
@pytest.mark.parametrize("lane", ["handler", "fast", "careful"])
def test_canonical_csv_amounts_keep_their_last_digit_in_every_lane(landing, monkeypatch, lane, into):
    """An export whose amounts are all in numeric's own spelling, each ending in a non-zero digit, two and
    three decimals: typed in the handler (its lane on), by the SQL fast lane (the handler's lane off) or by
    the careful lane (no fast lane), into an empty table (straight in, but for the careful lane, which always
    stages) or one holding rows (staged). Every unit price and amount loads as written, on its own line;
    amount_in and amount_loaded are their exact sum."""
    if into == "loaded":
        preload_sales(landing)
    taken = force(monkeypatch, lane)
    result = landing.ingest(f"landing/sales/2024/digits-{lane}.csv", csv_body(CANONICAL))
    batch = result["batch_id"]
    assert sales_rows(landing, batch) == [(o, n, D(p), D(a), row) for row, (o, n, _, _, _, _, p, a)
                                          in enumerate(CANONICAL, start=2)]
    entry, money = batch_money(landing, batch)
    assert sum(D(r[7]) for r in CANONICAL) == CANONICAL_TOTAL
    assert money == {"amount_in": CANONICAL_TOTAL, "amount_loaded": CANONICAL_TOTAL, "amount_quarantined": 0}
    assert (entry["rows_read"], entry["rows_inserted"], entry["rows_skipped"]) == (10, 10, 0)
    assert split_of(taken) == lane_split(lane, 10, 10)


# (line, the values as the export spells them, the unit price and amount they are; None: not a number)
SPELLED = [
    (2, "SO-201,1,2024-01-05,00042,Widget,3,£4.69,£14.07,GBP", D("4.69"), D("14.07")),
    (3, "SO-201,2,2024-01-05,00042,Washer,1, 0.01 ,0.01 GBP,GBP", D("0.01"), D("0.01")),
    (4, "SO-202,1,2024-01-06,00043,Cabinet,1,+1999.99,1999.99 ,GBP", D("1999.99"), D("1999.99")),
    (5, "SO-203,1,2024-1-7,00044,Rivet,1,0.005,0.005,GBP", D("0.005"), D("0.005")),
    (6, "SO-203,2,2024-01-07,00044,Bolt,7,3.19,(22.33),GBP", D("3.19"), D("-22.33")),  # negative: quarantined
    (7, "SO-204,1,2024-01-08,00045,Hinge,1,12.07,12.07-,GBP", D("12.07"), D("-12.07")),  # negative: quarantined
    (8, "SO-205,1,2024-01-09,00046,Kit,002,617.285,£1234.57,GBP", D("617.285"), D("1234.57")),
    (9, "SO-206,1,2024-01-09,00046,Tape,3,0.15,$0.45,GBP", D("0.15"), None),  # another currency: refused
    (10, ",,,,,,,,", None, None),  # blank
    (11, "SO-207,1,2024-01-10,00047,Glue,1,22.368,+22.368,GBP", D("22.368"), D("22.368")),
    (12, "Total,,,,,,,3249.28,", None, None),  # footer
]
SPELLED_LOADED = {2: D("14.07"), 3: D("0.01"), 4: D("1999.99"), 5: D("0.005"), 8: D("1234.57"), 11: D("22.368")}


@pytest.mark.parametrize("into", ["empty", "loaded"])
@pytest.mark.parametrize("handler_lane", [True, False], ids=["handler-on", "handler-off"])
def test_amounts_only_the_careful_lane_reads_keep_their_last_digit(landing, monkeypatch, handler_lane, into):
    """Every row of this export needs the careful lane: currency signs and codes, padding, a plus sign, a
    date or quantity not in its own spelling, negatives as (22.33) and 12.07-. Whether the handler's lane
    looks at the rows first or not, it takes none; the careful lane loads each amount to its last digit, and
    the ledger's amount_in holds the quarantined negatives exactly too (the refused $0.45 is no amount)."""
    if into == "loaded":
        preload_sales(landing)
    taken = force(monkeypatch, "handler" if handler_lane else "fast")
    positive = changed_source(landing.config, "sales", amounts="positive")  # negatives are refused
    result = landing.ingest("landing/sales/2024/spelled.csv", (HEADER + "".join(s + "\n" for _, s, _, _ in SPELLED)
                                                               ).encode(), config=positive)
    batch = result["batch_id"]
    rows = sales_rows(landing, batch)
    assert [(r[4], r[3]) for r in rows] == sorted(SPELLED_LOADED.items())
    assert {r[4]: r[2] for r in rows} == {line: price for line, _, price, _ in SPELLED if line in SPELLED_LOADED}
    assert quarantined(landing, batch) == [(None, 6), (None, 7), (None, 9)]
    entry, money = batch_money(landing, batch)
    loaded = D("14.07") + D("0.01") + D("1999.99") + D("0.005") + D("1234.57") + D("22.368")
    assert money == {"amount_in": loaded - D("22.33") - D("12.07"), "amount_loaded": loaded,
                     "amount_quarantined": D("-34.40")}
    assert (entry["rows_read"], entry["rows_inserted"], entry["rows_quarantined"], entry["rows_skipped"]) == (
        9, 6, 3, 2)
    assert split_of(taken) == {"handler": {None: 0} if handler_lane else {}, "fast": {} if handler_lane else {None: 0},
                               "careful": {None: 11}}


def test_thousands_separators_and_currency_signs_keep_the_last_digit(landing, monkeypatch):
    """A source that groups thousands (read.thousands ','), which only the careful lane reads: £1,999.99,
    1,234.57, 1,000,000.01 and 0.01 load as written; a negative (9.27) is quarantined and counted in
    amount_in exactly; a grouping that is not one (1,23.45) is no amount at all."""
    taken = force(monkeypatch, "handler")  # on: the layout sends every row to the careful lane anyway
    config = changed_source(with_read(landing.config, "sales", thousands=","), "sales", amounts="positive")
    body = (HEADER
            + 'SO-301,1,2024-01-05,00042,Cabinet,1,"£1,999.99","£1,999.99",GBP\n'
            + 'SO-301,2,2024-01-05,00042,Kit,2,617.285,"1,234.57",GBP\n'
            + 'SO-302,1,2024-01-06,00043,Press,1,"1,000,000.01","1,000,000.01",GBP\n'
            + "SO-302,2,2024-01-06,00043,Washer,1,0.01,0.01,GBP\n"
            + 'SO-303,1,2024-01-07,00044,Bolt,3,3.09,"(9.27)",GBP\n'
            + 'SO-303,2,2024-01-07,00044,Odd,1,3.09,"1,23.45",GBP\n'
            + 'Total,,,,,,,"1,003,244.84",\n').encode()
    result = landing.ingest("landing/sales/2024/thousands.csv", body, config=config)
    batch = result["batch_id"]
    assert sales_rows(landing, batch) == [
        ("SO-301", 1, D("1999.99"), D("1999.99"), 2), ("SO-301", 2, D("617.285"), D("1234.57"), 3),
        ("SO-302", 1, D("1000000.01"), D("1000000.01"), 4), ("SO-302", 2, D("0.01"), D("0.01"), 5)]
    assert quarantined(landing, batch) == [(None, 6), (None, 7)]
    entry, money = batch_money(landing, batch)
    loaded = D("1999.99") + D("1234.57") + D("1000000.01") + D("0.01")
    assert money == {"amount_in": loaded - D("9.27"), "amount_loaded": loaded, "amount_quarantined": D("-9.27")}
    assert (entry["rows_read"], entry["rows_inserted"], entry["rows_skipped"]) == (6, 4, 1)
    assert split_of(taken) == {"handler": {}, "fast": {}, "careful": {None: 7}}


COSTS_HEADER = "Expense ID;Date;Category;Supplier;Amount\n"
# (line, record, amount it is; None: not a number for this source) - decimal comma, thousands '.', day first
COSTS = [
    (2, "EX-1;03/01/2024;Rent;Harbour Estates;1.234,57", D("1234.57")),
    (3, "EX-2;04/01/2024;Bank;Harbour Bank;0,01", D("0.01")),
    (4, "EX-3;05/01/2024;IT;Byte Co;12,07", D("12.07")),
    (5, "EX-4;06/01/2024;IT;Byte Co;(3,09)", D("-3.09")),  # negative: quarantined
    (6, "EX-5;07/01/2024;Travel;Rail Co;£1.999,99", D("1999.99")),
    (7, "EX-6;08/01/2024;Office;Paper Ltd;0,005", D("0.005")),
    (8, "EX-7;09/01/2024;Office;Paper Ltd;579,68 GBP", D("579.68")),
    (9, "EX-8;10/01/2024;Fit-out;Build Co;1.000.000,01", D("1000000.01")),
    (10, "EX-9;11/01/2024;Office;Paper Ltd;1,234.57", None),  # the other convention: refused, never 1.23457
    (11, ";;;;", None),  # blank
    (12, "EX-10;12/01/2024;Office;Paper Ltd;22,368", D("22.368")),
    (13, "Total;;;;1.003.826,73", None),  # footer
]


@pytest.mark.parametrize("into", ["empty", "loaded"])
def test_decimal_comma_amounts_keep_their_last_digit(landing, monkeypatch, into):
    """The semicolon export with decimal commas, thousands dots and day-first dates (playbook.yaml's
    operating_costs), which only the careful lane reads: 1.234,57, 0,01, (3,09), £1.999,99, 0,005, 579,68 GBP,
    1.000.000,01 and 22,368 are those amounts to the last digit, in core and in the ledger."""
    if into == "loaded":
        landing.ingest("landing/costs/2024/before.csv", (COSTS_HEADER + "EX-0;02/01/2024;Rent;Harbour;0,07\n").encode())
    taken = force(monkeypatch, "handler")  # on: the layout sends every row to the careful lane anyway
    result = landing.ingest("landing/costs/2024/digits.csv", (COSTS_HEADER + "".join(r + "\n" for _, r, _ in COSTS)
                                                              ).encode())
    batch = result["batch_id"]
    rows = landing.query("select cost_id, cost_date::text, amount, _source_row from core.operating_costs "
                         "where _batch_id = %s order by _source_row", (batch,))
    accepted = [(line, record, amount) for line, record, amount in COSTS if amount is not None and amount > 0]
    assert [(r[0], r[2], r[3]) for r in rows] == [(rec.split(";")[0], amount, line) for line, rec, amount in accepted]
    assert [r[1] for r in rows][:3] == ["2024-01-03", "2024-01-04", "2024-01-05"]
    assert quarantined(landing, batch) == [(None, 5), (None, 10)]
    entry, money = batch_money(landing, batch)
    loaded = (D("1234.57") + D("0.01") + D("12.07") + D("1999.99") + D("0.005") + D("579.68") + D("1000000.01")
              + D("22.368"))
    assert sum(amount for _, _, amount in accepted) == loaded
    assert money == {"amount_in": loaded - D("3.09"), "amount_loaded": loaded, "amount_quarantined": D("-3.09")}
    assert (entry["rows_read"], entry["rows_inserted"], entry["rows_quarantined"], entry["rows_skipped"]) == (
        10, 8, 2, 2)
    assert split_of(taken) == {"handler": {}, "fast": {}, "careful": {None: 12}}


# -- workbooks ---------------------------------------------------------------------------------------------------
# A payment line: ref, day, client, the amount cell (a float is a number cell, a str a text cell), what it is
# (None: no amount), and whether the row loads.
@dataclass(frozen=True)
class Pay:
    ref: str
    amount: float | str
    value: Decimal | None
    loads: bool = True
    day: dt.date = dt.date(2024, 1, 3)
    client: str = "00042"


@dataclass(frozen=True)
class Footer:
    label: str
    column: str = "Payment Ref"  # the header whose column holds the label


BLANK = None


@dataclass
class SheetSpec:
    """A payments sheet: `titles` (row -> text, above the header, in column A), the header on row 4 from
    column `col0` (names may repeat: the first is the one mapped), then `lines` from row 5."""

    name: str
    header: list[str]
    lines: list
    titles: dict[int, str] = field(default_factory=dict)
    col0: int = 0
    hidden: bool = False

    def data_rows(self) -> list[tuple[int, Pay]]:
        """(spreadsheet row, line) of each payment line."""
        return [(5 + i, line) for i, line in enumerate(self.lines) if isinstance(line, Pay)]


STANDARD = ["Payment Ref", "Date Received", "Client Code", "Invoice", "Method", "Amount"]
DIGITS_17 = {"22.368": "22.368000000000002", "0.3": "0.30000000000000004"}  # as another program saves them


def cell_values(header: list[str], line: Pay) -> list:
    values, seen = [], set()
    for name in header:
        again = name in seen
        seen.add(name)
        values.append({
            "Payment Ref": line.ref, "Date Received": line.day, "Client Code": line.client,
            "Invoice": f"INV-{line.ref}", "Method": "BACS",
            # a second Amount column (the original currency's) is never the one loaded
            "Amount": 99.01 if again else line.amount, "Notes": "second note" if again else "note",
        }.get(name))
    return values


def book(sheets: list[SheetSpec]) -> bytes:
    """The workbook, number cells as Excel stores them (22.368 and 0.3 with their 17 digits)."""
    buffer = io.BytesIO()
    wb = xlsxwriter.Workbook(buffer, {"in_memory": True})
    date_fmt = wb.add_format({"num_format": "dd/mm/yyyy"})
    for spec in sheets:
        ws = wb.add_worksheet(spec.name)
        for row, text in spec.titles.items():
            ws.write_string(row, 0, text)
        for c, name in enumerate(spec.header):
            ws.write_string(3, spec.col0 + c, name)
        amount_col = spec.col0 + spec.header.index("Amount")
        letter = chr(ord("A") + amount_col)
        for i, line in enumerate(spec.lines):
            r = 4 + i
            if isinstance(line, Pay):
                for c, value in enumerate(cell_values(spec.header, line)):
                    if isinstance(value, dt.date):
                        ws.write_datetime(r, spec.col0 + c, dt.datetime.combine(value, dt.time()), date_fmt)
                    elif isinstance(value, str):
                        ws.write_string(r, spec.col0 + c, value)
                    elif value is not None:
                        ws.write_number(r, spec.col0 + c, value)
            elif isinstance(line, Footer):
                ws.write_string(r, spec.col0 + spec.header.index(line.column), line.label)
                ws.write_formula(r, amount_col, f"=SUM({letter}5:{letter}{r})", None, 1234.56)
        if spec.hidden:
            ws.hide()
    wb.close()
    return _stored_as(buffer.getvalue(), DIGITS_17)


def _stored_as(body: bytes, digits: dict[str, str]) -> bytes:
    """The workbook with these number cells' stored text replaced (xlsxwriter writes 16 digits at most)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(body)) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.startswith("xl/worksheets/"):
                for short, full in digits.items():
                    data = re.sub(rf"<v>{re.escape(short)}</v>".encode(), f"<v>{full}</v>".encode(), data)
            zout.writestr(item, data)
    return out.getvalue()


def payment_rows(landing, batch_id: int) -> list[tuple]:
    """(sheet of the ref, row, payment id, client, amount) of the batch's rows, by sheet and row."""
    rows = landing.query("select _source_ref, _source_row, payment_id, client_id, amount from core.payments_lineage "
                         "where _batch_id = %s", (batch_id,))
    return sorted((ref.rsplit("#", 1)[1], row, pid, client, amount) for ref, row, pid, client, amount in rows)


def expected_rows(sheets: list[SheetSpec]) -> list[tuple]:
    return sorted((s.name, row, p.ref, p.client, p.value) for s in sheets for row, p in s.data_rows() if p.loads)


def expected_quarantine(sheets: list[SheetSpec]) -> list[tuple]:
    return sorted((s.name, row) for s in sheets for row, p in s.data_rows() if not p.loads)


def expected_money(sheets: list[SheetSpec]) -> dict:
    lines = [p for s in sheets for _, p in s.data_rows()]
    loaded = sum((p.value for p in lines if p.loads), D(0))
    refused = sum((p.value for p in lines if not p.loads and p.value is not None), D(0))
    return {"amount_in": loaded + refused, "amount_loaded": loaded, "amount_quarantined": refused}


def lines_below(spec: SheetSpec) -> int:
    return len(spec.lines)


def canonical_rows(spec: SheetSpec) -> int:
    """Accepted lines whose every cell the sheet's reader words in its type's own spelling (number cells)."""
    return sum(1 for _, p in spec.data_rows() if p.loads and isinstance(p.amount, float))


NUMBER_CELLS = SheetSpec("Payments - Barclays", STANDARD, [
    Pay("P-1", 12.07, D("12.07")), Pay("P-2", 0.01, D("0.01")), Pay("P-3", 1999.99, D("1999.99")),
    Pay("P-4", 0.005, D("0.005")), Pay("P-5", 22.368, D("22.368")), Pay("P-6", 1234.57, D("1234.57")),
    Pay("P-7", 0.3, D("0.3")), Pay("P-8", 4.51, D("4.51"), client="007"), Pay("P-9", 99.99, D("99.99")),
    Pay("P-10", -3.09, D("-3.09"), loads=False), Footer("Total")],
    titles={0: "Barclays: received payments", 1: "Prepared by finance"})


@pytest.mark.parametrize("into", ["empty", "loaded"])
@pytest.mark.parametrize("lane", ["handler", "fast", "careful"])
def test_workbook_number_cells_keep_their_last_digit_through_fastexcel(landing, monkeypatch, lane, into):
    """A payments sheet of number cells (12.07, 0.01, 0.005, 22.368 stored as 22.368000000000002, 0.3 stored
    as 0.30000000000000004, ...), read by fastexcel and typed in the handler, by the SQL fast lane or by the
    careful lane, straight into an empty table or staged: each amount is the one Excel shows, to its last
    digit, on its own spreadsheet row; the negative one is quarantined, in amount_in exactly."""
    if into == "loaded":
        landing.ingest("landing/payments/2024/before.xlsx", book([SheetSpec("Payments", STANDARD, [
            Pay("P-0", 0.07, D("0.07"))])]))
    taken = force(monkeypatch, lane)
    result = landing.ingest(f"landing/payments/2024/cells-{lane}.xlsx", book([NUMBER_CELLS]))
    batch = result["batch_id"]
    assert taken.read == {NUMBER_CELLS.name: "fastexcel"}
    assert payment_rows(landing, batch) == expected_rows([NUMBER_CELLS])
    assert quarantined(landing, batch) == [(NUMBER_CELLS.name, 14)]
    entry, money = batch_money(landing, batch)
    loaded = (D("12.07") + D("0.01") + D("1999.99") + D("0.005") + D("22.368") + D("1234.57") + D("0.3") + D("4.51")
              + D("99.99"))
    assert loaded == D("3373.813")
    assert money == {"amount_in": loaded - D("3.09"), "amount_loaded": loaded, "amount_quarantined": D("-3.09")
                     } == expected_money([NUMBER_CELLS])
    assert (entry["rows_read"], entry["rows_inserted"], entry["rows_quarantined"], entry["rows_skipped"]) == (
        10, 9, 1, 1)
    assert split_of(taken) == lane_split(lane, 9, 11, NUMBER_CELLS.name)


MIXED_COLUMN = SheetSpec("Payments - HSBC", STANDARD, [
    Pay("P-21", 12.07, D("12.07")), Pay("P-22", "0.01", D("0.01")), Pay("P-23", "£1999.99", D("1999.99")),
    Pay("P-24", " 3.09 ", D("3.09")), Pay("P-25", 22.368, D("22.368")), Pay("P-26", "(4.51)", D("-4.51"), loads=False),
    BLANK, Pay("P-27", "0.005", D("0.005")), Pay("P-28", 1234.57, D("1234.57")), Footer("TOTAL:")],
    titles={0: "HSBC"})


@pytest.mark.parametrize("lane", ["fast", "careful"])
def test_a_mixed_amount_column_read_cell_by_cell_keeps_the_last_digit(landing, monkeypatch, lane):
    """An Amount column of numbers and text ('0.01', '£1999.99', ' 3.09 ', '(4.51)'), which fastexcel cannot
    read exactly: calamine reads it cell by cell; its canonical rows take the SQL fast lane, or the careful
    lane when there is none, the rest the careful lane. Every amount to its last digit."""
    taken = force(monkeypatch, lane)
    result = landing.ingest(f"landing/payments/2024/mixed-{lane}.xlsx", book([MIXED_COLUMN]))
    batch = result["batch_id"]
    assert taken.read == {MIXED_COLUMN.name: "calamine"}
    assert payment_rows(landing, batch) == expected_rows([MIXED_COLUMN])
    assert quarantined(landing, batch) == [(MIXED_COLUMN.name, 10)]
    loaded = D("12.07") + D("0.01") + D("1999.99") + D("3.09") + D("22.368") + D("0.005") + D("1234.57")
    entry, money = batch_money(landing, batch)
    assert money == {"amount_in": loaded - D("4.51"), "amount_loaded": loaded, "amount_quarantined": D("-4.51")
                     } == expected_money([MIXED_COLUMN])
    assert (entry["rows_read"], entry["rows_inserted"], entry["rows_skipped"]) == (8, 7, 2)
    # the number cells and the text '0.01', '0.005' are canonical; the fast lane takes them when there is one
    assert split_of(taken) == lane_split(lane, 5, 10, MIXED_COLUMN.name)


def test_decimal_comma_workbooks_keep_the_last_digit_on_both_paths(landing, monkeypatch):
    """A source that writes decimal commas (read.decimal ',', read.thousands '.'): its number cells are
    numbers whatever the separators, worded with a comma for the careful lane; its text cells '1.234,57',
    '(3,09)', '£1.999,99', '0,005' are read with the settings. One sheet of number cells through fastexcel,
    one with a mixed column through calamine: the careful lane types both, every amount to its last digit."""
    taken = force(monkeypatch, "handler")  # on: the layout sends every row to the careful lane anyway
    config = with_read(landing.config, "payments", decimal=",", thousands=".")
    numbers = SheetSpec("Payments - Numbers", STANDARD, [
        Pay("C-1", 12.07, D("12.07")), Pay("C-2", 0.01, D("0.01")), Pay("C-3", 22.368, D("22.368")),
        Pay("C-4", 1234.57, D("1234.57")), Pay("C-5", -3.09, D("-3.09"), loads=False), Footer("Total")])
    texts = SheetSpec("Payments - Texts", STANDARD, [
        Pay("T-1", "1.234,57", D("1234.57")), Pay("T-2", "(3,09)", D("-3.09"), loads=False),
        Pay("T-3", "£1.999,99", D("1999.99")), Pay("T-4", "0,005", D("0.005")), Pay("T-5", 0.01, D("0.01")),
        Pay("T-6", "1,234.57", None, loads=False), Footer("Grand total")])
    result = landing.ingest("landing/payments/2024/comma.xlsx", book([numbers, texts]), config=config)
    batch = result["batch_id"]
    assert taken.read == {numbers.name: "fastexcel", texts.name: "calamine"}
    assert payment_rows(landing, batch) == expected_rows([numbers, texts])
    assert quarantined(landing, batch) == [(numbers.name, 9), (texts.name, 6), (texts.name, 10)]
    loaded = D("12.07") + D("0.01") + D("22.368") + D("1234.57") + D("1234.57") + D("1999.99") + D("0.005") + D("0.01")
    entry, money = batch_money(landing, batch)
    assert money == {"amount_in": loaded - D("6.18"), "amount_loaded": loaded, "amount_quarantined": D("-6.18")
                     } == expected_money([numbers, texts])
    assert (entry["rows_read"], entry["rows_inserted"], entry["rows_quarantined"], entry["rows_skipped"]) == (
        11, 8, 3, 2)
    assert split_of(taken) == {"handler": {}, "fast": {}, "careful": {numbers.name: 6, texts.name: 7}}


# Several sheets under one read.header_row (row 4), as real workbooks differ above and below it.
SHEETS = [
    # two title rows and a blank one above the header; a blank row between data rows; 'Total' in column A
    SheetSpec("Payments - Barclays", STANDARD, [
        Pay("B-1", 12.07, D("12.07")), Pay("B-2", 0.01, D("0.01")), BLANK, Pay("B-3", 1999.99, D("1999.99")),
        Pay("B-4", 4.51, D("4.51"), client="007"), Footer("Total")],
        titles={0: "Barclays: received payments", 1: "Prepared by finance"}),
    # nothing above the header; the table from column B, columns in another order and an unmapped one;
    # 'TOTAL:' in the sheet's column B
    SheetSpec("Payments - HSBC", ["Payment Ref", "Method", "Amount", "Date Received", "Client Code", "Invoice",
                                  "Notes"], [
        Pay("H-1", 0.005, D("0.005")), Pay("H-2", 22.368, D("22.368")), Pay("H-3", 1234.57, D("1234.57")),
        Footer("TOTAL:")], col0=1),
    # a title, and a subtitle just above the header; Amount before Payment Ref; two blank rows between data
    # rows; a negative amount (quarantined); 'Grand total' in the second column, the first one empty
    SheetSpec("Payments - Lloyds", ["Date Received", "Payment Ref", "Client Code", "Amount", "Method", "Invoice"], [
        Pay("L-1", 0.3, D("0.3")), BLANK, BLANK, Pay("L-2", 617.29, D("617.29")),
        Pay("L-3", -3.09, D("-3.09"), loads=False), Pay("L-4", 99.99, D("99.99")), Footer("Grand total")],
        titles={0: "Lloyds", 2: "Account 20-00-00 12345678: statement lines"}),
    # a title; no footer at all, the data simply ends
    SheetSpec("Payments - Santander", STANDARD, [
        Pay("S-1", 0.07, D("0.07")), Pay("S-2", 45.13, D("45.13")), Pay("S-3", 0.999, D("0.999"))],
        titles={0: "Santander"}),
    # a repeated column name: two Amount columns (the second in the card's currency) and two Notes; the
    # first Amount is the one loaded
    SheetSpec("Payments - Amex", ["Payment Ref", "Date Received", "Client Code", "Invoice", "Method", "Amount",
                                  "Amount", "Notes", "Notes"], [
        Pay("A-1", 8.13, D("8.13")), Pay("A-2", 0.11, D("0.11")), Footer("Total")],
        titles={1: "Amex (converted at the statement's rate)"}),
    # neither of these is read: no name match, or hidden
    SheetSpec("Summary", STANDARD, [Pay("X-1", 5.55, D("5.55"))]),
    SheetSpec("Payments - Old", STANDARD, [Pay("X-2", 6.66, D("6.66"))], hidden=True),
]
READ = [s for s in SHEETS if s.name.startswith("Payments") and not s.hidden]


@pytest.mark.parametrize(("path", "lane"), [("fastexcel", "handler"), ("fastexcel", "fast"), ("fastexcel", "careful"),
                                            ("calamine", "fast"), ("calamine", "careful")])
def test_sheets_that_differ_above_and_below_one_header_row_load_row_for_row(landing, monkeypatch, path, lane):
    """Five payment sheets read under one read.header_row (row 4): titles of none to three rows above it, a
    table from column B, columns in other orders, an unmapped column, a repeated column name (the first
    Amount is loaded), footers 'Total', 'TOTAL:' and 'Grand total' in column A, in the sheet's column B and
    in the table's second column, a sheet with no footer, blank rows between data rows. Through fastexcel
    (but for the sheet whose repeated names it renames, read cell by cell) or every sheet through calamine,
    each lane: every row lands on its sheet and spreadsheet row with its amount to the last digit; footers
    and blank rows are skipped, hidden and unmatched sheets ignored."""
    taken = force(monkeypatch, lane, calamine=path == "calamine")
    result = landing.ingest(f"landing/payments/2024/sheets-{path}-{lane}.xlsx", book(SHEETS))
    batch = result["batch_id"]
    assert taken.read == {s.name: "calamine" if path == "calamine" or s.name == "Payments - Amex" else "fastexcel"
                          for s in READ}
    assert payment_rows(landing, batch) == expected_rows(READ)
    assert payment_rows(landing, batch)[:3] == [
        ("Payments - Amex", 5, "A-1", "00042", D("8.13")), ("Payments - Amex", 6, "A-2", "00042", D("0.11")),
        ("Payments - Barclays", 5, "B-1", "00042", D("12.07"))]
    assert [r[1:] for r in payment_rows(landing, batch) if r[0] == "Payments - Lloyds"] == [
        (5, "L-1", "00042", D("0.3")), (8, "L-2", "00042", D("617.29")), (10, "L-4", "00042", D("99.99"))]
    assert quarantined(landing, batch) == [("Payments - Lloyds", 9)]
    entry, money = batch_money(landing, batch)
    loaded = (D("12.07") + D("0.01") + D("1999.99") + D("4.51") + D("0.005") + D("22.368") + D("1234.57") + D("0.3")
              + D("617.29") + D("99.99") + D("0.07") + D("45.13") + D("0.999") + D("8.13") + D("0.11"))
    assert money == {"amount_in": loaded - D("3.09"), "amount_loaded": loaded, "amount_quarantined": D("-3.09")
                     } == expected_money(READ)
    # 16 payment lines; skipped: 4 footers and 3 blank rows
    assert (entry["rows_read"], entry["rows_inserted"], entry["rows_quarantined"], entry["rows_skipped"]) == (
        16, 15, 1, 7)
    handler_sheets = [s for s in READ if lane == "handler" and taken.read[s.name] == "fastexcel"]
    fast_sheets = [s for s in READ if lane == "fast" or (lane == "handler" and s not in handler_sheets)]
    assert split_of(taken) == {
        "handler": {s.name: canonical_rows(s) for s in handler_sheets},
        "fast": {s.name: canonical_rows(s) for s in fast_sheets},
        "careful": {s.name: lines_below(s) - (canonical_rows(s) if lane != "careful" else 0) for s in READ
                    if lane == "careful" or lines_below(s) > canonical_rows(s)}}


# -- a REST API window ---------------------------------------------------------------------------------------------
# (order, line, day, unit price as the JSON has it, line total as the JSON has it, the amount it is): numbers
# are JSON numbers, quoted ones JSON strings
API_LINES = [
    ("SO-901", 1, "2024-01-05", "4.69", "14.07", D("14.07")),
    ("SO-901", 2, "2024-01-05", "0.01", "0.01", D("0.01")),
    ("SO-902", 1, "2024-01-06", "1999.99", "1999.99", D("1999.99")),
    ("SO-903", 1, "2024-01-07", "0.005", "0.005", D("0.005")),
    ("SO-903", 2, "2024-01-07", "3.19", "2.233E1", D("22.33")),
    ("SO-904", 1, "2024-01-08", "12.070", "12.070", D("12.07")),
    ("SO-905", 1, "2024-01-09", "617.285", '"£1234.57"', D("1234.57")),
    ("SO-906", 1, "2024-01-09", "22.368", "22.368", D("22.368")),
    ("SO-907", 1, "2024-01-10", "3.09", "-3.09", D("-3.09")),  # negative: quarantined
    ("SO-908", 1, "2024-01-10", "12.07", '"12.07 "', D("12.07")),
]
API_OUTSIDE = ("SO-999", 1, "2024-01-20", "7.77", "7.77", D("7.77"))  # after the window


def api_orders(lines) -> object:
    from playbook.demo.api_server import Resource

    keys, bodies = [], []
    for order, line, day, price, total, _ in lines:
        keys.append(f"{day}T17:00:00Z")
        bodies.append(f'{{"order_id": "{order}", "line": {line}, "order_date": "{day}", '
                      f'"customer": {{"code": "00042", "name": "Harbour Cafe"}}, "product": "Widget", "quantity": 1, '
                      f'"unit_price": {price}, "line_total": {total}, "currency": "GBP", '
                      f'"updated_at": "{day}T17:00:00Z"}}')
        json.loads(bodies[-1])  # valid JSON, its numbers as written
    return Resource(keys, bodies, "order_id")


@pytest.mark.parametrize("lane", ["fast", "careful"])
def test_an_api_window_keeps_the_last_digit_of_json_numbers(request, monkeypatch, lane):
    """The demo business API serving order lines whose JSON numbers end in a non-zero digit (14.07, 0.01,
    0.005, 2.233E1, 12.070, 22.368), two as strings ('£1234.57', '12.07 '), one negative: one window, in pages
    of three, typed by the SQL fast lane (the careful lane for the strings and the negative) or all by the
    careful lane. Each amount loads exactly; the line after the window does not."""
    demo = request.getfixturevalue("business")  # test_rest_api's: the server, its secret, the handler
    monkeypatch.setitem(demo.api.resources, "/v1/orders", (api_orders(sorted(
        [*API_LINES, API_OUTSIDE], key=lambda line: line[2])), ("updated_since", "updated_before"), False))
    demo.configure(page_size=3)
    taken = force(monkeypatch, lane)
    summary = demo.run({"source": "sales_api", "from": "2024-01-01", "to": "2024-01-15"})
    batch = summary["batch"]["batch_id"]
    assert summary["records"] == 10 and summary["pages"] == 4
    landing = demo.landing
    rows = landing.query("select order_id, line_no, unit_price, amount, _source_row, _source_ref like '%%#pages 1-4' "
                         "from core.sales_lineage where _batch_id = %s order by _source_row", (batch,))
    assert rows == [(o, n, D(price), amount, row, True) for row, (o, n, _, price, _, amount) in
                    enumerate(API_LINES, start=1) if amount > 0]
    assert [r for _, r in quarantined(landing, batch)] == [9]
    entry, money = batch_money(landing, batch)
    loaded = (D("14.07") + D("0.01") + D("1999.99") + D("0.005") + D("22.33") + D("12.07") + D("1234.57")
              + D("22.368") + D("12.07"))
    assert money == {"amount_in": loaded - D("3.09"), "amount_loaded": loaded, "amount_quarantined": D("-3.09")}
    assert D(summary["batch"]["amount_loaded"]) == loaded
    assert (entry["rows_read"], entry["rows_inserted"], entry["rows_quarantined"]) == (10, 9, 1)
    assert split_of(taken) == lane_split(lane, 7, 10, "pages 1-4")
