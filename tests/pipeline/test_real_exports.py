"""Real exports, as the systems that write them lay them out, loaded by configuration alone.

Each file is generated here in the shape of a kind of export SMEs actually send (REAL-DATA.md): a retail
order-line CSV with returns, bank statements with a debit and a credit column or one signed amount in a
decimal-comma locale, a finance sample workbook keyed by four columns, a payment platform's mixed-currency
export, customers repeated on every order line, a snapshot that loses a row, two-digit years, typed
attributes. Each source is added to the demo configuration the way a consultant would add it, the file goes
into the landing bucket and the ingest function loads it. The expected rows and totals are read from the same
bytes with pandas (strings turned into exact decimals), never by the loader or the accuracy readers, and are
compared to the cent with core and with the batch's ledger row.
"""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal

import pandas as pd
import pytest
import xlsxwriter

from pipeline.config import ConfigError, PipelineConfig, parse_config
from pipeline.sources import LoadError
from tests.pipeline.test_ingest_csv import ledger, reconciles

CENT = Decimal("0.01")


def with_source(config: PipelineConfig, name: str, **source) -> PipelineConfig:
    """The configuration with one more source, under its own prefix, as a consultant adds it."""
    data = config.model_dump(mode="json")
    data["sources"][name] = {"kind": "s3_csv", "schedule": "rate(1 day)", "prefix": f"landing/real/{name}/",
                             **source}
    return parse_config(data, f"{name} source")


def exact(values, decimal: str = ".", thousands: str | None = None) -> list[Decimal]:
    """Amounts as written (text) to exact decimals: separators removed, then Decimal."""
    text = pd.Series(values, dtype="string").str.strip()
    if thousands:
        text = text.str.replace(thousands, "", regex=False)
    if decimal != ".":
        text = text.str.replace(decimal, ".", regex=False)
    return [Decimal(v) for v in text]


def total(values) -> Decimal:
    return sum(values, Decimal("0.00"))


def core_sum(landing, table: str, batch_id: int, column: str = "amount") -> tuple[int, Decimal]:
    return landing.query(f"select count(*), coalesce(sum({column}), 0) from core.{table} where _batch_id = %s",
                         (batch_id,))[0]


def loaded_exactly(landing, result: dict, table: str, rows: int, amount: Decimal) -> dict:
    """The batch committed every row, and core and its ledger row both hold the expected money."""
    assert result["status"] == "committed", result
    entry = ledger(landing, result["batch_id"])
    assert reconciles(entry)
    assert (entry["rows_read"], entry["rows_inserted"], entry["rows_quarantined"]) == (rows, rows, 0), entry
    assert entry["amount_in"] == entry["amount_loaded"] == amount
    assert core_sum(landing, table, result["batch_id"]) == (rows, amount)
    return entry


# 1 -------------------------------------------------------------------------------------------------------------
def test_retail_order_lines_with_returns_refunds_and_kilograms(landing):
    """An online retailer's order lines: a cancelled invoice (C...) returns goods with negative quantities, a
    refund of 0.77 is a line of its own, goods sold by weight have fractional quantities, there is no unit
    price column, a description holds a comma (quoted) and a 12" (a literal quote in an unquoted field)."""
    body = (
        b"InvoiceNo,Line,InvoiceDate,CustomerID,Description,Quantity,LineAmount,Country\r\n"
        b"536365,1,01/12/2023,17850,WHITE HANGING HEART T-LIGHT HOLDER,6,15.30,United Kingdom\r\n"
        b'536365,2,01/12/2023,17850,"KNITTED UNION FLAG HOT WATER BOTTLE, RED",6,20.34,United Kingdom\r\n'
        b"536366,1,01/12/2023,13047,BASMATI RICE LOOSE KG,1618.5,2395.38,United Kingdom\r\n"
        b'536366,2,01/12/2023,13047,12" PIZZA TRAY,2,7.90,United Kingdom\r\n'
        b"536367,1,02/12/2023,12583,POTATOES LOOSE KG,0.75,0.98,France\r\n"
        b"C536379,1,02/12/2023,17850,WHITE HANGING HEART T-LIGHT HOLDER,-2,-5.10,United Kingdom\r\n"
        b"C536380,1,03/12/2023,13047,Discount,-1,-0.77,United Kingdom\r\n"
        b"536381,1,03/12/2023,15311,JUMBO BAG RED RETROSPOT,100,165.00,United Kingdom\r\n"
    )
    config = with_source(landing.config, "retail", table="sales", amounts="signed", columns={
        "order_id": "InvoiceNo", "line_no": "Line", "order_date": "InvoiceDate", "client_id": "CustomerID",
        "product": "Description", "quantity": "Quantity", "amount": "LineAmount"},
        read={"dayfirst": True, "date_format": "%d/%m/%Y"})
    result = landing.ingest("landing/real/retail/2023-12.csv", body, config=config)

    df = pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False)
    amounts, quantities = exact(df["LineAmount"]), exact(df["Quantity"])
    loaded_exactly(landing, result, "sales", len(df), total(amounts))
    assert total(amounts) == Decimal("2599.03")
    rows = landing.query("select order_id, product, quantity, amount, unit_price, currency from core.sales "
                         "where _batch_id = %s order by _source_row", (result["batch_id"],))
    assert [r[0] for r in rows] == list(df["InvoiceNo"]) and [r[1] for r in rows] == list(df["Description"])
    assert [r[2] for r in rows] == quantities and [r[3] for r in rows] == amounts
    assert {r[4] for r in rows} == {None} and {r[5] for r in rows} == {landing.config.company.currency}
    returned = [(r[0], r[2], r[3]) for r in rows if r[3] < 0]
    assert returned == [("C536379", Decimal("-2"), Decimal("-5.10")), ("C536380", Decimal("-1"), Decimal("-0.77"))]
    assert landing.query("select sum(quantity) from core.sales")[0][0] == total(quantities) == Decimal("1730.25")


