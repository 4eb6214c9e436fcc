"""`playbook sources suggest`: real exports in, a source block out that loads them exactly.

Each file is generated here in a shape SMEs actually send (REAL-DATA.md): a bank statement workbook with a
title, an account number and an opening balance above its header and TOTAL and closing-balance rows below, a
pasted text amount among number cells; a semicolon CSV with decimal commas in Windows-1252; a month-first
order-line CSV with times after its dates; a workbook with a sheet per bank account and a lookup sheet; an
Excel "Unicode text" export. The suggested block is added to the demo configuration under a new name and
prefix, validated as `config check` validates it, and the file is loaded by the deployed ingest function.
The expected rows and money are read from the same bytes with pandas (never by the suggester or the loader)
and compared to the cent with core and the batch's ledger row. A file whose dates read either way gets a
block that says so, and the load stops and asks.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
import xlsxwriter
import yaml

from pipeline.config import PipelineConfig
from pipeline.sources import LoadError
from playbook.config import load_config
from playbook.suggest import suggest
from tests.pipeline import conftest as pipeline_fixtures
from tests.pipeline.test_real_exports import loaded_exactly as loaded_as_counted
from tests.pipeline.test_real_exports import total

ROOT = Path(__file__).resolve().parents[2]
# the pipeline tests' landing bucket and ingest role, an empty warehouse for each test
landing_session, landing = pipeline_fixtures.landing_session, pipeline_fixtures.landing


def pasted(config: PipelineConfig, suggestion, tmp_path: Path, name: str) -> PipelineConfig:
    """The demo configuration with the printed block pasted under `sources:` (its own name and prefix), written
    to a file and loaded as `playbook config check` loads it."""
    printed = yaml.safe_load(suggestion.yaml())
    assert list(printed) == [suggestion.name]
    block = printed[suggestion.name]
    assert block == suggestion.block  # the YAML says what the suggestion holds, comments aside
    data = config.model_dump(mode="json")
    data["sources"][name] = {**block, "prefix": f"landing/suggested/{name}/"}
    path = tmp_path / "playbook.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return load_config(path)


def loaded_exactly(landing, result: dict, table: str, rows: int, amount: Decimal) -> dict:
    """Every row loaded with the expected money (test_real_exports), or the quarantine's reasons in the failure."""
    try:
        return loaded_as_counted(landing, result, table, rows, amount)
    except AssertionError as exc:
        reasons = landing.query("select source_row, reason from meta.quarantine where batch_id = %s order by 1",
                                (result.get("batch_id"),))
        raise AssertionError(f"{exc}\nquarantined: {reasons}") from None


def decimals(values, decimal: str = ".", thousands: str | None = None) -> list[Decimal]:
    """Amounts to exact decimals: a number cell at Excel's 15 significant digits, text with its separators."""
    out = []
    for v in values:
        if isinstance(v, float):
            out.append(Decimal(f"{v:.15g}"))
        elif isinstance(v, int):
            out.append(Decimal(v))
        else:
            text = str(v).strip()
            if thousands:
                text = text.replace(thousands, "")
            out.append(Decimal(text.replace(decimal, ".")))
    return out


# 1 -------------------------------------------------------------------------------------------------------------
STATEMENT_HEADER_ROW = 6  # 0-based: title, bank, account, period, opening balance, blank row above it


