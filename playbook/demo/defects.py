"""Seeded defects a real SME's deliveries contain, each put where a loader must notice it.

Every defect adds to or replaces a delivery; none removes a clean row, so the manifest's clean totals stay
what should land. Placements are drawn from the seed once for all kinds, so a defect lands in the same
place whether it is injected alone or with the others. `expected_effect` gives deltas against loading the
clean files, in the ledger's terms (meta.batches: rows_read, rows_duplicate, rows_quarantined, ...).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

import numpy as np

from playbook.demo.company import Company
from playbook.demo.files import CsvExport, DemoFile, PaymentRow, PaymentsWorkbook, money
from playbook.demo.manifest import Defect, pounds

DEFECT_KINDS = ("duplicate_rows", "resent_file", "resent_with_change", "unknown_client", "negative_amount",
                "non_numeric_amount", "impossible_date", "missing_workbook", "totals_row", "outlier_quantity")
OUTLIER_QUANTITY = 20_000  # where the product's lines hold a handful: a typo that loads and moves the figures
REDELIVERED_DIR = "redelivered"  # later versions of an already delivered key, beside landing/


@dataclass
class Injection:
    defects: list[Defect] = field(default_factory=list)
    replaced: dict[str, DemoFile] = field(default_factory=dict)  # key -> the file as delivered
    # deliveries after the clean files, in order: (key, path under the output directory, file)
    later: list[tuple[str, str, DemoFile]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def parse_kinds(defects: Iterable[str] | str | None) -> tuple[str, ...]:
    """`all`, a comma-separated string or a list of kinds -> the kinds in canonical order."""
    if not defects:
        return ()
    items = defects.split(",") if isinstance(defects, str) else list(defects)
    items = [i.strip() for i in items if i.strip()]
    if "all" in items:
        return DEFECT_KINDS
    unknown = sorted(set(items) - set(DEFECT_KINDS))
    if unknown:
        raise ValueError(f"unknown defect kind(s) {', '.join(unknown)}; choose from all, {', '.join(DEFECT_KINDS)}")
    return tuple(k for k in DEFECT_KINDS if k in items)


def _unknown_client(company: Company) -> str:
    known = set(company.clients["client_id"])
    return next(f"{c:05d}" for c in range(99_999, 0, -1) if f"{c:05d}" not in known)


def inject(files: list[DemoFile], kinds: tuple[str, ...], seed: int, company: Company) -> Injection:
    rng = np.random.default_rng([seed, 1000])
    by_key = {f.key: f for f in files}
    sales = [f for f in files if isinstance(f, CsvExport) and f.source == "sales" and len(f.rows) >= 2]
    daily = [f for f in sales if f.key.count("-") == 2]
    monthly = [f for f in sales if f.key.count("-") == 1]
    costs = [f for f in files if isinstance(f, CsvExport) and f.source == "operating_costs" and len(f.rows) >= 2]
    workbooks = [f for f in files if isinstance(f, PaymentsWorkbook) and all(len(r) >= 2 for r in f.sheets.values())]
    if len(daily) < 2 + ("outlier_quantity" in kinds) or len(monthly) < 3 or len(costs) < 2 or len(workbooks) < 5:
        raise ValueError("the demo company is too small to place every defect; use more years")

    def pick(pool: list, n: int) -> list:
        return [pool[i] for i in rng.choice(len(pool), n, replace=False)]

    dup_file, resent_src = pick(daily, 2)
    feb = [f for f in monthly if f.key.endswith("-02.csv")]
    feb_2025 = [f for f in feb if f.key.endswith("2025-02.csv")]
    date_file = (feb_2025 or feb or monthly)[0]
    unknown_file, totals_file = pick([f for f in monthly if f is not date_file], 2)
    changed_file, non_numeric_file = pick(costs, 2)
    unknown_wb, negative_wb, missing_wb = pick(workbooks[1:-1], 3)
    stranger = _unknown_client(company)
    inj = Injection()
    seq = iter(range(1, 100))

    def target(f: DemoFile) -> DemoFile:
        if f.key not in inj.replaced:
            inj.replaced[f.key] = copy.deepcopy(f)
        return inj.replaced[f.key]

    def add(kind: str, f: DemoFile, **kw) -> None:
        inj.defects.append(Defect(id=f"D{next(seq):02d}", kind=kind, source=f.source, key=f.key, **kw))

    def sales_row(f: CsvExport, i: int, order: int, **change: str) -> list[str]:
        row = list(f.rows[i])
        row[0], row[1] = f"SO-{9_000_000 + order:07d}", "1"
        for name, value in change.items():
            row[f.header.index(name)] = value
        return row

    if "duplicate_rows" in kinds:
        f = target(dup_file)
        i = int(rng.integers(0, len(f.rows)))
        f.rows.insert(i + 1, list(f.rows[i]))
        add("duplicate_rows", f, sheet=None, row=f.line_of(i + 1), field=None,
            value=f"{f.rows[i][0]} line {f.rows[i][1]}",
            expected_effect={"rows_read": 1, "rows_duplicate": 1, "amount_duplicate": pounds(f.pence[i])},
            note=f"an exact copy of line {f.line_of(i)}, right below it")
    if "resent_file" in kinds:
        f = copy.deepcopy(resent_src)
        f.key = resent_src.key.removesuffix(".csv") + "_resent.csv"
        inj.later.append((f.key, f.key, f))
        add("resent_file", f, sheet=None, row=None, field=None, value=resent_src.key,
            expected_effect={"batches": 1, "rows_read": len(f.rows), "rows_unchanged": len(f.rows),
                             "rows_inserted": 0, "amount_loaded": "0.00"},
            note=f"the same bytes as {resent_src.key} under a new key: nothing may be counted twice")
    if "resent_with_change" in kinds:
        f = copy.deepcopy(changed_file)
        i = int(rng.integers(0, len(f.rows)))
        col = f.header.index("Amount")
        old = f.pence[i]
        new = old + int(rng.integers(1, 20)) * 500
        original_text, f.rows[i][col] = f.rows[i][col], str(money(new, ",", ".")[0])
        inj.later.append((f.key, f"{REDELIVERED_DIR}/{f.key}", f))
        add("resent_with_change", f, sheet=None, row=f.line_of(i), field="Amount", value=f.rows[i][col],
            original=original_text,
            expected_effect={"object_versions": 1, "batches": 1, "rows_read": len(f.rows), "rows_updated": 1,
                             "rows_unchanged": len(f.rows) - 1, "amount_delta": pounds(new - old)},
            note=f"{f.rows[i][0]} corrected from {original_text} in a second version of the same key; "
                 "the later version wins")
    if "unknown_client" in kinds:
        f = target(unknown_file)
        i = int(rng.integers(0, len(f.rows)))
        row = sales_row(f, i, 1, **{"Client Code": stranger})
        f.rows.insert(i + 1, row)
        # the row loads (the client master may simply lag behind); validation reports it as an orphan
        add("unknown_client", f, sheet=None, row=f.line_of(i + 1), field="Client Code", value=stranger,
            expected_effect={"rows_read": 1, "rows_inserted": 1, "amount_loaded": row[7], "orphans": 1},
            note=f"{row[0]}: client {stranger} is not in the client master")
        wb = target(unknown_wb)
        assert isinstance(wb, PaymentsWorkbook)
        sheet = sorted(wb.sheets)[int(rng.integers(0, len(wb.sheets)))]
        rows = wb.sheets[sheet]
        i = int(rng.integers(0, len(rows)))
        p = PaymentRow("PMT-900001", rows[i].received, stranger, f"INV-{wb.period_start:%Y%m}-{stranger}", "BACS",
                       int(rng.integers(5_000, 90_000)))
        rows.insert(i + 1, p)
        add("unknown_client", wb, sheet=sheet, row=wb.row_of(i + 1), field="Client Code", value=stranger,
            expected_effect={"rows_read": 1, "rows_inserted": 1, "amount_loaded": pounds(p.pence), "orphans": 1},
            note=f"{p.ref}: client {stranger} is not in the client master")
    if "negative_amount" in kinds:
        wb = target(negative_wb)
        assert isinstance(wb, PaymentsWorkbook)
        sheet = sorted(wb.sheets)[int(rng.integers(0, len(wb.sheets)))]
        rows = wb.sheets[sheet]
        i = int(rng.integers(0, len(rows)))
        p = copy.copy(rows[i])
        p.ref, p.pence = "PMT-900002", -int(rng.integers(5_000, 90_000))
        rows.insert(i + 1, p)
        add("negative_amount", wb, sheet=sheet, row=wb.row_of(i + 1), field="Amount", value=pounds(p.pence),
            expected_effect={"rows_read": 1, "rows_quarantined": 1, "amount_quarantined": pounds(p.pence)},
            note=f"{p.ref}: a payment received cannot be negative")
    if "non_numeric_amount" in kinds:
        f = target(non_numeric_file)
        i = int(rng.integers(0, len(f.rows)))
        row = list(f.rows[i])
        row[0], row[f.header.index("Amount")] = "EX-900001", "12,3O"
        f.rows.insert(i + 1, row)
        add("non_numeric_amount", f, sheet=None, row=f.line_of(i + 1), field="Amount", value="12,3O",
            expected_effect={"rows_read": 1, "rows_quarantined": 1},
            note="EX-900001: the letter O typed for a zero")
    if "impossible_date" in kinds:
        f = target(date_file)
        i = int(rng.integers(0, len(f.rows)))
        day = f.key[-11:-4] + ("-30" if f.key.endswith("-02.csv") else "-31")
        row = sales_row(f, i, 2, **{"Order Date": day})
        f.rows.insert(i + 1, row)
        add("impossible_date", f, sheet=None, row=f.line_of(i + 1), field="Order Date", value=day,
            expected_effect={"rows_read": 1, "rows_quarantined": 1, "amount_quarantined": row[7]},
            note=f"{row[0]}: {day} is not a date")
    if "missing_workbook" in kinds:
        wb = missing_wb
        assert isinstance(wb, PaymentsWorkbook)
        n = sum(len(r) for r in wb.sheets.values())
        total = sum(p.pence for r in wb.sheets.values() for p in r)
        due: date = wb.period_end + timedelta(days=1)
        inj.missing.append(wb.key)
        add("missing_workbook", wb, sheet=None, row=None, field=None,
            value=f"{wb.period_start.isoformat()}/{wb.period_end.isoformat()}",
            expected_effect={"batches": -1, "rows_read": -n, "amount_in": pounds(-total),
                             "freshness": f"payments overdue from {due.isoformat()}"},
            note=f"the workbook for {wb.period_start} to {wb.period_end} was never sent (due {due})")
    if "totals_row" in kinds:
        f = target(totals_file)
        total = str(money(sum(f.pence))[0])
        footer = [""] * len(f.header)
        footer[0], footer[f.header.index("Line Total")] = "TOTAL", total
        f.rows.append(footer)
        add("totals_row", f, sheet=None, row=f.line_of(len(f.rows) - 1), field="Order No", value="TOTAL",
            expected_effect={"rows_skipped": 1, "if_counted_as_data": {"rows_read": 1, "amount_in": total}},
            note="a footer with the file's sum: not an order line")
    if "outlier_quantity" in kinds:
        # drawn apart (its own stream), so the other defects stay where they were before this kind existed
        own = np.random.default_rng([seed, 1001])
        f = target([d for d in daily if d not in (dup_file, resent_src)][int(own.integers(0, len(daily) - 2))])
        i = int(own.integers(0, len(f.rows)))
        unit = round(Decimal(f.rows[i][f.header.index("Unit Price")]) * 100)
        row = sales_row(f, i, 3, Qty=str(OUTLIER_QUANTITY), **{"Line Total": str(money(unit * OUTLIER_QUANTITY)[0])})
        f.rows.insert(i + 1, row)
        add("outlier_quantity", f, sheet=None, row=f.line_of(i + 1), field="Qty", value=str(OUTLIER_QUANTITY),
            expected_effect={"rows_read": 1, "rows_inserted": 1, "amount_loaded": row[7], "outliers": 1},
            note=f"{row[0]}: {OUTLIER_QUANTITY} of {row[4]} where its lines hold a few; it loads, and validate "
                 "and the operations email name it")
    assert all(k in by_key for k in inj.replaced)
    return inj