# 2 -------------------------------------------------------------------------------------------------------------
STATEMENT_PREAMBLE = (
    "Kontoauszug / Account statement\r\n"
    "IBAN;DE89 3704 0044 0532 0130 00\r\n"
    "Zeitraum;01.03.2024;31.03.2024\r\n"
    "Anfangssaldo;12.500,00;EUR\r\n"
    "\r\n"
)


def test_bank_statement_with_debit_and_credit_columns_in_decimal_comma(landing):
    body = (STATEMENT_PREAMBLE
            + "Buchungstag;Referenz;Verwendungszweck;Soll;Haben;Saldo\r\n"
            "01.03.2024;TX-1001;Rechnung INV-2024-031;;1.250,00;13.750,00\r\n"
            "04.03.2024;TX-1002;Kartenzahlung Tankstelle;50,00;0,00;13.700,00\r\n"  # a zero side is empty
            "05.03.2024;TX-1003;Rechnung INV-2024-032;0,00;980,45;14.680,45\r\n"
            "11.03.2024;TX-1004;Erstattung an Kunde;120,50;;14.559,95\r\n"
            "28.03.2024;TX-1005;Kontoführung;7,90;;14.552,05\r\n"
            "29.03.2024;TX-1006;Rechnung INV-2024-040;;10.000,01;24.552,06\r\n").encode("cp1252")
    config = with_source(landing.config, "bank_eur", table="payments", amounts="debit_credit", currency="EUR",
                         columns={"payment_date": "Buchungstag", "payment_id": "Referenz",
                                  "invoice_ref": "Verwendungszweck", "debit": "Soll", "credit": "Haben"},
                         read={"header_row": 5, "delimiter": ";", "decimal": ",", "thousands": ".",
                               "date_format": "%d.%m.%Y", "encoding": "cp1252"})
    result = landing.ingest("landing/real/bank_eur/2024-03.csv", body, config=config)

    df = pd.read_csv(io.BytesIO(body), sep=";", skiprows=5, dtype=str, keep_default_na=False, encoding="cp1252")
    credit = exact(df["Haben"].replace("", "0"), ",", ".")  # the other column is empty (or zero) on each line
    debit = exact(df["Soll"].replace("", "0"), ",", ".")
    signed = [c - d for c, d in zip(credit, debit, strict=True)]
    loaded_exactly(landing, result, "payments", len(df), total(signed))
    assert total(signed) == Decimal("12052.06")
    # the statement's own closing balance agrees: opening + movements
    assert Decimal("12500.00") + total(signed) == exact(df["Saldo"].iloc[-1:], ",", ".")[0]
    rows = landing.query("select payment_id, payment_date, amount, currency from core.payments "
                         "where _batch_id = %s order by _source_row", (result["batch_id"],))
    assert [r[0] for r in rows] == list(df["Referenz"]) and [r[2] for r in rows] == signed
    assert [r[1] for r in rows] == list(pd.to_datetime(df["Buchungstag"], format="%d.%m.%Y").dt.date)
    assert {r[3] for r in rows} == {"EUR"}