def bank_statement_workbook(pasted: bool = False) -> bytes:
    """A bank's statement download: rows above the header, date cells, Debit and Credit as number cells (with
    `pasted`, one credit pasted in as text with a decimal comma), float noise, a TOTAL row whose label is in the
    second column and a closing balance row."""
    buf = io.BytesIO()
    wb = xlsxwriter.Workbook(buf, {"in_memory": True})
    day = wb.add_format({"num_format": "dd/mm/yyyy"})
    ws = wb.add_worksheet("Statement")
    ws.write(0, 0, "Harbour Bank plc - Statement of account")
    ws.write(1, 0, "Account name")
    ws.write(1, 1, "Northwind Provisions Ltd")
    ws.write(2, 0, "Account number")
    ws.write_string(2, 1, "40112233")
    ws.write(3, 0, "Period")
    ws.write(3, 1, "01/03/2024 - 31/03/2024")
    ws.write(4, 0, "Opening balance")
    ws.write_number(4, 1, 12500.0)
    ws.write_row(STATEMENT_HEADER_ROW, 0, ["Date", "Description", "Reference", "Debit", "Credit", "Balance"])
    lines = [
        (dt.date(2024, 3, 1), "Kestrel Deli INV-2024-031", "FP-10001", None, 1250.0),
        (dt.date(2024, 3, 4), "Card payment fuel", "CD-10002", 50.0, None),
        (dt.date(2024, 3, 5), "Vale Inn INV-2024-032", "FP-10003", None, 0.1 + 0.2),  # 0.30000000000000004
        (dt.date(2024, 3, 11), "Refund to customer", "FP-10004", 120.5, None),
        (dt.date(2024, 3, 14), "Harbour Foods INV-2024-035", "FP-10005", None, "544,00" if pasted else 544.0),
        (dt.date(2024, 3, 28), "Account fee", "FE-10006", 7.9, None),
        (dt.date(2024, 3, 29), "Maison Vale INV-2024-040", "FP-10007", None, 22.368000000000002),
    ]
    balance = Decimal("12500")
    r = STATEMENT_HEADER_ROW + 1
    for when, text, ref, debit, credit in lines:
        ws.write_datetime(r, 0, dt.datetime.combine(when, dt.time()), day)
        ws.write_row(r, 1, [text, ref])
        if debit is not None:
            ws.write_number(r, 3, debit)
            balance -= Decimal(f"{debit:.15g}")
        if isinstance(credit, str):
            ws.write_string(r, 4, credit)
            balance += Decimal(credit.replace(",", "."))
        elif credit is not None:
            ws.write_number(r, 4, credit)
            balance += Decimal(f"{credit:.15g}")
        ws.write_number(r, 5, float(balance))
        r += 1
    ws.write(r, 1, "TOTAL")
    ws.write_formula(r, 3, f"=SUM(D{STATEMENT_HEADER_ROW + 2}:D{r})", None, 178.4)
    ws.write(r + 1, 0, "Closing balance")
    ws.write_number(r + 1, 5, float(balance))
    wb.close()
    return buf.getvalue()


def test_a_bank_statement_workbook_with_rows_above_its_header_and_a_total_row(landing, tmp_path):
    body = bank_statement_workbook()
    path = tmp_path / "Statement March 2024.xlsx"
    path.write_bytes(body)
    suggestion = suggest(path)

    assert suggestion.table == "payments"
    assert suggestion.block["kind"] == "excel"
    assert suggestion.block["amounts"] == "debit_credit"
    assert suggestion.block["columns"] == {"payment_date": "Date", "payment_id": "Reference",
                                           "invoice_ref": "Description", "debit": "Debit", "credit": "Credit"}
    read = suggestion.block["read"]
    assert read["header_row"] == STATEMENT_HEADER_ROW and read["sheets"] == ["Statement"]
    assert "decimal" not in read  # number cells are numbers whatever the separators
    assert all(__import__("re").match(read["skip_rows_matching"], label) for label in ("TOTAL", "Closing balance"))
    assert suggestion.block["attributes"] == {"balance": {"column": "Balance", "type": "number"}}
    assert suggestion.questions == []
    assert "Harbour Bank plc" in suggestion.guess("read.header_row").reason

    config = pasted(landing.config, suggestion, tmp_path, "harbour_bank")
    result = landing.ingest("landing/suggested/harbour_bank/2024-03.xlsx", body, config=config)

    raw = pd.read_excel(io.BytesIO(body), sheet_name="Statement", header=STATEMENT_HEADER_ROW, engine="openpyxl")
    df = raw[pd.to_datetime(raw["Date"], errors="coerce").notna()]  # the TOTAL and closing rows are not data
    signed = [c - d for c, d in zip(decimals(df["Credit"].fillna(0), ","), decimals(df["Debit"].fillna(0)),
                                    strict=True)]
    loaded_exactly(landing, result, "payments", len(df), total(signed))
    assert total(signed) == Decimal("1638.268")
    rows = landing.query("select payment_id, payment_date, amount, attributes->>'balance' from core.payments "
                         "where _batch_id = %s order by _source_row", (result["batch_id"],))
    assert [r[0] for r in rows] == list(df["Reference"]) and [r[2] for r in rows] == signed
    assert [r[1] for r in rows] == [d.date() for d in df["Date"]]
    assert Decimal(rows[-1][3]) == Decimal("12500") + total(signed)


