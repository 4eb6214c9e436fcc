"""The independent reader (playbook.accuracy.independent) on small files whose figures are worked out by hand,
and the validation's independent reconciliation on the demo company: it passes on batches loaded as they are,
and fails, naming the batch, the object and both figures, on a batch whose ledger disagrees with its file."""

from __future__ import annotations

import datetime as dt
import io
import json
from decimal import Decimal
from pathlib import Path

import openpyxl
import psycopg2
import pytest
import xlsxwriter
from openpyxl.styles import Font

from pipeline.config import ReadOptions, SourceConfig
from playbook.accuracy.independent import ReadError, cell_number, parse_number, read_object
from tests.playbook.test_accuracy import run, warehouse  # noqa: F401 - the demo company's loaded deliveries

PAYMENTS = {"payment_id": "Payment Ref", "payment_date": "Date Received", "client_id": "Client Code",
            "amount": "Amount"}
COSTS = {"cost_id": "Expense ID", "cost_date": "Date", "category": "Category", "amount": "Amount"}
TAX = {"period": "Period", "tax_type": "Tax", "amount": "Amount £"}
SALES = {"order_id": "Order No", "line_no": "Line", "order_date": "Order Date", "client_id": "Client Code",
         "quantity": "Qty", "unit_price": "Unit Price", "amount": "Line Total"}


def source(table: str, columns: dict[str, str], kind: str = "s3_csv", **read) -> SourceConfig:
    return SourceConfig(kind=kind, table=table, prefix=f"landing/{table}/", schedule="rate(1 day)", columns=columns,
                        read=ReadOptions(**read))


def write(tmp_path: Path, text: str | bytes, name: str = "file.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode(encoding))
    return path


# -- numbers ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "decimal", "thousands", "expected"), [
    ("12.50", ".", None, "12.50"),
    (" -417.33 ", ".", None, "-417.33"),
    ("+12", ".", None, "12"),
    ("(12.00)", ".", None, "-12.00"),
    ("12.00-", ".", None, "-12.00"),
    (".5", ".", None, "0.5"),
    ("5.", ".", None, "5"),
    ("£1,234.50", ".", ",", "1234.50"),
    ("1234.50", ".", ",", "1234.50"),  # grouping is optional
    ("-£12.00", ".", None, "-12.00"),
    ("(£12.00)", ".", None, "-12.00"),
    ("GBP 12.00", ".", None, "12.00"),
    ("12.00 GBP", ".", None, "12.00"),
    ("12.00£", ".", None, "12.00"),
    ("1.007,48", ",", ".", "1007.48"),
    ("£ 12,5", ",", ".", "12.5"),
    ("1 234,56", ",", " ", "1234.56"),
    ("1\u00a0234,56", ",", " ", "1234.56"),
    ("1\u202f234\u202f567", ",", " ", "1234567"),
    ("1'234.50", ".", "'", "1234.50"),
    # not numbers under these settings
    ("1,234.56", ",", ".", None),  # never 1.23456
    ("1,234.56", ".", None, None),  # thousands not declared
    ("12,34", ".", ",", None),  # a group of two
    ("1,2345", ".", ",", None),
    ("$12", ".", None, None),  # another currency
    ("€12,50", ",", ".", None),
    ("USD 12", ".", None, None),
    ("12,3O", ",", ".", None),
    ("--12", ".", None, None),
    ("(-12)", ".", None, None),
    ("-12-", ".", None, None),
    ("(12", ".", None, None),
    ("1.2.3", ".", None, None),
    ("£GBP 12", ".", None, None),
    ("", ".", None, None),
    ("-", ".", None, None),
    ("١٢", ".", None, None),  # digits of another script
])
def test_numbers_are_read_under_the_declared_separators_only(text, decimal, thousands, expected):
    value = parse_number(text, decimal, thousands, "GBP")
    assert value == (None if expected is None else Decimal(expected))
    if expected is not None:
        assert str(value) == expected


def test_integers_take_no_decimal_part():
    assert parse_number("1,234", ".", ",", "GBP", integer=True) == 1234
    assert parse_number("12.0", ".", None, "GBP", integer=True) is None
    assert parse_number("5.", ".", None, "GBP", integer=True) is None