def test_bank_statement_with_one_signed_amount_column(landing):
    body = (
        b"Date,Description,Reference,Amount,Balance\r\n"
        b'02/04/2024,"Payment from Kestrel Deli, INV-1042",FP-88121,"1.204,10","3.704,10"\r\n'
        b'03/04/2024,Card payment - fuel,CD-00017,"-50,00","3.654,10"\r\n'
        b'05/04/2024,"Direct debit, Aviva",DD-44120,"-2.100,00","1.554,10"\r\n'
        b'08/04/2024,Payment from Vale Inn,FP-88177,"0,01","1.554,11"\r\n'
        b'09/04/2024,Refund to Baker\'s,FP-90001,"-12,99","1.541,12"\r\n')
    config = with_source(landing.config, "bank_gbp", table="payments", amounts="signed",
                         columns={"payment_date": "Date", "payment_id": "Reference", "invoice_ref": "Description",
                                  "amount": "Amount"},
                         read={"decimal": ",", "thousands": ".", "date_format": "%d/%m/%Y"})
    result = landing.ingest("landing/real/bank_gbp/2024-04.csv", body, config=config)

    df = pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False)
    amounts = exact(df["Amount"], ",", ".")
    loaded_exactly(landing, result, "payments", len(df), total(amounts))
    assert total(amounts) == Decimal("-958.88")
    rows = landing.query("select invoice_ref, amount from core.payments where _batch_id = %s order by _source_row",
                         (result["batch_id"],))
    assert rows == list(zip(df["Description"], amounts, strict=True))
    assert sum(1 for _, a in rows if a < 0) == 3


# 3 -------------------------------------------------------------------------------------------------------------
SEGMENTS = ("Government", "Midmarket", "Channel Partners", "Enterprise", "Small Business")
COUNTRIES = ("Canada", "Germany", "France", "Mexico", "United States of America")
PRODUCTS = ("Carretera", "Montana", "Paseo", "Velo", "VTT", "Amarilla")
FINANCE_HEADER = ["Segment", "Country", "Product", "Discount Band", " Units Sold ", "Sale Price", " Sales ",
                  "Date", "Month Number", "Month Name", "Year", "Currency"]


def finance_workbook() -> bytes:
    """A finance sample as spreadsheets hold it: no order number, one row per segment, country, product and
    month, amounts computed in floating point (so some carry noise like 22.368000000000002), dates as date
    cells, the year as a number, headers with spaces around them, a notes sheet."""
    buf = io.BytesIO()
    wb = xlsxwriter.Workbook(buf, {"in_memory": True})
    day = wb.add_format({"num_format": "d/m/yyyy"})
    money = wb.add_format({"num_format": "$#,##0.00"})
    ws = wb.add_worksheet("Sheet1")
    ws.write_row(0, 0, FINANCE_HEADER)
    r = 1
    for i, (segment, country, product) in enumerate(
            (s, c, p) for s in SEGMENTS for c in COUNTRIES for p in PRODUCTS if (len(s) + len(c) + len(p)) % 3):
        for month in (dt.date(2014, 6, 1), dt.date(2014, 7, 1)):
            units = 1618.5 if i % 7 == 0 else float(100 + (i * 37) % 2900)
            price = (0.1, 7.0, 12.0, 15.0, 20.0, 125.0, 300.0, 350.0)[i % 8]
            discount = (0.0, 0.05, 0.1, 0.15)[i % 4]
            sales = units * price * (1 - discount) + (0.2 if i % 5 == 0 else 0.0)
            ws.write_row(r, 0, [segment, country, product, ("None", "Low", "Medium", "High")[i % 4]])
            ws.write_number(r, 4, units)
            ws.write_number(r, 5, price, money)
            ws.write_number(r, 6, sales, money)
            ws.write_datetime(r, 7, dt.datetime.combine(month, dt.time()), day)
            ws.write_number(r, 8, month.month)
            ws.write_string(r, 9, month.strftime("%B"))
            ws.write_number(r, 10, month.year)
            ws.write_string(r, 11, "USD")
            r += 1
    notes = wb.add_worksheet("Notes")
    notes.write(0, 0, "Sample data, figures in USD")
    wb.close()
    return buf.getvalue()


def finance_frame(body: bytes) -> pd.DataFrame:
    df = pd.read_excel(io.BytesIO(body), sheet_name="Sheet1", engine="openpyxl")
    df.columns = [c.strip() for c in df.columns]
    # a money cell holds a double; Excel shows and computes it with 15 significant digits
    df["amount"] = [Decimal(f"{v:.15g}") for v in df["Sales"]]
    return df


def finance_source(**key) -> dict:
    return {"kind": "excel", "table": "sales", "currency": "USD", "read": {"sheets": ["Sheet1"]},
            "columns": {"client_id": "Country", "product": "Product", "order_date": "Date",
                        "quantity": "Units Sold", "unit_price": "Sale Price", "amount": "Sales", **key.pop("columns",
                                                                                                          {})},
            **key}


