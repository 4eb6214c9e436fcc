"""Files made the way real SME exports look, each with the source configuration that loads it and what it
must give; and an independent reading of them (pandas' C parser for text files, openpyxl for workbooks) that
applies the loader's reading contract without sharing any of its code.

Everything is generated here from literal data or a fixed seed; LibreOffice writes the workbooks that say so.
"""

from __future__ import annotations

import codecs
import datetime as dt
import io
import random
import re
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import openpyxl
import pandas as pd
import xlsxwriter
from openpyxl.utils.datetime import from_excel

from pipeline.model import TABLES

SOURCE = "corpus"  # the source each fixture is loaded as, beside the demo company's
PREFIX = "landing/corpus/"

SALES_HEADER = ["Order No", "Line", "Order Date", "Client Code", "Product", "Qty", "Unit Price", "Line Total",
                "Currency"]
COSTS_HEADER = ["Expense ID", "Date", "Category", "Supplier", "Amount"]
PAYMENTS_HEADER = ["Payment Ref", "Date Received", "Client Code", "Invoice", "Method", "Amount"]
SALES_COLUMNS = dict(zip(TABLES["sales"].column_names, SALES_HEADER, strict=True))
# the cost and payment exports name no currency: their rows have the company's
COSTS_COLUMNS = dict(zip(TABLES["operating_costs"].column_names[:-1], COSTS_HEADER, strict=True))
PAYMENTS_COLUMNS = dict(zip(TABLES["payments"].column_names[:-1], PAYMENTS_HEADER, strict=True))

CLIENTS = ["C-0042", "C-0043", "C-0107", "C-0311", "C-0420", "C-0999"]
PRODUCTS = ["Widget", "Gadget", "Olive Oil 5L", "Flour 25kg", "Espresso Beans 1kg", "Napkins x500"]
CURRENCY_MARKS = {"GBP": "£", "USD": "$", "EUR": "€", "JPY": "¥"}
DEFAULT_FOOTER = r"(?i)^\s*(grand\s+)?totals?(\s|:|$)"


@dataclass(frozen=True)
class Expected:
    """What loading the file must give: `loaded` rows worth `total` in core, the rows quarantined (each with
    fragments of its reason), or, when `failed` holds fragments of the error, a failed batch."""

    loaded: int = 0
    total: Decimal = Decimal(0)
    quarantined: dict[int, tuple[str, ...]] = field(default_factory=dict)
    failed: tuple[str, ...] = ()
    values: tuple[tuple[str, str, object], ...] = ()  # (first key column's value, column, value in core)


@dataclass(frozen=True)
class Fixture:
    name: str  # the object's file name
    body: bytes
    source: dict  # kind, table, columns and read options of the source that loads it
    expected: Expected
    company: dict = field(default_factory=dict)  # company settings to set (None: to remove) for this load


@dataclass(frozen=True)
class Formula:
    """A formula cell and the value Excel cached for it."""

    text: str
    cached: float


def source(kind: str, table: str, columns: dict[str, str], **read) -> dict:
    return {"kind": kind, "table": table, "columns": columns, "read": read}


def _money(rng: random.Random, low: int, high: int) -> Decimal:
    return Decimal(rng.randint(low * 100, high * 100)) / 100


def _cell(value):
    return float(value) if isinstance(value, Decimal) else value


def xlsxwriter_book(sheets: dict[str, list[list]]) -> bytes:
    """A workbook in Excel's own file layout (shared strings, dates as serials with a date format)."""
    buffer = io.BytesIO()
    wb = xlsxwriter.Workbook(buffer, {"in_memory": True})
    date_format = wb.add_format({"num_format": "dd/mm/yyyy"})
    for name, rows in sheets.items():
        ws = wb.add_worksheet(name)
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                if isinstance(value, Formula):
                    ws.write_formula(r, c, value.text, None, value.cached)
                elif isinstance(value, dt.date):
                    ws.write_datetime(r, c, dt.datetime.combine(value, dt.time()), date_format)
                elif isinstance(value, str):
                    ws.write_string(r, c, value)
                elif value is not None:
                    ws.write_number(r, c, _cell(value))
    wb.close()
    return buffer.getvalue()


def openpyxl_book(sheets: dict[str, list[list]]) -> bytes:
    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for name, rows in sheets.items():
        ws = wb.create_sheet(name)
        for r, row in enumerate(rows, start=1):
            for c, value in enumerate(row, start=1):
                if value is not None:
                    ws.cell(r, c, _cell(value))
    buffer = io.BytesIO()
    wb.save(buffer)
    return buffer.getvalue()


def libreoffice_xlsx(name: str, data: bytes, infilter: str | None = None) -> bytes:
    """`data` (a CSV or a workbook named `name`) saved as .xlsx by LibreOffice Calc, headless."""
    soffice = shutil.which("soffice")
    if soffice is None:
        raise RuntimeError("LibreOffice (soffice) is not installed; scripts/system-deps.sh installs it")
    with tempfile.TemporaryDirectory(prefix="corpus-office-") as tmp:
        given, out = Path(tmp) / name, Path(tmp) / "out"
        given.write_bytes(data)
        command = [soffice, f"-env:UserInstallation={Path(tmp, 'profile').as_uri()}", "--headless", "--norestore",
                   "--convert-to", "xlsx:Calc MS Excel 2007 XML", "--outdir", str(out)]
        if infilter:
            command.append(f"--infilter={infilter}")
        subprocess.run([*command, str(given)], check=True, capture_output=True, timeout=300)
        return (out / f"{given.stem}.xlsx").read_bytes()


def rewrite_member(book: bytes, member: str, change) -> bytes:
    """The workbook with one member's XML passed through `change` (bytes -> bytes), the rest as it was."""
    members = []
    with zipfile.ZipFile(io.BytesIO(book)) as zf:
        for info in zf.infolist():
            data = zf.read(info)
            members.append((info, change(data) if info.filename == member else data))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return buffer.getvalue()