def test_numeric_cells_are_their_double_to_15_significant_digits():
    assert cell_number(22.368000000000002) == Decimal("22.368")
    assert cell_number(261.95999999999998) == Decimal("261.96")
    assert cell_number(0.1 + 0.2) == Decimal("0.3")
    assert cell_number(7) == Decimal(7)
    assert cell_number(1e20) == Decimal("1E+20")


# -- CSV ----------------------------------------------------------------------------------------------------
def test_csv_records_blank_ragged_footer_and_money(tmp_path):
    text = ("Payment Ref,Date Received,Client Code,Amount\r\n"   # row 1: the header
            "P1,2024-01-05,C1,10.50\r\n"                         # 2: 10.50
            "\r\n"                                               # 3: blank
            'P2,2024-01-06,C2,"1,5"\r\n'                         # 4: read; "1,5" is not a number
            "   ,  ,,\r\n"                                       # 5: blank
            'P3,2024-01-07,"C3\r\nx",7\r\n'                      # 6: a quoted line break; 7
            "P4,2024-01-08,C4\r\n"                               # 7: ragged: read, no amount
            "P5,2024-01-09,C5,2.25,,\r\n"                        # 8: trailing empty values dropped; 2.25
            'Pizza Base 12" x10,2024-01-10,C6,-1.25\r\n'         # 9: a quote inside a value; -1.25
            "P1,2024-01-05 , C1,10.5\r\n"                        # 10: a copy of row 2 (trimmed, 10.5 = 10.50)
            "P6,2024-01-11,C1,10.5\r\n"                          # 11: not a copy (another ref)
            "Total,,,39.50\r\n"                                  # 12: footer: 10.50+7+2.25-1.25+10.5+10.5
            "\r\n")                                              # 13: blank
    r = read_object(write(tmp_path, text), source("payments", PAYMENTS), "GBP")
    assert (r.rows_read, r.blank, r.ragged, len(r.footers), r.rows_skipped) == (8, 3, 1, 1, 4)
    assert r.amount_in == Decimal("39.50")
    assert r.skipped_exact
    [footer] = r.footers
    assert (footer.sheet, footer.row, footer.amount, footer.rows_sum) == (None, 12, Decimal("39.50"), Decimal("39.50"))
    assert footer.values == {"payment_id": "Total", "amount": "39.50"} and footer.agrees
    [copy] = r.copies
    assert (copy.row, copy.copy_of_row, copy.key, copy.amount) == (10, 2, {"payment_id": "P1"}, Decimal("10.5"))
    assert r.keys == [("P1",), ("P2",), ("P3",), ("P5",), ('Pizza Base 12" x10',), ("P1",), ("P6",)]


def test_csv_with_lines_above_the_header_separators_and_a_grand_total(tmp_path):
    text = ("Expense export\n"
            "generated 08/01/2024; by the accounts package\n"
            "Expense ID;Date;Category;Amount\n"      # row 3
            "EX-1;05/01/2024;Rent;1.007,48\n"        # 4: 1007.48
            "EX-2;06/01/2024;Rent;1,234.56\n"        # 5: refused under decimal ',' and thousands '.'
            "EX-3;07/01/2024;Rent;£ 12,5\n"          # 6: 12.5
            "EX-4;08/01/2024;Rent;€12,50\n"          # 7: another currency: refused
            "EX-5;09/01/2024;Rent;(3,00)\n"          # 8: -3.00
            "Grand total: ;;;1.016,98\n")            # 9: footer
    costs = source("operating_costs", COSTS, delimiter=";", decimal=",", thousands=".", header_row=2,
                   date_format="%d/%m/%Y")
    r = read_object(write(tmp_path, text), costs, "GBP")
    assert (r.rows_read, r.rows_skipped, r.amount_in) == (5, 1, Decimal("1016.98"))
    assert [(f.row, f.amount, f.rows_sum, f.agrees) for f in r.footers] == [
        (9, Decimal("1016.98"), Decimal("1016.98"), True)]


def test_a_footer_whose_total_differs_from_the_rows_above_it(tmp_path):
    text = "Payment Ref,Date Received,Client Code,Amount\nP1,2024-01-05,C1,10\nP2,2024-01-05,C1,5\nTOTAL:,,,16\n"
    [footer] = read_object(write(tmp_path, text), source("payments", PAYMENTS), "GBP").footers
    assert (footer.row, footer.amount, footer.rows_sum, footer.agrees) == (4, Decimal(16), Decimal(15), False)