def test_finance_workbook_keyed_by_country_segment_product_and_month(landing):
    body = finance_workbook()
    config = with_source(landing.config, "finance", **finance_source(
        compose={"order_id": "{Country}-{Segment}-{Product}-{Month Name}-{Year}"}, natural_key=["order_id"]))
    try:
        result = landing.ingest("landing/real/finance/financial_sample.xlsx", body, config=config)
    except LoadError as exc:
        raise AssertionError(str(exc)) from None

    df = finance_frame(body)
    assert len(df) > 100 and any(len(str(v)) > 15 for v in df["Sales"])  # float noise is there
    loaded_exactly(landing, result, "sales", len(df), total(df["amount"]))
    keys = {f"{c}-{s}-{p}-{m}-{y}" for c, s, p, m, y in
            zip(df["Country"], df["Segment"], df["Product"], df["Month Name"], df["Year"], strict=True)}
    assert len(keys) == len(df)
    assert set(r[0] for r in landing.query("select order_id from core.sales")) == keys
    by_country = dict(landing.query("select client_id, sum(amount) from core.sales group by 1"))
    assert by_country == {c: total(g) for c, g in df.groupby("Country")["amount"]}
    assert landing.query("select sum(quantity) from core.sales")[0][0] == total(Decimal(str(u)) for u in
                                                                              df["Units Sold"])
    assert {r[0] for r in landing.query("select distinct currency from core.sales")} == {"USD"}


def test_a_six_column_natural_key_loads_and_merges_again(landing):
    """No order number at all: a row is known by six of its columns. Loading the same rows again under a new
    name finds every key (no unique violation) and changes nothing."""
    body = finance_workbook()
    key = ["client_id", "order_id", "product", "order_date", "line_no", "currency"]
    config = with_source(landing.config, "finance6", **finance_source(
        columns={"order_id": "Segment", "line_no": "Month Number", "currency": "Currency"}, natural_key=key))
    first = landing.ingest("landing/real/finance6/a.xlsx", body, config=config)
    df = finance_frame(body)
    loaded_exactly(landing, first, "sales", len(df), total(df["amount"]))
    again = landing.ingest("landing/real/finance6/b.xlsx", body, config=config)
    assert again["status"] == "committed"
    assert (again["rows_inserted"], again["rows_updated"], again["rows_unchanged"]) == (0, 0, len(df))
    stored = landing.query("select _key, order_id, client_id from core.sales limit 1")[0]
    assert stored[0].count("\x1f") == 5 and stored[1] in SEGMENTS and stored[2] in COUNTRIES


# 4 -------------------------------------------------------------------------------------------------------------
def test_payment_platform_export_with_two_currencies_in_one_file(landing):
    """A payment platform's activity download: US dates, thousands commas in quoted gross amounts, refunds and
    payouts to the bank as negative rows, USD and EUR side by side in a Currency column."""
    body = (
        b'"Date","Time","TimeZone","Name","Type","Status","Currency","Gross","Fee","Net","From Email Address",'
        b'"Transaction ID"\r\n'
        b'"01/03/2024","09:12:44","PST","Kestrel Deli","Express Checkout Payment","Completed","USD","1,250.00",'
        b'"-36.55","1,213.45","orders@kestrel.example","5TY05013RG002845M"\r\n'
        b'"01/03/2024","10:01:02","PST","Maison Vale","Express Checkout Payment","Completed","EUR","980.40",'
        b'"-28.78","951.62","compta@vale.example","8HK11384MX917521B"\r\n'
        b'"01/04/2024","15:40:00","PST","Kestrel Deli","Payment Refund","Completed","USD","-0.77","0.00","-0.77",'
        b'"orders@kestrel.example","1AB22233CD444555E"\r\n'
        b'"01/05/2024","08:00:00","PST","","General Withdrawal","Completed","USD","-1,000.00","0.00","-1,000.00",'
        b'"","9ZZ00011AA000111Q"\r\n'
        b'"01/12/2024","11:30:10","PST","Harbour Foods","Website Payment","Completed","EUR","12,345.67","-358.32",'
        b'"11,987.35","ap@harbour.example","3CC44455DD666777F"\r\n'
        b'"01/13/2024","12:00:00","PST","Maison Vale","Payment Refund","Completed","EUR","-80.40","2.33",'
        b'"-78.07","compta@vale.example","4EE55566FF777888G"\r\n')
    config = with_source(landing.config, "platform", table="payments", amounts="signed", columns={
        "payment_id": "Transaction ID", "payment_date": "Date", "client_id": "From Email Address",
        "method": "Type", "amount": "Gross", "currency": "Currency"},
        read={"thousands": ",", "date_format": "%m/%d/%Y"})
    result = landing.ingest("landing/real/platform/Download.CSV", body, config=config)

    df = pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False)
    df["gross"] = exact(df["Gross"], ".", ",")
    loaded_exactly(landing, result, "payments", len(df), total(df["gross"]))
    expected = {c: total(g) for c, g in df.groupby("Currency")["gross"]}
    assert expected == {"USD": Decimal("249.23"), "EUR": Decimal("13245.67")}
    by_currency = dict(landing.query("select currency, sum(amount) from core.payments where _batch_id = %s "
                                     "group by 1", (result["batch_id"],)))
    assert by_currency == expected
    assert landing.query("select count(*) from core.payments where client_id is null")[0][0] == 1  # the payout


