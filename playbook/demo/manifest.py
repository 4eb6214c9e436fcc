"""What should land: per file and per source rows and exact money sums, and the sales totals the marts must show.
The accounting system's invoices, read through its API, are a source of their own with no files (`"api": true`).

The manifest describes the clean data only; seeded defects are described in defects.json beside it.
Sums come from the generated integer pence, never from the rendered text, so a re-read of the files is an
independent check of both.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from playbook.demo.company import COMPANY, INVOICES_SOURCE, Company
from playbook.demo.files import CsvExport, DemoFile, PaymentsWorkbook

MANIFEST_FILE = "manifest.json"
DAILY_SALES_FILE = "expected_daily_sales.csv"


def pounds(pence: int) -> str:
    """Integer pence as an exact decimal string: 425000 -> '4250.00'."""
    return str(Decimal(int(pence)).scaleb(-2))


@dataclass(frozen=True)
class SheetEntry:
    name: str
    rows: int
    amount_sum: str


@dataclass(frozen=True)
class FileEntry:
    key: str
    source: str
    table: str
    rows: int
    amount_sum: str | None
    sha256: str
    size: int
    sheets: list[SheetEntry] | None = None


@dataclass(frozen=True)
class Defect:
    """One seeded defect: where it is (row as a spreadsheet user counts it) and what a loader should make of it."""

    id: str
    kind: str
    source: str
    key: str
    sheet: str | None
    row: int | None
    field: str | None
    value: str | None
    expected_effect: dict[str, Any]
    note: str = ""
    original: str | None = None
    delivered_sha256: str | None = None


@dataclass
class Manifest:
    company: str
    seed: int
    start: str
    end: str
    years: int
    clients: int
    files: list[FileEntry]
    sources: dict[str, dict[str, Any]]
    sales_by_year: dict[str, dict[str, Any]]
    sales_by_client: dict[str, str]
    costs_by_category: dict[str, str]
    expected_daily_sales: str = DAILY_SALES_FILE
    defects: list[Defect] = field(default_factory=list)  # written to defects.json, not to the manifest

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("defects")
        return data

    def file(self, key: str) -> FileEntry:
        for f in self.files:
            if f.key == key:
                return f
        raise KeyError(key)


def file_entry(f: DemoFile, content: bytes) -> FileEntry:
    sha = hashlib.sha256(content).hexdigest()
    if isinstance(f, PaymentsWorkbook):
        sheets = [SheetEntry(name, len(rows), pounds(sum(r.pence for r in rows))) for name, rows in f.sheets.items()]
        total = sum(sum(r.pence for r in rows) for rows in f.sheets.values())
        return FileEntry(f.key, f.source, f.table, sum(s.rows for s in sheets), pounds(total), sha, len(content),
                         sheets)
    assert isinstance(f, CsvExport)
    amount = pounds(sum(f.pence)) if f.pence is not None else None
    return FileEntry(f.key, f.source, f.table, len(f.rows), amount, sha, len(content))


def build_manifest(company: Company, files: list[DemoFile], content: dict[str, bytes], seed: int,
                   years: int) -> Manifest:
    entries = [file_entry(f, content[f.key]) for f in files]
    sources: dict[str, dict[str, Any]] = {}
    for e in entries:
        s = sources.setdefault(e.source, {"table": e.table, "files": 0, "rows": 0, "amount_sum": None})
        s["files"] += 1
        s["rows"] += e.rows
        if e.amount_sum is not None:
            s["amount_sum"] = str(Decimal(s["amount_sum"] or "0.00") + Decimal(e.amount_sum))
    invoices = company.invoice_lines  # served by the accounting system's API, not delivered as files
    sources[INVOICES_SOURCE] = {"table": "sales", "files": 0, "rows": len(invoices),
                                "amount_sum": pounds(invoices["amount"].sum()), "api": True}
    sales = company.order_lines
    year = sales["order_date"].to_numpy().astype("datetime64[Y]").astype(str)
    by_year = {}
    for y, part in sales.groupby(year, sort=True):
        by_year[str(y)] = {"orders": int(part["order_no"].nunique()), "lines": len(part),
                           "amount": pounds(part["amount"].sum())}
    by_client = {c: pounds(v) for c, v in sales.groupby("client_id", sort=True)["amount"].sum().items()}
    costs = company.costs
    by_category = {c: pounds(v) for c, v in costs.groupby("category", sort=True)["amount"].sum().items()}
    return Manifest(COMPANY, seed, company.start.isoformat(), company.end.isoformat(), years, len(company.clients),
                    entries, sources, by_year, by_client, by_category)


def daily_sales_csv(company: Company) -> bytes:
    """date, orders, lines, amount for every day of the period (days without orders included)."""
    s = company.order_lines
    days = np.arange(np.datetime64(company.start), np.datetime64(company.end) + 1, dtype="datetime64[D]")
    g = s.groupby(s["order_date"].to_numpy().astype("datetime64[D]"))
    daily = pd.DataFrame({"orders": g["order_no"].nunique(), "lines": g.size(), "amount": g["amount"].sum()})
    daily = daily.reindex(pd.DatetimeIndex(days), fill_value=0)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["date", "orders", "lines", "amount"])
    for d, orders, lines, amount in zip(days.astype(str), daily["orders"], daily["lines"], daily["amount"],
                                        strict=True):
        w.writerow([d, int(orders), int(lines), pounds(amount)])
    return buf.getvalue().encode()
