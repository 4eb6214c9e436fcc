"""The handler's lane (pipeline.sources.lane, with its CSV and workbook front ends): it admits exactly the rows
the SQL lanes would take as they are, types and hashes them the same, and hands on everything else, so a
delivery loads the same whichever way its rows go."""

from __future__ import annotations

import csv
import datetime as dt
import io
import random

import numpy as np
import pytest

from pipeline.config import ReadOptions
from pipeline.handlers import ingest_object
from pipeline.model import TABLES
from pipeline.sources import csv_lane
from pipeline.sources.lane import LaneSource
from tests.pipeline.test_ingest_csv import HEADER, TRUNCATE_SALES, ledger, reconciles, sales
from tests.pipeline.test_typing_lanes import TRICKY

# a sales source with the table's own key, its amounts all positive (as the demo company's)
SALES_SOURCE = LaneSource(key=("order_id", "line_no"))
SALES = TABLES["sales"]
COLUMNS = list(SALES.column_names)
CANONICAL = ["SO-1", "1", "2024-01-05", "C1", "Widget", "2", "10.50", "21.00", "GBP"]
# beyond the typing lanes' tricky values: what a CSV itself does to a value, and what the row hash quotes
MORE = {
    "order_id": ["Total", "TOTAL:", "grand total", " Total", "\tTotal", "SO 2", "", "SO-\u00e9", "\u00a0Total",
                 "Total\u00a0"],
    "product": ["Blue Widget", "a(b)", "x;y", 'say "hi"', "back\\slash", " pad", "pad ", "", "Caf\u00e9 cr\u00e8me",
                "tab\there", "  ", "x" * 300, "nbsp\u00a0", "\u2003em", "tab\t", "\u00a0", "\u3000wide\u3000"],
    "currency": ["GBP", "", "EUR "],
    "amount": ["10.50", "100", "1.000", "0.5", "0.05", "-0.00", "12345678901234567890123.45", "1" * 45, "12.07\u00a0",
               "\t3.01"],
    "unit_price": ["0", "00", "0.0", "-1", "1.", "1.2.3"],
    "quantity": ["18", "-0", "0000", "9" * 19],
    "order_date": ["2024-02-29", "2023-02-29", "0000-01-01", "2024-12-31", "2024-00-10", "9999-12-31"],
}


def tricky_rows(n: int, seed: int) -> list[list[str]]:
    """n rows, each canonical but for a few values drawn from the tricky ones, keys unique."""
    rng = random.Random(seed)
    values = {c: TRICKY.get(c, []) + MORE.get(c, []) for c in COLUMNS}
    rows = []
    for i in range(n):
        row = [*CANONICAL]
        row[0] = f"SO-{i}"
        for pos, column in enumerate(COLUMNS):
            if values[column] and rng.random() < 0.1:
                row[pos] = rng.choice(values[column])
        rows.append(row)
    return rows


def as_csv(rows: list[list[str]], seed: int, delimiter: str = ",", crlf: bool = False) -> bytes:
    """The rows as an export writes them: some quoted minimally, some every value, a blank or ragged record."""
    rng = random.Random(seed)
    out = io.StringIO()
    out.write(HEADER.replace(",", delimiter))
    for row in rows:
        buffer = io.StringIO()
        quoting = rng.choice([csv.QUOTE_MINIMAL, csv.QUOTE_MINIMAL, csv.QUOTE_ALL])
        csv.writer(buffer, delimiter=delimiter, quoting=quoting, lineterminator="\n").writerow(row)
        line = buffer.getvalue()
        roll = rng.random()
        if roll < 0.01:
            line = "\n" + line  # a blank record
        elif roll < 0.02:
            line = line.replace(delimiter, delimiter * 2, 1)  # ragged
        elif roll < 0.03:
            line = delimiter * 8 + "\n" + line  # a record of empty values
        out.write(line.replace("\n", "\r\n") if crlf else line)
    return out.getvalue().encode()