# 5 -------------------------------------------------------------------------------------------------------------
SUPERSTORE_HEADER = "Row ID,Order ID,Order Date,Customer ID,Customer Name,Segment,Country,City,Sales\r\n"


def test_customers_taken_from_order_lines_once_each_last_row_wins_with_history(landing):
    """A superstore-style order-line sheet repeats the customer's name and segment on every line: as the client
    master (load: distinct) each customer is one client, the last line's values win, and a later export that
    changes a customer keeps the old version in core.clients_history."""
    lines = [
        "1,CA-2016-152156,08/11/2016,CG-12520,Claire Gute,Consumer,United States,Henderson,261.96",
        "2,CA-2016-152156,08/11/2016,CG-12520,Claire Gute,Consumer,United States,Henderson,731.94",
        "3,CA-2016-138688,12/06/2016,DV-13045,Darrin Van Huff,Corporate,United States,Los Angeles,14.62",
        "4,US-2015-108966,11/10/2015,SO-20335,Sean O'Donnell,Consumer,United States,Fort Lauderdale,957.5775",
        "5,US-2015-108966,11/10/2015,SO-20335,Sean O'Donnell,Consumer,United States,Fort Lauderdale,22.368",
        "6,CA-2014-115812,09/06/2014,BH-11710,Brosina Hoffman,Consumer,United States,Los Angeles,48.86",
        "7,CA-2014-115812,09/06/2014,BH-11710,Brosina Hoffman,Consumer,United States,Los Angeles,7.28",
        "8,CA-2014-115812,09/06/2014,BH-11710,Brosina Hoffman,Consumer,United States,Los Angeles,907.152",
        "9,CA-2017-114412,15/04/2017,DV-13045,Darrin Van Huff,Home Office,United States,Los Angeles,15.552",
    ]
    body = (SUPERSTORE_HEADER + "".join(line + "\r\n" for line in lines)).encode()
    config = with_source(landing.config, "superstore_customers", table="clients", load="distinct", columns={
        "client_id": "Customer ID", "name": "Customer Name", "segment": "Segment", "country": "Country"})
    result = landing.ingest("landing/real/superstore_customers/orders-2017.csv", body, config=config)

    df = pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False)
    last = df.drop_duplicates("Customer ID", keep="last").set_index("Customer ID")
    assert result["status"] == "committed"
    entry = ledger(landing, result["batch_id"])
    assert entry["amount_in"] is None  # clients hold no money
    assert (entry["rows_read"], entry["rows_inserted"], entry["rows_quarantined"]) == (len(df), len(last), 0)
    assert entry["rows_read"] == entry["rows_inserted"] + entry["rows_duplicate"]
    assert entry["rows_duplicate"] == len(df) - len(last)  # the repeats are folded, not loaded twice
    clients = {r[0]: r[1:] for r in landing.query("select client_id, name, segment, country from core.clients")}
    assert clients == {k: (v["Customer Name"], v["Segment"], v["Country"]) for k, v in last.iterrows()}
    assert clients["DV-13045"][1] == "Home Office"  # his last line's segment
    assert landing.query("select count(*), count(distinct client_id) from core.clients") == [(len(last), len(last))]

    # the next export: Claire moved to Corporate; the other customers are as they were
    changed = body.replace(b"Claire Gute,Consumer", b"Claire Gute,Corporate")
    again = landing.ingest("landing/real/superstore_customers/orders-2017b.csv", changed, config=config)
    assert (again["rows_inserted"], again["rows_updated"], again["rows_unchanged"]) == (0, 1, len(last) - 1)
    assert landing.query("select segment from core.clients where client_id = 'CG-12520'") == [("Corporate",)]
    assert landing.query("select client_id, segment, _batch_id from core.clients_history") == [
        ("CG-12520", "Consumer", result["batch_id"])]


