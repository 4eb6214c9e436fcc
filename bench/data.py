"""Seeded inputs generated on the fly: the same arguments give byte-identical files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

SALES_HEADER = ["Order No", "Line", "Order Date", "Client Code", "Product", "Qty", "Unit Price", "Line Total",
                "Currency"]
PAYMENTS_HEADER = ["Payment Ref", "Date Received", "Client Code", "Invoice", "Method", "Amount", "Bank Account",
                   "Note", "Reconciled"]
PAYMENTS_SHEET = "Payments Current"
SEED = 20240601


def sales_frame(rows: int, seed: int = SEED) -> pd.DataFrame:
    """Order lines of 300 clients over three years, three lines an order, exact two-decimal money."""
    rng = np.random.default_rng(seed)
    i = np.arange(rows)
    order = i // 3
    qty = rng.integers(1, 20, rows)
    price_pence = rng.integers(50, 50_000, rows)
    day = pd.Timestamp("2022-01-01") + pd.to_timedelta(order * 1096 // max(rows // 3, 1), unit="D")
    return pd.DataFrame({
        "Order No": np.char.add("SO-", order.astype(str)),
        "Line": i % 3 + 1,
        "Order Date": day.strftime("%Y-%m-%d"),
        "Client Code": np.char.add("C", (rng.integers(1, 301, rows)).astype(str)),
        "Product": np.char.add("P-", rng.integers(100, 999, rows).astype(str)),
        "Qty": qty,
        "Unit Price": price_pence / 100,
        "Line Total": qty * price_pence / 100,
        "Currency": "GBP",
    })


def sales_csv(directory: Path, rows: int, seed: int = SEED) -> Path:
    path = directory / f"sales-{rows}-{seed}.csv"
    if not path.exists():
        frame = sales_frame(rows, seed)
        tmp = path.with_suffix(".part")
        frame.to_csv(tmp, index=False, float_format="%.2f")
        tmp.rename(path)
    return path


def reordered_csv(path: Path) -> Path:
    """The same file with its rows in reverse order (the header first): the same rows, other bytes."""
    out = path.with_name(path.stem + "-reordered.csv")
    if not out.exists():
        header, *lines = path.read_bytes().splitlines(keepends=True)
        tmp = out.with_suffix(".part")
        tmp.write_bytes(header + b"".join(reversed(lines)))
        tmp.rename(out)
    return out


def payments_xlsx(directory: Path, rows: int, seed: int = SEED) -> Path:
    """A finance team's workbook: a title block, the header on row 4, nine columns, a Total footer."""
    import xlsxwriter

    path = directory / f"payments-{rows}-{seed}.xlsx"
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    pence = rng.integers(100, 500_000, rows)
    days = rng.integers(0, 1096, rows)
    clients = rng.integers(1, 301, rows)
    methods = np.array(["BACS", "Card", "Cheque", "Faster Payment"])[rng.integers(0, 4, rows)]
    base = dt.date(2022, 1, 1)
    tmp = path.with_suffix(".part.xlsx")
    wb = xlsxwriter.Workbook(str(tmp), {"constant_memory": True})
    date_fmt = wb.add_format({"num_format": "dd/mm/yyyy"})
    ws = wb.add_worksheet(PAYMENTS_SHEET)
    ws.write_row(0, 0, ["Northwind Provisions Ltd: payments received"])
    ws.write_row(1, 0, ["Exported by the finance team"])
    ws.write_row(3, 0, PAYMENTS_HEADER)
    for r in range(rows):
        ws.write_string(4 + r, 0, f"PAY-{r:07d}")
        ws.write_datetime(4 + r, 1, dt.datetime.combine(base + dt.timedelta(days=int(days[r])), dt.time()), date_fmt)
        ws.write_string(4 + r, 2, f"C{clients[r]}")
        ws.write_string(4 + r, 3, f"INV-{r // 2:07d}")
        ws.write_string(4 + r, 4, str(methods[r]))
        ws.write_number(4 + r, 5, int(pence[r]) / 100)
        ws.write_string(4 + r, 6, "Main account")
        ws.write_string(4 + r, 7, "")
        ws.write_boolean(4 + r, 8, bool(r % 2))
    ws.write_row(4 + rows, 0, ["Total", None, None, None, None, int(pence.sum()) / 100])
    wb.close()
    tmp.rename(path)
    return path