def outcome(landing, batch_id: int) -> tuple:
    rows = landing.query(f"select {', '.join(COLUMNS)}, _source, _source_ref like 's3://%%', _source_row, _row_hash, "
                         "_batch_id = %s from core.sales_lineage order by order_id, line_no", (batch_id,))
    reasons = landing.query("select source_row, reason, reason_code, raw from meta.quarantine where batch_id = %s "
                            "order by source_row, reason", (batch_id,))
    entry = ledger(landing, batch_id)
    return rows, reasons, entry


def both_ways(landing, monkeypatch, load, read) -> tuple[tuple, list[bool]]:
    """The outcome of `load()` (a batch id) typed in the handler and by the SQL lanes, each read by
    `read(batch_id)` after the same fresh start in `load`; and whether the handler took each sheet offered.
    Asserts the two ways give the same rows, reasons and ledger, and that the ledger reconciles."""
    results, lanes_used = [], []
    real = ingest_object.BatchLoad._load_typed_in_handler

    def spy(self, cur, sheet):
        taken = real(self, cur, sheet)
        lanes_used.append(taken[0])
        return taken

    monkeypatch.setattr(ingest_object.BatchLoad, "_load_typed_in_handler", spy)
    for in_handler in (True, False):
        monkeypatch.setattr(ingest_object.BatchLoad, "type_in_handler", in_handler)
        results.append(read(load(in_handler)))
    handler, sql_lanes = results
    assert handler[2] == sql_lanes[2]
    assert handler[1] == sql_lanes[1]
    assert handler[0] == sql_lanes[0]
    assert reconciles(handler[2]), repr(handler[2])
    return handler, lanes_used


@pytest.mark.parametrize(("seed", "delimiter", "crlf"), [(1, ",", False), (2, ";", True), (3, ",", True)])
@pytest.mark.parametrize("into", ["empty", "loaded"])
def test_the_handler_lane_loads_a_file_as_the_sql_lanes_do(landing, monkeypatch, seed, delimiter, crlf, into):
    """Tricky values in every column, quoted or not, blank, ragged and empty records, footers: typed in the
    handler or by the SQL lanes, the same rows (values, lineage, hashes), the same reasons, the same ledger;
    into an empty table (straight in) and into one that holds rows (staged, merged)."""
    from tests.pipeline.test_ingest_csv import with_read

    body = as_csv(tricky_rows(1_500, seed), seed, delimiter, crlf)
    # month first, as the tricky '01/05/2024' is meant: a date the file alone could not settle
    config = with_read(landing.config, "sales", delimiter=delimiter, dayfirst=False)

    def load(in_handler: bool) -> int:
        landing.query(TRUNCATE_SALES)
        if into == "loaded":
            landing.ingest("landing/sales/2024/other.csv", sales("SO-X,1,2024-01-05,00042,Widget,1,1.00,1.00,GBP"))
        return landing.ingest(f"landing/sales/2024/tricky-{in_handler}.csv", body, config=config)["batch_id"]

    handler, lanes_used = both_ways(landing, monkeypatch, load, lambda batch_id: outcome(landing, batch_id))
    assert lanes_used == [True] * (2 if into == "loaded" else 1)  # the handler took its files, whole
    entry = handler[2]
    # the file is tricky enough: rows of every kind
    assert entry["rows_inserted"] > 500 and entry["rows_quarantined"] > 100 and entry["rows_skipped"] > 5


def _typed(column: str, values: list[str], check: bool = True) -> dict[int, str]:
    """{i: the row hash} of the rows the lane admits, row i holding values[i] in `column` of a canonical row."""
    lane = csv_lane.lane_for(SALES, {c: i for i, c in enumerate(COLUMNS)}, ReadOptions(), len(COLUMNS), SALES_SOURCE)
    out = io.StringIO()
    for value in values:
        row = [*CANONICAL]
        row[COLUMNS.index(column)] = value
        csv.writer(out, lineterminator="\n").writerow(row)
    piece = next(csv_lane.pieces(io.BytesIO(out.getvalue().encode()), 2, ord('"'), 2))
    typed = csv_lane.type_piece(lane, piece, check=check)
    return {r - 2: typed.digests[16 * i:16 * i + 16].hex() for i, r in enumerate(typed.rows.tolist())}