def test_a_statement_with_an_amount_pasted_as_text_with_a_decimal_comma(landing, tmp_path):
    """A typed number above a pasted '544,00' in one column: the text needs read.decimal ',', the number cells
    are numbers whatever it says."""
    body = bank_statement_workbook(pasted=True)
    path = tmp_path / "Statement March 2024.xlsx"
    path.write_bytes(body)
    suggestion = suggest(path)
    assert suggestion.block["read"]["decimal"] == ","
    assert "'544,00' in 'Credit'" in suggestion.guess("read.decimal").reason

    config = pasted(landing.config, suggestion, tmp_path, "harbour_bank")
    result = landing.ingest("landing/suggested/harbour_bank/2024-03-pasted.xlsx", body, config=config)
    raw = pd.read_excel(io.BytesIO(body), sheet_name="Statement", header=STATEMENT_HEADER_ROW, engine="openpyxl")
    df = raw[pd.to_datetime(raw["Date"], errors="coerce").notna()]
    signed = [c - d for c, d in zip(decimals(df["Credit"].fillna(0), ","), decimals(df["Debit"].fillna(0)),
                                    strict=True)]
    loaded_exactly(landing, result, "payments", len(df), total(signed))


# 2 -------------------------------------------------------------------------------------------------------------
def expense_csv() -> bytes:
    """An accounting package's expense export: semicolons, decimal commas with thousands dots, day-first dates,
    Windows-1252 (a supplier's accents, a euro sign in a note), a credit note as a negative amount."""
    return ("Expense ID;Date;Category;Supplier;Amount;Region;Note\r\n"
            "EX-001;02/01/2024;Rent;Harbour Estates;4.250,00;North;\r\n"
            "EX-002;05/01/2024;Utilities;Thames Water;112,40;North;quarterly\r\n"
            "EX-003;17/01/2024;Catering;Café Müller;1.234,56;South;€ receipt attached\r\n"
            "EX-004;22/01/2024;IT;Dell;1.999,99;South;\r\n"
            "EX-005;29/01/2024;Catering;Café Müller;-34,50;South;credit note\r\n"
            "EX-006;31/01/2024;Insurance;Aviva;210,00;North;\r\n").encode("cp1252")


