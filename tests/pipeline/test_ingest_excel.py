"""Payment workbooks: sheets, header offsets, totals rows, formulas, serial dates, broken files."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from decimal import Decimal

import openpyxl
import pytest
import xlsxwriter

from pipeline.sources import LoadError
from pipeline.sources.excel import cell_text, excel_serial_to_date
from tests.pipeline.test_ingest_csv import ledger, reconciles, with_read

HEADER = ["Payment Ref", "Date Received", "Client Code", "Invoice", "Method", "Amount"]


def workbook(sheets: dict[str, list[list]], hidden: tuple[str, ...] = (), merged_header: bool = False) -> bytes:
    """An .xlsx as finance teams make them: title rows, the header on row 4, a SUM totals row."""
    buffer = io.BytesIO()
    wb = xlsxwriter.Workbook(buffer, {"in_memory": True})
    date_fmt = wb.add_format({"num_format": "dd/mm/yyyy"})
    for name, rows in sheets.items():
        ws = wb.add_worksheet(name)
        ws.write(0, 0, f"{name} — received payments")
        ws.write(1, 0, "Prepared by finance")
        if merged_header:
            ws.merge_range(2, 0, 2, 5, "Bank statement lines")
        for c, title in enumerate(HEADER):
            ws.write_string(3, c, title)
        for r, row in enumerate(rows, start=4):
            for c, value in enumerate(row):
                if isinstance(value, dt.date):
                    ws.write_datetime(r, c, dt.datetime.combine(value, dt.time()), date_fmt)
                elif isinstance(value, str):
                    ws.write_string(r, c, value)
                elif value is not None:
                    ws.write_number(r, c, value)
        last = 4 + len(rows)
        total = sum(Decimal(str(row[5])) for row in rows if isinstance(row[5], int | float))
        ws.write_string(last, 0, "Total")
        ws.write_formula(last, 5, f"=SUM(F5:F{last})", None, float(total))
        if name in hidden:
            ws.hide()
    wb.close()
    return buffer.getvalue()


def payment(ref: str, amount, day=dt.date(2024, 1, 3), client="00042") -> list:
    return [ref, day, client, f"INV-{ref}", "BACS", amount]


def test_payment_sheets_load_and_the_rest_is_ignored(landing):
    body = workbook({
        "Payments - Barclays": [payment("P-1", 1200.5), payment("P-2", 0.1), payment("P-3", 99.99)],
        "Payments - HSBC": [payment("P-4", 12.3, client="007")],
        "Summary": [payment("S-1", 1.0)],
        "Payments - Old": [payment("OLD-1", 5.0)],
    }, hidden=("Payments - Old",), merged_header=True)
    result = landing.ingest("landing/payments/2024/p1.xlsx", body)
    assert (result["rows_read"], result["rows_inserted"], result["rows_skipped"]) == (4, 4, 2)
    assert result["amount_loaded"] == Decimal("1312.89")  # 1200.5 + 0.1 + 99.99 + 12.3, exactly
    rows = landing.query("select payment_id, payment_date::text, client_id, amount, _source_ref, _source_row "
                         "from core.payments_lineage order by payment_id")
    assert rows[0][:4] == ("P-1", "2024-01-03", "00042", Decimal("1200.5"))
    assert rows[0][4].endswith("#Payments - Barclays") and rows[0][5] == 5
    assert rows[3][2] == "007" and rows[3][4].endswith("#Payments - HSBC")


def test_one_sheet_into_an_empty_table_goes_straight_in_as_the_staged_merge_would_load_it(landing):
    """A workbook of one payments sheet, into an empty table (its rows straight in) and into a table that has
    rows (staged, then merged): the same rows, hashes, reasons and ledger. A sheet that repeats a key takes
    the staged way even into an empty table, and says so in its ledger."""
    def outcome(batch_id):
        rows = landing.query("select payment_id, payment_date, client_id, invoice_ref, method, amount, _source_ref,"
                             " _source_row, _row_hash from core.payments_lineage where _batch_id = %s order by 1",
                             (batch_id,))
        reasons = landing.query("select source_row, reason from meta.quarantine where batch_id = %s order by 1",
                                (batch_id,))
        return rows, reasons, ledger(landing, batch_id)

    sheet = [payment("P-1", 1200.5), payment("P-2", "12,3O"), payment("P-3", 0.1, day=45292),
             payment("P-4", 7, client="007"), [None] * 6, payment("P-5", -3.25)]
    body = workbook({"Payments - Barclays": sheet})
    direct = outcome(landing.ingest("landing/payments/2024/d1.xlsx", body)["batch_id"])
    landing.query("truncate core.payments, meta.quarantine; select 1")
    landing.ingest("landing/payments/2024/other.xlsx", workbook({"Payments - HSBC": [payment("P-9", 1.0)]}))
    staged = outcome(landing.ingest("landing/payments/2024/d2.xlsx", body)["batch_id"])
    def sheet_of_ref(rows):  # each batch's own object, the same sheet
        return [r[:6] + (r[6].rsplit("#", 1)[-1], *r[7:]) for r in rows]

    assert sheet_of_ref(staged[0]) == sheet_of_ref(direct[0]) and staged[1:] == direct[1:]
    rows, reasons, entry = direct
    assert [(r[0], r[1], r[5], r[7]) for r in rows] == [
        ("P-1", dt.date(2024, 1, 3), Decimal("1200.5"), 5), ("P-3", dt.date(2024, 1, 1), Decimal("0.1"), 7),
        ("P-4", dt.date(2024, 1, 3), Decimal("7"), 8)]
    assert reasons == [(6, "row 6: amount '12,3O' is not a number"), (10, "row 10: amount '-3.25' is negative")]
    assert reconciles(entry) and (entry["rows_read"], entry["rows_inserted"], entry["rows_quarantined"],
                                  entry["rows_skipped"]) == (5, 3, 2, 2)

    landing.query("truncate core.payments, meta.quarantine; select 1")
    twice = landing.ingest("landing/payments/2024/d3.xlsx", workbook({"Payments - Barclays": [
        payment("P-1", 1.0), payment("P-2", 2.0), payment("P-1", 1.0)]}))
    assert (twice["rows_inserted"], twice["rows_duplicate"]) == (2, 1)
    assert landing.query("select payment_id, amount from core.payments order by 1") == [
        ("P-1", Decimal("1")), ("P-2", Decimal("2"))]


def test_named_sheets_missing_or_renamed_are_named_in_the_error(landing):
    body = workbook({"Pmts Barclays": [payment("P-1", 1.0)]})
    with pytest.raises(LoadError, match=r"p2.xlsx: no visible sheet matches '\^Payments'; sheets: 'Pmts Barclays'"):
        landing.ingest("landing/payments/2024/p2.xlsx", body)
    config = with_read(landing.config, "payments", sheets=["Payments - Barclays"], sheet_pattern=None)
    with pytest.raises(LoadError, match=r"no sheet named 'Payments - Barclays'; sheets: 'Pmts Barclays'"):
        landing.ingest("landing/payments/2024/p2.xlsx", config=config)


@pytest.mark.parametrize("cell", ["F5", "F6"])  # the first data row and a later one
def test_formula_without_a_cached_value_is_an_error_naming_the_cell(landing, cell):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Payments - Barclays"
    for _ in range(3):
        ws.append([None])
    ws.append(HEADER)
    ws.append(["P-1", dt.date(2024, 1, 3), "00042", "INV-1", "BACS", "=2*5" if cell == "F5" else 10])
    ws.append(["P-2", dt.date(2024, 1, 3), "00042", "INV-2", "BACS", "=F5*2" if cell == "F6" else 20])
    ws.append(["Total", None, None, None, None, "=SUM(F5:F6)"])  # a footer: its formula does not matter
    buffer = io.BytesIO()
    wb.save(buffer)
    with pytest.raises(LoadError, match=rf"sheet 'Payments - Barclays', cell {cell}: the formula has no cached value"):
        landing.ingest("landing/payments/2024/p3.xlsx", buffer.getvalue())
    assert landing.query("select count(*) from core.payments") == [(0,)]


def test_a_formula_without_a_value_is_found_in_a_workbook_read_cell_by_cell(landing):
    """'N/A' among the shared strings sends a workbook cell by cell (fastexcel would read it as empty), and that
    path searches the sheet for formulas without a value while calamine parses it: a generator that writes
    formulas and no values (xlsxwriter's cells, their <v> taken out) is refused, naming the cell."""
    made = io.BytesIO()
    wb = xlsxwriter.Workbook(made, {"in_memory": True})
    ws = wb.add_worksheet("Payments - Barclays")
    for c, title in enumerate(HEADER):
        ws.write_string(3, c, title)
    for r, (ref, invoice) in enumerate((("P-1", "N/A"), ("P-2", "INV-2")), start=4):
        for c, value in enumerate((ref, "2024-01-03", "00042", invoice, "BACS")):
            ws.write_string(r, c, value)
    ws.write_number(4, 5, 10)
    ws.write_formula(5, 5, "=F5*2")
    wb.close()
    with zipfile.ZipFile(io.BytesIO(made.getvalue())) as zf:
        assert b"N/A" in zf.read("xl/sharedStrings.xml")
        parts = {name: zf.read(name) for name in zf.namelist()}
    sheet = "xl/worksheets/sheet1.xml"
    assert parts[sheet].count(b"<f>F5*2</f><v>0</v>") == 1
    parts[sheet] = parts[sheet].replace(b"<f>F5*2</f><v>0</v>", b"<f>F5*2</f>")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in parts.items():
            zf.writestr(name, data)
    with pytest.raises(LoadError, match=r"sheet 'Payments - Barclays', cell F6: the formula has no cached value"):
        landing.ingest("landing/payments/2024/p5.xlsx", buffer.getvalue())
    assert landing.query("select count(*) from core.payments") == [(0,)]


def test_serial_dates_and_the_1900_leap_day():
    assert excel_serial_to_date(45292) == dt.date(2024, 1, 1)
    assert excel_serial_to_date(59) == dt.date(1900, 2, 28)
    assert excel_serial_to_date(61) == dt.date(1900, 3, 1)
    with pytest.raises(ValueError, match="1900-02-29"):
        excel_serial_to_date(60)
    assert cell_text(45292.0, "date") == "2024-01-01"
    assert cell_text(0.0, "date") == "0"  # Excel's day 0 ("00/01/1900") is no day: left as written, and refused
    assert cell_text(12.3, "money") == "12.3" and cell_text(1e-7, "money") == "0.0000001"
    assert cell_text(3.0, "integer") == "3"


def test_serial_numbers_in_a_date_column_load_as_dates(landing):
    body = workbook({"Payments - Barclays": [["P-1", 45292, "00042", "INV-1", "BACS", 10.0],
                                             ["P-2", 60, "00042", "INV-2", "BACS", 10.0],
                                             ["P-3", 0, "00042", "INV-3", "BACS", 10.0]]})
    result = landing.ingest("landing/payments/2024/p4.xlsx", body)
    assert (result["rows_inserted"], result["rows_quarantined"]) == (1, 2)
    assert landing.query("select payment_date::text from core.payments") == [("2024-01-01",)]
    assert landing.query("select reason from meta.quarantine order by source_row") == [
        ("row 6: payment_date '1900-02-29' is not a valid date",),  # serial 60: Excel's day that never was
        ("row 7: payment_date '0' is not a valid date",)]  # serial 0: Excel shows 00/01/1900


def test_corrupt_password_protected_and_empty_workbooks_are_clear_errors(landing):
    import msoffcrypto
    from msoffcrypto.format.ooxml import OOXMLFile

    good = workbook({"Payments - Barclays": [payment("P-1", 1.0)]})
    with pytest.raises(LoadError, match=r"bad.xlsx: not a readable .xlsx workbook \(it is damaged, or another kind "
                                        r"of file with an .xlsx name\); open it in Excel, save it as .xlsx and deliver "
                                        r"it again$"):
        landing.ingest("landing/payments/2024/bad.xlsx", good[: len(good) // 2])
    encrypted = io.BytesIO()
    OOXMLFile(io.BytesIO(good)).encrypt("s3cret", encrypted)
    assert msoffcrypto.olefile.isOleFile(io.BytesIO(encrypted.getvalue()))
    with pytest.raises(LoadError, match=r"locked.xlsx: the workbook is password-protected"):
        landing.ingest("landing/payments/2024/locked.xlsx", encrypted.getvalue())
    with pytest.raises(LoadError, match=r"empty.xlsx: the file is empty \(0 bytes\)"):
        landing.ingest("landing/payments/2024/empty.xlsx", b"")
    assert landing.query("select count(*) from core.payments") == [(0,)]
    assert landing.query("select count(*) from meta.batches where status = 'failed'") == [(3,)]


def inflated(good: bytes, unpacked: int) -> bytes:
    """A copy of a workbook whose sheet is `unpacked` bytes of repeated rows: a zip bomb a few MB long."""
    row = b'<row><c t="inlineStr"><is><t>x</t></is></c></row>' * 2000
    bomb = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED,
                                                                      compresslevel=9) as out:
        for part in source.infolist():
            if part.filename != "xl/worksheets/sheet1.xml":
                out.writestr(part, source.read(part))
                continue
            with out.open(part.filename, "w", force_zip64=True) as sheet:
                for _ in range(unpacked // len(row)):
                    sheet.write(row)
    return bomb.getvalue()


def test_a_workbook_that_inflates_past_its_limits_is_refused_before_it_is_read(landing):
    """A 3 MB workbook whose sheet inflates to 1.1 GB would exhaust the function's memory: refused from the sizes
    its archive declares, in seconds, with a failed batch in the ledger naming the setting. A smaller part that
    inflates hundreds of times (exports compress 5 to 30 times) is refused for its ratio."""
    import time

    good = workbook({"Payments - Barclays": [payment("P-1", 1.0)]})
    bomb = inflated(good, 1_100_000_000)
    assert len(bomb) < 8_000_000
    started = time.monotonic()
    with pytest.raises(LoadError, match=r"bomb.xlsx: the workbook unpacks to 1,049 MB, more than "
                                        r"read.max_unpacked_mb \(400 MB\); it was not read"):
        landing.ingest("landing/payments/2024/bomb.xlsx", bomb)
    assert time.monotonic() - started < 5
    (failed,) = landing.query("select status, error from meta.batches where object_key like '%bomb.xlsx'")
    assert failed[0] == "failed" and "read.max_unpacked_mb" in failed[1]
    with pytest.raises(LoadError, match=r"dense.xlsx: its part xl/worksheets/sheet1.xml inflates [0-9,]+ times "
                                        r"\(from [0-9,]+ KB to 191 MB\), more than read.max_compression_ratio "
                                        r"\(200\); it was not read"):
        landing.ingest("landing/payments/2024/dense.xlsx", inflated(good, 200_000_000))
    assert landing.query("select count(*) from core.payments") == [(0,)]
    # and its clean counterpart: a real export's sheet of several MB, compressed as Excel compresses, loads
    rows = [payment(f"P-{i}", round(1 + i * 0.37, 2), client=f"{i % 977:05d}") for i in range(20_000)]
    export = workbook({"Payments - Barclays": rows})
    with zipfile.ZipFile(io.BytesIO(export)) as zf:
        sheet = zf.getinfo("xl/worksheets/sheet1.xml")
    assert sheet.file_size > 2**20 and sheet.file_size / sheet.compress_size < 200
    assert landing.ingest("landing/payments/2024/export.xlsx", export)["rows_inserted"] == 20_000


def test_hostile_sheet_names_stay_inert(landing):
    name = "Payments'); drop table x;--"
    body = workbook({name: [payment("P-1", 1.0)]})
    tables = landing.query("select count(*) from pg_tables")
    assert landing.ingest("landing/payments/2024/evil.xlsx", body)["rows_inserted"] == 1
    assert landing.query("select _source_ref like %s from core.payments_lineage", (f"%#{name}",)) == [(True,)]
    assert landing.query("select count(*) from pg_tables") == tables