def test_header_names_match_after_white_space_and_case_and_the_first_of_a_repeated_name_is_mapped(tmp_path):
    text = "  payment   REF ,DATE received,client code,amount,Amount\nP1,2024-01-05,C1,10,99\n"
    r = read_object(write(tmp_path, text), source("payments", PAYMENTS), "GBP")
    assert (r.rows_read, r.amount_in) == (1, Decimal(10))
    with pytest.raises(ReadError, match="'Payment Ref' \\(for payment_id\\)"):
        read_object(write(tmp_path, "Date Received,Client Code,Amount\n2024-01-05,C1,10\n"),
                    source("payments", PAYMENTS), "GBP")
    # an optional column outside the key may be missing: its rows hold no value for it
    assert read_object(write(tmp_path, "Payment Ref,Date Received,Amount\nP1,2024-01-05,10\n"),
                       source("payments", PAYMENTS), "GBP").rows_read == 1


def test_encodings_bom_and_utf16(tmp_path):
    text = "Period,Tax,Amount £\r\n2024-01-01,VAT,£1000.00\r\n2024-01-01,PAYE,250\r\n"
    tax = source("tax", TAX, encoding="cp1252")
    r = read_object(write(tmp_path, text, encoding="cp1252"), tax, "GBP")
    assert (r.rows_read, r.amount_in) == (2, Decimal("1250.00"))
    assert r.keys == [("2024-01-01", "VAT"), ("2024-01-01", "PAYE")]
    # a UTF-8 byte-order mark is skipped; a UTF-16 one settles the encoding whatever the setting says
    assert read_object(write(tmp_path, text, encoding="utf-8-sig"), source("tax", TAX), "GBP").rows_read == 2
    assert read_object(write(tmp_path, text, encoding="utf-16"), source("tax", TAX), "GBP").amount_in == 1250
    with pytest.raises(ReadError) as refused:
        read_object(write(tmp_path, text, encoding="utf-16-le"), source("tax", TAX), "GBP")
    assert str(refused.value) == "looks like UTF-16 text without a byte-order mark; set read.encoding: utf-16le"
    # declared, UTF-16 without a byte-order mark is read in the order the setting names
    for declared, codec in (("utf-16le", "utf-16-le"), ("utf-16be", "utf-16-be")):
        r = read_object(write(tmp_path, text, encoding=codec), source("tax", TAX, encoding=declared), "GBP")
        assert (r.rows_read, r.amount_in) == (2, Decimal("1250.00")), declared
    with pytest.raises(ReadError, match="not utf-8 text"):
        read_object(write(tmp_path, text, encoding="cp1252"), source("tax", TAX), "GBP")


def test_a_quote_never_closed_or_closed_before_more_text_fails(tmp_path):
    header = "Payment Ref,Date Received,Client Code,Amount\n"
    payments = source("payments", PAYMENTS)
    with pytest.raises(ReadError, match="line 3: a quoted value opens and never closes"):
        read_object(write(tmp_path, header + 'P1,2024-01-05,C1,1\nP2,"2024-01-05,C1,1\nP3,2024-01-05,C1,1\n'),
                    payments, "GBP")
    with pytest.raises(ReadError, match="line 2: 'x' follows the quote"):
        read_object(write(tmp_path, header + 'P1,"2024"x,C1,1\n'), payments, "GBP")
    # a doubled quote is one quote; a quote after the start of a value is a character
    r = read_object(write(tmp_path, header + '"P""1",2024-01-05,C1,1\nP"2,2024-01-05,C1,1\n'), payments, "GBP")
    assert r.keys == [('P"1',), ('P"2',)]


def test_a_header_alone_and_a_last_record_without_a_line_end(tmp_path):
    payments = source("payments", PAYMENTS)
    header = "Payment Ref,Date Received,Client Code,Amount"
    assert read_object(write(tmp_path, header), payments, "GBP").rows_read == 0
    r = read_object(write(tmp_path, header + "\nP1,2024-01-05,C1"), payments, "GBP")  # ragged, last
    assert (r.rows_read, r.ragged, r.amount_in) == (1, 1, 0)
    r = read_object(write(tmp_path, header + '\nP1,2024-01-05,C1,"1"'), payments, "GBP")
    assert (r.rows_read, r.amount_in) == (1, 1)