def test_a_decimal_comma_semicolon_csv(landing, tmp_path):
    body = expense_csv()
    path = tmp_path / "expenses-2024-01.csv"
    path.write_bytes(body)
    suggestion = suggest(path)

    assert suggestion.table == "operating_costs" and suggestion.block["kind"] == "s3_csv"
    assert suggestion.block["read"] == {"encoding": "cp1252", "delimiter": ";", "decimal": ",", "thousands": ".",
                                        "dayfirst": True}
    assert suggestion.block["columns"] == {"cost_id": "Expense ID", "cost_date": "Date", "category": "Category",
                                           "vendor": "Supplier", "amount": "Amount"}
    assert suggestion.block["amounts"] == "signed"
    assert suggestion.block["attributes"] == {"region": "Region", "note": "Note"}
    assert "'17/01/2024'" in suggestion.guess("read.dayfirst").reason

    config = pasted(landing.config, suggestion, tmp_path, "expenses")
    result = landing.ingest("landing/suggested/expenses/2024-01.csv", body, config=config)

    df = pd.read_csv(io.BytesIO(body), sep=";", dtype=str, keep_default_na=False, encoding="cp1252")
    amounts = decimals(df["Amount"], ",", ".")
    loaded_exactly(landing, result, "operating_costs", len(df), total(amounts))
    assert total(amounts) == Decimal("7772.45")
    rows = landing.query("select cost_id, cost_date, vendor, amount, attributes->>'region' from core.operating_costs "
                         "where _batch_id = %s order by _source_row", (result["batch_id"],))
    assert [r[0] for r in rows] == list(df["Expense ID"]) and [r[3] for r in rows] == amounts
    assert [r[1] for r in rows] == list(pd.to_datetime(df["Date"], format="%d/%m/%Y").dt.date)
    assert [r[2] for r in rows] == list(df["Supplier"]) and [r[4] for r in rows] == list(df["Region"])


# 3 -------------------------------------------------------------------------------------------------------------
def order_lines_csv() -> bytes:
    """A sales sample as many systems export it: run-together upper-case headers, month-first dates without
    padding and a time after them, a quoted customer name with a comma, UTF-8 with a byte-order mark."""
    return ("\ufeffORDERNUMBER,QUANTITYORDERED,PRICEEACH,ORDERLINENUMBER,SALES,ORDERDATE,STATUS,PRODUCTLINE,"
            "CUSTOMERNAME,COUNTRY\r\n"
            "10107,30,95.70,2,2871.00,2/24/2003 0:00,Shipped,Motorcycles,Land of Toys Inc.,USA\r\n"
            "10107,39,81.35,5,3172.65,2/24/2003 0:00,Shipped,Motorcycles,Land of Toys Inc.,USA\r\n"
            '10121,34,81.35,5,2765.90,5/7/2003 0:00,Shipped,Motorcycles,"Reims Collectables, SA",France\r\n'
            "10134,41,94.74,2,3884.34,7/1/2003 0:00,Shipped,Motorcycles,Lyon Souveniers,France\r\n"
            "10145,45,83.26,6,3746.70,8/25/2003 0:00,Shipped,Motorcycles,Toys4GrownUps.com,USA\r\n"
            "10159,49,100.00,14,5205.27,10/10/2003 0:00,Shipped,Motorcycles,Corporate Gift Ideas Co.,USA\r\n"
            "10168,36,96.66,1,3479.76,10/28/2003 0:00,Shipped,Motorcycles,Technics Stores Inc.,USA\r\n"
            ).encode("utf-8")


def test_a_month_first_csv_with_times(landing, tmp_path):
    body = order_lines_csv()
    path = tmp_path / "sales_data_sample.csv"
    path.write_bytes(body)
    suggestion = suggest(path)

    assert suggestion.table == "sales"
    assert suggestion.block["read"] == {"encoding": "utf-8-sig", "dayfirst": False}
    assert "can only be month first" in suggestion.guess("read.dayfirst").reason
    assert suggestion.block["columns"] == {
        "order_id": "ORDERNUMBER", "line_no": "ORDERLINENUMBER", "order_date": "ORDERDATE",
        "client_id": "CUSTOMERNAME", "product": "PRODUCTLINE", "quantity": "QUANTITYORDERED",
        "unit_price": "PRICEEACH", "amount": "SALES"}
    assert "natural_key" not in suggestion.block  # the table's own key, order and line, is mapped and unique

    config = pasted(landing.config, suggestion, tmp_path, "order_lines")
    result = landing.ingest("landing/suggested/order_lines/sales_data_sample.csv", body, config=config)

    df = pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False, encoding="utf-8-sig")
    amounts = decimals(df["SALES"])
    loaded_exactly(landing, result, "sales", len(df), total(amounts))
    rows = landing.query("select order_date, client_id, attributes->>'country' from core.sales where _batch_id = %s "
                         "order by _source_row", (result["batch_id"],))
    assert [r[0] for r in rows] == list(pd.to_datetime(df["ORDERDATE"], format="%m/%d/%Y %H:%M").dt.date)
    assert [r[1] for r in rows] == list(df["CUSTOMERNAME"]) and [r[2] for r in rows] == list(df["COUNTRY"])


