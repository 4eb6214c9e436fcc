"""The demo company: reproducible bytes, files laid out as playbook.yaml says, a manifest that a re-read of the
files confirms to the penny, and seeded defects exactly where defects.json says they are."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest

from playbook.config import load_config
from playbook.demo import DEFECT_KINDS, deliver, generate
from playbook.demo.api_server import BusinessApi
from playbook.demo.company import INVOICES_SOURCE, build_company
from playbook.demo.delivery import delivery_plan

END = date(2026, 11, 30)
CONFIG = load_config()


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    return out, generate(out)


@pytest.fixture(scope="module")
def defective(tmp_path_factory):
    out = tmp_path_factory.mktemp("defects")
    return out, generate(out, defects="all")


def csv_rows(path: Path, source: str) -> tuple[list[str], list[list[str]]]:
    read = CONFIG.sources[source].read
    text = path.read_bytes().decode(read.encoding)
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=read.delimiter, quotechar=read.quotechar))
    return rows[read.header_row], rows[read.header_row + 1:]


def data_rows(rows: list[list[str]], source: str) -> list[list[str]]:
    footer = re.compile(CONFIG.sources[source].read.skip_rows_matching)
    return [r for r in rows if not footer.match(r[0])]


def amount(text: str, source: str) -> Decimal:
    read = CONFIG.sources[source].read
    if read.thousands:
        text = text.replace(read.thousands, "")
    return Decimal(text.replace(read.decimal, "."))


def payment_sheets(path: Path) -> dict[str, list[tuple]]:
    """Rows under the header of every sheet the configured pattern selects, up to the Total row."""
    read = CONFIG.sources["payments"].read
    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    out = {}
    for ws in wb.worksheets:
        if re.search(read.sheet_pattern, ws.title):
            rows = list(ws.iter_rows(min_row=read.header_row + 1, values_only=True))
            assert list(rows[0]) == list(CONFIG.sources["payments"].columns.values())
            body = rows[1:]
            end = next(i for i, r in enumerate(body) if r[0] == "Total")
            out[ws.title] = body[:end] + [("__total__", *body[end][1:])]
    wb.close()
    return out


def money2(value: float) -> Decimal:
    return Decimal(f"{value:.2f}")


def test_same_seed_gives_identical_bytes(clean, tmp_path):
    out, manifest = clean
    again = generate(tmp_path / "again")
    assert again.to_json() == manifest.to_json()
    assert (tmp_path / "again" / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    for f in manifest.files:
        content = (tmp_path / "again" / f.key).read_bytes()
        assert content == (out / f.key).read_bytes(), f.key
        assert hashlib.sha256(content).hexdigest() == f.sha256
    other = build_company(seed=8)  # another seed, another company
    assert str(Decimal(int(other.sales["amount"].sum())).scaleb(-2)) != manifest.sources["sales"]["amount_sum"]


def test_manifest_totals_equal_an_independent_reread(clean):
    out, manifest = clean
    totals: dict[str, list] = defaultdict(lambda: [0, Decimal("0.00")])
    by_year: dict[str, Decimal] = defaultdict(Decimal)
    by_client: dict[str, Decimal] = defaultdict(Decimal)
    by_day: dict[str, Decimal] = defaultdict(Decimal)
    for f in manifest.files:
        path = out / f.key
        assert hashlib.sha256(path.read_bytes()).hexdigest() == f.sha256
        assert path.stat().st_size == f.size
        if f.source == "payments":
            sheets = payment_sheets(path)
            assert [s.name for s in f.sheets] == list(sheets)
            file_sum = Decimal("0.00")
            for entry in f.sheets:
                body = sheets[entry.name][:-1]
                sheet_sum = sum((money2(r[5]) for r in body), Decimal("0.00"))
                assert (len(body), sheet_sum) == (entry.rows, Decimal(entry.amount_sum)), (f.key, entry.name)
                assert money2(sheets[entry.name][-1][5]) == sheet_sum  # the Total row's cached value
                file_sum += sheet_sum
            rows = f.rows
        else:
            header, body = csv_rows(path, f.source)
            assert data_rows(body, f.source) == body  # no footers in clean files
            rows = len(body)
            file_sum = None
            table = CONFIG.sources[f.source]
            if "amount" in table.columns:
                col = header.index(table.columns["amount"])
                file_sum = sum((amount(r[col], f.source) for r in body), Decimal("0.00"))
                assert str(file_sum) == f.amount_sum, f.key
            elif table.amounts == "debit_credit":  # a statement: credits in, debits out
                debit, credit = (header.index(table.columns[c]) for c in ("debit", "credit"))
                file_sum = sum((amount(r[credit] or "0", f.source) - amount(r[debit] or "0", f.source)
                                for r in body), Decimal("0.00"))
                assert str(file_sum) == f.amount_sum, f.key
            if f.source == "sales":
                for r in body:
                    qty, price, total = int(r[5]), Decimal(r[6]), Decimal(r[7])
                    assert qty * price == total and price > 0  # a return: negative quantity and total
                    by_year[r[2][:4]] += total
                    by_client[r[3]] += total
                    by_day[r[2]] += total
        assert rows == f.rows, f.key
        totals[f.source][0] += rows
        if file_sum is not None:
            totals[f.source][1] += file_sum
    # the trade accounts' invoices, as the demo's accounting system serves them (JSON, read here with json)
    company = build_company()
    server = BusinessApi(company, invoices=company.invoice_lines)
    server.close()
    for text in server.invoices[1]:
        invoice = json.loads(text, parse_float=Decimal)
        day = datetime.fromtimestamp(int(re.fullmatch(r"/Date\((\d+)\+0000\)/", invoice["Date"])[1]) / 1000,
                                     UTC).date().isoformat()
        for line in invoice["LineItems"]:
            total = Decimal(str(line["LineAmount"]))
            assert Decimal(line["Quantity"]) * Decimal(str(line["UnitAmount"])) == total
            by_year[day[:4]] += total
            by_client[invoice["Contact"]["ContactNumber"]] += total
            by_day[day] += total
            totals[INVOICES_SOURCE][0] += 1
            totals[INVOICES_SOURCE][1] += total
    for source, s in manifest.sources.items():
        assert totals[source][0] == s["rows"]
        assert s["amount_sum"] is None or Decimal(s["amount_sum"]) == totals[source][1]
    assert {y: Decimal(v["amount"]) for y, v in manifest.sales_by_year.items()} == by_year
    assert {c: Decimal(v) for c, v in manifest.sales_by_client.items()} == by_client
    with open(out / manifest.expected_daily_sales, newline="") as fh:
        daily = list(csv.DictReader(fh))
    assert len(daily) == (END - date(2023, 12, 1)).days + 1
    assert {d["date"]: Decimal(d["amount"]) for d in daily if d["amount"] != "0.00"} == by_day
    assert sum(int(d["lines"]) for d in daily) == sum(manifest.sources[s]["rows"] for s in ("sales", INVOICES_SOURCE))


def test_the_company_looks_like_an_sme(clean):
    out, manifest = clean
    assert (manifest.start, manifest.end) == ("2023-12-01", "2026-11-30")
    lines = [manifest.sources[s]["rows"] for s in ("sales", INVOICES_SOURCE)]
    assert 100_000 <= sum(lines) <= 120_000 and all(n > 0.4 * sum(lines) for n in lines)  # shop and trade
    orders = sum(y["orders"] for y in manifest.sales_by_year.values())
    assert 35 <= orders / 1096 <= 45
    years = {y: Decimal(v["amount"]) for y, v in manifest.sales_by_year.items()}
    assert Decimal("1.08") <= years["2025"] / years["2024"] <= Decimal("1.25")
    per_client = sorted((Decimal(v) for v in manifest.sales_by_client.values()), reverse=True)
    top10 = sum(per_client[:10]) / sum(per_client)
    assert Decimal("0.2") < top10 < Decimal("0.6"), top10
    _, clients = csv_rows(out / "landing/clients/clients_2026-11-30.csv", "clients")
    assert len(clients) == 300 and all(re.fullmatch(r"\d{5}", c[0]) for c in clients)
    assert any(c[0].startswith("00") for c in clients)
    assert set(manifest.sales_by_client) <= {c[0] for c in clients}
    assert set(manifest.costs_by_category) >= {"Rent", "Payroll", "Utilities", "Logistics", "Marketing", "IT",
                                               "Insurance", "Maintenance"}


def test_headers_and_encodings_follow_the_configuration(clean):
    out, manifest = clean
    seen = set()
    for f in manifest.files:
        source = CONFIG.sources[f.source]
        assert f.key.startswith(source.prefix) and source.table == f.table
        if source.kind == "s3_csv":
            header, _ = csv_rows(out / f.key, f.source)
            kept = [*source.columns.values(), *(a.column for a in source.attribute_columns.values())]
            assert header == kept + (["Balance"] if f.source == "euro_account" else []), f.key
        seen.add(f.source)
    assert seen == {name for name, s in CONFIG.sources.items() if s.kind in ("s3_csv", "excel")}
    crm = next(f for f in manifest.files if f.source == "interactions")
    assert (out / crm.key).read_bytes().startswith(b"\xef\xbb\xbfActivity Id,")
    tax = (out / next(f for f in manifest.files if f.source == "tax").key).read_bytes()
    assert b"Amount \xa3" in tax and "Amount £" in tax.decode("cp1252")
    with pytest.raises(UnicodeDecodeError):
        tax.decode("utf-8")


def test_file_layouts(clean):
    out, manifest = clean
    keys = [f.key for f in manifest.files]
    cutoff = END - timedelta(days=90)
    sales = [k for k in keys if k.startswith("landing/sales/")]
    daily = [k for k in sales if re.search(r"sales_\d{4}-\d\d-\d\d\.csv$", k)]
    assert daily and all(date.fromisoformat(k[-14:-4]) >= cutoff for k in daily)
    assert len(daily) == 91 and len(sales) - len(daily) == 36 - 3
    for k in sales:
        _, body = csv_rows(out / k, "sales")
        assert all(re.fullmatch(r"SO-\d{7}", r[0]) and r[8] == "GBP" for r in body)
        if k not in daily:
            assert all(date.fromisoformat(r[2]) < cutoff and r[2][:7] == k[-11:-4] for r in body)
    fmt = CONFIG.sources["operating_costs"].read.date_format
    quoted = False
    for k in (k for k in keys if k.startswith("landing/costs/")):
        quoted |= b'"Dunmore; Hale Facilities"' in (out / k).read_bytes()
        _, body = csv_rows(out / k, "operating_costs")
        for r in body:
            day = datetime.strptime(r[1], fmt).date()
            iso = day.isocalendar()
            assert k == f"landing/costs/{iso.year}/costs_{iso.year}-W{iso.week:02d}.csv"
            assert re.fullmatch(r"\d{1,3}(\.\d{3})*,\d\d", r[4]), r
    assert quoted
    tax_file = next(k for k in keys if k.startswith("landing/tax/"))
    _, body = csv_rows(out / tax_file, "tax")
    assert {r[1] for r in body} == {"VAT", "PAYE"} and all(r[0].endswith("-01") for r in body)
    crm_file = next(k for k in keys if k.startswith("landing/crm/2024/crm_2024-07"))
    _, body = csv_rows(out / crm_file, "interactions")
    assert all(datetime.fromisoformat(r[1]).utcoffset() == timedelta(hours=1) for r in body)  # summer time


def test_payment_workbook_layout(clean):
    out, manifest = clean
    entry = next(f for f in manifest.files if f.source == "payments" and f.key.endswith("2025-03-2.xlsx"))
    path = out / entry.key
    formulas = openpyxl.load_workbook(path)
    values = openpyxl.load_workbook(path, data_only=True)
    assert formulas.sheetnames == ["Summary", "Payments - Barclays", "Payments - HSBC", "Lookups"]
    assert formulas["Lookups"].sheet_state == "hidden" and formulas["Summary"].sheet_state == "visible"
    pattern = re.compile(CONFIG.sources["payments"].read.sheet_pattern)
    assert [s for s in formulas.sheetnames if pattern.search(s)] == ["Payments - Barclays", "Payments - HSBC"]
    for sheet in entry.sheets:
        ws, wv = formulas[sheet.name], values[sheet.name]
        assert "Northwind Provisions Ltd" in ws["A1"].value and "16/03/2025 to 31/03/2025" in ws["A2"].value
        assert all(c.value is None for c in ws[3])
        assert [c.value for c in ws[4]] == list(CONFIG.sources["payments"].columns.values())
        first = ws[5]
        assert first[1].is_date and isinstance(first[1].value, datetime)
        assert first[2].data_type == "s" and re.fullmatch(r"\d{5}", first[2].value)
        assert first[5].number_format == "#,##0.00"
        total_row = 5 + sheet.rows
        assert ws.cell(total_row, 1).value == "Total"
        assert ws.cell(total_row, 6).value == f"=SUM(F5:F{total_row - 1})"
        assert money2(wv.cell(total_row, 6).value) == Decimal(sheet.amount_sum)
        days = [ws.cell(r, 2).value.date() for r in range(5, total_row)]
        assert min(days) >= date(2025, 3, 16) and max(days) <= date(2025, 3, 31)
    assert values["Summary"]["C7"].value == pytest.approx(float(entry.amount_sum))


def read_csv_cell(path: Path, source: str, line: int, field: str | None) -> list[str] | str:
    header, body = csv_rows(path, source)
    row = body[line - 2]
    return row if field is None else row[header.index(field)]


def test_each_defect_is_where_defects_json_says(clean, defective):
    clean_out, clean_manifest = clean
    out, manifest = defective
    assert (out / "manifest.json").read_bytes() == (clean_out / "manifest.json").read_bytes()
    assert not (clean_out / "defects.json").exists()
    doc = json.loads((out / "defects.json").read_text())
    assert {d["kind"] for d in doc["defects"]} == set(DEFECT_KINDS)
    touched = set()
    for d in doc["defects"]:
        entry = manifest.file(d["key"]) if d["kind"] != "resent_file" else manifest.file(d["value"])
        path = out / d["key"]
        kind, effect = d["kind"], d["expected_effect"]
        if kind == "missing_workbook":
            assert not path.exists() and (clean_out / d["key"]).exists()
            first, last = (date.fromisoformat(x) for x in d["value"].split("/"))
            half = 1 if first.day == 1 else 2
            assert d["key"].endswith(f"payments_{first:%Y-%m}-{half}.xlsx") and last >= first
            assert effect["freshness"].endswith((last + timedelta(days=1)).isoformat())
            assert effect["rows_read"] == -entry.rows and effect["amount_in"] == f"-{entry.amount_sum}"
            continue
        if kind == "resent_file":
            assert path.read_bytes() == (clean_out / d["value"]).read_bytes()
            assert effect["rows_read"] == entry.rows and d["key"] not in {f.key for f in manifest.files}
            continue
        if kind == "resent_with_change":
            v1, v2 = path, out / "redelivered" / d["key"]
            assert v1.read_bytes() == (clean_out / d["key"]).read_bytes()
            assert hashlib.sha256(v2.read_bytes()).hexdigest() == d["delivered_sha256"]
            assert read_csv_cell(v1, d["source"], d["row"], d["field"]) == d["original"]
            assert read_csv_cell(v2, d["source"], d["row"], d["field"]) == d["value"]
            delta = amount(d["value"], d["source"]) - amount(d["original"], d["source"])
            assert str(delta) == effect["amount_delta"] and effect["rows_updated"] == 1
            _, b1 = csv_rows(v1, d["source"])
            _, b2 = csv_rows(v2, d["source"])
            assert sum(x != y for x, y in zip(b1, b2, strict=True)) == 1
            continue
        touched.add(d["key"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == d["delivered_sha256"] != entry.sha256
        if d["source"] == "payments":
            ws = openpyxl.load_workbook(path)[d["sheet"]]
            cell = ws.cell(d["row"], 1 + list(CONFIG.sources["payments"].columns.values()).index(d["field"]))
            assert (money2(cell.value) if d["field"] == "Amount" else cell.value) == (
                Decimal(d["value"]) if d["field"] == "Amount" else d["value"])
            sheets = payment_sheets(path)
            rows = sum(len(s) - 1 for s in sheets.values())
            assert rows == entry.rows + effect["rows_read"]
            total = sum(money2(s[-1][5]) for s in sheets.values())  # the Total rows add up what is on the sheets
            extra = effect.get("amount_quarantined", effect.get("amount_loaded"))
            assert total == Decimal(entry.amount_sum) + Decimal(extra)
            continue
        header, body = csv_rows(path, d["source"])
        row = body[d["row"] - 2]
        if kind == "duplicate_rows":
            assert row == body[d["row"] - 3] and f"{row[0]} line {row[1]}" == d["value"]
            assert len(set(map(tuple, body))) == len(body) - 1
        else:
            assert row[header.index(d["field"])] == d["value"]
        if kind == "totals_row":
            assert d["row"] == len(body) + 1 and row[0] == "TOTAL"
            assert Decimal(effect["if_counted_as_data"]["amount_in"]) == Decimal(entry.amount_sum)
            assert len(data_rows(body, d["source"])) == entry.rows and effect["rows_skipped"] == 1
        else:
            assert len(data_rows(body, d["source"])) == entry.rows + effect["rows_read"]
        if kind == "unknown_client":
            assert d["value"] not in clean_manifest.sales_by_client
        if kind == "outlier_quantity":
            qty, price, total = (row[header.index(c)] for c in ("Qty", "Unit Price", "Line Total"))
            assert Decimal(total) == Decimal(qty) * Decimal(price) and effect["amount_loaded"] == total
        if kind == "impossible_date":
            with pytest.raises(ValueError):
                date.fromisoformat(d["value"])
    for f in manifest.files:  # every file without a defect is delivered exactly as in the clean run
        if f.key not in touched and (out / f.key).exists():
            assert (out / f.key).read_bytes() == (clean_out / f.key).read_bytes()


def test_unknown_defect_kind_is_refused(tmp_path):
    from playbook.cli import main

    with pytest.raises(ValueError, match="unknown defect kind"):
        generate(tmp_path, defects=["duplicate_rows", "gremlins"])
    assert main(["demo-data", "--out", str(tmp_path), "--defects", "gremlins"]) == 2


@pytest.mark.stack
def test_deliver_uploads_every_file_and_a_new_version_for_the_changed_resend(stack, defective):
    import boto3

    out, manifest = defective
    s3 = boto3.client("s3")
    bucket = "northwind-landing-demo"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    uploaded = deliver(out, bucket)
    doc = json.loads((out / "defects.json").read_text())
    assert uploaded == [k for k, _ in delivery_plan(out)]
    versions = defaultdict(list)
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            versions[v["Key"]].append(v)
    expected = {f.key for f in manifest.files} - set(doc["missing"]) | {d["key"] for d in doc["later_deliveries"]}
    assert set(versions) == expected and doc["missing"]
    changed = next(d for d in doc["defects"] if d["kind"] == "resent_with_change")
    assert len(versions[changed["key"]]) == 2
    latest = s3.get_object(Bucket=bucket, Key=changed["key"])["Body"].read()
    assert hashlib.sha256(latest).hexdigest() == changed["delivered_sha256"]
    some = next(f for f in manifest.files if f.source == "payments" and f.key not in doc["missing"])
    body = s3.get_object(Bucket=bucket, Key=some.key)["Body"].read()
    assert body == (out / some.key).read_bytes()

    s3.create_bucket(Bucket="northwind-tax-only", CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    assert sorted(deliver(out, "northwind-tax-only", prefix_filter="landing/tax/")) == sorted(
        f.key for f in manifest.files if f.source == "tax")
