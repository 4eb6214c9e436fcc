"""The demo company's exports, byte for byte as its systems write them (see each source in playbook.yaml).

A `CsvExport` or `PaymentsWorkbook` holds formatted rows; `render()` turns it into the bytes that land in
S3. Rows stay editable until rendering so that seeded defects can be put into a file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd

from playbook.demo.company import BANKS, COMPANY, EURO_OPENING_CENTS, METHODS, TIMEZONE, Company

SALES_HEADER = ["Order No", "Line", "Order Date", "Client Code", "Product", "Qty", "Unit Price", "Line Total",
                "Currency"]
CLIENTS_HEADER = ["Client Code", "Client Name", "Segment", "Country", "Since", "Region"]
COSTS_HEADER = ["Expense ID", "Date", "Category", "Supplier", "Amount"]
PAYMENTS_HEADER = ["Payment Ref", "Date Received", "Client Code", "Invoice", "Method", "Amount"]
TAX_HEADER = ["Period", "Tax", "Amount £", "Due"]
CRM_HEADER = ["Activity Id", "Timestamp", "Account", "Channel", "Outcome"]
EURO_HEADER = ["Booking Date", "Reference", "Client Code", "Details", "Type", "Debit", "Credit", "Balance"]
EURO_IBAN = "GB94 BARC 2045 7743 9172 65"

PAYMENTS_HEADER_ROW = 4  # 1-based, as a spreadsheet user counts: title, subtitle, blank, header
SORT_CODES = {"Barclays": "20-45-77 43917265", "HSBC": "40-11-62 81530094"}
DAILY_SALES_DAYS = 90  # sales younger than this arrive one file a day, older history one file a month


def money(pence: np.ndarray | pd.Series | int, decimal: str = ".", thousands: str = "") -> np.ndarray:
    """Integer pence as text with two decimals, exactly: 425000 -> '4250.00' (or '4.250,00')."""
    p = np.atleast_1d(np.asarray(pence, dtype=np.int64))
    whole = np.abs(p) // 100
    units = whole.astype(str)
    if thousands:
        units = np.array([f"{w:,}".replace(",", thousands) for w in whole.tolist()], dtype=object)
    cents = np.char.zfill((np.abs(p) % 100).astype(str), 2)
    sign = np.where(p < 0, "-", "")
    return np.char.add(np.char.add(np.char.add(sign, units.astype(str)), decimal), cents).astype(object)


def iso_days(days: np.ndarray) -> np.ndarray:
    return np.asarray(days).astype("datetime64[D]").astype(str).astype(object)


@dataclass
class CsvExport:
    key: str
    source: str
    table: str
    header: list[str]
    rows: list[list[str]]
    encoding: str = "utf-8"
    delimiter: str = ","
    amount_column: str | None = None
    pence: list[int] | None = None  # the money of each row, for the manifest (never parsed back from text)
    preamble: list[list[str]] = field(default_factory=list)  # title lines above the header (a bank statement's)

    def render(self) -> bytes:
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter=self.delimiter, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerows(self.preamble)
        writer.writerow(self.header)
        writer.writerows(self.rows)
        return buf.getvalue().encode(self.encoding)

    def line_of(self, index: int) -> int:
        """The 1-based line of a data row as a spreadsheet user counts it (the header is line 1, or the line
        below the title lines)."""
        return index + 2 + len(self.preamble)


@dataclass
class PaymentRow:
    ref: str
    received: date
    client_id: str
    invoice: str
    method: str
    pence: int


@dataclass
class PaymentsWorkbook:
    key: str
    period_start: date
    period_end: date
    sheets: dict[str, list[PaymentRow]] = field(default_factory=dict)
    source: str = "payments"
    table: str = "payments"

    def row_of(self, index: int) -> int:
        """The 1-based sheet row of a payment as a spreadsheet user counts it (the header is row 4)."""
        return PAYMENTS_HEADER_ROW + 1 + index

    def render(self) -> bytes:
        import xlsxwriter

        buf = io.BytesIO()
        wb = xlsxwriter.Workbook(buf, {"in_memory": True})
        # a fixed creation time keeps the bytes reproducible (the zip entries are already 1980-01-01)
        wb.set_properties({"title": f"Payments {self.period_start} to {self.period_end}", "author": COMPANY,
                           "created": datetime.combine(self.period_end, datetime.min.time())})
        bold = wb.add_format({"bold": True})
        title = wb.add_format({"bold": True, "font_size": 14})
        day = wb.add_format({"num_format": "dd/mm/yyyy"})
        amount = wb.add_format({"num_format": "#,##0.00"})
        total_amount = wb.add_format({"num_format": "#,##0.00", "bold": True, "top": 1})
        summary = wb.add_worksheet("Summary")
        totals: list[tuple[str, str, int, int]] = []
        for name, rows in self.sheets.items():
            ws = wb.add_worksheet(name)
            ws.set_column(0, 0, 14)
            ws.set_column(1, 2, 13)
            ws.set_column(3, 4, 18)
            ws.set_column(5, 5, 13)
            ws.write_string(0, 0, f"{COMPANY} - payments received", title)
            bank = name.removeprefix("Payments - ")
            ws.write_string(1, 0, f"{bank} business account {SORT_CODES.get(bank, '')}, "
                                  f"{self.period_start:%d/%m/%Y} to {self.period_end:%d/%m/%Y}")
            ws.write_row(PAYMENTS_HEADER_ROW - 1, 0, PAYMENTS_HEADER, bold)
            r = PAYMENTS_HEADER_ROW
            for p in rows:
                ws.write_string(r, 0, p.ref)
                ws.write_datetime(r, 1, datetime.combine(p.received, datetime.min.time()), day)
                ws.write_string(r, 2, p.client_id)
                ws.write_string(r, 3, p.invoice)
                ws.write_string(r, 4, p.method)
                ws.write_number(r, 5, p.pence / 100, amount)
                r += 1
            total = sum(p.pence for p in rows)
            ws.write_string(r, 0, "Total", bold)
            if rows:
                ws.write_formula(r, 5, f"=SUM(F{PAYMENTS_HEADER_ROW + 1}:F{r})", total_amount, total / 100)
            else:
                ws.write_number(r, 5, 0, total_amount)
            totals.append((name, f"F{r + 1}", len(rows), total))
        summary.write_string(0, 0, f"{COMPANY} - payments summary", title)
        summary.write_string(1, 0, f"{self.period_start:%d/%m/%Y} to {self.period_end:%d/%m/%Y}")
        summary.write_row(3, 0, ["Account", "Payments", "Amount"], bold)
        for i, (name, cell, count, total) in enumerate(totals):
            summary.write_string(4 + i, 0, name.removeprefix("Payments - "))
            summary.write_number(4 + i, 1, count)
            summary.write_formula(4 + i, 2, f"='{name}'!{cell}", amount, total / 100)
        last = 4 + len(totals)
        summary.write_string(last, 0, "All accounts", bold)
        summary.write_formula(last, 2, f"=SUM(C5:C{last})", total_amount, sum(t[3] for t in totals) / 100)
        summary.set_column(0, 0, 16)
        summary.set_column(1, 2, 13)
        lookups = wb.add_worksheet("Lookups")
        lookups.write_row(0, 0, ["Method", "Bank", "Sort code / account"], bold)
        for i, method in enumerate(METHODS):
            lookups.write_string(1 + i, 0, method)
        for i, bank in enumerate(BANKS):
            lookups.write_string(1 + i, 1, bank)
            lookups.write_string(1 + i, 2, SORT_CODES[bank])
        lookups.hide()
        summary.activate()
        wb.close()
        return buf.getvalue()


DemoFile = CsvExport | PaymentsWorkbook


def exports(company: Company) -> Iterator[DemoFile]:
    """Every file the demo company delivers, in key order within each source."""
    yield _clients_file(company)
    yield from _sales_files(company)
    yield from _costs_files(company)
    yield from _payments_workbooks(company)
    yield from _euro_statements(company)
    yield from _monthly(company.tax, "period", "landing/tax/{y}/tax_{y}-{m}.csv", "tax", "tax", TAX_HEADER,
                        _tax_rows, encoding="cp1252", amount_column="Amount £", amount="amount")
    yield from _monthly(company.interactions, "occurred_at", "landing/crm/{y}/crm_{y}-{m}.csv", "interactions",
                        "interactions", CRM_HEADER, _crm_rows, encoding="utf-8-sig")


def sales_file_keys(order_date: np.ndarray, end: date) -> np.ndarray:
    days = np.asarray(order_date).astype("datetime64[D]")
    iso = iso_days(days)
    daily = days >= np.datetime64(end) - DAILY_SALES_DAYS
    year = np.array([d[:4] for d in iso], dtype=object)
    name = np.where(daily, iso, np.array([d[:7] for d in iso], dtype=object))
    return ("landing/sales/" + year + "/sales_" + name + ".csv").astype(object)


def _clients_file(c: Company) -> CsvExport:
    df = c.clients
    rows = np.column_stack([df["client_id"], df["name"], df["segment"], df["country"],
                            iso_days(df["created_on"].to_numpy()), df["region"]]).tolist()
    return CsvExport(f"landing/clients/clients_{c.end.isoformat()}.csv", "clients", "clients", CLIENTS_HEADER, rows)


def _sales_files(c: Company) -> Iterator[CsvExport]:
    s = c.shop_lines
    text = np.column_stack([
        np.char.add("SO-", np.char.zfill(s["order_no"].to_numpy().astype(str), 7)).astype(object),
        s["line_no"].to_numpy().astype(str).astype(object),
        iso_days(s["order_date"].to_numpy()),
        s["client_id"].to_numpy(), s["product"].to_numpy(),
        s["quantity"].to_numpy().astype(str).astype(object),
        money(s["unit_price"]), money(s["amount"]),
        np.full(len(s), "GBP", dtype=object),
    ])
    amount = s["amount"].to_numpy()
    keys = sales_file_keys(s["order_date"].to_numpy(), c.end)
    groups = pd.Series(np.arange(len(s))).groupby(keys).indices
    # a daily export is sent even on a day without orders
    day0 = max(np.datetime64(c.start), np.datetime64(c.end) - DAILY_SALES_DAYS)
    all_keys = set(groups) | set(sales_file_keys(np.arange(day0, np.datetime64(c.end) + 1), c.end))
    for key in sorted(all_keys):
        idx = groups.get(key, np.array([], dtype=int))
        yield CsvExport(key, "sales", "sales", SALES_HEADER, text[idx].tolist(), amount_column="Line Total",
                        pence=amount[idx].tolist())


def costs_file_key(day: date) -> str:
    iso = day.isocalendar()
    return f"landing/costs/{iso.year}/costs_{iso.year}-W{iso.week:02d}.csv"


def _costs_files(c: Company) -> Iterator[CsvExport]:
    df = c.costs
    days = [d.date() for d in pd.to_datetime(df["cost_date"])]
    text = np.column_stack([
        np.array([f"EX-{n:06d}" for n in df["cost_no"]], dtype=object),
        np.array([f"{d:%d/%m/%Y}" for d in days], dtype=object),
        df["category"].to_numpy(), df["vendor"].to_numpy(),
        money(df["amount"], decimal=",", thousands="."),
    ])
    keys = np.array([costs_file_key(d) for d in days], dtype=object)
    # every week of the period has its export, even a week without costs
    day, weeks = c.start, set()
    while day <= c.end:
        weeks.add(costs_file_key(day))
        day += timedelta(days=7 - day.weekday())
    groups = pd.Series(np.arange(len(df))).groupby(keys).indices
    for key in sorted(weeks):
        idx = groups.get(key, np.array([], dtype=int))
        yield CsvExport(key, "operating_costs", "operating_costs", COSTS_HEADER, text[idx].tolist(), delimiter=";",
                        amount_column="Amount", pence=df["amount"].to_numpy()[idx].tolist())


def half_months(start: date, end: date) -> Iterator[tuple[date, date, int]]:
    """(first day, last day, 1 or 2) of each half month from start's to end's."""
    d = start.replace(day=1)
    while d <= end:
        nxt = (d.replace(day=28) + timedelta(days=4)).replace(day=1)
        for half, (a, b) in enumerate(((d, d.replace(day=15)), (d.replace(day=16), nxt - timedelta(days=1))), 1):
            if b >= start and a <= end:
                yield a, b, half
        d = nxt


def payments_key(period_start: date, half: int) -> str:
    return f"landing/payments/{period_start:%Y}/payments_{period_start:%Y-%m}-{half}.xlsx"


def _payments_workbooks(c: Company) -> Iterator[PaymentsWorkbook]:
    df = c.payments
    if df.empty:
        return
    received = [d.date() for d in pd.to_datetime(df["payment_date"])]
    rows = [PaymentRow(f"PMT-{n:06d}", d, cl, inv, m, int(a)) for n, d, cl, inv, m, a in zip(
        df["payment_no"], received, df["client_id"], df["invoice"], df["method"], df["amount"], strict=True)]
    by_sheet: dict[tuple[str, str], list[PaymentRow]] = {}
    for r, bank in zip(rows, df["bank"], strict=True):
        key = payments_key(r.received.replace(day=1), 1 if r.received.day <= 15 else 2)
        by_sheet.setdefault((key, bank), []).append(r)
    first = min(received)
    for a, b, half in half_months(c.start, c.end):
        if b < first:
            continue  # the finance team's workbooks start with the first payment received
        wb = PaymentsWorkbook(payments_key(a, half), a, b)
        for bank in BANKS:
            wb.sheets[f"Payments - {bank}"] = by_sheet.get((wb.key, bank), [])
        yield wb


def euro_statement_key(month: date) -> str:
    return f"landing/euro-account/{month:%Y}/statement_{month:%Y-%m}.csv"


def _euro_statements(c: Company) -> Iterator[CsvExport]:
    """The euro account's monthly statement as the bank exports it: semicolon-separated, decimal comma, day
    first, a few title lines and the opening balance above the header, debits and credits in two columns
    (the other one empty) and the running balance."""
    df = c.euro_account
    if df.empty:
        return
    booked = [d.date() for d in pd.to_datetime(df["booked"])]
    balance = EURO_OPENING_CENTS
    by_month: dict[date, list[tuple[list[str], int]]] = {}
    for i, day in enumerate(booked):
        debit, credit = int(df["debit"].iat[i]), int(df["credit"].iat[i])
        balance += credit - debit
        cells = [f"{day:%d.%m.%Y}", f"TRX{int(df['txn_no'].iat[i]):08d}", df["client_id"].iat[i],
                 df["invoice"].iat[i], df["type"].iat[i],
                 str(money(debit, ",", ".")[0]) if debit else "", str(money(credit, ",", ".")[0]) if credit else "",
                 str(money(balance, ",", ".")[0])]
        by_month.setdefault(day.replace(day=1), []).append((cells, credit - debit))
    month, opening = min(booked).replace(day=1), EURO_OPENING_CENTS
    while month <= c.end:
        nxt = (month.replace(day=28) + timedelta(days=4)).replace(day=1)
        last = min(nxt - timedelta(days=1), c.end)
        rows = by_month.get(month, [])
        closing = opening + sum(p for _, p in rows)
        preamble = [[f"{COMPANY}"], ["Account", "EUR business account", f"IBAN {EURO_IBAN}"],
                    ["Statement period", f"{month:%d.%m.%Y}", f"{last:%d.%m.%Y}"],
                    ["Opening balance", str(money(opening, ",", ".")[0]), "EUR"],
                    ["Closing balance", str(money(closing, ",", ".")[0]), "EUR"], []]
        yield CsvExport(euro_statement_key(month), "euro_account", "payments", EURO_HEADER, [r for r, _ in rows],
                        delimiter=";", pence=[p for _, p in rows],
                        preamble=preamble)
        month, opening = nxt, closing


def _tax_rows(df: pd.DataFrame) -> list[list[str]]:
    return np.column_stack([iso_days(df["period"].to_numpy()), df["tax_type"].to_numpy(), money(df["amount"]),
                            iso_days(df["due_date"].to_numpy())]).tolist()


def iso_timestamps(local: np.ndarray) -> np.ndarray:
    """Local wall-clock minutes as ISO 8601 with the London offset of the moment: 2024-07-01T10:15:00+01:00."""
    naive = pd.DatetimeIndex(np.asarray(local).astype("datetime64[m]"))
    utc = naive.tz_localize(TIMEZONE).tz_convert("UTC").tz_localize(None)
    offset_h = ((naive - utc) // pd.Timedelta(minutes=1)).to_numpy() // 60
    suffix = np.where(offset_h >= 0, "+", "-") + np.char.zfill(np.abs(offset_h).astype(str), 2) + ":00"
    return np.char.add(naive.strftime("%Y-%m-%dT%H:%M:%S").to_numpy().astype(str), suffix).astype(object)


def _crm_rows(df: pd.DataFrame) -> list[list[str]]:
    return np.column_stack([
        np.char.add("ACT-", np.char.zfill(df["activity_no"].to_numpy().astype(str), 7)).astype(object),
        iso_timestamps(df["occurred_at"].to_numpy()), df["client_id"].to_numpy(), df["channel"].to_numpy(),
        df["outcome"].to_numpy(),
    ]).tolist()


def _monthly(df: pd.DataFrame, when: str, pattern: str, source: str, table: str, header: list[str], to_rows,
             encoding: str = "utf-8", amount_column: str | None = None,
             amount: str | None = None) -> Iterator[CsvExport]:
    months = df[when].to_numpy().astype("datetime64[M]")
    for m in np.unique(months):
        y, mm = str(m)[:4], str(m)[5:7]
        part = df[months == m]
        yield CsvExport(pattern.format(y=y, m=mm), source, table, header, to_rows(part), encoding=encoding,
                        amount_column=amount_column, pence=part[amount].tolist() if amount else None)