# 4 -------------------------------------------------------------------------------------------------------------
ACCOUNTS = ("Account 1001", "Account 2002", "Account 3003")
PAYMENTS_HEADER = ["Date Received", "Payment Ref", "Client Code", "Invoice", "Method", "Amount", "Currency"]


def accounts_workbook() -> bytes:
    """A payments workbook with a sheet per bank account of one layout, a lookup sheet of another, and a hidden
    working sheet: amounts as numbers with float noise, client codes with leading zeros as text."""
    buf = io.BytesIO()
    wb = xlsxwriter.Workbook(buf, {"in_memory": True})
    day = wb.add_format({"num_format": "yyyy-mm-dd"})
    n = 0
    for a, sheet in enumerate(ACCOUNTS):
        ws = wb.add_worksheet(sheet)
        ws.write_row(0, 0, PAYMENTS_HEADER)
        for i in range(4 + a):
            n += 1
            amount = round(12.5 * (n % 7 + 1), 2) + (0.1 + 0.2 if n % 3 == 0 else 0.0)
            ws.write_datetime(i + 1, 0, dt.datetime(2024, 1 + a, 2 + i), day)
            ws.write_row(i + 1, 1, [f"PAY-{n:04d}", f"{(n % 5) + 40:05d}", f"INV-{700 + n}",
                                    ("Bank transfer", "Card", "Direct debit")[n % 3]])
            ws.write_number(i + 1, 5, amount)
            ws.write_string(i + 1, 6, "EUR" if a == 2 else "GBP")
    lookup = wb.add_worksheet("Clients")
    lookup.write_row(0, 0, ["Client Code", "Client Name"])
    lookup.write_row(1, 0, ["00040", "Kestrel Deli"])
    scratch = wb.add_worksheet("Working")
    scratch.write_row(0, 0, PAYMENTS_HEADER)
    scratch.write_row(1, 0, ["2024-01-01", "PAY-9999", "00099", "INV-0", "Card", 999.0, "GBP"])
    scratch.hide()
    wb.close()
    return buf.getvalue()


def test_a_workbook_with_several_sheets_of_the_same_layout(landing, tmp_path):
    body = accounts_workbook()
    path = tmp_path / "payments-q1.xlsx"
    path.write_bytes(body)
    suggestion = suggest(path, table="payments")

    assert suggestion.block["read"] == {"sheet_pattern": "^Account "}
    assert "'Clients' (another layout)" in suggestion.guess("read.sheet_pattern").reason
    assert suggestion.block["columns"] == {
        "payment_date": "Date Received", "payment_id": "Payment Ref", "client_id": "Client Code",
        "invoice_ref": "Invoice", "method": "Method", "amount": "Amount", "currency": "Currency"}
    assert "amounts" not in suggestion.block and "attributes" not in suggestion.block

    config = pasted(landing.config, suggestion, tmp_path, "accounts")
    result = landing.ingest("landing/suggested/accounts/payments-q1.xlsx", body, config=config)

    sheets = pd.read_excel(io.BytesIO(body), sheet_name=list(ACCOUNTS), engine="openpyxl",
                           dtype={"Client Code": str})
    df = pd.concat(sheets.values(), ignore_index=True)
    amounts = decimals(df["Amount"])
    loaded_exactly(landing, result, "payments", len(df), total(amounts))
    by_currency = dict(landing.query("select currency, sum(amount) from core.payments group by 1"))
    assert by_currency == {c: total(decimals(g)) for c, g in df.groupby("Currency")["Amount"]}
    assert {r[0] for r in landing.query("select client_id from core.payments")} == set(df["Client Code"])
    assert landing.query("select count(*) from core.payments where payment_id = 'PAY-9999'") == [(0,)]  # hidden