def _admitted(column: str, values: list[str]) -> set[str]:
    """Which of these values of `column` (each in an otherwise canonical row) the lane admits."""
    return {values[i] for i in _typed(column, values)}


def test_the_handler_admits_what_the_sql_fast_lane_admits():
    """The values the SQL fast lane takes as they are (test_typing_lanes), the handler takes: no more."""
    assert _admitted("line_no", TRICKY["line_no"]) == {"1", "42", "-3", "123456789012345678"}
    assert _admitted("order_date", TRICKY["order_date"]) == {"2024-01-05"}  # 0999-01-01: before earliest_date
    assert _admitted("amount", TRICKY["amount"]) == {"21.00", "21", "0.10", "0", "0.00"}
    assert _admitted("order_id", MORE["order_id"]) == {"SO 2", "SO-\u00e9"}  # footers and blanks go on
    assert _admitted("product", MORE["product"]) == {"Blue Widget", "a(b)", "x;y", "", "Caf\u00e9 cr\u00e8me",
                                                      "tab\there"}


def test_pieces_end_where_records_end():
    """Pieces are cut at newlines outside quotes, whatever the block size, and number records and lines."""
    data = b'a,1\n"b\nc",2\r\n"d,""e""",3\nf,4'
    for size in (1, 3, 7, 64):
        got = list(csv_lane.pieces(io.BytesIO(data), 2, ord('"'), 2, size=size))
        records = [r for p in got for r in np.split(np.frombuffer(p.data, np.uint8), p.ends + 1)[:-1]]
        assert [bytes(r) for r in records] == [b"a,1\n", b'"b\nc",2\r\n', b'"d,""e""",3\n', b"f,4\n"]
        assert [(p.first, p.line) for p in got][0] == (2, 2)
        assert sum(len(p.ends) for p in got) == 4


def test_a_record_that_never_ends_is_not_the_lanes(monkeypatch):
    monkeypatch.setattr(csv_lane, "MAX_RECORD_BYTES", 1_000)
    data = b'a,1\n"never closed,' + b"x" * 5_000
    with pytest.raises(csv_lane.LaneAbandoned):
        list(csv_lane.pieces(io.BytesIO(data), 2, ord('"'), 2, size=100))


def test_layouts_the_lane_leaves_to_the_sql_lanes():
    mapping = {c: i for i, c in enumerate(COLUMNS)}
    assert csv_lane.lane_for(SALES, mapping, ReadOptions(decimal=","), 9, SALES_SOURCE) is None
    assert csv_lane.lane_for(SALES, mapping, ReadOptions(thousands=","), 9, SALES_SOURCE) is None
    assert csv_lane.lane_for(SALES, mapping, ReadOptions(dayfirst=True), 9, SALES_SOURCE) is None
    assert csv_lane.lane_for(TABLES["interactions"], {"interaction_id": 0}, ReadOptions(), 5,
                             LaneSource(key=("interaction_id",))) is None
    assert csv_lane.lane_for(SALES, mapping, ReadOptions(), 9, SALES_SOURCE).whole_records
    assert not csv_lane.lane_for(SALES, mapping, ReadOptions(), 10, SALES_SOURCE).whole_records