def rewrite_values(book: bytes, sheet: str, values: dict[str, str]) -> bytes:
    """The workbook with the `<v>` of the given cells (e.g. {"H2": "22.368000000000002"}) rewritten."""
    def change(data: bytes) -> bytes:
        for ref, text in values.items():
            data, n = re.subn(rb'(<c r="' + ref.encode() + rb'"[^>]*>(?:<f>[^<]*</f>)?<v>)[^<]*(</v>)',
                              rb"\g<1>" + text.encode() + rb"\g<2>", data)
            if n != 1:
                raise ValueError(f"cell {ref} not found in {sheet}")
        return data

    return rewrite_member(book, f"xl/worksheets/{sheet}.xml", change)


def csv_bytes(header: list[str], rows: list[list[str]], delimiter: str = ",", newline: str = "\n",
              encoding: str = "utf-8") -> bytes:
    """Values written exactly as given (a quoted value arrives quoted): an export's text, byte for byte."""
    lines = [delimiter.join(header), *(delimiter.join(str(v) for v in row) for row in rows)]
    return "".join(line + newline for line in lines).encode(encoding)


def _spelled(amount: Decimal, decimal: str = ".", thousands: str = "") -> str:
    return f"{amount:,.2f}".replace(",", "\0").replace(".", decimal).replace("\0", thousands)


# -- 1. bank statements ------------------------------------------------------------------------------------

STATEMENT_FOOTERS = r"(?i)^\s*((grand\s+)?totals?|closing\s+balance)(\s|:|$)"


def bank_statement_header_on_row_5() -> Fixture:
    """A bank's business-account statement (Excel's layout): title, account number, opening balance and a
    blank row above the header on row 5; money in as numeric cells; a SUM TOTAL row and the closing balance
    below, both footers."""
    rng = random.Random(101)
    opening = Decimal("1234.56")
    header = ["Date", "Reference", "Counterparty", "Type", "Paid in", "Balance"]
    rows = [["Northgate Bank plc - Business Current Account"], ["Account number", "20-45-67 43218765"],
            ["Opening balance", None, None, None, None, opening], [], header]
    balance = opening
    for i in range(14):
        amount = _money(rng, 5, 4000)
        balance += amount
        rows.append([dt.date(2024, 3, 1) + dt.timedelta(days=i), f"FPI{rng.randint(10**6, 10**7 - 1)}",
                     rng.choice(CLIENTS), "Faster Payment", amount, balance])
    total = balance - opening
    rows += [["TOTAL", None, None, None, Formula("=SUM(E6:E19)", float(total)), None],
             ["Closing balance", None, None, None, None, balance]]
    columns = {"payment_id": "Reference", "payment_date": "Date", "client_id": "Counterparty", "method": "Type",
               "amount": "Paid in"}
    return Fixture("statement-2024-03.xlsx", xlsxwriter_book({"Statement": rows}),
                   source("excel", "payments", columns, header_row=4, skip_rows_matching=STATEMENT_FOOTERS),
                   Expected(loaded=14, total=total))


def bank_statement_header_on_row_12_total_in_third_column() -> Fixture:
    """A statement re-saved by a bookkeeper (openpyxl): eleven rows of account details and blank rows, the
    header on row 12, dates as day-first text, a blank row after the lines and a TOTAL whose label sits in
    the third column (the row's first non-empty cell)."""
    rng = random.Random(112)
    header = ["Date", "Description", "Payer", "Ref", "Credit"]
    rows = [["Statement of account"], ["Sort code", "30-91-12"], ["Account", "00412233"],
            ["Period", "01/04/2024 to 30/04/2024"], ["Opening balance", 5000.0], [], [], [], [], [], [], header]
    lines = []
    for i in range(9):
        amount = _money(rng, 20, 900)
        lines.append([f"{3 + 3 * i:02d}/04/2024", f"Invoice {7000 + i} settled", rng.choice(CLIENTS),
                      f"CR-{i + 1:04d}", amount])
    total = sum(line[4] for line in lines)
    rows += [*lines, [], [None, None, "TOTAL", None, total]]
    columns = {"payment_id": "Ref", "payment_date": "Date", "client_id": "Payer", "invoice_ref": "Description",
               "amount": "Credit"}
    return Fixture("statement-2024-04.xlsx", openpyxl_book({"April": rows}),
                   source("excel", "payments", columns, header_row=11, dayfirst=True),
                   Expected(loaded=9, total=total, values=(("CR-0001", "payment_date", dt.date(2024, 4, 3)),)))


# -- 2. decimal commas -------------------------------------------------------------------------------------

def accounting_workbook_with_decimal_commas() -> Fixture:
    """An expense workbook from a continental accounting package: amounts typed as numbers (579.68 is a
    double, whatever the separators) in one column with amounts pasted as text ('1.234,56')."""
    amounts = [579.68, "1.234,56", 1000, "544,00", 12.5, "0,99", 2345.6, "12.345,67"]
    rows = [COSTS_HEADER] + [[f"EX-{101 + i}", dt.date(2024, 2, 1 + i), "Stock", "Großmarkt GmbH", amount]
                             for i, amount in enumerate(amounts)]
    total = Decimal("579.68") + Decimal("1234.56") + 1000 + Decimal("544.00") + Decimal("12.5") + Decimal("0.99") \
        + Decimal("2345.6") + Decimal("12345.67")
    return Fixture("expenses-2024-02.xlsx", openpyxl_book({"Ausgaben": rows}),
                   source("excel", "operating_costs", COSTS_COLUMNS, decimal=",", thousands="."),
                   Expected(loaded=8, total=total, values=(("EX-101", "amount", Decimal("579.68")),
                                                           ("EX-103", "amount", Decimal(1000)))))