# 5 -------------------------------------------------------------------------------------------------------------
def test_excel_unicode_text_utf16_tab_delimited(landing, tmp_path):
    """Excel's "Unicode text": UTF-16 with its byte-order mark, tab-delimited, thousands commas."""
    text = ("Payment ID\tPayment Date\tCustomer\tAmount\r\n"
            "P-1\t13/02/2024\tKestrel Deli\t\"1,204.10\"\r\n"
            "P-2\t14/02/2024\tMartín & Co\t99.99\r\n"
            "P-3\t15/02/2024\tVale Inn\t-5.00\r\n")
    body = text.encode("utf-16")
    path = tmp_path / "payments.txt"
    path.write_bytes(body)
    suggestion = suggest(path)
    assert suggestion.table == "payments"
    assert suggestion.block["read"] == {"encoding": "utf-16", "delimiter": "\t", "thousands": ",",
                                        "dayfirst": True}
    config = pasted(landing.config, suggestion, tmp_path, "unicode_text")
    result = landing.ingest("landing/suggested/unicode_text/payments.txt", body, config=config)
    df = pd.read_csv(io.BytesIO(body), sep="\t", dtype=str, encoding="utf-16")
    loaded_exactly(landing, result, "payments", len(df), total(decimals(df["Amount"], ".", ",")))


# 6 -------------------------------------------------------------------------------------------------------------
AMBIGUOUS = (b"Ref,Date,Customer,Amount\r\n"
             b"R-1,03/04/2024,Kestrel Deli,10.00\r\n"
             b"R-2,05/06/2024,Vale Inn,20.00\r\n"
             b"R-3,11/12/2024,Harbour Foods,30.50\r\n")


def test_dates_that_read_either_way_are_asked_about_not_guessed(landing, tmp_path):
    path = tmp_path / "receipts.csv"
    path.write_bytes(AMBIGUOUS)
    suggestion = suggest(path, table="payments")

    assert "dayfirst" not in suggestion.block.get("read", {}) and "date_format" not in suggestion.block.get("read",
                                                                                                           {})
    assert suggestion.guess("read.dayfirst") is None
    [question] = suggestion.questions
    assert question.startswith("read.dayfirst: cannot tell") and "'03/04/2024'" in question
    printed = suggestion.yaml()
    assert "# ASK read.dayfirst: cannot tell" in printed and "day 3 month 4 or day 4 month 3" in printed

    # pasted as it is, where the company names no locale either, the load stops and asks for read.dayfirst
    data = landing.config.model_dump(mode="json")
    data["company"]["locale"] = None
    no_locale = PipelineConfig.model_validate(data)
    config = pasted(no_locale, suggestion, tmp_path, "receipts")
    assert config.company.locale is None
    with pytest.raises(LoadError) as refused:
        landing.ingest("landing/suggested/receipts/receipts.csv", AMBIGUOUS, config=config)
    assert "read.dayfirst" in str(refused.value) and "'03/04/2024'" in str(refused.value)
    assert landing.query("select status from meta.batches") == [("failed",)]
    assert landing.query("select count(*) from core.payments") == [(0,)]

    # once a person answers, it loads
    answered = config.model_dump(mode="json")
    answered["sources"]["receipts"]["read"] = {**answered["sources"]["receipts"]["read"], "dayfirst": False}
    result = landing.ingest("landing/suggested/receipts/receipts-answered.csv", AMBIGUOUS,
                            config=PipelineConfig.model_validate(answered))
    df = pd.read_csv(io.BytesIO(AMBIGUOUS), dtype=str)
    loaded_exactly(landing, result, "payments", len(df), total(decimals(df["Amount"])))
    assert landing.query("select min(payment_date) from core.payments") == [(dt.date(2024, 3, 4),)]