def test_empty_file_and_missing_header(tmp_path):
    with pytest.raises(ReadError, match="empty"):
        read_object(write(tmp_path, b""), source("payments", PAYMENTS), "GBP")
    with pytest.raises(ReadError, match="no header on row 3"):
        read_object(write(tmp_path, "a\nb\n\nP1,2024-01-05,C1,1\n"), source("payments", PAYMENTS, header_row=2), "GBP")


def test_natural_keys_integers_as_digits_dates_as_iso_when_the_order_is_known(tmp_path):
    sales = ("Order No,Line,Order Date,Client Code,Qty,Unit Price,Line Total\n"
             "SO-1,01,2024-01-05,C1,2,5.00,10.00\nSO-1, 2 ,2024-01-05,C1,1,5.00,5.00\nSO-2,x,2024-01-05,C1,1,5,5\n")
    r = read_object(write(tmp_path, sales), source("sales", SALES), "GBP")
    assert (r.keys, r.keys_left_out, r.amount_in) == ([("SO-1", "1"), ("SO-1", "2")], 1, Decimal("20.00"))

    tax = "Period,Tax,Amount £\n01/02/2024,VAT,10\n13/03/2024,PAYE,20\n2024-04-01,VAT,5\n"
    undeclared = source("tax", TAX).model_copy(update={"read": ReadOptions().model_copy(update={"dayfirst": None})})
    # 13/03/2024 settles the file's order: day first
    assert read_object(write(tmp_path, tax), undeclared, "GBP").keys == [
        ("2024-02-01", "VAT"), ("2024-03-13", "PAYE"), ("2024-04-01", "VAT")]
    ambiguous = "Period,Tax,Amount £\n01/02/2024,VAT,10\n"
    r = read_object(write(tmp_path, ambiguous), undeclared, "GBP")
    assert (r.keys, r.keys_left_out, r.rows_read) == ([], 1, 1)
    assert read_object(write(tmp_path, ambiguous), undeclared, "GBP", locale="en-US").keys == [("2024-01-02", "VAT")]
    # the configuration takes a locale written either way (babel's en_US too), and so does the reading
    assert read_object(write(tmp_path, ambiguous), undeclared, "GBP", locale="en_US").keys == [("2024-01-02", "VAT")]
    assert read_object(write(tmp_path, ambiguous), undeclared, "GBP", locale="en-GB").keys == [("2024-02-01", "VAT")]
    assert read_object(write(tmp_path, ambiguous), source("tax", TAX, dayfirst=True), "GBP").keys == [
        ("2024-02-01", "VAT")]
    assert read_object(write(tmp_path, ambiguous), source("tax", TAX, date_format="%m/%d/%Y"), "GBP").keys == [
        ("2024-01-02", "VAT")]


# -- workbooks ----------------------------------------------------------------------------------------------
def xlsxwriter_payments(path: Path) -> Path:
    wb = xlsxwriter.Workbook(str(path))
    fmt = wb.add_format({"bold": True})
    summary = wb.add_worksheet("Summary")
    summary.write_string(0, 0, "not read: it does not match the pattern")
    a = wb.add_worksheet("Payments - A")
    a.write_string(0, 0, "Payments received")                        # row 1; row 2 empty
    a.write_row(2, 0, list(PAYMENTS.values()) + ["Note"], fmt)       # row 3: the header (header_row 2)
    a.write_row(3, 0, ["P1", "2024-01-05", "C1"])
    a.write_number(3, 3, 22.368000000000002)                         # row 4: 22.368
    a.write_row(4, 0, ["P2", "2024-01-06", "C2"])
    a.write_number(4, 3, 261.95999999999998)                         # row 5: 261.96
    a.write_string(5, 1, "   ")                                      # row 6: blank (spaces)
    a.write_row(6, 0, ["P3", "2024-01-07", "C3", "£1,234.50"])      # row 7: text under the separators: 1234.50
    a.write_row(7, 0, ["P4", "2024-01-08", "C4", "n/a"])             # row 8: read, not a number
    a.write_datetime(8, 1, dt.datetime(2024, 1, 9), wb.add_format({"num_format": "dd/mm/yyyy"}))
    a.write_row(8, 2, ["C5"])
    a.write_number(8, 3, 1)                                          # row 9: no ref (read), 1
    a.write_string(9, 0, "Total", fmt)
    a.write_formula(9, 3, "=SUM(D4:D9)", fmt, 1519.828)             # row 10: the footer, its cached value
    a.write_blank(10, 0, None, fmt)                                  # rows 11-12: formatting only
    a.set_row(11, 30, fmt)
    b = wb.add_worksheet("Payments - B")
    b.write_row(2, 0, list(PAYMENTS.values()))
    b.write_row(3, 0, ["P9", "2024-01-05", "C9"])
    b.write_number(3, 3, 10)
    b.write_row(4, 0, ["Total", "", "", 99])                         # its total is wrong
    hidden = wb.add_worksheet("Payments - Old")
    hidden.write_row(2, 0, list(PAYMENTS.values()))
    hidden.write_row(3, 0, ["P0", "2023-12-01", "C0", 1000])
    hidden.hide()
    wb.close()
    return path