def accounting_csv_with_semicolons_and_decimal_commas() -> Fixture:
    """A semicolon-separated expense export with decimal commas and thousands dots; a UK-formatted
    '1,234.56' and a '12.34' pasted in are not numbers under those separators."""
    amounts = ["4.250,00", "579,68", "12.345.678,90", "0,5", "1,234.56", "12.34", "1234,56", ",75"]
    rows = [[f"EX-{201 + i}", f"{3 + i:02d}/01/2024", "Office", '"Byte; Co"', amount]
            for i, amount in enumerate(amounts)]
    total = Decimal("4250.00") + Decimal("579.68") + Decimal("12345678.90") + Decimal("0.5") + Decimal("1234.56") \
        + Decimal("0.75")
    return Fixture("expenses-2024-01.csv", csv_bytes(COSTS_HEADER, rows, ";"),
                   source("s3_csv", "operating_costs", COSTS_COLUMNS, delimiter=";", decimal=",", thousands=".",
                          dayfirst=True),
                   Expected(loaded=6, total=total, quarantined={6: ("amount '1,234.56'", "read.decimal"),
                                                                7: ("amount '12.34'",)},
                            values=(("EX-202", "vendor", "Byte; Co"),)))


# -- 3. the same workbook from three writers, and Excel's float noise ---------------------------------------

