"""Each check of `playbook validate` on a warehouse state fabricated to fail it: the check's status is 'fail'
('warn' where it only warns), its observed value is the number of faults fabricated, and its findings name the
batch, file, row or key of each fault. Beside each fault sits its clean counterpart, so a check that counted
everything, or nothing, is caught too.

The states are written directly, as the database owner, into the session's warehouse, emptied before each test
(or, for the checks that take the ledger's rows as data, built as a list of batch dicts); the check functions
are called on them as validate() calls them. A stale mart needs validate() itself (refresh=False).
The independent reconciliation's failing branch is in tests/playbook/test_independent.py.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest
from psycopg2 import errors, sql
from psycopg2.extras import Json

from pipeline.attempts import ABANDONED
from pipeline.marts import refresh_marts
from pipeline.model import KEY_SEPARATOR, TABLES
from playbook.accuracy import AccuracyBreach, freshness, ledger, marts, rereads, validate
from playbook.accuracy.independent import read_object
from playbook.config import load_config
from tests.pipeline.conftest import TRUNCATE

pytestmark = pytest.mark.stack

CONFIG = load_config()
LIMITS = CONFIG.accuracy
BUCKET = "landing-bucket"
MARTS = ("client_day_sales", "company_daily", "daily_activity", "daily_costs_by_category", "yearly_sales")


@pytest.fixture()
def cur(db):
    """A cursor of the database owner on a warehouse with no batch, core row or quarantined row."""
    with db.cursor() as c:
        c.execute(TRUNCATE)
        db.commit()
        yield c


def ref(key: str, version: str = "v1") -> str:
    return f"s3://{BUCKET}/{key}?versionId={version}"


def add_batch(cur, source: str, key: str | None = None, version: str = "v1", status: str = "committed",
              **columns) -> dict:
    """One ledger row (meta.batches) of `source`; a file when `key` is given, else an API window."""
    cfg = CONFIG.sources[source]
    if status != "started":
        columns.setdefault("finished_at", datetime.now(UTC))
    row = {"source": source, "source_kind": cfg.kind, "target_table": cfg.table,
           "source_ref": ref(key, version) if key else f"api://{source}/window", "object_key": key,
           "object_version": version if key else None, "status": status, **columns}
    names = list(row)
    cur.execute(sql.SQL("insert into meta.batches ({}) values ({}) returning batch_id, source_ref, finished_at").format(
        sql.SQL(", ").join(map(sql.Identifier, names)), sql.SQL(", ").join(sql.Placeholder() * len(names))),
        [row[n] for n in names])
    batch_id, source_ref, finished_at = cur.fetchone()
    return {**row, "batch_id": batch_id, "source_ref": source_ref, "finished_at": finished_at}


def add_row(cur, table: str, batch: dict, row: int | None, sheet: str | None = None, **values) -> None:
    """One core row written by `batch`, from row `row` (and `sheet`) of its file."""
    lineage = {"_batch_id": batch["batch_id"], "_sheet": sheet, "_source_row": row,
               "_row_hash": f"hash-{batch['batch_id']}-{row}"}
    key = KEY_SEPARATOR.join(str(values[k]) for k in TABLES[table].natural_key)
    columns = {**values, **lineage, "_key": key}
    cur.execute(sql.SQL("insert into {} ({}) values ({})").format(
        sql.Identifier("core", table), sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns))), list(columns.values()))


def add_quarantined(cur, batch: dict, row: int, reason: str, code: str, sheet: str | None = None) -> None:
    cur.execute("insert into meta.quarantine (batch_id, source, source_ref, source_row, raw, reason, reason_code) "
                "values (%s, %s, %s, %s, %s, %s, %s)",
                (batch["batch_id"], batch["source"], batch["source_ref"] + (f"#{sheet}" if sheet else ""), row,
                 Json({"row": row}), reason, code))


def one(results: list, check: str, subject: str):
    [r] = [r for r in results if r.check == check and r.subject == subject]
    return r


def passing_elsewhere(results: list, check: str, subject: str) -> None:
    """Every other subject of the check passes with nothing observed: the faults are counted where they are."""
    others = [(r.subject, r.status, r.observed) for r in results if r.check == check and r.subject != subject]
    assert others and all(status == "pass" and observed == 0 for _, status, observed in others), others


# -- batch_reconciliation -----------------------------------------------------------------------------------
BALANCED = {"rows_read": 10, "rows_inserted": 6, "rows_updated": 1, "rows_unchanged": 1, "rows_duplicate": 1,
            "rows_quarantined": 1, "amount_in": Decimal("100.00"), "amount_loaded": Decimal("85.50"),
            "amount_quarantined": Decimal("4.50"), "amount_duplicate": Decimal("10.00")}
ACCOUNTED = "(inserted 6, updated 1, unchanged 1, duplicate 1, quarantined 1)"
OUT = "(loaded 85.50, quarantined 4.50, duplicate 10.00)"


@pytest.mark.parametrize(("figures", "quarantined", "problem"), [
    pytest.param({"rows_read": 11}, 1, f"rows read 11 but 10 accounted for {ACCOUNTED}",
                 id="a_row_read_but_not_accounted_for"),
    pytest.param({"amount_in": Decimal("100.01")}, 1, f"amount in 100.01 but 100.00 out {OUT}",
                 id="amount_in_one_cent_more_than_out"),
    pytest.param({"amount_loaded": Decimal("85.51")}, 1,
                 "amount in 100.00 but 100.01 out (loaded 85.51, quarantined 4.50, duplicate 10.00)",
                 id="amount_loaded_one_cent_more_than_in"),
    pytest.param({}, 0, "the ledger counts 1 quarantined rows, meta.quarantine holds 0",
                 id="a_quarantined_row_missing_from_the_quarantine"),
])
def test_batch_reconciliation_fails_on_a_batch_whose_rows_or_money_do_not_add_up(cur, figures, quarantined,
                                                                                  problem):
    """Two sales batches carry the fault (a row or a cent unaccounted for, or a quarantined row meta.quarantine
    does not hold) beside one that balances: observed 2, and each finding names its batch, file and problem."""
    good = add_batch(cur, "sales", "landing/sales/2024-01-04.csv", **BALANCED)
    add_quarantined(cur, good, 3, "row 3: amount 'x' is not a number", "not_a_number")
    bad = []
    for day in ("2024-01-05", "2024-01-06"):
        b = add_batch(cur, "sales", f"landing/sales/{day}.csv", **{**BALANCED, **figures})
        for _ in range(quarantined):
            add_quarantined(cur, b, 3, "row 3: amount 'x' is not a number", "not_a_number")
        bad.append(b)
    results = ledger.reconcile_batches(ledger.committed_batches(cur), CONFIG, LIMITS)
    r = one(results, "batch_reconciliation", "sales")
    assert (r.status, r.observed, r.threshold) == ("fail", 2, 0)
    assert r.findings == [{"batch_id": b["batch_id"], "source": "sales", "file": b["object_key"], "version": "v1",
                           "problems": [problem]} for b in bad]
    assert r.summary == "2 of 3 committed batches do not reconcile"
    passing_elsewhere(results, "batch_reconciliation", "sales")


# -- ledger_matches_core ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("core_rows", "observed"), [
    pytest.param(2, 1, id="a_row_the_ledger_inserted_missing_from_core"),
    pytest.param(5, 2, id="two_rows_in_core_no_batch_inserted"),
])
def test_ledger_matches_core_fails_when_core_and_the_ledger_count_different_rows(cur, core_rows, observed):
    """The ledger says its payments batch inserted 3 rows; core.payments holds `core_rows`. Observed: the
    difference; the finding names the table and both counts."""
    clients = add_batch(cur, "clients", "landing/clients/2024-01-01.csv", rows_read=1, rows_inserted=1)
    add_row(cur, "clients", clients, 2, client_id="C1", name="Client One")
    batch = add_batch(cur, "payments", "landing/payments/2024-01-15.xlsx", rows_read=3, rows_inserted=3,
                      amount_in=Decimal(3), amount_loaded=Decimal(3))
    for i in range(core_rows):
        add_row(cur, "payments", batch, 5 + i, "Payments - Current", payment_id=f"P{i}", payment_date="2024-01-10",
                client_id="C1", amount=Decimal(1))
    results = ledger.ledger_matches_core(cur, ledger.committed_batches(cur), LIMITS)
    r = one(results, "ledger_matches_core", "core.payments")
    assert (r.status, r.observed) == ("fail", observed)
    assert r.findings == [{"table": "core.payments", "rows": core_rows, "ledger_inserted": 3}]
    passing_elsewhere(results, "ledger_matches_core", "core.payments")


# -- failed_batches -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["failed", "abandoned"])
def test_failed_batches_fails_on_a_load_that_failed_or_was_abandoned_and_was_not_loaded_since(cur, fault):
    """A sales file whose load failed (status 'failed', with the loader's error), or whose attempt died (still
    'started', its expires_at passed), and that no later batch loaded. Beside it: a file that failed and was
    loaded again, and an attempt still running (not yet expired), neither of which counts."""
    key = "landing/sales/2024-01-05.csv"
    if fault == "failed":
        error = "row 7: the header has no column 'Line Total'"
        lost = add_batch(cur, "sales", key, status="failed", error=error)
    else:
        error = ABANDONED
        lost = add_batch(cur, "sales", key, status="started", expires_at="2024-01-05 06:00:00+00")
    add_batch(cur, "sales", "landing/sales/2024-01-06.csv", status="failed", error="connection lost")
    add_batch(cur, "sales", "landing/sales/2024-01-06.csv", version="v2")
    cur.execute("insert into meta.batches (source, source_kind, target_table, source_ref, object_key, status, "
                "finished_at, expires_at) values ('sales', 's3_csv', 'sales', %s, 'landing/sales/2024-01-07.csv', "
                "'started', null, clock_timestamp() + interval '10 minutes')", (ref("landing/sales/2024-01-07.csv"),))
    results = ledger.failed_batches(cur, CONFIG, LIMITS)
    r = one(results, "failed_batches", "sales")
    assert (r.status, r.observed) == ("fail", 1)
    [f] = r.findings
    assert (f["batch_id"], f["source"], f["file"], f["version"], f["error"]) == (
        lost["batch_id"], "sales", key, "v1", error)
    assert f["failed_at"] == (str(lost["finished_at"]) if fault == "failed" else "2024-01-05 06:00:00+00:00")
    passing_elsewhere(results, "failed_batches", "sales")


# -- marts_match_core, marts_fresh ---------------------------------------------------------------------------
def sales_state(cur) -> dict:
    """Two clients, and three sales lines on two days loaded by one batch."""
    clients = add_batch(cur, "clients", "landing/clients/2024-01-01.csv", rows_read=2, rows_inserted=2)
    add_row(cur, "clients", clients, 2, client_id="C1", name="Client One")
    add_row(cur, "clients", clients, 3, client_id="C2", name="Client Two")
    batch = add_batch(cur, "sales", "landing/sales/2024-01-06.csv", rows_read=3, rows_inserted=3,
                      amount_in=Decimal("35.00"), amount_loaded=Decimal("35.00"))
    for row, (order, day, client, amount) in enumerate([("SO-1", "2024-01-05", "C1", "10.00"),
                                                         ("SO-2", "2024-01-05", "C2", "20.00"),
                                                         ("SO-3", "2024-01-06", "C1", "5.00")], start=2):
        add_row(cur, "sales", batch, row, order_id=order, line_no=1, order_date=day, client_id=client, quantity=1,
                unit_price=Decimal(amount), amount=Decimal(amount))
    return batch


def test_marts_match_core_fails_on_marts_that_differ_from_core(cur, db):
    """The marts are refreshed over three sales lines; then one line's amount in core changes by a cent. Each
    mart holding that day, year or client differs from core in one row, named by its key, with both values;
    the costs mart, which holds no sales, still equals core."""
    sales_state(cur)
    db.commit()
    refresh_marts(db)
    cur.execute("update core.sales set amount = 20.01, _row_hash = 'changed' where order_id = 'SO-2'")
    results = marts.compare_marts(cur, LIMITS, [])
    differs = {"mart": Decimal("20.00"), "core": Decimal("20.01")}
    day_total = {"mart": Decimal("30.00"), "core": Decimal("30.01")}
    expected = {
        "marts.company_daily": [{"day": "2024-01-05", "sales_amount": day_total}],
        "marts.daily_activity": [{"day": "2024-01-05", "sales_amount": day_total}],
        "marts.yearly_sales": [{"year": "2024", "sales_amount": {"mart": Decimal("35.00"), "core": Decimal("35.01")}}],
        "marts.client_day_sales": [{"day": "2024-01-05", "client_id": "C2", "sales_amount": differs}],
        "marts.client_day_sales per client": [{"client_id": "C2", "sales_amount": differs}],
    }
    for subject, findings in expected.items():
        r = one(results, "marts_match_core", subject)
        assert (r.status, r.observed, r.findings) == ("fail", 1, findings), subject
    costs = one(results, "marts_match_core", "marts.daily_costs_by_category")
    assert (costs.status, costs.observed, costs.findings) == ("pass", 0, [])
    fresh = one(results, "marts_fresh", "marts")
    assert (fresh.status, fresh.observed) == ("pass", 0)


def run_validate(stack, tmp_path: Path, **kwargs):
    """validate()'s report, and whether it raised AccuracyBreach; stale marts are refreshed by the local target's
    deployed refresh function (the tests' provisioned pipeline)."""
    from playbook.targets import LocalTarget

    try:
        return validate(stack["database_url"], config=CONFIG, out_dir=tmp_path, target=LocalTarget(), **kwargs), False
    except AccuracyBreach as exc:
        return exc.report, True


def test_marts_fresh_fails_on_marts_older_than_the_newest_batch_when_validate_does_not_refresh(cur, db, stack,
                                                                                                pipeline_stack,
                                                                                                tmp_path):
    """The marts are refreshed, then a batch commits (it loaded nothing, so the marts still equal core). With
    refresh=False every mart is reported stale, naming its last refresh and the newest batch's time, and
    nothing else fails; with refresh=True validate() refreshes them and passes."""
    db.commit()
    refresh_marts(db)
    newest = add_batch(cur, "sales", None)["finished_at"]
    cur.execute("select mart, max(finished_at) from meta.mart_refreshes where status = 'ok' group by mart")
    refreshed = dict(cur.fetchall())
    db.commit()
    report, breached = run_validate(stack, tmp_path / "stale", refresh=False)
    assert breached and {r.check for r in report.failures} == {"marts_fresh"}
    stale = report.by_check("marts_fresh")
    assert sorted(r.subject for r in stale) == [f"marts.{m}" for m in MARTS]
    for r in stale:
        mart = r.subject.removeprefix("marts.")
        assert (r.status, r.observed, r.threshold) == ("fail", 1, 0)
        assert r.findings == [{"mart": mart, "refreshed_at": str(refreshed[mart]), "newest_batch_at": str(newest)}]
    assert all(r.status == "pass" and r.extra["stale"] for r in report.by_check("marts_match_core")
               if r.subject.removeprefix("marts.") in MARTS)

    report, breached = run_validate(stack, tmp_path / "refreshed")
    assert not breached
    [fresh] = report.by_check("marts_fresh")
    assert (fresh.subject, fresh.status, fresh.observed) == ("marts", "pass", 0)


# -- orphans ------------------------------------------------------------------------------------------------
ORPHANS = {
    "sales": ("landing/sales/2024-01-05.csv", None, {"order_id": "SO-9", "line_no": 1},
              lambda c: {"order_date": "2024-01-05", "client_id": c, "quantity": 1, "unit_price": Decimal("7.25"),
                         "amount": Decimal("7.25")}, Decimal("7.25")),
    "payments": ("landing/payments/2024-01-15.xlsx", "Payments - Current", {"payment_id": "P-9"},
                 lambda c: {"payment_date": "2024-01-10", "client_id": c, "amount": Decimal("7.25")}, Decimal("7.25")),
    "interactions": ("landing/crm/2024-01-05.csv", None, {"interaction_id": "A-9"},
                     lambda c: {"occurred_at": "2024-01-05 10:00:00+00", "client_id": c}, None),
}


@pytest.mark.parametrize("table", sorted(ORPHANS))
def test_orphans_fails_on_a_row_naming_a_client_not_in_core_clients(cur, table):
    """Row 4 of a delivery names client C999, which core.clients does not hold; row 3 names C1, which it does.
    Observed 1; the finding names the batch, file, sheet, row, client and key."""
    key, sheet, natural, values, amount = ORPHANS[table]
    clients = add_batch(cur, "clients", "landing/clients/2024-01-01.csv", rows_read=1, rows_inserted=1)
    add_row(cur, "clients", clients, 2, client_id="C1", name="Client One")
    batch = add_batch(cur, table, key, rows_read=2, rows_inserted=2)
    known = {k: (f"{v}-known" if isinstance(v, str) else v + 1) for k, v in natural.items()}
    add_row(cur, table, batch, 3, sheet, **known, **values("C1"))
    add_row(cur, table, batch, 4, sheet, **natural, **values("C999"))
    results = ledger.orphans(cur, LIMITS)
    r = one(results, "orphans", f"core.{table}")
    assert (r.status, r.observed) == ("fail", 1)
    assert r.findings == [{"batch_id": batch["batch_id"], "file": key, "sheet": sheet, "version": "v1", "row": 4,
                           "client_id": "C999", "key": natural, "amount": amount}]
    passing_elsewhere(results, "orphans", f"core.{table}")


# -- duplicate_rows -----------------------------------------------------------------------------------------
SALES_HEADER = "Order No,Line,Order Date,Client Code,Product,Qty,Unit Price,Line Total,Currency\n"


def ledger_batch(batch_id: int, source: str, key: str | None, sha: str | None = None, **figures) -> dict:
    """A committed batch as ledger.committed_batches returns it: every count zero unless given."""
    counts = {c: 0 for c in ("rows_read", "rows_inserted", "rows_updated", "rows_unchanged", "rows_duplicate",
                             "rows_quarantined", "rows_skipped", "quarantine_rows")}
    money = {c: None for c in ("amount_in", "amount_loaded", "amount_quarantined", "amount_duplicate")}
    return {"batch_id": batch_id, "source": source, "target_table": CONFIG.sources[source].table,
            "source_ref": ref(key, f"v{batch_id}") if key else f"api://{source}/window", "object_key": key,
            "object_etag": None, "object_version": f"v{batch_id}" if key else None, "content_sha256": sha,
            **counts, **money, **figures}


def reread(tmp_path: Path, batch: dict, text: str | None = None, workbook: Path | None = None) -> rereads.Reread:
    """The batch's object read again by the independent reader, from `text` (a CSV) or `workbook`."""
    path = workbook
    if text is not None:
        path = tmp_path / f"batch-{batch['batch_id']}.csv"
        path.write_text(text)
    source = CONFIG.sources[batch["source"]]
    return rereads.Reread(batch, read_object(path, source, CONFIG.company.currency, CONFIG.company.locale))


def test_duplicate_rows_fails_on_exact_copies_of_a_row_inside_one_delivery(tmp_path):
    """Row 4 of a sales file is an exact copy of row 2 (the loader counted 1 duplicate); another file's 2
    duplicates could not be read again. Observed: all 3 duplicates; the findings name the copied row and the
    row it copies, and the unread file with why. A file without duplicates adds nothing."""
    text = (SALES_HEADER + "SO-1,1,2024-01-05,C1,Flour,2,5.00,10.00,GBP\nSO-2,1,2024-01-05,C2,Oil,1,3.50,3.50,GBP\n"
            "SO-1,1,2024-01-05,C1,Flour,2,5.00,10.00,GBP\n")
    copied = ledger_batch(11, "sales", "landing/sales/2024-01-05.csv", rows_read=3, rows_inserted=2,
                          rows_duplicate=1, amount_duplicate=Decimal("10.00"))
    unread = ledger_batch(12, "sales", "landing/sales/2024-01-06.csv", rows_read=5, rows_inserted=3,
                          rows_duplicate=2, amount_duplicate=Decimal("7.00"))
    clean = ledger_batch(13, "sales", "landing/sales/2024-01-07.csv", rows_read=1, rows_inserted=1)
    objects = {11: reread(tmp_path, copied, text), 12: rereads.Reread(unread, not_read="S3 did not return it"),
               13: reread(tmp_path, clean, SALES_HEADER + "SO-3,1,2024-01-07,C1,Oil,1,3.50,3.50,GBP\n")}
    results = rereads.duplicate_rows([copied, unread, clean], objects, CONFIG, LIMITS)
    r = one(results, "duplicate_rows", "sales")
    assert (r.status, r.observed) == ("fail", 3)
    assert r.findings == [
        {"batch_id": 11, "file": "landing/sales/2024-01-05.csv", "version": "v11", "sheet": None, "row": 4,
         "copy_of_row": 2, "copy_of_sheet": None, "key": {"order_id": "SO-1", "line_no": "1"},
         "amount": Decimal("10.00")},
        {"batch_id": 12, "file": "landing/sales/2024-01-06.csv", "version": "v12", "sheet": None, "row": None,
         "rows": 2, "amount": Decimal("7.00"), "note": "not read again: S3 did not return it"}]
    passing_elsewhere(results, "duplicate_rows", "sales")



def test_duplicate_rows_passes_a_dimension_taken_from_fact_rows_with_its_repeats_folded():
    """Customers taken from order lines (load: distinct) repeat their keys by design: folded, not defects; the same
    repeats in a merge source fail."""
    data = CONFIG.model_dump(mode="json")
    data["sources"]["clients"]["load"] = "distinct"
    distinct = type(CONFIG).model_validate(data)
    folded = ledger_batch(21, "clients", "landing/clients/lines.csv", rows_read=9, rows_inserted=4, rows_duplicate=5)
    [r] = [r for r in rereads.duplicate_rows([folded], {}, distinct, LIMITS) if r.subject == "clients"]
    assert (r.status, r.observed, r.findings) == ("pass", 0, [])
    assert "5 repeats of a key folded" in r.summary
    [merged] = [r for r in rereads.duplicate_rows([folded], {}, CONFIG, LIMITS) if r.subject == "clients"]
    assert (merged.status, merged.observed) == ("fail", 5)

# -- duplicate_deliveries -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["same_bytes_under_another_key", "rows_all_loaded_before"])
def test_duplicate_deliveries_fails_on_a_delivery_that_repeats_one_already_loaded(fault):
    """Batch 3 repeats batch 1: its bytes are the same (sent again under another key), or its 4 rows were all
    found already in core, held by batch 1. Observed 1; the finding names batch 3, its file and batch 1. Two
    empty files with the same (empty) content, and a file of new rows, are not repeats."""
    first = ledger_batch(1, "sales", "landing/sales/2024-01-05.csv", "a" * 64, rows_read=4, rows_inserted=4)
    empty = [ledger_batch(i, "sales", f"landing/sales/empty-{i}.csv", "e" * 64) for i in (2, 4)]
    if fault == "same_bytes_under_another_key":
        again = ledger_batch(3, "sales", "landing/sales/2024-01-05 (1).csv", "a" * 64, rows_read=4,
                             rows_unchanged=4)
        reason = "the same content (sha256 aaaaaaaaaaaa...) as batch 1, landing/sales/2024-01-05.csv"
        holders = {}
    else:
        again = ledger_batch(3, "sales", "landing/sales/2024-01-05-resent.csv", "b" * 64, rows_read=4,
                             rows_unchanged=4)
        reason = "all 4 rows were already loaded"
        holders = {3: [1, 3]}
    new = ledger_batch(5, "sales", "landing/sales/2024-01-06.csv", "c" * 64, rows_read=2, rows_inserted=2)
    results = ledger.duplicate_deliveries([first, empty[0], again, empty[1], new], holders, CONFIG, LIMITS)
    r = one(results, "duplicate_deliveries", "sales")
    assert (r.status, r.observed) == ("fail", 1)
    assert r.findings == [{"batch_id": 3, "source": "sales", "file": again["object_key"], "version": "v3",
                           "rows": 4, "reason": reason,
                           "earlier": [{"batch_id": 1, "source": "sales", "file": "landing/sales/2024-01-05.csv",
                                        "version": "v1"}]}]
    passing_elsewhere(results, "duplicate_deliveries", "sales")


def test_an_api_window_read_again_is_not_a_repeated_delivery():
    """The trade invoices' window read twice (a backfill's rerun) finds its 4 rows loaded, by design: not counted,
    and the summary says why. The same figures from a file source are a repeat."""
    first = ledger_batch(1, "trade_invoices", None, "a" * 64, rows_read=4, rows_inserted=4)
    again = ledger_batch(2, "trade_invoices", None, "a" * 64, rows_read=4, rows_unchanged=4)
    results = ledger.duplicate_deliveries([first, again], {2: [1]}, CONFIG, LIMITS)
    r = one(results, "duplicate_deliveries", "trade_invoices")
    assert (r.status, r.observed, r.findings) == ("pass", 0, [])
    assert "an API's windows may be read again" in r.summary
    as_files = [dict(b, source="sales", object_key=f"landing/sales/{i}.csv") for i, b in enumerate((first, again))]
    r = one(ledger.duplicate_deliveries(as_files, {2: [1]}, CONFIG, LIMITS), "duplicate_deliveries", "sales")
    assert (r.status, r.observed) == ("fail", 1)


# -- changed_rows -------------------------------------------------------------------------------------------
def test_changed_rows_fails_on_a_row_changed_after_its_first_load(cur):
    """Sales line SO-1/1, first loaded from row 2 of version v1, is loaded again from row 5 of version v2 with
    another quantity and amount (core keeps the replaced version in core.sales_history); SO-2/1, loaded again
    unchanged, is not counted. Observed 1; the finding names the key, both batches, files, rows and values."""
    key = "landing/sales/2024-01-05.csv"
    first = add_batch(cur, "sales", key, rows_read=2, rows_inserted=2)
    for row, order in ((2, "SO-1"), (3, "SO-2")):
        add_row(cur, "sales", first, row, order_id=order, line_no=1, order_date="2024-01-05", client_id="C1",
                quantity=2, unit_price=Decimal("5.00"), amount=Decimal("10.00"))
    second = add_batch(cur, "sales", key, version="v2", rows_read=2, rows_updated=1, rows_unchanged=1)
    cur.execute("update core.sales set quantity = 3, amount = 15.00, _batch_id = %s, "
                "_source_row = 5, _row_hash = 'changed' where order_id = 'SO-1'", (second["batch_id"],))
    cur.execute("update core.sales set _batch_id = %s where order_id = 'SO-2'",
                (second["batch_id"],))  # the same row hash: nothing kept as history
    results = ledger.changed_rows(cur, ledger.committed_batches(cur), LIMITS)
    r = one(results, "changed_rows", "core.sales")
    assert (r.status, r.observed) == ("fail", 1)
    [f] = r.findings
    assert f["key"] == {"key": "SO-1 | 1"}
    assert {c: {k: Decimal(str(v)) for k, v in change.items()} for c, change in f["changes"].items()} == {
        "quantity": {"was": 2, "now": 3}, "amount": {"was": Decimal(10), "now": Decimal(15)}}
    assert f["first_loaded"] == {"file": key, "sheet": None, "version": "v1", "row": 2, "batch_id": first["batch_id"]}
    assert f["changed_by"] == {"file": key, "sheet": None, "version": "v2", "row": 5, "batch_id": second["batch_id"]}
    assert (f["batches"], f["files"]) == ([first["batch_id"], second["batch_id"]], [key, key])
    passing_elsewhere(results, "changed_rows", "core.sales")


# -- freshness ----------------------------------------------------------------------------------------------
def dated_rows(cur, source: str, table: str, spans: list[tuple[str, str, str]]) -> list[dict]:
    """One batch per (file, first day, last day), with a row for every day of its span."""
    batches = []
    for key, first, last in spans:
        batch = add_batch(cur, source, key)
        if table == "operating_costs":
            cur.execute("insert into core.operating_costs (cost_id, cost_date, category, amount, _batch_id,"
                        " _source_row, _row_hash, _key) select 'EX-' || d::date, d::date, 'Rent', 1, %s, "
                        "2, 'h' || d, 'EX-' || d::date from generate_series(%s::date, %s::date, interval '1 day') d",
                        (batch["batch_id"], first, last))
        else:
            cur.execute("insert into core.sales (order_id, line_no, order_date, client_id, quantity, unit_price, "
                        "amount, _batch_id, _source_row, _row_hash, _key) select 'SO-' || d::date, 1, "
                        "d::date, 'C1', 1, 1, 1, %s, 2, 'h' || d, 'SO-' || d::date || chr(31) || '1' "
                        "from generate_series(%s::date, %s::date, interval '1 day') d",
                        (batch["batch_id"], first, last))
        batches.append(batch)
    return batches


@pytest.mark.parametrize(("source", "table", "spans", "due", "gap"), [
    # weekly on Mondays: the week 9-14 January, due Monday 15 January, never came
    pytest.param("operating_costs", "operating_costs",
                 [("landing/costs/2024-01-08.csv", "2024-01-01", "2024-01-08"),
                  ("landing/costs/2024-01-29.csv", "2024-01-15", "2024-01-31")],
                 ["2024-01-15"], ("2024-01-08", "2024-01-15", 6), id="a_weekly_delivery_missed"),
    # daily: 11 and 12 January are missing, one more day than the grace day
    pytest.param("sales", "sales",
                 [("landing/sales/2024-01-10.csv", "2024-01-01", "2024-01-10"),
                  ("landing/sales/2024-01-20.csv", "2024-01-13", "2024-01-20")],
                 ["2024-01-11", "2024-01-12"], ("2024-01-10", "2024-01-13", 2), id="two_daily_deliveries_missed"),
])
def test_freshness_fails_on_a_scheduled_delivery_that_never_arrived(cur, source, table, spans, due, gap):
    """A source's business dates hold a gap of a whole schedule interval. Observed: the deliveries missed; the
    finding names their due dates, the days without data, and the files on either side of the gap."""
    before, after = dated_rows(cur, source, table, spans)
    results, data_end = freshness.check_freshness(cur, CONFIG, LIMITS)
    assert str(data_end) == spans[-1][2]
    r = one(results, "freshness", source)
    assert (r.status, r.observed) == ("fail", len(due))
    last, following, days = gap
    assert r.findings == [{
        "source": source, "stopped": False, "due_from": due[0], "due_to": due[-1], "deliveries": len(due),
        "no_data_from": str(date.fromisoformat(last) + timedelta(days=1)),
        "no_data_to": str(date.fromisoformat(following) - timedelta(days=1)), "days_without_data": days,
        "last_before": {"date": last, "file": before["object_key"], "sheet": None, "version": "v1"},
        "next_after": {"date": following, "file": after["object_key"], "sheet": None, "version": "v1"}}]
    passing_elsewhere(results, "freshness", source)


def test_freshness_judges_each_source_by_its_own_data_and_schedule(cur, tmp_path):
    """Sales (daily) go on to 31 December 2024; operating costs (weekly, Mondays) stopped after their delivery of
    8 January 2024: ONE finding with the range of days missing and the deliveries due as a range (51 of them),
    observed as one missed delivery; the report's size does not grow with the gap. Payments (twice a month)
    end on 27 December: their next delivery (the days 16-31 December, due 1 January) is not due by the others'
    last date, so they are not late."""
    from playbook.accuracy.report import render_markdown
    from playbook.accuracy.results import ValidationReport

    dated_rows(cur, "sales", "sales", [("landing/sales/2024.csv", "2024-01-01", "2024-12-31")])
    costs = dated_rows(cur, "operating_costs", "operating_costs",
                       [("landing/costs/2024-01-08.csv", "2024-01-01", "2024-01-07")])
    payments = add_batch(cur, "payments", "landing/payments/2024.xlsx")
    cur.execute("insert into core.payments (payment_id, payment_date, client_id, amount, _batch_id, _source_row,"
                " _row_hash, _key) select 'PM-' || d::date, d::date, 'C1', 1, %s, 2, 'h' || d, 'PM-' || d::date"
                " from generate_series('2024-01-01'::date, '2024-12-27'::date, interval '1 day') d",
                (payments["batch_id"],))
    results, data_end = freshness.check_freshness(cur, CONFIG, LIMITS)
    assert str(data_end) == "2024-12-31"
    r = one(results, "freshness", "operating_costs")
    assert (r.status, r.observed) == ("fail", 1)
    mondays = [date(2024, 1, 15) + timedelta(weeks=w) for w in range(52) if date(2024, 1, 15) + timedelta(weeks=w)
               <= date(2025, 1, 1)]  # the last one, 30 December, brings 23-29 December: all before the end
    assert r.findings == [{
        "source": "operating_costs", "stopped": True, "due_from": "2024-01-15", "due_to": str(mondays[-1]),
        "deliveries": len(mondays), "no_data_from": "2024-01-08", "no_data_to": "2024-12-31",
        "days_without_data": 359,
        "last_before": {"date": "2024-01-07", "file": costs[0]["object_key"], "sheet": None, "version": "v1"},
        "next_after": None}]
    assert "stopped delivering" in r.summary and "2024-01-08 to 2024-12-31" in r.summary
    # ending before the others, but not late by their own schedule
    assert one(results, "freshness", "payments").status == "pass"
    assert "not due yet" in one(results, "freshness", "payments").summary
    # the source that ends last is judged by its own data only
    assert (one(results, "freshness", "sales").status, one(results, "freshness", "sales").observed) == ("pass", 0)

    report = ValidationReport("run-1", results, str(data_end))
    text = render_markdown(report, "Test Co")
    lines = [line for line in text.splitlines() if line.startswith("- no data from")]
    assert lines == [f"- no data from 2024-01-08 to 2024-12-31 (359 days): {len(mondays)} deliveries due from "
                     f"2024-01-15 to {mondays[-1]} did not arrive; stopped delivering while the other sources go "
                     f"on (last data 2024-01-07 in `{costs[0]['object_key']}`)"]
    # a gap ten times as long writes a report of the same size
    long_gap = [dict(f, days_without_data=3590, deliveries=510) for f in r.findings]
    longer = render_markdown(ValidationReport("run-1", [dataclasses_replace(r, findings=long_gap)], "2033-12-31"),
                             "Test Co")
    short = render_markdown(ValidationReport("run-1", [r], str(data_end)), "Test Co")
    assert abs(len(longer) - len(short)) < 10


def dataclasses_replace(result, **changes):
    import dataclasses

    return dataclasses.replace(result, **changes)


# -- quarantine ---------------------------------------------------------------------------------------------
def test_quarantine_fails_on_rejected_rows_grouped_by_what_is_wrong(cur):
    """A payments workbook's batch quarantined three rows: two amounts that are not numbers and an impossible
    date. A failed batch's quarantined row (rolled back with it in a real load) is not counted. Observed 3;
    the findings are grouped by kind, each with its file, sheet and row."""
    sheet = "Payments - Current"
    key = "landing/payments/2024-01-15.xlsx"
    batch = add_batch(cur, "payments", key, rows_read=10, rows_inserted=7, rows_quarantined=3)
    add_quarantined(cur, batch, 9, "row 9: amount '12,3O' is not a number", "not_a_number", sheet)
    add_quarantined(cur, batch, 6, "row 6: payment_date '2024-02-30' is not a valid date", "bad_date", sheet)
    add_quarantined(cur, batch, 5, "row 5: amount 'n/a' is not a number", "not_a_number", sheet)
    failed = add_batch(cur, "payments", "landing/payments/2024-02-01.xlsx", status="failed", error="boom")
    add_quarantined(cur, failed, 5, "row 5: amount 'x' is not a number", "not_a_number", sheet)
    results = ledger.quarantine_summary(cur, CONFIG, LIMITS)
    r = one(results, "quarantine", "payments")
    assert (r.status, r.observed) == ("fail", 3)
    assert [(f["batch_id"], f["file"], f["sheet"], f["version"], f["row"], f["kind"]) for f in r.findings] == [
        (batch["batch_id"], key, sheet, "v1", 5, "amount ... is not a number"),
        (batch["batch_id"], key, sheet, "v1", 9, "amount ... is not a number"),
        (batch["batch_id"], key, sheet, "v1", 6, "payment_date ... is not a valid date")]
    assert r.extra["by_reason"] == [{"reason": "amount ... is not a number", "rows": 2},
                                    {"reason": "payment_date ... is not a valid date", "rows": 1}]
    assert r.summary == "3 rows rejected: 2 x amount ... is not a number; 1 x payment_date ... is not a valid date"
    passing_elsewhere(results, "quarantine", "payments")


# -- skipped_rows, footer_totals ----------------------------------------------------------------------------
def test_skipped_rows_warns_on_a_footer_in_a_source_whose_files_have_none(tmp_path):
    """A sales file (sales files end in no totals row) ends in a Total row equal to its rows, which the loader
    skipped. The check only warns: observed 1, the finding names the batch, file and row 4."""
    text = (SALES_HEADER + "SO-1,1,2024-01-05,C1,Flour,2,5.00,10.00,GBP\nSO-2,1,2024-01-05,C2,Oil,1,3.50,3.50,GBP\n"
            "Total,,,,,,,13.50,\n")
    batch = ledger_batch(21, "sales", "landing/sales/2024-01-05.csv", rows_read=2, rows_inserted=2, rows_skipped=1)
    plain = ledger_batch(22, "sales", "landing/sales/2024-01-06.csv", rows_read=1, rows_inserted=1)
    objects = {21: reread(tmp_path, batch, text),
               22: reread(tmp_path, plain, SALES_HEADER + "SO-3,1,2024-01-06,C1,Oil,1,3.50,3.50,GBP\n")}
    results = rereads.skipped_rows([batch, plain], objects, CONFIG, LIMITS)
    r = one(results, "skipped_rows", "sales")
    assert (r.status, r.observed) == ("warn", 1)
    assert r.findings == [{"batch_id": 21, "file": "landing/sales/2024-01-05.csv", "version": "v21", "sheet": None,
                           "row": 4, "values": {"order_id": "Total", "amount": "13.50"}, "total": Decimal("13.50"),
                           "rows_sum": Decimal("13.50"), "note": "a totals row in a file that normally has none: "
                                                                 "skipped, not counted as data"}]
    assert not [x for x in results if x.check == "footer_totals"]
    passing_elsewhere(results, "skipped_rows", "sales")


def payments_workbook(path: Path, total: float) -> Path:
    """A payment workbook as the finance team sends it: a title, the header on row 4, two payments, a Total."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Payments - Current"
    ws.cell(1, 1, "Payments received")
    for col, name in enumerate(["Payment Ref", "Date Received", "Client Code", "Invoice", "Method", "Amount"], 1):
        ws.cell(4, col, name)
    for row, values in ((5, ["P1", "2024-01-05", "C1", "INV-1", "BACS", 120.5]),
                        (6, ["P2", "2024-01-09", "C2", "INV-2", "Card", 80])):
        for col, value in enumerate(values, 1):
            ws.cell(row, col, value)
    ws.cell(7, 1, "Total")
    ws.cell(7, 6, total)
    wb.save(path)
    return path


def test_footer_totals_fails_on_a_footer_whose_total_disagrees_with_the_rows_above_it(tmp_path):
    """Payment workbooks end in a Total row by design. In one, the Total says 210.50 where its two payments sum
    to 200.50; in the other it agrees. Observed 1; the finding names the batch, file, sheet, row 7 and both sums.
    The footers are expected in payments, so skipped_rows passes, and says one of them does not agree."""
    wrong = ledger_batch(31, "payments", "landing/payments/2024-01-15.xlsx", rows_read=2, rows_inserted=2,
                         rows_skipped=1)
    right = ledger_batch(32, "payments", "landing/payments/2024-02-01.xlsx", rows_read=2, rows_inserted=2,
                         rows_skipped=1)
    objects = {31: reread(tmp_path, wrong, workbook=payments_workbook(tmp_path / "wrong.xlsx", 210.5)),
               32: reread(tmp_path, right, workbook=payments_workbook(tmp_path / "right.xlsx", 200.5))}
    results = rereads.skipped_rows([wrong, right], objects, CONFIG, LIMITS)
    r = one(results, "footer_totals", "payments")
    assert (r.status, r.observed) == ("fail", 1)
    assert r.findings == [{"batch_id": 31, "file": "landing/payments/2024-01-15.xlsx", "version": "v31",
                           "sheet": "Payments - Current", "row": 7,
                           "values": {"payment_id": "Total", "amount": "210.5"}, "total": Decimal("210.5"),
                           "rows_sum": Decimal("200.5"),
                           "note": "the footer's total 210.5 differs from the sum of the rows above it (200.5)"}]
    assert [x.check for x in results if x.check == "footer_totals"] == ["footer_totals"]
    skipped = one(results, "skipped_rows", "payments")
    assert (skipped.status, skipped.observed, skipped.summary) == (
        "pass", 0, "2 footers, 1 not equal to the rows they total (footer_totals)")


# -- outliers ----------------------------------------------------------------------------------------------------
def test_outliers_warns_on_a_line_far_from_its_products_and_clients_others(cur):
    """Flour: ten lines of 2 bags and one of 20,000 (row 12, a typo for 2), and one of 4 (row 13: no typo, though
    the spread of the 2s is 0). Oil: quantities 1 to 10, none far. Salt: three lines, one of 500, too few to
    judge (outlier_min_rows 8). C1's own Flour lines say the same of the 20,000."""
    batch = add_batch(cur, "sales", "landing/sales/2024-03-01.csv")
    row = 1
    for product, quantities, client in (("Flour", [2] * 10 + [20000, 4], "C1"), ("Oil", list(range(1, 11)), "C2"),
                                        ("Salt", [1, 1, 500], "C3")):
        for quantity in quantities:
            row += 1
            add_row(cur, "sales", batch, row, order_id=f"SO-{row}", line_no=1, order_date=date(2024, 3, 1),
                    client_id=client, product=product, quantity=quantity, unit_price=Decimal("5.00"),
                    amount=Decimal(quantity) * Decimal("5.00"), currency="GBP")
    from playbook.accuracy import outliers

    results = outliers.outliers(cur, LIMITS)
    by_product = one(results, "outliers", "sales quantity by product")
    assert (by_product.status, by_product.observed, by_product.threshold) == ("warn", 1, 0)
    assert by_product.findings == [{
        "batch_id": batch["batch_id"], "file": "landing/sales/2024-03-01.csv", "sheet": None, "version": "v1",
        "row": 12, "order_id": "SO-12", "line_no": 1, "product": "Flour", "quantity": "20000", "median": "2",
        "mad": "0", "rows_in_group": 12}]
    assert by_product.summary == ("1 quantity values far from their product's others: SO-12/1 quantity 20000 "
                                  "(product Flour, median 2; landing/sales/2024-03-01.csv row 12)")
    from playbook.accuracy.report import _finding_line

    assert _finding_line(by_product, by_product.findings[0]) == (
        f"`landing/sales/2024-03-01.csv`, row 12, batch {batch['batch_id']}: order SO-12 line 1, quantity 20000 where "
        "the product Flour's median is 2 (12 lines)")
    by_client = one(results, "outliers", "sales quantity by client and product")
    assert (by_client.status, by_client.observed) == ("warn", 1)
    [finding] = by_client.findings
    assert (finding["row"], finding["client and product"], finding["quantity"], finding["median"]) == (
        12, "C1 Flour", "20000", "2")
    # the thresholds are the configuration's: a stricter ratio lets the 20,000 through, a looser one takes the 4
    assert outliers.outliers(cur, LIMITS.model_copy(update={"outlier_ratio": Decimal(20000)}))[0].observed == 0
    assert outliers.outliers(cur, LIMITS.model_copy(update={"outlier_min_rows": 13}))[0].observed == 0
    assert outliers.outliers(cur, LIMITS.model_copy(update={"outlier_ratio": Decimal(2)}))[0].observed == 2
    # and limits looser than the function's floors are refused, whoever asks (the reporting role may call it)
    for looser in ({"outlier_ratio": Decimal("1.9")}, {"outlier_robust_z": Decimal("2.9")}, {"outlier_min_rows": 7}):
        cur.execute("savepoint looser")
        with pytest.raises(errors.InvalidParameterValue, match="limits looser than"):
            outliers.outliers(cur, LIMITS.model_copy(update=looser))
        cur.execute("rollback to savepoint looser")