def _careful(db, column: str, values: list[str]) -> dict[int, tuple[str | None, bool]]:
    """{row: (its hash if the careful lane accepts it as a data row, else None)} for each value in a canonical
    row, as the SQL lanes type them."""
    from psycopg2 import sql

    from pipeline.typing_sql import Mapped, row_hash, typed_select

    mapped = [Mapped(SALES.column(c), f"c{i}", c) for i, c in enumerate(COLUMNS)]
    careful = typed_select(SALES, mapped, ReadOptions(), len(COLUMNS))
    with db.cursor() as cur:
        cur.execute("set local datestyle = 'ISO'")
        cur.execute(sql.SQL("create temp table raw (_sheet text, _row bigint, {}) on commit drop").format(
            sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(f"c{i}")) for i in range(len(COLUMNS)))))
        for n, value in enumerate(values):
            row = [*CANONICAL]
            row[COLUMNS.index(column)] = value
            cur.execute("insert into raw values (null, %s, {})".format(", ".join(["%s"] * len(row))), (n, *row))
        cur.execute(sql.SQL("select s._row, case when not s._skip and cardinality(s._reasons) = 0 then {} end "
                            "from ({}) s").format(row_hash(SALES, COLUMNS), careful))
        found = dict(cur.fetchall())
    db.rollback()
    return found


@pytest.mark.stack
@pytest.mark.parametrize("column", COLUMNS)
def test_an_unchecked_hash_is_a_loaded_rows_only_when_the_row_would_load_as_that_row(db, column):
    """A re-export is known by hashing its rows without testing their values (type_piece(check=False)). That
    is sound because a raw row's unchecked hash equals an accepted row's hash only when the careful lane
    accepts that raw row, as a row with that same hash: a value that is not its type's own spelling hashes
    like no accepted row."""
    values = [CANONICAL[COLUMNS.index(column)], *TRICKY.get(column, []), *MORE.get(column, [])]
    loaded = _careful(db, column, values)
    accepted = {h for h in loaded.values() if h}
    unchecked = _typed(column, values, check=False)
    matching = [n for n, h in unchecked.items() if h in accepted]
    for n in matching:
        assert loaded[n] == unchecked[n], f"{column} {values[n]!r} hashes like a loaded row it would not load as"
    assert 0 in matching  # the canonical spelling is known


# -- workbook sheets ------------------------------------------------------------------------------------------------
def tricky_payments(n: int, seed: int, as_text: bool) -> list[list]:
    """Payment rows as finance teams type them: references with spaces, commas, line breaks, quotes and
    padding; blank rows and a subtotal in between. Each column holds one kind of cell (a sheet that mixes
    them is read cell by cell): dates and amounts as date and number cells, or, as_text, typed as text."""
    rng = random.Random(seed)
    texts = ["BACS", "Card", "Faster Payment", "Bank, transfer", "line\nbreak", 'say "hi"', " padded", "a(b)",
             "back\\slash", "Caf\u00e9", "tab\there", "x" * 300]
    if as_text:
        amounts = ["12.30", "1234.5", "1,234.50", "0.005", "-4.50", "+3", "1e3", "12.3.4", "0", "007", "5."]
        dates = ["2024-02-29", "2024-02-30", "2024-1-5", "03/01/2024", "2024-01-03 00:00:00", "yesterday"]
    else:
        amounts = [12.5, 0.1, 1200.0, 99.99, 3, -4.5, 0.005, 1e16, 123456.789, 0]
        dates = [dt.date(2024, 1, 3), dt.date(2023, 12, 31), dt.date(1999, 2, 28), dt.date(2024, 2, 29)]
    rows = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.02:
            rows.append([None] * 6)  # a blank row
            continue
        if roll < 0.03:
            rows.append(["Subtotal", None, None, None, None, "10.00" if as_text else 10.0])
            continue
        amount = round(rng.random() * 1000, 2)
        rows.append([f"P-{seed}-{i}" if rng.random() < 0.9 else rng.choice(["P 1", "Total", f" P-{i}", "a,b"]),
                     rng.choice(dates) if rng.random() < 0.2 else (
                         (dt.date(2024, 1, 3) + dt.timedelta(days=i % 20)).isoformat() if as_text else
                         dt.date(2024, 1, 3) + dt.timedelta(days=i % 20)),
                     rng.choice(["00042", "007", "C 9", "c,1"]),
                     f"INV-{i}" if rng.random() < 0.8 else rng.choice(texts),
                     rng.choice(texts) if rng.random() < 0.3 else "BACS",
                     rng.choice(amounts) if rng.random() < 0.2 else (f"{amount:.2f}" if as_text else amount)])
    return rows


