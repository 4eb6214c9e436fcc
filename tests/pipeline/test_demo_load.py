"""The demo company end to end through the file loader and its accounting system's API: every ledger row
reconciles, the totals equal the generator's manifest, and loading everything again changes nothing."""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest

from pipeline.handlers import ingest_api
from pipeline.model import TABLES
from playbook.demo import deliver, generate
from playbook.demo.business_system import serve_business_system
from playbook.demo.company import INVOICES_SOURCE
from tests.pipeline.conftest import TRUNCATE

CHECKSUM = "select md5(string_agg(t::text, '|' order by t::text)) from core.{} t"
# two years of the default company's history, not three: every kind of file, each as large as the full demo
# delivers it (the same clients, the same sales a month), over three calendar years, and an invoice window of more
# than a hundred pages (one year has fewer); every claim below is per file, per source and per year, none about how
# many years there are. (The warehouse keeps these rows for the tests after this module: test_grants validates
# over them, so a smaller load makes that validation quicker too.)
DEMO = {"years": 2}


@pytest.fixture(scope="module")
def demo(landing_session, tmp_path_factory):
    with psycopg2.connect(landing_session.database_url) as conn, conn.cursor() as cur:
        cur.execute(TRUNCATE)
    out: Path = tmp_path_factory.mktemp("demo")
    manifest = json.loads(json.dumps(generate(out, **DEMO).to_json()))
    keys = deliver(out, landing_session.bucket)
    results = {key: landing_session.ingest(key) for key in sorted(keys)}
    # the trade accounts' invoices: the demo's accounting system, read through its API in one window
    business = serve_business_system(landing_session.config, **DEMO)
    try:
        end = date.fromisoformat(manifest["end"]) + timedelta(days=1)
        results[INVOICES_SOURCE] = ingest_api.handler(
            {"source": INVOICES_SOURCE, "from": manifest["start"], "to": end.isoformat()})["batch"]
    finally:
        business.stop()
    return landing_session, manifest, results, out


def test_the_invoices_come_through_the_api_and_reconcile(demo):
    _, manifest, results, _ = demo
    batch, expected = results[INVOICES_SOURCE], manifest["sources"][INVOICES_SOURCE]
    assert batch["status"] == "committed" and expected["api"] and expected["files"] == 0
    assert batch["rows_read"] == batch["rows_inserted"] == expected["rows"] > 1000
    assert Decimal(batch["amount_in"]) == Decimal(batch["amount_loaded"]) == Decimal(expected["amount_sum"])


def test_every_file_loads_and_its_ledger_row_reconciles(demo):
    landing, manifest, results, _ = demo
    assert set(results) - {INVOICES_SOURCE} == {entry["key"] for entry in manifest["files"]}
    for entry in manifest["files"]:
        result = results[entry["key"]]
        assert result["status"] == "committed", entry["key"]
        assert result["rows_read"] == entry["rows"], entry["key"]
        assert result["rows_read"] == (result["rows_inserted"] + result["rows_updated"] + result["rows_unchanged"]
                                       + result["rows_duplicate"] + result["rows_quarantined"])
        assert result["rows_quarantined"] == 0 and result["rows_duplicate"] == 0, entry["key"]
        if entry["amount_sum"] is not None:
            assert Decimal(result["amount_in"]) == Decimal(entry["amount_sum"]), entry["key"]
            assert Decimal(result["amount_loaded"]) == Decimal(entry["amount_sum"]), entry["key"]


def test_core_totals_equal_the_manifest(demo):
    landing, manifest, _, _ = demo
    for source, totals in manifest["sources"].items():
        table = TABLES[totals["table"]]
        count, amount = landing.query(
            f"select count(*), {'sum(' + table.amount + ')' if table.amount else 'null'} "
            f"from core.{table.name}_lineage where _source = %s", (source,))[0]
        assert count == totals["rows"], source
        if totals["amount_sum"] is not None:
            assert amount == Decimal(totals["amount_sum"]), source
    by_year = dict(landing.query("select extract(year from order_date)::int::text, sum(amount) from core.sales "
                                 "group by 1"))
    assert {year: Decimal(v["amount"]) for year, v in manifest["sales_by_year"].items()} == by_year
    by_client = dict(landing.query("select client_id, sum(amount) from core.sales group by 1"))
    assert {client: Decimal(v) for client, v in manifest["sales_by_client"].items()} == by_client


def test_loading_everything_again_changes_nothing(demo):
    landing, manifest, _, out = demo
    before = {t: landing.query(CHECKSUM.format(t))[0][0] for t in TABLES}
    again = [landing.ingest(entry["key"]) for entry in manifest["files"]]
    assert {r["status"] for r in again} == {"already_loaded"}
    # the same bytes under new keys are read, typed and merged in full: every row unchanged
    for entry in manifest["files"][::7]:
        source_prefix, name = entry["key"].rsplit("/", 1)
        copy_key = f"{source_prefix}/reload/{name}"
        result = landing.ingest(copy_key, (out / entry["key"]).read_bytes())
        assert (result["rows_inserted"], result["rows_updated"], result["rows_unchanged"]) == (0, 0, entry["rows"])
    after = {t: landing.query(CHECKSUM.format(t))[0][0] for t in TABLES}
    assert before == after


def test_the_api_pages_are_kept_and_read_again_with_a_reader_of_their_own(demo):
    """The invoices' window kept its pages as the API sent them; validation's reader (json, its own record walk)
    finds the manifest's rows and money in them. A page changed since, or a ledger that disagrees, is a finding."""
    import boto3

    from playbook.accuracy.ledger import committed_batches
    from playbook.accuracy.rereads import independent_reconciliation, reread_objects

    landing, manifest, results, _ = demo
    batch_id = results[INVOICES_SOURCE]["batch_id"]
    with psycopg2.connect(landing.database_url) as conn, conn.cursor() as cur:
        (batch,) = [b for b in committed_batches(cur) if b["batch_id"] == batch_id]
    kept = batch["api_pages"]
    assert kept["prefix"] == f"api-pages/{INVOICES_SOURCE}/{batch_id:012d}/" and kept["pages"] > 100
    config, limits = landing.config, landing.config.accuracy
    reading = reread_objects(config, [batch], limits)[batch_id].reading
    expected = manifest["sources"][INVOICES_SOURCE]
    assert (reading.rows_read, reading.amount_in) == (expected["rows"], Decimal(expected["amount_sum"]))
    (result,) = [r for r in independent_reconciliation([batch], reread_objects(config, [batch], limits), config,
                                                       limits) if r.subject == INVOICES_SOURCE]
    assert result.status == "pass" and "agrees with the ledger" in result.summary

    told = {**batch, "amount_in": Decimal(batch["amount_in"]) + Decimal("0.01")}
    (result,) = [r for r in independent_reconciliation([told], reread_objects(config, [told], limits), config,
                                                       limits) if r.subject == INVOICES_SOURCE]
    assert result.status == "fail" and f"amount in: ledger {told['amount_in']}" in result.summary
    s3 = boto3.client("s3")
    first = f"{kept['prefix']}page-00001.json"
    original = s3.get_object(Bucket=kept["bucket"], Key=first)["Body"].read()
    s3.put_object(Bucket=kept["bucket"], Key=first, Body=original.replace(b'"LineAmount": ', b'"LineAmount": 1', 1))
    try:
        r = reread_objects(config, [batch], limits)[batch_id]
        assert r.reading is None and "are not the" in r.refused and "the batch loaded" in r.refused
    finally:
        s3.put_object(Bucket=kept["bucket"], Key=first, Body=original)