def test_workbook_sheets_by_pattern_header_row_cells_and_footers(tmp_path):
    payments = source("payments", PAYMENTS, kind="excel", sheet_pattern="^Payments", header_row=2, thousands=",")
    r = read_object(xlsxwriter_payments(tmp_path / "p.xlsx"), payments, "GBP")
    assert r.sheets == ["Payments - A", "Payments - B"]  # the hidden sheet is not chosen by a pattern
    assert (r.rows_read, r.blank, len(r.footers)) == (6, 1, 2)  # rows 11-12 hold formatting only
    assert r.amount_in == Decimal("22.368") + Decimal("261.96") + Decimal("1234.50") + 1 + 10
    assert not r.skipped_exact
    fa, fb = r.footers
    assert (fa.sheet, fa.row, fa.amount, fa.rows_sum, fa.agrees) == (
        "Payments - A", 10, Decimal("1519.828"), Decimal("1519.828"), True)
    assert (fb.sheet, fb.row, fb.amount, fb.rows_sum, fb.agrees) == ("Payments - B", 5, Decimal(99), Decimal(10), False)
    assert r.keys == [("P1",), ("P2",), ("P3",), ("P4",), ("P9",)] and r.keys_left_out == 1  # row 9: no ref


def test_workbook_named_sheets_hidden_too_and_a_missing_name_fails(tmp_path):
    path = xlsxwriter_payments(tmp_path / "p.xlsx")
    named = source("payments", PAYMENTS, kind="excel", sheets=["Payments - Old"], header_row=2)
    r = read_object(path, named, "GBP")
    assert (r.sheets, r.rows_read, r.amount_in) == (["Payments - Old"], 1, Decimal(1000))
    with pytest.raises(ReadError, match="no sheet named 'Payments - New'"):
        read_object(path, source("payments", PAYMENTS, kind="excel", sheets=["Payments - New"]), "GBP")
    with pytest.raises(ReadError, match="no visible sheet matches"):
        read_object(path, source("payments", PAYMENTS, kind="excel", sheet_pattern="^Receipts"), "GBP")


def test_a_locked_or_old_or_damaged_workbook_is_named_for_what_it_is(tmp_path):
    import msoffcrypto
    from msoffcrypto.format.ooxml import OOXMLFile

    good = xlsxwriter_payments(tmp_path / "p.xlsx")
    excel = source("payments", PAYMENTS, kind="excel")
    locked = io.BytesIO()
    OOXMLFile(io.BytesIO(good.read_bytes())).encrypt("s3cret", locked)
    assert msoffcrypto.olefile.isOleFile(io.BytesIO(locked.getvalue()))  # as an .xls file is: an OLE container
    with pytest.raises(ReadError) as caught:
        read_object(write(tmp_path, locked.getvalue(), "locked.xlsx"), excel, "GBP")
    assert str(caught.value) == "password-protected or in the old .xls format"
    with pytest.raises(ReadError, match=r"^not a readable \.xlsx workbook \(BadZipFile: "):
        read_object(write(tmp_path, good.read_bytes()[:2000], "cut.xlsx"), excel, "GBP")


