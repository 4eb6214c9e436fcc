"""The validation stage on the demo company: nothing flagged on the clean deliveries, and every seeded defect
caught where defects.json says it is, alone and all together; `playbook validate` stops on a breach.

The clean deliveries are loaded once into a template database; each case is a copy of it (CREATE DATABASE
... TEMPLATE) with the files the defects touch loaded on top, as that case delivers them, by the ingest role.
No deployed function serves a copy: its marts are refreshed by the procedure the refresh function calls.
"""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import boto3
import psycopg2
import pytest
from psycopg2 import sql

from pipeline.handlers.ingest_object import ingest
from pipeline.sources.objects import ObjectRef
from playbook.accuracy import AccuracyBreach, ValidationReport, validate
from playbook.config import load_config
from playbook.demo import DEFECT_KINDS, deliver, generate
from playbook.demo.delivery import delivery_plan
from playbook.targets import LocalTarget

pytestmark = pytest.mark.stack

DEMO = {"years": 1, "clients": 60}
OWNER_ROLE = "playbook_owner"
# the checks each defect must fail (a totals row only warns: the loader skipped it, nothing is miscounted)
FAILS = {"duplicate_rows": {"duplicate_rows"}, "resent_file": {"duplicate_deliveries"},
         "resent_with_change": {"changed_rows"}, "unknown_client": {"orphans"}, "negative_amount": {"quarantine"},
         "non_numeric_amount": {"quarantine"}, "impossible_date": {"quarantine"}, "missing_workbook": {"freshness"},
         "totals_row": set(), "outlier_quantity": set()}
WARNS = {"totals_row": {"skipped_rows"}, "outlier_quantity": {"outliers"}}


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


class Warehouse:
    """The template database of clean deliveries, and copies of it with more files loaded on top."""

    def __init__(self, admin_url: str, owner_url: str, ingest_url: str, bucket: str, touched: set[str]):
        self.admin_url, self.owner_url, self.ingest_url = admin_url, owner_url, ingest_url
        self.bucket, self.touched = bucket, touched
        self.config = load_config()
        self.databases: list[str] = []

    def _admin(self, statement: str, *names: str, params=None) -> None:
        conn = psycopg2.connect(self.admin_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL(statement).format(*(sql.Identifier(n) for n in names)), params)
        finally:
            conn.close()

    def load(self, database: str, plan: list[tuple[str, Path]]) -> list[dict]:
        """Upload each (key, file) as a new object version and ingest exactly that version, in order."""
        s3 = boto3.client("s3")
        conn = psycopg2.connect(_with_database(self.ingest_url, database))
        try:
            results = []
            for key, path in plan:
                version = s3.put_object(Bucket=self.bucket, Key=key, Body=path.read_bytes()).get("VersionId")
                results.append(ingest(conn, self.config, ObjectRef(self.bucket, key, version), lambda: float("inf")))
            return results
        finally:
            conn.close()

    def copy(self, template: str, out: Path) -> str:
        """A copy of the template with the touched files of the generated directory `out` loaded on top."""
        name = f"accuracy_{uuid.uuid4().hex[:10]}"
        self._admin("create database {} template {} owner {}", name, template, OWNER_ROLE)
        self._admin("grant connect, temporary on database {} to pipeline_ingest", name)
        self._admin("alter database {} set timezone to %s", name, params=(self.config.company.timezone,))
        self.databases.append(name)
        self.load(name, [(k, p) for k, p in delivery_plan(out) if k in self.touched])
        return _with_database(self.owner_url, name)

    def drop_all(self) -> None:
        for name in self.databases:
            self._admin("drop database if exists {} with (force)", name)


def touched_keys(out: Path) -> set[str]:
    """Every key a defect adds, replaces, re-sends or withholds (the rest is the same in every case)."""
    defects = json.loads((out / "defects.json").read_text())
    return ({d["key"] for d in defects["defects"]} | {d["key"] for d in defects["later_deliveries"]}
            | set(defects["missing"]))


@pytest.fixture(scope="module")
def warehouse(stack, tmp_path_factory):
    from playbook.database import migrate
    from playbook.local.postgres import SUPERUSER
    from playbook.local.stack import current
    from playbook.warehouse import INGEST_ROLE, ensure_role_logins

    root = tmp_path_factory.mktemp("accuracy")
    generate(root / "all", defects="all", **DEMO)
    touched = touched_keys(root / "all")
    generate(root / "clean", **DEMO)
    bucket = f"accuracy-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": s3.meta.region_name})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    deliver(root / "clean", bucket)
    ingest_url = ensure_role_logins(stack["database_url"])[INGEST_ROLE]
    wh = Warehouse(current().pg.url(SUPERUSER, database="postgres"), stack["database_url"], ingest_url, bucket,
                   touched)
    template = f"accuracy_base_{uuid.uuid4().hex[:8]}"
    wh._admin("create database {} owner {}", template, OWNER_ROLE)
    wh.databases.append(template)
    migrate(_with_database(stack["database_url"], template))
    base = [(k, p) for k, p in delivery_plan(root / "clean") if k not in touched]
    results = wh.load(template, base)
    assert all(r["status"] == "committed" for r in results)
    wh.template, wh.root = template, root
    try:
        yield wh
    finally:
        wh.drop_all()