def test_dates_in_both_orders_are_asked_about(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes(b"Ref,Date,Amount\r\nA,13/02/2024,1.00\r\nB,02/13/2024,2.00\r\n")
    suggestion = suggest(path, table="payments")
    assert suggestion.guess("read.dayfirst") is None
    assert any("both orders" in q and "'13/02/2024'" in q and "'02/13/2024'" in q for q in suggestion.questions)


def test_two_digit_years_get_a_date_format(tmp_path):
    path = tmp_path / "short.csv"
    path.write_bytes(b"Ref,Date,Category,Supplier,Net\r\nE-1,03/04/20,Rent,Estates,4250.00\r\n"
                     b"E-2,29/02/24,Utilities,Water,112.40\r\n")
    suggestion = suggest(path)
    assert suggestion.table == "operating_costs"
    assert suggestion.block["read"] == {"dayfirst": True, "date_format": "%d/%m/%y"}
    assert "two-digit years" in suggestion.guess("read.date_format").reason


def test_a_totals_line_a_repeated_header_and_invoice_numbers_are_not_data(tmp_path):
    path = tmp_path / "joined.csv"
    path.write_bytes(b"Invoice,Order Date,Customer ID,Line Total\r\nINV 1001,2024-01-05,00042,21.00\r\n"
                     b"INV 1002,2024-01-06,00043,0.60\r\nInvoice,Order Date,Customer ID,Line Total\r\n"
                     b"INV 1003,2024-01-07,00042,5.00\r\nTotal,,,26.60\r\n\r\n\r\n")
    suggestion = suggest(path)
    assert suggestion.table == "sales"
    assert suggestion.block["columns"] == {"order_id": "Invoice", "order_date": "Order Date",
                                           "client_id": "Customer ID", "amount": "Line Total"}
    assert suggestion.block["natural_key"] == ["order_id"]  # line_no is not in the file; invoices are unique
    assert suggestion.block["read"] == {"skip_rows_matching": "(?i)^(grand[ \\t]+)?totals?([ \\t]|:|$)"}
    assert "'Total' (row 6)" in suggestion.guess("read.skip_rows_matching").reason
    assert any("repeated on row 4" in q for q in suggestion.questions)
    assert "# ASK the header is repeated on row 4" in suggestion.yaml()


# the command -----------------------------------------------------------------------------------------------------
def test_the_command_prints_yaml_with_reasons_and_writes_nothing(tmp_path):
    path = tmp_path / "Statement March 2024.xlsx"
    path.write_bytes(bank_statement_workbook())
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    env = {**os.environ, "PLAYBOOK_CONFIG": str(tmp_path / "absent.yaml")}
    done = subprocess.run([sys.executable, "-m", "playbook", "sources", "suggest", str(path), "--table", "payments"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    printed = yaml.safe_load(done.stdout)
    assert list(printed) == ["statement_march_2024"]
    block = printed["statement_march_2024"]
    assert block["table"] == "payments" and block["amounts"] == "debit_credit"
    assert block["read"]["header_row"] == STATEMENT_HEADER_ROW
    assert "# " in done.stdout and "confidence" in done.stdout and "named with --table" in done.stdout

    missing = subprocess.run([sys.executable, "-m", "playbook", "sources", "suggest", str(tmp_path / "nope.csv")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "nope.csv: no such file" in missing.stderr
    wrong = subprocess.run([sys.executable, "-m", "playbook", "sources", "suggest", str(path), "--table", "orders"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "unknown table 'orders'" in wrong.stderr