def test_openpyxl_workbook_first_visible_sheet_blank_rows_and_trailing_styles(tmp_path):
    wb = openpyxl.Workbook()
    hidden = wb.active
    hidden.title = "Old"
    hidden.sheet_state = "hidden"
    ws = wb.create_sheet("Payments")
    ws.append(list(PAYMENTS.values()))
    ws.append(["P1", dt.datetime(2024, 1, 5), "C1", 12.5])  # row 2
    ws.append([None, None, None, None])                     # row 3: no cells at all: blank
    ws.append(["P2", dt.datetime(2024, 1, 6), "C2", "(2.50)"])  # row 4: -2.50
    ws.append(["P1", dt.datetime(2024, 1, 5), "C1", 12.50])  # row 5: a copy of row 2
    ws.append([" ", "", None, None])                        # row 6: blank
    ws.append(["Grand Total", None, None, 22.5])            # row 7
    ws.cell(9, 1).font = Font(bold=True)                     # row 9: formatting only
    ws.cell(10, 2, None)
    notes = wb.create_sheet("Notes")  # a second visible sheet: without sheets or sheet_pattern, not read
    notes.append(list(PAYMENTS.values()))
    notes.append(["N1", dt.datetime(2024, 1, 7), "C3", 99])
    path = tmp_path / "o.xlsx"
    wb.save(path)
    r = read_object(path, source("payments", PAYMENTS, kind="excel"), "GBP")
    assert r.sheets == ["Payments"]
    assert (r.rows_read, r.blank, len(r.footers), r.amount_in) == (3, 2, 1, Decimal("22.50"))
    assert r.footers[0].agrees and r.footers[0].row == 7
    assert [(c.sheet, c.row, c.copy_of_row) for c in r.copies] == [("Payments", 5, 2)]
    assert r.keys == [("P1",), ("P2",), ("P1",)]


# -- the validation on the demo company ---------------------------------------------------------------------
def _object_batches(url: str) -> list[tuple]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("select batch_id, source, object_key, object_version, rows_read, amount_in from meta.batches "
                    "where status = 'committed' and object_key is not null order by batch_id")
        return cur.fetchall()


@pytest.mark.stack
def test_every_loaded_object_read_again_agrees_with_the_ledger(warehouse, tmp_path):  # noqa: F811
    url = warehouse.copy(warehouse.template, warehouse.root / "clean")
    report = run(url, tmp_path)
    assert not report.breached
    results = report.by_check("independent_reconciliation")
    assert {r.subject for r in results} == set(warehouse.config.sources)
    assert all(r.status == "pass" and r.findings == [] for r in results), [r.summary for r in results]
    assert sum(r.extra["re_read"] for r in results) == len(_object_batches(url))
    assert all(r.extra["not_re_read"] == [] for r in results)
    sales = report.result("independent_reconciliation", "sales")
    assert sales.summary.startswith(f"all {sales.extra['re_read']} objects read again independently agree with "
                                    "the ledger (rows read and amount in)")
    assert "delivered objects were read again independently" in (tmp_path / "accuracy.md").read_text()


@pytest.mark.stack
def test_a_ledger_that_disagrees_with_its_file_is_a_breach_naming_batch_object_and_figures(
        warehouse, tmp_path):  # noqa: F811
    url = warehouse.copy(warehouse.template, warehouse.root / "clean")
    batches = _object_batches(url)
    money = next(b for b in batches if b[1] == "sales" and b[4] > 3)
    rows = next(b for b in batches if b[1] == "payments")
    with psycopg2.connect(url) as conn, conn.cursor() as cur:  # as the database owner
        cur.execute("update meta.batches set amount_in = amount_in + 0.01 where batch_id = %s", (money[0],))
        cur.execute("update meta.batches set rows_read = rows_read + 1, rows_unchanged = rows_unchanged + 1 "
                    "where batch_id = %s", (rows[0],))
    report = run(url, tmp_path)
    assert report.breached
    assert {(r.check, r.subject) for r in report.failures} >= {("independent_reconciliation", "sales"),
                                                                ("independent_reconciliation", "payments")}
    [f] = report.result("independent_reconciliation", "sales").findings
    assert (f["batch_id"], f["file"], f["version"]) == money[:1] + money[2:4]
    assert f["problems"] == [f"amount in: ledger {money[5] + Decimal('0.01')}, file {money[5]}"]
    assert (f["ledger"]["amount_in"], f["independent"]["amount_in"]) == (money[5] + Decimal("0.01"), money[5])
    [g] = report.result("independent_reconciliation", "payments").findings
    assert (g["batch_id"], g["file"], g["version"]) == rows[:1] + rows[2:4]
    assert g["problems"] == [f"rows read: ledger {rows[4] + 1}, file {rows[4]}"]
    summary = report.result("independent_reconciliation", "sales").summary
    assert summary.startswith("1 of ") and f"batch {money[0]} {money[2]} (version {money[3]})" in summary
    text = (tmp_path / "accuracy.md").read_text()
    assert f"`{money[2]}`, batch {money[0]}, version {money[3]}: amount in: ledger" in text
    stored = json.loads((tmp_path / "accuracy.json").read_text())
    assert any(r["check"] == "independent_reconciliation" and r["status"] == "fail" for r in stored["results"])