# 6 -------------------------------------------------------------------------------------------------------------
def test_a_snapshot_that_no_longer_holds_a_row_marks_it_deleted_at_source(landing):
    """A report of open orders sent whole for its dates each time: an order cancelled at source is missing from
    the next delivery. It is kept, marked deleted by that batch, counted with its money in the ledger, and a
    rerun of the same delivery changes nothing more."""
    header = "Order;Date;Customer;Item;Total\r\n"
    rows = ["SO-1;02/01/2024;00042;Widget;100,00", "SO-2;03/01/2024;00043;Gadget;250,50",
            "SO-3;03/01/2024;00044;Widget;19,99", "SO-4;05/01/2024;00042;Sprocket;7,25"]
    config = with_source(landing.config, "open_orders", table="sales", load="snapshot",
                         columns={"order_id": "Order", "order_date": "Date", "client_id": "Customer",
                                  "product": "Item", "amount": "Total"}, natural_key=["order_id"],
                         read={"delimiter": ";", "decimal": ",", "date_format": "%d/%m/%Y"})
    first_body = (header + "".join(r + "\r\n" for r in rows)).encode()
    first = landing.ingest("landing/real/open_orders/2024-01-05.csv", first_body, config=config)
    df1 = pd.read_csv(io.BytesIO(first_body), sep=";", dtype=str)
    loaded_exactly(landing, first, "sales", len(df1), total(exact(df1["Total"], ",")))

    second_body = (header + "".join(r + "\r\n" for r in rows if not r.startswith("SO-2;"))).encode()
    df2 = pd.read_csv(io.BytesIO(second_body), sep=";", dtype=str)
    gone = df1[~df1["Order"].isin(df2["Order"])]
    second = landing.ingest("landing/real/open_orders/2024-01-06.csv", second_body, config=config)
    assert second["status"] == "committed"
    assert (second["rows_deleted"], second["amount_deleted"]) == (len(gone), total(exact(gone["Total"], ",")))
    assert landing.query("select rows_deleted, amount_deleted from meta.batches where batch_id = %s",
                         (second["batch_id"],)) == [(1, Decimal("250.50"))]
    assert landing.query("select order_id, _deleted_by from core.sales where _deleted_by is not null") == [
        ("SO-2", second["batch_id"])]
    live = landing.query("select count(*), sum(amount) from core.sales where _deleted_by is null")[0]
    assert live == (len(df2), total(exact(df2["Total"], ",")))

    def state() -> list[tuple]:
        return landing.query("select order_id, amount, _deleted_by, _row_hash from core.sales order by 1")

    before = state()
    rerun = landing.ingest("landing/real/open_orders/2024-01-06-rerun.csv", second_body, config=config)
    assert rerun["status"] == "committed" and rerun["rows_deleted"] == 0
    assert (rerun["rows_inserted"], rerun["rows_updated"], rerun["rows_unchanged"]) == (0, 0, len(df2))
    assert state() == before
    assert landing.query("select rows_deleted, amount_deleted from meta.batches where batch_id = %s",
                         (rerun["batch_id"],)) == [(0, Decimal("0"))]


def test_a_client_list_sent_whole_marks_a_client_it_no_longer_holds_and_counts_no_money(landing):
    """A client list (a table without money) sent whole each week: a client removed at source is kept, marked
    deleted by the first delivery that no longer holds it, for the dates that delivery covers; the ledger counts
    the row and no money."""
    header = "Code,Name,Segment,Country,Since\r\n"
    rows = ["00042,Brasserie Lune,Restaurant,GB,2021-03-04", "00043,Cafe Nord,Cafe,GB,2022-07-19",
            "00044,Deli Sud,Retailer,FR,2023-01-02"]
    config = with_source(landing.config, "client_list", table="clients", load="snapshot",
                         columns={"client_id": "Code", "name": "Name", "segment": "Segment", "country": "Country",
                                  "created_on": "Since"})
    first = landing.ingest("landing/real/client_list/2024-01-01.csv",
                           (header + "".join(r + "\r\n" for r in rows)).encode(), config=config)
    assert (first["status"], first["rows_inserted"]) == ("committed", len(rows))
    second_body = (header + "".join(r + "\r\n" for r in rows if not r.startswith("00043,"))).encode()
    held = pd.read_csv(io.BytesIO(second_body), dtype=str)
    second = landing.ingest("landing/real/client_list/2024-01-08.csv", second_body, config=config)
    assert (second["status"], second["rows_deleted"], second["amount_deleted"]) == ("committed", 1, None)
    assert landing.query("select plan->>'snapshot', rows_deleted, amount_deleted from meta.batches "
                         "where batch_id = %s", (second["batch_id"],)) == [(
        f"the delivery holds the source's rows from {held['Since'].min()} to {held['Since'].max()}: rows of those "
        "dates it no longer holds are marked deleted at source", 1, None)]
    assert landing.query("select client_id from core.clients where _deleted_by = %s", (second["batch_id"],)) == [
        ("00043",)]
    assert landing.query("select count(*) from core.clients where _deleted_by is null") == [(len(held),)]