def text_workbook(sheets: dict[str, list[list]]) -> bytes:
    """Sheets whose cells are all text, under a title and the header on row 4, with a text Total row."""
    import xlsxwriter

    from tests.pipeline.test_ingest_excel import HEADER

    buffer = io.BytesIO()
    wb = xlsxwriter.Workbook(buffer, {"in_memory": True})
    for name, rows in sheets.items():
        ws = wb.add_worksheet(name)
        ws.write_string(0, 0, f"{name}: received payments")
        ws.write_row(3, 0, HEADER)
        for r, row in enumerate(rows, start=4):
            for c, value in enumerate(row):
                if value is not None:
                    ws.write_string(r, c, value)
        ws.write_row(4 + len(rows), 0, ["Total", "", "", "", "", "123.45"])
    wb.close()
    return buffer.getvalue()


def payments_outcome(landing, batch_id: int) -> tuple:
    rows = landing.query("select payment_id, payment_date, client_id, invoice_ref, method, amount, _source, "
                         "_source_ref like 's3://%%', _source_row, _row_hash, _batch_id = %s "
                         "from core.payments_lineage order by payment_id", (batch_id,))
    reasons = landing.query("select source_row, source_ref like '%%#%%', reason, reason_code, raw from "
                            "meta.quarantine where batch_id = %s order by source_ref, source_row, reason", (batch_id,))
    return rows, reasons, ledger(landing, batch_id)


@pytest.mark.parametrize("as_text", [False, True], ids=["cells", "text"])
@pytest.mark.parametrize("sheets", [1, 3])
@pytest.mark.parametrize("into", ["empty", "loaded"])
def test_the_handler_lane_loads_a_workbook_as_the_sql_lanes_do(landing, monkeypatch, sheets, into, as_text):
    """Tricky cells in every column: typed in the handler or by the SQL lanes, the same rows, hashes, reasons
    and ledger; one sheet into an empty table (straight in), several sheets or a loaded table (staged)."""
    from tests.pipeline.test_ingest_csv import with_read
    from tests.pipeline.test_ingest_excel import workbook

    config = with_read(landing.config, "payments", dayfirst=False)  # the text date '03/01/2024' is 1 March
    sheets_rows = {f"Payments {s}": tricky_payments(700, 10 * sheets + s, as_text) for s in range(sheets)}
    body = text_workbook(sheets_rows) if as_text else workbook(sheets_rows)

    def load(in_handler: bool) -> int:
        landing.query("truncate meta.quarantine, core.payments, core.payments_history, meta.batches cascade; select 1")
        if into == "loaded":
            landing.ingest("landing/payments/2024/other.xlsx", workbook({"Payments": [
                ["P-X", dt.date(2024, 1, 3), "00042", "INV-X", "BACS", 1.0]]}))
        return landing.ingest(f"landing/payments/2024/tricky-{in_handler}.xlsx", body, config=config)["batch_id"]

    handler, lanes_used = both_ways(landing, monkeypatch, load, lambda batch_id: payments_outcome(landing, batch_id))
    assert lanes_used and all(lanes_used)  # the handler took every sheet it was offered
    entry = handler[2]
    assert entry["rows_inserted"] > 300 * sheets and entry["rows_quarantined"] > 20 and entry["rows_skipped"] > 10