def _sales_lines(seed: int, n: int = 24) -> list[list]:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        quantity, price = rng.randint(1, 12), _money(rng, 1, 60)
        lines.append([f"SO-{5000 + i // 3}", i % 3 + 1, dt.date(2024, 5, 1) + dt.timedelta(days=i // 3),
                      rng.choice(CLIENTS), rng.choice(PRODUCTS), quantity, price, quantity * price, "GBP"])
    return lines


def _sales_expected(lines: list[list]) -> Expected:
    return Expected(loaded=len(lines), total=sum(line[7] for line in lines),
                    values=((lines[0][0], "order_date", lines[0][2]),))


def sales_workbook_by_xlsxwriter() -> Fixture:
    """Order lines in a workbook written by xlsxwriter, which writes Excel's own file layout."""
    lines = _sales_lines(301)
    return Fixture("orders-xlsxwriter.xlsx", xlsxwriter_book({"Orders": [SALES_HEADER, *lines]}),
                   source("excel", "sales", SALES_COLUMNS), _sales_expected(lines))


def sales_workbook_by_openpyxl() -> Fixture:
    """The same kind of order lines written by openpyxl (inline layout, its own number spelling)."""
    lines = _sales_lines(302)
    return Fixture("orders-openpyxl.xlsx", openpyxl_book({"Orders": [SALES_HEADER, *lines]}),
                   source("excel", "sales", SALES_COLUMNS), _sales_expected(lines))


def sales_workbook_by_libreoffice_from_csv() -> Fixture:
    """An order-line CSV opened in LibreOffice Calc and saved as .xlsx: ISO dates become date cells,
    amounts numbers, client codes text."""
    lines = _sales_lines(303)
    text = csv_bytes(SALES_HEADER, [[line[0], line[1], line[2].isoformat(), line[3], line[4], line[5],
                                     f"{line[6]:.2f}", f"{line[7]:.2f}", line[8]] for line in lines])
    # comma, double quote, UTF-8, from line 1; columns: standard, date YMD (3) or text (1, 4, 5, 9); en-US
    infilter = "CSV:44,34,76,1,1/2/2/1/3/5/4/2/5/2/6/1/7/1/8/1/9/2,1033"
    return Fixture("orders-libreoffice-csv.xlsx", libreoffice_xlsx("orders.csv", text, infilter),
                   source("excel", "sales", SALES_COLUMNS), _sales_expected(lines))


def sales_workbook_resaved_by_libreoffice() -> Fixture:
    """An openpyxl workbook of order lines opened and saved again by LibreOffice Calc."""
    lines = _sales_lines(304)
    book = openpyxl_book({"Orders": [SALES_HEADER, *lines]})
    return Fixture("orders-libreoffice.xlsx", libreoffice_xlsx("orders.xlsx", book),
                   source("excel", "sales", SALES_COLUMNS), _sales_expected(lines))


def sales_workbook_with_excel_float_noise() -> Fixture:
    """Order lines whose totals are =Qty*Price formulas, with the cells' values spelled as Excel stores them:
    17 significant digits ('22.368000000000002' for 6 x 3.728, '261.95999999999998' for 4 x 65.49,
    '0.30000000000000004' for 3 x 0.1). Excel shows and sums 15 of them."""
    lines = [(6, 3.728), (4, 65.49), (3, 0.1), (12, 1.15), (7, 19.99), (2, 11.184)]
    rows, noise, total = [SALES_HEADER], {}, Decimal(0)
    for i, (quantity, price) in enumerate(lines):
        r = i + 2
        rows.append([f"SO-{6000 + i}", 1, dt.date(2024, 6, 3), "C-0042", "Widget", quantity, price,
                     Formula(f"=F{r}*G{r}", quantity * price), "GBP"])
        noise[f"G{r}"] = f"{price:.17g}"
        noise[f"H{r}"] = f"{quantity * price:.17g}"
        total += Decimal(f"{quantity * price:.15g}")
    body = rewrite_values(xlsxwriter_book({"Orders": rows}), "sheet1", noise)
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        sheet = zf.read("xl/worksheets/sheet1.xml")
    if b"<v>22.368000000000002</v>" not in sheet or b"<v>261.95999999999998</v>" not in sheet:
        raise AssertionError("the workbook does not hold Excel's 17-digit spellings")
    return Fixture("orders-excel-noise.xlsx", body, source("excel", "sales", SALES_COLUMNS),
                   Expected(loaded=len(lines), total=total,
                            values=(("SO-6000", "amount", Decimal("22.368")),
                                    ("SO-6001", "amount", Decimal("261.96")), ("SO-6002", "amount", Decimal("0.3")),
                                    ("SO-6000", "unit_price", Decimal("3.728")))))


# -- 4. headers ----------------------------------------------------------------------------------------------

def sales_csv_with_padded_and_repeated_headers() -> Fixture:
    """Order lines whose header pads names (' Line ', ' Sales '), doubles a space ('Order  Date') and has a
    second 'Sales' column (the salesperson): the first 'Sales' is the amount."""
    header = ["Order No", " Line ", "Order  Date", "Client Code", "Product", "Qty", "Unit Price", " Sales ",
              "Currency", "Sales"]
    rng = random.Random(401)
    rows, total = [], Decimal(0)
    for i in range(12):
        quantity, price = rng.randint(1, 9), _money(rng, 1, 40)
        total += quantity * price
        rows.append([f"SO-{7000 + i}", "1", "2024-06-10", rng.choice(CLIENTS), rng.choice(PRODUCTS), str(quantity),
                     f"{price:.2f}", f"{quantity * price:.2f}", "GBP", rng.choice(["J. Patel", "M. Okafor"])])
    columns = {**SALES_COLUMNS, "line_no": "Line", "order_date": "Order Date", "amount": "Sales"}
    return Fixture("orders-headers.csv", csv_bytes(header, rows), source("s3_csv", "sales", columns),
                   Expected(loaded=12, total=total))


def payments_workbook_with_untidy_headers() -> Fixture:
    """A payment platform's workbook: names padded (' Payment Ref', 'Client  Code '), a line break inside a
    header cell ('Date' / 'Received') and 'Amount' twice, gross then net of fees: the first is mapped."""
    header = [" Payment Ref", "Date\nReceived", "Client  Code ", "Invoice", "Method", " Amount ", "Amount"]
    rng = random.Random(402)
    rows, total = [header], Decimal(0)
    for i in range(10):
        gross = _money(rng, 10, 800)
        total += gross
        rows.append([f"PP-{i + 1}", dt.date(2024, 7, 1 + i), rng.choice(CLIENTS), f"INV-{8000 + i}", "Card", gross,
                     gross - Decimal("0.20") - (gross * Decimal("0.014")).quantize(Decimal("0.01"))])
    columns = {**PAYMENTS_COLUMNS, "payment_date": "Date Received"}
    return Fixture("payouts-2024-07.xlsx", openpyxl_book({"Payments": rows}), source("excel", "payments", columns),
                   Expected(loaded=10, total=total))


# -- 5. placeholders -------------------------------------------------------------------------------------------

PLACEHOLDERS = ["None", "n/a", "N/A", "-", "#N/A"]


def _placeholder_rows() -> tuple[list[list], Expected]:
    rows = [["P-1", "None", "BACS", Decimal("120.00")], ["P-2", "n/a", "N/A", Decimal("75.50")],
            ["P-3", "-", "#N/A", Decimal("10.00")], ["P-4", "#N/A", "-", Decimal("99.99")]]
    rows += [[f"P-{5 + i}", f"INV-{5 + i}", "BACS", text] for i, text in enumerate(PLACEHOLDERS)]
    rows = [[ref, dt.date(2024, 2, 1 + i), "C-0042", invoice, method, amount]
            for i, (ref, invoice, method, amount) in enumerate(rows)]
    quarantined = {6 + i: (f"amount '{text}'", "is not a number") for i, text in enumerate(PLACEHOLDERS)}
    values = (("P-1", "invoice_ref", "None"), ("P-2", "invoice_ref", "n/a"), ("P-2", "method", "N/A"),
              ("P-3", "invoice_ref", "-"), ("P-3", "method", "#N/A"), ("P-4", "invoice_ref", "#N/A"),
              ("P-4", "method", "-"))
    return rows, Expected(loaded=4, total=Decimal("305.49"), quarantined=quarantined, values=values)


def payments_csv_with_placeholders() -> Fixture:
    """A payments export where someone typed None, n/a, N/A, - or #N/A into the optional invoice and method
    columns (kept as text) and into the amount (not a number: the row is quarantined)."""
    rows, expected = _placeholder_rows()
    text = [[ref, day.isoformat(), client, invoice, method, amount] for ref, day, client, invoice, method, amount
            in rows]
    return Fixture("payments-placeholders.csv", csv_bytes(PAYMENTS_HEADER, text),
                   source("s3_csv", "payments", PAYMENTS_COLUMNS), expected)


def payments_workbook_with_placeholders() -> Fixture:
    """The same placeholders as text cells of a workbook in Excel's layout, beside numeric amounts."""
    rows, expected = _placeholder_rows()
    return Fixture("payments-placeholders.xlsx", xlsxwriter_book({"Payments": [PAYMENTS_HEADER, *rows]}),
                   source("excel", "payments", PAYMENTS_COLUMNS), expected)


# -- 6. currency marks -----------------------------------------------------------------------------------------

def _other_currency(currency: str) -> str:
    return "USD" if currency != "USD" else "EUR"


def costs_csv_with_currency_marks(currency: str) -> Fixture:
    """A card-statement export whose amounts carry the company currency's sign or code ('£12.00',
    '12.00 GBP', 'GBP 7.50', '£1,234.50'), and a few in another currency ('12.00 USD', '$12.00'), which are
    refused."""
    mark, other = CURRENCY_MARKS[currency], _other_currency(currency)
    amounts = [f"{mark}12.00", f"12.00 {currency}", f"{currency} 7.50", f'"{mark}1,234.50"', f"{mark}0.99",
               f"12.00 {other}", f"{CURRENCY_MARKS[other]}12.00"]
    rows = [[f"EX-{301 + i}", f"2024-04-{2 + i:02d}", "Software", "Cloud Co", a] for i, a in enumerate(amounts)]
    return Fixture("card-2024-04.csv", csv_bytes(COSTS_HEADER, rows),
                   source("s3_csv", "operating_costs", COSTS_COLUMNS, thousands=","),
                   Expected(loaded=5, total=Decimal("1266.99"),
                            quarantined={7: (f"amount '12.00 {other}'",),
                                         8: (f"amount '{CURRENCY_MARKS[other]}12.00'",)}))


def costs_csv_decimal_comma_with_currency_words(currency: str) -> Fixture:
    """An accounting export with decimal commas and the currency written beside the amount ('579,68 GBP',
    '1.234,56 £'); '12,00 USD' and \"'544,00 $\" are in another currency."""
    mark, other = CURRENCY_MARKS[currency], _other_currency(currency)
    amounts = [f"579,68 {currency}", f"1.234,56 {mark}", f"{currency} 0,99", f"{mark}12,00", f"12,00 {other}",
               f"'544,00 {CURRENCY_MARKS[other]}"]
    rows = [[f"EX-{401 + i}", f"{2 + i:02d}/04/2024", "Stock", "Fresh Foods", a] for i, a in enumerate(amounts)]
    return Fixture("stock-2024-04.csv", csv_bytes(COSTS_HEADER, rows, ";"),
                   source("s3_csv", "operating_costs", COSTS_COLUMNS, delimiter=";", decimal=",", thousands=".",
                          dayfirst=True),
                   Expected(loaded=4, total=Decimal("1827.23"),
                            quarantined={6: (f"amount '12,00 {other}'",), 7: ("amount", "544,00")},
                            values=(("EX-401", "amount", Decimal("579.68")),)))


# -- 7. text dates ---------------------------------------------------------------------------------------------

def _dated_costs(name: str, dates: list[str], **read) -> tuple[str, bytes, dict]:
    rows = [[f"EX-{i + 1}", day, "Utilities", "Power Co", f"{10 + i}.00"] for i, day in enumerate(dates)]
    return name, csv_bytes(COSTS_HEADER, rows), source("s3_csv", "operating_costs", COSTS_COLUMNS, **read)


def costs_csv_month_first_with_times() -> Fixture:
    """A US system's export: month-first dates without padding and with a time ('2/24/2003 0:00'),
    declared read.dayfirst: false."""
    dates = ["2/24/2003 0:00", "12/1/2003 0:00", "1/15/2004 13:45", "3/7/2004 9:05"]
    return Fixture(*_dated_costs("us-costs.csv", dates, dayfirst=False),
                   Expected(loaded=4, total=Decimal(46), values=(
                       ("EX-1", "cost_date", dt.date(2003, 2, 24)), ("EX-2", "cost_date", dt.date(2003, 12, 1)),
                       ("EX-4", "cost_date", dt.date(2004, 3, 7)))))


TWO_DIGIT_YEARS = ["03/04/20", "28/02/21", "15/06/99", "31/12/68"]


def costs_csv_two_digit_years_without_a_format() -> Fixture:
    """Dates with two-digit years ('03/04/20'), day first, and no read.date_format: every date is refused."""
    return Fixture(*_dated_costs("yy-costs.csv", TWO_DIGIT_YEARS, dayfirst=True),
                   Expected(quarantined={2 + i: (f"cost_date '{d}'",) for i, d in enumerate(TWO_DIGIT_YEARS)}))


def costs_csv_two_digit_years_with_a_format() -> Fixture:
    """The same dates with read.date_format '%d/%m/%y': 00-68 are 20xx, 69-99 19xx."""
    return Fixture(*_dated_costs("yy-costs.csv", TWO_DIGIT_YEARS, date_format="%d/%m/%y"),
                   Expected(loaded=4, total=Decimal(46), values=(
                       ("EX-1", "cost_date", dt.date(2020, 4, 3)), ("EX-3", "cost_date", dt.date(1999, 6, 15)),
                       ("EX-4", "cost_date", dt.date(2068, 12, 31)))))


def costs_csv_ambiguous_day_month() -> Fixture:
    """Dates such as '01/02/2024' with no order declared, no company locale, and no value that settles it:
    the batch fails and says to set read.dayfirst."""
    return Fixture(*_dated_costs("ambiguous.csv", ["01/02/2024", "03/04/2024", "05/06/2024", "07/08/2024"]),
                   Expected(failed=("read.dayfirst",)), company={"locale": None})


def costs_csv_one_date_settles_day_first() -> Fixture:
    """The same kind of file where '13/02/2024' can only be day first, so '01/02/2024' is 1 February."""
    return Fixture(*_dated_costs("settled.csv", ["01/02/2024", "13/02/2024", "05/03/2024", "10/11/2024"]),
                   Expected(loaded=4, total=Decimal(46), values=(
                       ("EX-1", "cost_date", dt.date(2024, 2, 1)), ("EX-3", "cost_date", dt.date(2024, 3, 5)),
                       ("EX-4", "cost_date", dt.date(2024, 11, 10)))),
                   company={"locale": None})


# -- 8. Excel's "Unicode Text" -----------------------------------------------------------------------------

UNICODE_TEXT_ROWS = [["EX-701", "05/03/2024", "Coffee", "Café Nero", "12.50"],
                     ["EX-702", "06/03/2024", "Logistics", "Łódź Logistics Sp. z o.o.", "1,234.56"],
                     ["EX-703", "07/03/2024", "Insurance", "Zürich Versicherung", "987.00"],
                     ["EX-704", "08/03/2024", "Travel", "Αθήνα Travel", "45.10"]]
UNICODE_TEXT_EXPECTED = Expected(loaded=4, total=Decimal("2279.16"), values=(
    ("EX-701", "vendor", "Café Nero"), ("EX-702", "vendor", "Łódź Logistics Sp. z o.o."),
    ("EX-704", "vendor", "Αθήνα Travel"), ("EX-702", "amount", Decimal("1234.56"))))


def excel_unicode_text_export() -> Fixture:
    """Excel's "Unicode Text" save: UTF-16LE with a byte-order mark, tab-delimited, CRLF line ends."""
    body = codecs.BOM_UTF16_LE + csv_bytes(COSTS_HEADER, UNICODE_TEXT_ROWS, "\t", "\r\n", "utf-16-le")
    return Fixture("costs-unicode.txt", body,
                   source("s3_csv", "operating_costs", COSTS_COLUMNS, encoding="utf-16", delimiter="\t",
                          thousands=",", dayfirst=True), UNICODE_TEXT_EXPECTED)


def unicode_text_export_without_bom() -> Fixture:
    """The same export written without a byte-order mark, declared read.encoding: utf-16le."""
    body = csv_bytes(COSTS_HEADER, UNICODE_TEXT_ROWS, "\t", "\r\n", "utf-16-le")
    return Fixture("costs-unicode-nobom.txt", body,
                   source("s3_csv", "operating_costs", COSTS_COLUMNS, encoding="utf-16le", delimiter="\t",
                          thousands=",", dayfirst=True), UNICODE_TEXT_EXPECTED)


# -- 9. quotes -------------------------------------------------------------------------------------------------

STRAY_QUOTES = {100: 'Pizza Base 12" x10', 7000: 'Baking Tin 9" round', 19000: 'Cake Board 10" square'}


def sales_csv_with_stray_inch_marks(rows: tuple[int, ...] = (100,), n: int = 10_000) -> Fixture:
    """A 10,000-line order export whose product names hold an inch mark in an unquoted value
    ('Pizza Base 12" x10'): a literal character, not the start of a quoted value."""
    rng = random.Random(900 + len(rows))
    lines, total = [], Decimal(0)
    for i in range(n):
        row = i + 2
        quantity, price = rng.randint(1, 20), _money(rng, 1, 80)
        total += quantity * price
        product = STRAY_QUOTES[row] if row in rows else rng.choice(PRODUCTS)
        lines.append([f"SO-{100000 + i}", "1", (dt.date(2024, 1, 1) + dt.timedelta(days=i % 366)).isoformat(),
                      rng.choice(CLIENTS), product, str(quantity), f"{price:.2f}", f"{quantity * price:.2f}", "GBP"])
    return Fixture(f"orders-{n}-{len(rows)}-inch.csv", csv_bytes(SALES_HEADER, lines),
                   source("s3_csv", "sales", SALES_COLUMNS),
                   Expected(loaded=n, total=total,
                            values=tuple((f"SO-{100000 + row - 2}", "product", STRAY_QUOTES[row]) for row in rows)))


def costs_csv_with_quoted_line_breaks() -> Fixture:
    """An export whose supplier addresses span lines inside quotes (and hold commas and doubled quotes):
    each is one value, each record one row, so a bad amount after them is quarantined at its record's row."""
    rows = [["EX-801", "2024-07-01", "Rent", '"Harbour Estates\nUnit 4, Dock Road"', "1250.00"],
            ["EX-802", "2024-07-02", "Repairs", '"Fix-It ""Express"""', "80.00"],
            ["EX-803", "2024-07-03", "Repairs", '"Line one\nLine two\nLine three"', "45.00"],
            ["EX-804", "2024-07-04", "Office", "Paper Co", "1O.00"],
            ["EX-805", "2024-07-05", "Office", "Paper Co", "19.99"]]
    return Fixture("costs-addresses.csv", csv_bytes(COSTS_HEADER, rows),
                   source("s3_csv", "operating_costs", COSTS_COLUMNS),
                   Expected(loaded=4, total=Decimal("1394.99"), quarantined={5: ("amount '1O.00'", "is not a number")},
                            values=(("EX-801", "vendor", "Harbour Estates\nUnit 4, Dock Road"),
                                    ("EX-802", "vendor", 'Fix-It "Express"'),
                                    ("EX-803", "vendor", "Line one\nLine two\nLine three"))))


def costs_csv_with_windows_line_ends_inside_quotes() -> Fixture:
    """Excel's "CSV (Windows)": every record ends in CR LF, and so does a line break typed inside a quoted
    address; the value keeps its CR LF as the file has it (only the record's own line end is dropped)."""
    rows = [["EX-811", "2024-07-01", "Rent", '"Harbour Estates\r\nUnit 4, Dock Road"', "1250.00"],
            ["EX-812", "2024-07-02", "Repairs", "Fix-It", "80.00"],
            ["EX-813", "2024-07-03", "Repairs", '"Line one\r\nLine two"', "45.25"]]
    return Fixture("costs-crlf.csv", csv_bytes(COSTS_HEADER, rows, newline="\r\n"),
                   source("s3_csv", "operating_costs", COSTS_COLUMNS),
                   Expected(loaded=3, total=Decimal("1375.25"),
                            values=(("EX-811", "vendor", "Harbour Estates\r\nUnit 4, Dock Road"),
                                    ("EX-812", "vendor", "Fix-It"),
                                    ("EX-813", "vendor", "Line one\r\nLine two"))))


def costs_csv_with_a_quote_that_never_closes() -> Fixture:
    """A value that opens a quote on row 4 (line 5, after a two-line address) and never closes it: the
    batch fails naming where it opened."""
    rows = [["EX-901", "2024-08-01", "Rent", '"Harbour Estates\nUnit 4"', "1250.00"],
            ["EX-902", "2024-08-02", "IT", "Byte Co", "15.00"],
            ["EX-903", "2024-08-03", "IT", '"Byte Co', "15.00"],
            ["EX-904", "2024-08-04", "IT", "Byte Co", "15.00"],
            ["EX-905", "2024-08-05", "IT", "Byte Co", "15.00"]]
    return Fixture("costs-unclosed.csv", csv_bytes(COSTS_HEADER, rows),
                   source("s3_csv", "operating_costs", COSTS_COLUMNS), Expected(failed=("row 4", "line 5")))


# -- 10. Excel dates -----------------------------------------------------------------------------------------

def payments_workbook_with_the_1900_leap_day() -> Fixture:
    """Payment dates as date cells, as bare serial numbers, and Excel's fictitious 1900-02-29 (serial 60)
    both as a date cell and as a bare number: that day is refused."""
    rows = [PAYMENTS_HEADER,
            ["P-1", dt.date(2024, 1, 3), "C-0042", "INV-1", "BACS", Decimal("100.00")],
            ["P-2", 60, "C-0042", "INV-2", "BACS", Decimal("200.00")],
            ["P-3", 45292, "C-0043", "INV-3", "BACS", Decimal("30.50")],
            ["P-4", 60, "C-0043", "INV-4", "BACS", Decimal("40.00")],
            ["P-5", dt.date(2024, 1, 4), "C-0107", "INV-5", "BACS", Decimal("5.25")]]
    body = xlsxwriter_book({"Payments": rows})
    with zipfile.ZipFile(io.BytesIO(body)) as zf:  # B3 carries the date format, as Excel writes 29/02/1900
        sheet = zf.read("xl/worksheets/sheet1.xml")
    date_style = re.search(rb'<c r="B2" s="([0-9]+)"', sheet).group(1).decode()
    body = _restyle(body, "B3", date_style)
    return Fixture("payments-1900.xlsx", body, source("excel", "payments", PAYMENTS_COLUMNS),
                   Expected(loaded=3, total=Decimal("135.75"),
                            quarantined={3: ("payment_date", "is not a valid date"),
                                         5: ("payment_date", "is not a valid date")},
                            values=(("P-3", "payment_date", dt.date(2024, 1, 1)),)))


def _restyle(book: bytes, ref: str, style: str) -> bytes:
    return rewrite_member(book, "xl/worksheets/sheet1.xml", lambda data: data.replace(
        f'<c r="{ref}">'.encode(), f'<c r="{ref}" s="{style}">'.encode(), 1))


def payments_workbook_with_out_of_range_dates() -> Fixture:
    """Date cells a person mistyped: 1900-01-15, 2204-03-15 (for 2024) and 1949-12-31 fall outside
    read.earliest_date and read.latest_date (1950-01-01 to 2099-12-31, both kept)."""
    days = [dt.date(2024, 2, 1), dt.date(1900, 1, 15), dt.date(2204, 3, 15), dt.date(1949, 12, 31),
            dt.date(1950, 1, 1), dt.date(2099, 12, 31)]
    rows = [PAYMENTS_HEADER] + [[f"P-{i + 1}", day, "C-0042", f"INV-{i + 1}", "BACS", Decimal(10 * (i + 1))]
                                for i, day in enumerate(days)]
    reason = ("payment_date", "read.earliest_date", "read.latest_date")
    return Fixture("payments-typos.xlsx", xlsxwriter_book({"Payments": rows}),
                   source("excel", "payments", PAYMENTS_COLUMNS),
                   Expected(loaded=3, total=Decimal(120), quarantined={3: reason, 4: reason, 5: reason}))


# -- the independent reading ---------------------------------------------------------------------------------

@dataclass
class Reading:
    """What the reading contract makes of a file, found with other libraries than the loader's."""

    rows_read: int = 0
    skipped: int = 0
    refused: dict[int, list[str]] = field(default_factory=dict)  # row -> the columns it is refused for
    loaded: int = 0
    total: Decimal = Decimal(0)
    failed: str | None = None


class _Refused(ValueError):
    pass


class _Fails(ValueError):
    pass


def _normalised(name) -> str:
    return re.sub(r"\s+", " ", "" if name is None else str(name)).strip().casefold()


def _csv_records(body: bytes, read: dict) -> list[tuple[int, list]]:
    """(row number, values) of the header and each record, split by pandas' C parser."""
    encoding = read.get("encoding", "utf-8")
    if body[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        encoding = "utf-16"
    elif encoding.startswith("utf-8"):
        encoding = "utf-8-sig"
    header_row = read.get("header_row", 0)
    frame = pd.read_csv(io.BytesIO(body), sep=read.get("delimiter", ","), quotechar=read.get("quotechar", '"'),
                        encoding=encoding, header=None, skiprows=header_row, dtype=str, na_filter=False,
                        skip_blank_lines=False, engine="c")
    return [(header_row + 1 + i, values) for i, values in enumerate(frame.values.tolist())]


def _workbook_records(body: bytes, read: dict) -> list[tuple[int, list]]:
    """(row number, cell values) of the header and the rows below it, as openpyxl reads the cached values."""
    wb = openpyxl.load_workbook(io.BytesIO(body), data_only=True)
    if read.get("sheets"):
        sheets = [wb[name] for name in read["sheets"]]
    else:
        visible = [ws for ws in wb.worksheets if ws.sheet_state == "visible"]
        pattern = read.get("sheet_pattern")
        sheets = [ws for ws in visible if re.search(pattern, ws.title)] if pattern else visible[:1]
    if len(sheets) != 1:
        raise ValueError("the corpus reads one sheet per workbook")
    first = read.get("header_row", 0) + 1
    return [(first + i, list(values)) for i, values in
            enumerate(sheets[0].iter_rows(min_row=first, values_only=True))]


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def text_number(text: str, read: dict, currency: str, whole: bool = False) -> Decimal:
    """A text value as a number under the source's separators, the company currency's mark set aside."""
    s = text.strip()
    for mark in (currency, CURRENCY_MARKS.get(currency, currency)):
        if s.startswith(mark) or s.endswith(mark):
            s = (s[len(mark):] if s.startswith(mark) else s[:-len(mark)]).strip()
            break
    negative = s[:1] == "(" and s[-1:] == ")" or s[-1:] == "-" or s[:1] == "-"
    s = s[1:-1] if s[:1] == "(" and s[-1:] == ")" else s[:-1] if s[-1:] == "-" else s.lstrip("+-")
    decimal, thousands = read.get("decimal", "."), read.get("thousands")
    groups = "[ \u00a0\u202f]" if thousands == " " else re.escape(thousands or "")
    digits = "[0-9]+" if not thousands else f"([0-9]+|[0-9]{{1,3}}({groups}[0-9]{{3}})+)"
    point = re.escape(decimal)
    shape = digits if whole else f"({digits}({point}[0-9]*)?|{point}[0-9]+)"
    if not re.fullmatch(shape, s):
        raise _Refused(text)
    plain = (re.sub(groups, "", s) if thousands else s).replace(decimal, ".")
    return -Decimal(plain) if negative else Decimal(plain)


_ISO = re.compile(r"([0-9]{4})([-/.])([0-9]{1,2})\2([0-9]{1,2})([T ].*)?")
_DAY_MONTH = re.compile(r"([0-9]{1,2})([/.-])([0-9]{1,2})\2([0-9]{4})(\s+[0-9]{1,2}:[0-9]{2}(:[0-9]{2})?)?")


def date_order(read: dict, company: dict, texts: list[str]) -> bool | None:
    """Whether a/b/YYYY dates are day first: declared, from the company's locale, or settled by the file."""
    if read.get("date_format"):
        return None
    if read.get("dayfirst") is not None:
        return read["dayfirst"]
    if company.get("locale"):
        return not company["locale"].startswith("en-US")
    parts = [(int(m[1]), int(m[3])) for t in texts if (m := _DAY_MONTH.fullmatch(t.strip()))]
    day_first, month_first = any(a > 12 for a, _ in parts), any(b > 12 for _, b in parts)
    if day_first == month_first and any(a != b for a, b in parts):
        raise _Fails("day/month order: set read.dayfirst")
    return day_first


def text_date(text: str, read: dict, dayfirst: bool | None) -> dt.date:
    s = text.strip()
    try:
        if m := _ISO.fullmatch(s):
            return dt.date(int(m[1]), int(m[3]), int(m[4]))
        if read.get("date_format"):
            return dt.datetime.strptime(s, read["date_format"]).date()
        if m := _DAY_MONTH.fullmatch(s):
            a, b = int(m[1]), int(m[3])
            return dt.date(int(m[4]), b, a) if dayfirst else dt.date(int(m[4]), a, b)
    except ValueError:
        pass
    raise _Refused(text)


def _typed(value, kind: str, read: dict, currency: str, dayfirst: bool | None):
    """The value as the contract types it; None when empty; _Refused when it is not one of its type."""
    if _blank(value):
        return None
    if kind == "text":
        return str(value).strip()
    if kind in ("money", "number", "integer"):
        if isinstance(value, str):
            return text_number(value, read, currency, whole=kind == "integer")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Refused(value)
        number = Decimal(format(value, ".15g"))  # a numeric cell: Excel's 15 significant digits
        if kind == "integer" and number != number.to_integral_value():
            raise _Refused(value)
        return number
    if kind == "date":
        if isinstance(value, dt.datetime | dt.date):
            day = value.date() if isinstance(value, dt.datetime) else value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if int(value) == 60:
                raise _Refused(value)
            day = from_excel(value).date()
        else:
            day = text_date(str(value), read, dayfirst)
        earliest = dt.date.fromisoformat(read.get("earliest_date", "1950-01-01"))
        latest = dt.date.fromisoformat(read.get("latest_date", "2099-12-31"))
        if not earliest <= day <= latest:
            raise _Refused(value)
        return day
    raise NotImplementedError(f"the corpus has no {kind} columns")


def read_independently(fixture: Fixture, company: dict) -> Reading:
    """The rows read, skipped and refused, and the count and money total that load, by the reading contract."""
    kind, read, columns = fixture.source["kind"], fixture.source.get("read", {}), fixture.source["columns"]
    table = TABLES[fixture.source["table"]]
    try:
        records = (_workbook_records if kind == "excel" else _csv_records)(fixture.body, read)
    except pd.errors.ParserError as exc:
        return Reading(failed=str(exc))
    positions: dict[str, int] = {}
    for i, name in enumerate(records[0][1]):
        positions.setdefault(_normalised(name), i)
    mapped = {c: positions[_normalised(name)] for c, name in columns.items() if _normalised(name) in positions}
    footer = read.get("skip_rows_matching", DEFAULT_FOOTER)
    reading, rows = Reading(), []
    for row_no, values in records[1:]:
        cells = [v for v in values if not _blank(v)]
        if not cells or (footer and re.search(footer, str(cells[0]).strip())):
            reading.skipped += 1
            continue
        rows.append((row_no, {c: values[i] if i < len(values) else None for c, i in mapped.items()}))
    dates = [row[c.name] for _, row in rows for c in table.columns
             if c.type == "date" and isinstance(row.get(c.name), str)]
    try:
        dayfirst = date_order(read, company, dates)
    except _Fails as exc:
        return Reading(failed=str(exc))
    for row_no, row in rows:
        reading.rows_read += 1
        bad, amount = [], None
        for column in table.columns:
            if column.name not in row:
                continue
            try:
                value = _typed(row[column.name], column.type, read, company["currency"], dayfirst)
            except _Refused:
                bad.append(column.name)
                continue
            # a key column is required; the corpus's amounts are all positive: a signed column is refused below 0
            required = column.required or column.name in table.natural_key
            non_negative = column.non_negative or column.signed
            if (value is None and required) or (non_negative and value is not None and value < 0):
                bad.append(column.name)
            if column.name == table.amount:
                amount = value
        if bad:
            reading.refused[row_no] = bad
        else:
            reading.loaded += 1
            reading.total += amount or 0
    return reading
