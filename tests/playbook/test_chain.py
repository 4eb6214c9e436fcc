"""`playbook run` end to end on a stack of its own: the five notebooks executed by papermill on a small demo company,
one run folder with the executed notebooks, the manifest and the reports; a second backfill that changes nothing;
no secret in anything kept; a validation breach that stops the chain at its cell, and the resume."""

from __future__ import annotations

import email
import json
import re
from decimal import Decimal
from email import policy
from email.parser import BytesParser
from pathlib import Path

import boto3
import nbformat
import psycopg2
import pytest

from playbook.chain import STAGES
from playbook.demo.company import INVOICES_SOURCE, build_company
from tests.chain_fixtures import DEMO

pytestmark = pytest.mark.stack

REPORT_FILES = ("activity.png", "activity.svg", "yearly_sales.png", "yearly_sales.svg", "dashboard.html",
                "expense_email.eml", "forecast.json", "cost.md", "cost.json")
CORE_TABLES = ("clients", "sales", "payments", "operating_costs", "tax", "interactions")


def core_counts(database_url: str) -> dict[str, tuple[int, int]]:
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            counts = {}
            for table in CORE_TABLES:
                cur.execute(f"select count(*), coalesce(max(_batch_id), 0) from core.{table}")
                counts[table] = cur.fetchone()
            cur.execute("select count(*) from meta.batches")
            counts["batches"] = cur.fetchone()
            return counts
    finally:
        conn.close()


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_run_folder_holds_the_executed_notebooks_the_manifest_and_the_reports(chained, chain_stack):
    run_dir = chained["run_dir"]
    assert run_dir.parent == chain_stack.reports / "runs"
    m = manifest(run_dir)
    assert m["run_id"] == run_dir.name and m["status"] == "ok" and m["target"] == "local"
    assert list(m["stages"]) == list(STAGES)
    for stage, notebook in STAGES.items():
        entry = m["stages"][stage]
        assert entry["status"] == "ok" and entry["seconds"] > 0 and entry["notebook"] == notebook
        assert entry["parameters"]["run_id"] == run_dir.name
        assert entry["outputs"]["stage"] == stage
        book = nbformat.read(run_dir / notebook, as_version=4)
        code = [c for c in book.cells if c.cell_type == "code"]
        assert book.metadata["papermill"]["parameters"]["run_dir"] == str(run_dir)
        assert all(c.execution_count for c in code), f"{notebook}: every cell executed"
        assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert m["stages"]["backfill"]["parameters"]["demo_clients"] == 60
    backfill = m["stages"]["backfill"]["outputs"]
    totals = backfill["totals"]
    assert totals["objects"] > 100 and totals["committed"] == totals["objects"] + totals["api_windows"]
    assert totals["api_windows"] >= 4  # the trade invoices, read from the demo's accounting system
    assert backfill["refresh"]["status"] == "ok"
    assert m["stages"]["validate"]["outputs"]["passed"] is True
    listed = {a["path"] for a in m["artifacts"]}
    for name in REPORT_FILES:
        assert (run_dir / name).stat().st_size > 0 and name in listed
    assert (run_dir / "accuracy.md").exists()
    assert m["stages"]["reports"]["outputs"]["email"]["status"] == "sent"
    message = email.message_from_bytes((run_dir / "expense_email.eml").read_bytes())
    assert "reports@northwind.example" in message["From"] and "operating costs" in message["Subject"]
    # the report notebook shows the charts inline
    reports = nbformat.read(run_dir / STAGES["reports"], as_version=4)
    images = [o for c in reports.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2
    # the local scheduler fires the report notebook on reports.schedule
    schedules = json.loads((Path(chain_stack.env["PLAYBOOK_STATE_DIR"]) / "local_schedules.json").read_text())
    report_run = [s for s in schedules["schedules"] if s["name"] == "playbook-report-run"]
    assert report_run and report_run[0]["expression"] == "cron(30 7 * * ? *)"
    assert report_run[0]["target"]["type"] == "command"
    assert report_run[0]["target"]["argv"][1:] == ["run", "--target", "local", "--only", "reports"]


def test_second_backfill_changes_nothing(chained, chain_stack):
    url = chain_stack.status()["database_url"]
    before = core_counts(url)
    recorded, pages = chain_stack.status()["moto"]["recording"], api_pages_bytes(chain_stack)
    done = chain_stack.playbook("run", "--only", "backfill", *DEMO)  # the demo: its accounting system serves again
    assert done.returncode == 0, done.stdout + done.stderr
    outputs = json.loads((chain_stack.latest() / "outputs" / "backfill.json").read_text())
    assert outputs["landed"]["uploaded"] == 0
    # every file answers already_loaded; the API's windows are read again, one batch each, and change no row
    assert outputs["totals"]["committed"] == outputs["totals"]["api_windows"] >= 4
    assert outputs["totals"]["already_loaded"] == outputs["totals"]["objects"] > 100
    after = core_counts(url)
    assert after.pop("batches")[0] == before.pop("batches")[0] + outputs["totals"]["api_windows"]
    assert after == before
    # the demo delivered again adds no copy of its files to moto's recording (what `local up` replays)
    # the demo delivered again adds no copy of its files to moto's recording (what `local up` replays): what it
    # adds is the API windows' new pages (each page the API sends has an id of its own), and lines
    again = chain_stack.status()["moto"]["recording"]
    new_pages = api_pages_bytes(chain_stack) - pages
    assert recorded["bodies_bytes"] > 1_000_000 and new_pages > 0
    assert again["bodies_bytes"] - recorded["bodies_bytes"] <= new_pages * 1.05 + 64 * 1024
    assert again["recording_bytes"] - recorded["recording_bytes"] < 512 * 1024


def api_pages_bytes(chain_stack) -> int:
    """The bytes of every API page kept in the chain's landing bucket."""
    status = chain_stack.status()
    s3 = boto3.client("s3", endpoint_url=status["aws_endpoint_url"], region_name="eu-west-2",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = next(b["Name"] for b in s3.list_buckets()["Buckets"] if "-landing-" in b["Name"])
    return sum(o["Size"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="api-pages/")
               for o in page.get("Contents", []))


def test_the_trade_invoices_come_through_the_api(chained, chain_stack):
    """The demo's accounting system served its trade accounts' invoice lines, returns as negative lines: core
    holds each of them once (reruns of its windows change nothing), to the penny of the company's own tables."""
    lines = build_company(years=1, clients=60).invoice_lines
    conn = psycopg2.connect(chain_stack.status()["database_url"])
    try:
        with conn.cursor() as cur:
            cur.execute("select count(*), sum(amount), count(*) filter (where amount < 0) from core.sales_lineage "
                        "where _source = %s", (INVOICES_SOURCE,))
            count, amount, credits = cur.fetchone()
    finally:
        conn.close()
    assert (count, amount, credits) == (len(lines), Decimal(int(lines["amount"].sum())).scaleb(-2),
                                        int((lines["amount"] < 0).sum()))
    m = manifest(chain_stack.latest())
    # the run builds on the earlier stages of the previous run, and says so
    assert m["stages"]["deploy"]["status"] == "skipped"
    earlier = {p.name for p in (chain_stack.reports / "runs").iterdir()} - {chain_stack.latest().name}
    assert m["stages"]["deploy"]["reused_from"] in earlier


def secret_values(chain_stack) -> list[str]:
    """Every database password: the local state's credentials file and every secret in Secrets Manager."""
    from urllib.parse import unquote, urlsplit

    state = Path(chain_stack.env["PLAYBOOK_STATE_DIR"])
    values = list(json.loads((state / "pg" / "credentials.json").read_text()).values())
    status = chain_stack.status()
    sm = boto3.client("secretsmanager", endpoint_url=status["aws_endpoint_url"], region_name="eu-west-2",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    names = [s["Name"] for s in sm.list_secrets()["SecretList"]]
    assert {"playbook/db/ingest", "playbook/db/reporting", "playbook/database"} <= set(names)
    for name in names:
        secret = json.loads(sm.get_secret_value(SecretId=name)["SecretString"])
        for value in secret.values():
            password = urlsplit(value).password if "://" in str(value) else None
            if password:
                values += [password, unquote(password)]
        if secret.get("password"):
            values.append(secret["password"])
    return sorted({v for v in values if v and len(v) >= 12})


def test_no_secret_value_in_any_executed_notebook_or_the_manifest(chained, chain_stack):
    secrets = secret_values(chain_stack)
    assert len(secrets) >= 3
    kept = [p for p in chain_stack.reports.rglob("*") if p.is_file() and p.suffix in (".ipynb", ".json", ".md")]
    assert len([p for p in kept if p.suffix == ".ipynb"]) >= len(STAGES)
    for path in kept:
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{path} holds a password"
        assert not re.search(r"postgres(ql)?://[^:/\s\"']+:(?!\*\*\*)[^@\s\"']+@", text), f"{path} holds a DSN"


def test_a_breach_stops_the_chain_at_validation_and_a_resume_completes(chained, chain_stack, nbval_run):
    # nbval_run: the lessons are checked before this test leaves an orphan in the chain's warehouse
    failed = chain_stack.playbook("run", "--from", "backfill", *DEMO, "-p", "demo_defects",
                                  "unknown_client,outlier_quantity")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "stage validate failed at cell" in failed.stderr
    assert "checked = validate(config=company" in failed.stderr
    assert "AccuracyBreach" in failed.stderr
    run_dir = chain_stack.latest()
    m = manifest(run_dir)
    assert m["status"] == "failed"
    assert m["stages"]["backfill"]["status"] == "ok" and m["stages"]["validate"]["status"] == "failed"
    assert "reports" not in m["stages"]
    error = m["stages"]["validate"]["error"]
    lesson = nbformat.read(Path("notebooks") / STAGES["validate"], as_version=4)
    assert lesson.cells[error["cell"]].source.startswith("checked = validate(")
    assert (run_dir / STAGES["validate"]).exists(), "the failed notebook is kept"
    assert not (run_dir / "dashboard.html").exists()

    breached = json.loads((run_dir / "accuracy.json").read_text())
    assert [r for r in breached["results"] if r["status"] == "fail"], "the breach is in the accuracy report"
    thresholds = {name: 100_000 for name in ["max_orphans", "max_quarantined_rows",
                                             "max_unreconciled_batches", "max_changed_rows"]}
    resumed = chain_stack.playbook("run", "--from", "validate", "--run-id", run_dir.name,
                                   "-p", "thresholds", json.dumps(thresholds))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    m = manifest(run_dir)
    assert m["status"] == "ok"
    assert [m["stages"][s]["status"] for s in STAGES] == ["skipped", "skipped", "ok", "ok", "ok"]
    assert (run_dir / "dashboard.html").exists()
    assert m["stages"]["validate"]["parameters"]["thresholds"] == thresholds
    # the seeded outlier: a warning of validate at its file and row, and a line of the operations email
    accuracy = json.loads((run_dir / "accuracy.json").read_text())
    [flagged] = [f for r in accuracy["results"] if r["check"] == "outliers" and r["subject"].endswith("by product")
                 for f in r["findings"]]
    assert (flagged["order_id"], flagged["quantity"]) == ("SO-9000003", "20000")
    assert flagged["file"].startswith("landing/sales/") and flagged["row"] > 1
    sent = BytesParser(policy=policy.default).parsebytes((run_dir / "expense_email.eml").read_bytes())
    text = sent.get_body(("plain",)).get_content()
    assert f"Order SO-9000003 line 1: quantity 20000 where the median of product {flagged['product']} is " in text
    assert f"{flagged['file']}, row {flagged['row']}, batch {flagged['batch_id']}" in text