@pytest.mark.stack
def test_objects_over_the_size_limit_or_past_the_time_budget_are_named_not_read(warehouse, tmp_path):  # noqa: F811
    url = warehouse.copy(warehouse.template, warehouse.root / "clean")
    report = run(url, tmp_path, thresholds={"reread_max_bytes": 0})
    results = report.by_check("independent_reconciliation")
    unread = [u for r in results for u in r.extra["not_re_read"]]
    assert len(unread) == len(_object_batches(url)) and sum(r.extra["re_read"] for r in results) == 0
    assert all("over accuracy.reread_max_bytes (0)" in u["reason"] and u["file"] and u["batch_id"] for u in unread)
    assert all(r.status == "pass" for r in results)  # a limit is not a breach; it is said
    assert "not read again" in report.result("independent_reconciliation", "sales").summary
    text = (tmp_path / "accuracy.md").read_text()
    assert f"; {len(unread)} were not:" in text and text.count("\n- not read again: ") == len(unread)
    # the footers of the payment workbooks could not be looked at: said, as a warning
    assert report.result("skipped_rows", "payments").status == "warn"

    budget = run(url, tmp_path / "budget", thresholds={"reread_budget_s": 0})
    unread = [u for r in budget.by_check("independent_reconciliation") for u in r.extra["not_re_read"]]
    assert unread and all("the time budget (0 s, accuracy.reread_budget_s) was spent" in u["reason"] for u in unread)


def test_api_pages_are_read_as_the_loader_reads_them_a_misdated_row_holds_no_money():
    """An invoice whose date does not fit api.formats is read and quarantined by the loader before typing, its
    money in no ledger figure: the independent reading counts the row and not its money. One without a date
    fits any format: typed, and quarantined there, its money in the batch's amount in. A JSON number in
    exponent form is the exact decimal it writes (1.5E+1 is 15)."""
    from playbook.accuracy.independent import read_api_pages
    from playbook.config import load_config

    source = load_config().sources["trade_invoices"]

    def invoice(number: str, day: str, amount: str) -> str:
        return (f'{{"InvoiceNumber": "{number}", "Date": "{day}", "Contact": {{"ContactNumber": "00042"}}, '
                f'"CurrencyCode": "GBP", "LineItems": [{{"ItemCode": "Oil", "Quantity": 1, "UnitAmount": {amount}, '
                f'"LineAmount": {amount}}}]}}')

    page = ('{"Invoices": [' + invoice("SO-1", "2024-01-01", "10.00") + ", "
            + invoice("SO-2", "/Date(1704067200000+0000)/", "1.5E+1") + ", "
            + invoice("SO-3", "", "7.25") + "]}").encode()  # no date: typed, and quarantined with its money
    reading = read_api_pages([page], source, "GBP")
    assert (reading.rows_read, reading.amount_in) == (3, Decimal("15") + Decimal("7.25"))


def test_api_dates_are_read_by_their_declared_strftime_format():
    """api.formats may be a strftime pattern (a day-first API): a date written that way fits, and its money is
    in; one written otherwise (ISO, where %d/%m/%Y was declared) holds no money."""
    from playbook.accuracy.independent import read_api_pages
    from playbook.config import load_config

    source = load_config().sources["trade_invoices"]
    source = source.model_copy(update={"api": source.api.model_copy(update={"formats": {"order_date": "%d/%m/%Y"}})})

    def invoice(number: str, day: str, amount: str) -> str:
        return (f'{{"InvoiceNumber": "{number}", "Date": "{day}", "Contact": {{"ContactNumber": "00042"}}, '
                f'"CurrencyCode": "GBP", "LineItems": [{{"ItemCode": "Oil", "Quantity": 1, "UnitAmount": {amount}, '
                f'"LineAmount": {amount}}}]}}')

    page = ('{"Invoices": [' + invoice("SO-1", "05/01/2024", "10.01") + ", "
            + invoice("SO-2", "2024-01-05", "3.03") + ", " + invoice("SO-3", "31/12/2024", "0.07") + "]}").encode()
    reading = read_api_pages([page], source, "GBP")
    assert (reading.rows_read, reading.amount_in) == (3, Decimal("10.01") + Decimal("0.07"))