class CopyTarget(LocalTarget):
    """The local target of a copy of the warehouse, which no deployed function serves: its refresh is
    CALL marts.refresh(), what the refresh function calls, on the copy."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url

    def database_url(self) -> str:
        return self.url

    def refresh_marts(self, log_dir=None) -> dict:
        refresh_copy(self.url)
        return {"status": "ok"}


def refresh_copy(url: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("call marts.refresh()")
    finally:
        conn.close()


def run(url: str, out: Path, **kwargs) -> ValidationReport:
    """validate(), returning the report whether or not it breached (the breach is asserted by the caller)."""
    try:
        report = validate(url, run_id=f"test-{uuid.uuid4().hex[:8]}", out_dir=out, target=CopyTarget(url), **kwargs)
        report.breached = False
    except AccuracyBreach as exc:
        report = exc.report
        report.breached = True
    return report


def amount(text: str) -> Decimal:
    """An amount as the demo writes it ('1.007,48' in the costs export, '-417.33' elsewhere)."""
    return Decimal(text.replace(".", "").replace(",", ".") if "," in text else text)


def located(report: ValidationReport, d: dict) -> list[dict]:
    """The findings that report defect `d` at its file, sheet and row (or, for a missing file, its due date)."""
    def at(f: dict, key=d["key"], sheet=d["sheet"], row=d["row"]) -> bool:
        return f.get("file") == key and f.get("sheet") == sheet and f.get("row") == row

    kind = d["kind"]
    if kind == "duplicate_rows":
        return [f for f in report.findings("duplicate_rows") if at(f)]
    if kind == "resent_file":
        return [f for f in report.findings("duplicate_deliveries")
                if f["file"] == d["key"] and d["value"] in [e["file"] for e in f["earlier"]]]
    if kind == "resent_with_change":
        return [f for f in report.findings("changed_rows")
                if f["changed_by"]["file"] == d["key"] and f["changed_by"]["row"] == d["row"]
                and f["first_loaded"]["file"] == d["key"] and f["first_loaded"]["version"] != f["changed_by"]["version"]
                and Decimal(str(f["changes"]["amount"]["was"])) == amount(d["original"])
                and Decimal(str(f["changes"]["amount"]["now"])) == amount(d["value"])]
    if kind == "unknown_client":
        return [f for f in report.findings("orphans") if at(f) and f["client_id"] == d["value"]]
    if kind in ("negative_amount", "non_numeric_amount", "impossible_date"):
        what = {"negative_amount": "is negative", "non_numeric_amount": "is not a number",
                "impossible_date": "is not a valid date"}[kind]
        return [f for f in report.findings("quarantine") if at(f) and f["kind"].endswith(what)
                and d["value"] in f["reason"]]
    if kind == "missing_workbook":
        due = re.search(r"overdue from (\S+)", d["expected_effect"]["freshness"]).group(1)
        start, end = d["value"].split("/")
        return [f for f in report.findings("freshness") if f["source"] == d["source"]
                and (f["due_from"], f["due_to"], f["deliveries"]) == (due, due, 1)
                and f["no_data_from"] <= start and f["no_data_to"] >= end]
    if kind == "totals_row":
        return [f for f in report.findings("skipped_rows") if at(f) and f["values"].get("order_id") == "TOTAL"]
    if kind == "outlier_quantity":  # named by product (and, when the client's own lines are enough, by client too)
        return [f for f in report.findings("outliers") if at(f) and "client and product" not in f
                and f["quantity"] == d["value"]]
    raise AssertionError(f"no rule to locate {kind}")


def not_passed(report: ValidationReport, status: str) -> set[str]:
    return {r.check for r in report.results if r.status == status}


def test_clean_deliveries_pass_every_check(warehouse, tmp_path):
    url = warehouse.copy(warehouse.template, warehouse.root / "clean")
    report = run(url, tmp_path)
    assert not report.breached
    assert [(r.check, r.subject, r.summary) for r in report.results if r.status != "pass"] == []
    checks = {r.check for r in report.results}
    assert {"batch_reconciliation", "ledger_matches_core", "marts_match_core", "marts_fresh", "orphans",
            "duplicate_rows", "duplicate_deliveries", "changed_rows", "freshness", "quarantine",
            "skipped_rows"} <= checks
    # the payment sheets' Total rows are footers by design, and each equals its rows
    assert report.result("skipped_rows", "payments").summary.endswith("footers, each equal to the rows it totals")
    assert (tmp_path / "accuracy.md").read_text().count("| pass |") == len(report.results)


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_each_defect_alone_is_caught_where_it_is(warehouse, tmp_path, kind):
    out = warehouse.root / kind
    generate(out, defects=[kind], **DEMO)
    defects = json.loads((out / "defects.json").read_text())["defects"]
    report = run(warehouse.copy(warehouse.template, out), tmp_path)
    for d in defects:
        assert len(located(report, d)) == 1, (d, [r.details for r in report.results if r.status != "pass"])
    assert not_passed(report, "fail") == FAILS[kind]
    assert not_passed(report, "warn") == WARNS.get(kind, set())
    assert report.breached == bool(FAILS[kind])
    text = (tmp_path / "accuracy.md").read_text()
    for d in defects:
        assert (f"no data from {d['value'].split('/')[0]}" if kind == "missing_workbook" else d["key"]) in text
        if d["row"] is not None:
            assert f"row {d['row']}" in text


def test_all_defects_together_are_caught_and_counted_as_the_manifest_says(warehouse, tmp_path):
    out = warehouse.root / "all"
    defects = json.loads((out / "defects.json").read_text())["defects"]
    report = run(warehouse.copy(warehouse.template, out), tmp_path)
    assert report.breached
    missed = [d["id"] for d in defects if len(located(report, d)) != 1]
    assert missed == []
    # nothing else: every finding of a failing or warning check is one of the defects (an outlier line counted
    # once, though both its product and its client's lines may name it)
    outlier_lines = {(f["order_id"], f["line_no"]) for f in report.findings("outliers")}
    assert sum(r.observed for r in report.results if r.status != "pass" and r.check != "outliers") \
        + len(outlier_lines) == len(defects)
    assert not_passed(report, "fail") == set().union(*FAILS.values())
    quarantined = sum(1 for d in defects if "rows_quarantined" in d["expected_effect"])
    assert sum(r.observed for r in report.by_check("quarantine")) == quarantined
    assert sum(r.observed for r in report.by_check("orphans")) == sum(d["expected_effect"].get("orphans", 0)
                                                                       for d in defects)


def test_limits_from_the_configuration_decide_what_breaches(warehouse, tmp_path):
    """Each limit holds per check and subject (a source or a table): here one finding of each at most."""
    url = warehouse.copy(warehouse.template, warehouse.root / "all")
    loose = {"max_quarantined_rows": 1, "max_orphans": 1, "max_duplicate_rows": 1, "max_duplicate_batches": 1,
             "max_changed_rows": 1, "max_missed_deliveries": 1}
    report = run(url, tmp_path, thresholds=loose)
    assert not report.breached and report.failures == []
    assert {r.check for r in report.results if r.observed} >= {"quarantine", "orphans", "freshness"}
    tight = run(url, tmp_path, thresholds={**loose, "max_quarantined_rows": 0})
    assert tight.breached and {(r.check, r.subject) for r in tight.failures} == {
        ("quarantine", "sales"), ("quarantine", "payments"), ("quarantine", "operating_costs")}


def test_stale_marts_are_refreshed_first_or_reported(warehouse, tmp_path):
    url = warehouse.copy(warehouse.template, warehouse.root / "clean")  # loaded after the marts' last refresh
    report = run(url, tmp_path, refresh=False)
    assert report.breached and {r.check for r in report.failures} == {"marts_fresh", "marts_match_core"}
    assert run(url, tmp_path).failures == []


def test_playbook_validate_exits_non_zero_on_a_breach_and_keeps_results_and_report(warehouse, tmp_path,
                                                                                  monkeypatch, capsys):
    from playbook.cli import main

    url = warehouse.copy(warehouse.template, warehouse.root / "all")
    refresh_copy(url)  # as the refresh function would after the loads: the command finds its marts fresh
    monkeypatch.setenv("PLAYBOOK_DATABASE_URL", url)
    assert main(["validate", "--run-id", "breach-run", "--out", str(tmp_path / "run")]) == 1
    printed = capsys.readouterr().out
    assert "accuracy breach" in printed and "freshness" in printed
    report = (tmp_path / "run" / "accuracy.md").read_text()
    missing = next(d for d in json.loads((warehouse.root / "all" / "defects.json").read_text())["defects"]
                   if d["kind"] == "missing_workbook")
    start, end = missing["value"].split("/")
    assert f"no data from {start} to {end}" in report
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("select check_name, subject, status, observed, threshold, details from meta.accuracy_results "
                    "where run_id = 'breach-run'")
        rows = cur.fetchall()
    assert rows and {r[2] for r in rows} == {"pass", "warn", "fail"}
    failed = {(r[0], r[1]): r for r in rows if r[2] == "fail"}
    orphan = failed[("orphans", "core.sales")]
    assert orphan[3] == 1 and orphan[4] == 0 and orphan[5]["findings"][0]["client_id"] == "99999"

    clean = warehouse.copy(warehouse.template, warehouse.root / "clean")
    refresh_copy(clean)
    monkeypatch.setenv("PLAYBOOK_DATABASE_URL", clean)
    assert main(["validate", "--run-id", "clean-run", "--out", str(tmp_path / "clean")]) == 0
    assert (tmp_path / "clean" / "accuracy.md").exists()