def test_a_one_sheet_workbook_of_a_loaded_batchs_rows_is_known_without_typing_them(landing, monkeypatch,
                                                                                    found_unchanged):
    """The README's claim for workbooks: a one-sheet workbook holding a loaded batch's rows again, in another
    order, is recognised as that batch (every row unchanged, nothing written but the ledger); the same
    outcome as typing and merging every row. A sheet of three is not recognised (a batch of several sheets is
    merged sheet by sheet)."""
    from tests.pipeline.test_ingest_excel import workbook

    rows = [[f"P-{i}", dt.date(2024, 1, 3), "00042", f"INV-{i}", "BACS", 10.5 + i] for i in range(40)]
    outcomes = []
    for recognise in (True, False):
        monkeypatch.setattr(ingest_object.BatchLoad, "recognise_unchanged", recognise)
        landing.query("truncate meta.quarantine, core.payments, core.payments_history, meta.batches cascade; select 1")
        landing.ingest("landing/payments/2024/loaded.xlsx", workbook({"Payments": rows}))
        again = landing.ingest("landing/payments/2024/again.xlsx", workbook({"Payments": rows[::-1]}))
        outcomes.append(payments_outcome(landing, again["batch_id"]))
    assert found_unchanged == [40]
    assert outcomes[0] == outcomes[1]
    entry = outcomes[0][2]
    assert (entry["rows_read"], entry["rows_unchanged"], entry["rows_skipped"]) == (40, 40, 1)
    assert reconciles(entry)
    landing.ingest("landing/payments/2024/three.xlsx", workbook({"Payments A": rows[:10], "Payments B": rows[10:20],
                                                                "Payments C": rows[20:]}))
    assert found_unchanged == [40]  # not asked


@pytest.mark.parametrize(("extra", "found"), [([], 30), (["SO-99,1,2024-01-05,,Widget,1,1.00,1.00,GBP"], 0)],
                         ids=["footer-and-blank", "and-a-row-to-quarantine"])
def test_a_re_export_with_a_footer_and_a_blank_line_is_known_as_the_batch_again(landing, monkeypatch,
                                                                                  found_unchanged, extra, found):
    """The rows the SQL lanes skip (a blank line, a Total footer) are set aside by the re-export's pass, not
    hashed: the file is still that batch's rows again, with the skipped rows counted as the full way counts
    them. A row missing a value that is no footer is not set aside: that file is merged the full way."""
    from tests.pipeline.test_ingest_csv import LOADED

    def body(lines: list[str]) -> bytes:
        return sales(*lines, "", "Total,,,,,,,630.00,")

    outcomes = []
    for recognise in (True, False):
        monkeypatch.setattr(ingest_object.BatchLoad, "recognise_unchanged", recognise)
        landing.query(TRUNCATE_SALES)
        landing.ingest("landing/sales/2024/loaded.csv", body(LOADED))
        again = landing.ingest("landing/sales/2024/again.csv", body(LOADED[::-1] + extra))
        outcomes.append(outcome(landing, again["batch_id"]))
    assert found_unchanged == [found]
    assert outcomes[0] == outcomes[1]
    entry = outcomes[0][2]
    assert entry["rows_skipped"] == 2 and entry["rows_unchanged"] == 30 and reconciles(entry)


def test_an_integer_column_that_is_never_negative_admits_no_sign():
    """No table has one today (sales.line_no may be negative), but the lane's rule for it holds: int8's own
    spelling, and no minus sign at all ('-0' is not how PostgreSQL prints zero either)."""
    from pipeline.sources import lane

    values = [b"5", b"-5", b"05", b"5x", b"0", b"-0", b"123456789012345678", b"1234567890123456789"]
    buf = np.frombuffer(b"".join(values), np.uint8)
    ln = np.array([len(v) for v in values])
    s = np.concatenate([[0], np.cumsum(ln)[:-1]])
    nondigits = np.array([sum(not chr(c).isdigit() for c in v) for v in values])
    assert lane._integer(buf, s, ln, nondigits, True).tolist() == [True, False, False, False, True, False, True, False]
    assert lane._integer(buf, s, ln, nondigits, False).tolist() == [True, True, False, False, True, False, True, False]