def test_rows_known_by_their_place_are_each_file_s_own_and_a_quarantined_row_deletes_nothing(landing):
    """A statement without a reference column, keyed by each row's place ([row]): February's row 2 is not
    January's, so January stays whole when February arrives; a corrected January under another name retires
    the first January's rows. A snapshot with a rejected row marks nothing deleted: the rejected row may be one
    still held."""
    header = "Date;Details;Amount\r\n"
    config = with_source(landing.config, "plain_statement", table="payments", load="snapshot",
                         columns={"payment_date": "Date", "invoice_ref": "Details", "amount": "Amount"},
                         natural_key=["row"], amounts="signed",
                         read={"delimiter": ";", "decimal": ",", "date_format": "%d/%m/%Y"})

    def body(*rows: str) -> bytes:
        return (header + "".join(r + "\r\n" for r in rows)).encode()

    jan = body("02/01/2024;Card sales;100,00", "15/01/2024;Refund;-20,00")
    feb = body("01/02/2024;Card sales;300,00", "20/02/2024;Card sales;40,00")
    landing.ingest("landing/real/plain_statement/2024-01.csv", jan, config=config)
    second = landing.ingest("landing/real/plain_statement/2024-02.csv", feb, config=config)
    assert (second["rows_inserted"], second["rows_updated"], second["rows_deleted"]) == (2, 0, 0)
    live = "select count(*), sum(amount) from core.payments where _deleted_by is null"
    assert landing.query(live) == [(4, Decimal("420.00"))]
    # a blank line skipped is no rejected row: the deletions go ahead
    fixed = landing.ingest("landing/real/plain_statement/2024-01-corrected.csv",
                           body("02/01/2024;Card sales;100,00", "15/01/2024;Refund;-25,00", ";;"), config=config)
    assert (fixed["rows_inserted"], fixed["rows_skipped"], fixed["rows_deleted"], fixed["amount_deleted"]) == (
        2, 1, 2, Decimal("80.00"))
    assert landing.query(live) == [(4, Decimal("415.00"))]
    # a March delivery with a rejected row holds its deletions back
    landing.ingest("landing/real/plain_statement/2024-03.csv", body("04/03/2024;Card sales;10,00",
                                                                    "05/03/2024;Card sales;11,00"), config=config)
    bad = landing.ingest("landing/real/plain_statement/2024-03-again.csv",
                         body("04/03/2024;Card sales;10,00", "05/03/2024;Card sales;11,0O"), config=config)
    assert (bad["rows_quarantined"], bad["rows_deleted"]) == (1, 0)
    plan = landing.query("select plan->>'snapshot' from meta.batches where batch_id = %s", (bad["batch_id"],))
    assert "no row is marked deleted" in plan[0][0]


def test_a_corrected_currency_setting_reaches_the_rows_already_loaded(landing):
    """A statement loaded as EUR (the source's currency setting) that was in USD: corrected and delivered again,
    its rows take USD; the marts never add them to the euros."""
    body = b"Ref,Date,Amount\r\nT-1,2024-01-05,10.00\r\nT-2,2024-01-06,32.50\r\n"
    source = {"table": "payments", "columns": {"payment_id": "Ref", "payment_date": "Date", "amount": "Amount"}}
    landing.ingest("landing/real/usd_account/a.csv", body, config=with_source(landing.config, "usd_account",
                                                                               currency="EUR", **source))
    again = landing.ingest("landing/real/usd_account/b.csv", body, config=with_source(landing.config, "usd_account",
                                                                                       currency="USD", **source))
    assert (again["rows_updated"], again["rows_inserted"]) == (2, 0)
    assert landing.query("select currency, sum(amount) from core.payments group by 1") == [("USD", Decimal("42.50"))]


def test_an_api_source_is_never_a_snapshot(landing):
    data = landing.config.model_dump(mode="json")
    api = {"kind": "rest_api", "table": "sales", "schedule": "rate(1 day)", "load": "snapshot",
           "columns": {"order_id": "id", "line_no": "line", "order_date": "date", "amount": "total"},
           "api": {"base_url": "https://api.example.com", "resource": {"path": "/v1/orders"},
                   "auth": {"type": "none"}, "pagination": {"style": "none"}}}
    data["sources"]["orders_api"] = api
    with pytest.raises(ConfigError, match="load: an API source delivers windows"):
        parse_config(data, "orders_api source")


# 7 -------------------------------------------------------------------------------------------------------------
def test_dates_with_two_digit_years(landing):
    body = (b"Ref,Date,Category,Supplier,Net\r\n"
            b"E-1,03/04/20,Rent,Harbour Estates,4250.00\r\n"
            b"E-2,29/02/24,Utilities,Thames Water,112.40\r\n"
            b"E-3,31/12/99,IT,Dell,1999.99\r\n"
            b"E-4,01/01/00,IT,Dell,0.01\r\n"
            b"E-5,15/06/68,Insurance,Aviva,210.00\r\n")
    config = with_source(landing.config, "short_years", table="operating_costs", columns={
        "cost_id": "Ref", "cost_date": "Date", "category": "Category", "vendor": "Supplier", "amount": "Net"},
        read={"date_format": "%d/%m/%y"})
    result = landing.ingest("landing/real/short_years/costs.csv", body, config=config)

    df = pd.read_csv(io.BytesIO(body), dtype=str)
    loaded_exactly(landing, result, "operating_costs", len(df), total(exact(df["Net"])))
    expected = dict(zip(df["Ref"], pd.to_datetime(df["Date"], format="%d/%m/%y").dt.date, strict=True))
    assert expected["E-3"] == dt.date(1999, 12, 31) and expected["E-5"] == dt.date(2068, 6, 15)
    assert dict(landing.query("select cost_id, cost_date from core.operating_costs")) == expected


# 8 -------------------------------------------------------------------------------------------------------------
def test_attributes_are_kept_on_each_row_typed(landing):
    body = (b"Order No,Line,Order Date,Client Code,Product,Qty,Line Total,Region,Channel,Store,Margin %,Promo Ends\r\n"
            b"SO-1,1,2024-01-05,00042,Widget,2,21.00,North,Web,12,31.5,2024-01-31\r\n"
            b"SO-1,2,2024-01-05,00042,Gadget,1,0.10,North,Web,12,-2.25,\r\n"
            b"SO-2,1,2024-01-06,00043,Widget,3,0.60,South East,Phone,007,40,2024-02-29\r\n"
            b"SO-3,1,2024-01-06,00044,Widget,1,0.20,,Shop,3,0,\r\n")
    config = with_source(landing.config, "shop_sales", table="sales", columns={
        "order_id": "Order No", "line_no": "Line", "order_date": "Order Date", "client_id": "Client Code",
        "product": "Product", "quantity": "Qty", "amount": "Line Total"},
        attributes={"region": "Region", "channel": {"column": "Channel"},
                    "store_no": {"column": "Store", "type": "integer"},
                    "margin_pct": {"column": "Margin %", "type": "number"},
                    "promo_ends": {"column": "Promo Ends", "type": "date"}})
    result = landing.ingest("landing/real/shop_sales/2024-01.csv", body, config=config)

    df = pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False)
    loaded_exactly(landing, result, "sales", len(df), total(exact(df["Line Total"])))
    rows = landing.query("select attributes, jsonb_typeof(attributes->'store_no'), "
                         "jsonb_typeof(attributes->'margin_pct') from core.sales order by _source_row")
    assert [r[1] for r in rows] == ["number"] * len(df) and [r[2] for r in rows] == ["number"] * len(df)
    for (attributes, _, _), (_, line) in zip(rows, df.iterrows(), strict=True):
        assert attributes.get("region") == (line["Region"] or None)
        assert attributes["channel"] == line["Channel"]
        assert attributes["store_no"] == int(line["Store"]) and isinstance(attributes["store_no"], int)
        assert Decimal(str(attributes["margin_pct"])) == Decimal(line["Margin %"])
        assert attributes.get("promo_ends") == (line["Promo Ends"] or None)
    by_region = dict(landing.query("select attributes->>'region', sum(amount) from core.sales group by 1"))
    assert by_region == {r or None: total(exact(g)) for r, g in df.groupby("Region")["Line Total"]}
    filtered = landing.query("select count(*) from core.sales where (attributes->>'store_no')::int = 12")
    assert filtered == [(2,)]
    assert rows[2][0]["store_no"] == 7  # '007' is the number 7


# config --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "message"), [
    ({"natural_key": ["order_id", "amount"]}, "natural_key: 'amount' is money"),
    ({"natural_key": ["order_id", "product"]}, "natural_key: 'product' is not a mapped column"),
    ({"amounts": "debit_credit", "columns": {"order_date": "Date", "debit": "Debit"}},
     "amounts: debit_credit needs columns.debit and columns.credit"),
])
def test_config_check_refuses_keys_the_table_cannot_hold_and_half_a_statement(landing, tmp_path, capsys, change,
                                                                             message):
    from playbook.cli import main

    source = {"table": "sales", "columns": {"order_id": "Order", "order_date": "Date", "amount": "Total"}, **change}
    with pytest.raises(ConfigError) as refused:
        with_source(landing.config, "bad", **source)
    assert message in str(refused.value) and "sources.bad" in str(refused.value)

    import yaml

    data = landing.config.model_dump(mode="json")
    data["sources"]["bad"] = {"kind": "s3_csv", "schedule": "rate(1 day)", "prefix": "landing/real/bad/", **source}
    path = tmp_path / "playbook.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["config", "check", "--config", str(path)]) != 0
    printed = capsys.readouterr()
    assert message in printed.out + printed.err
