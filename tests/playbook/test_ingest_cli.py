"""`playbook ingest SOURCE PATH`: the file lands under the source's prefix and the deployed function loads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from tests.playbook.deployed import PREFIX

HEADER = "Order No,Line,Order Date,Client Code,Product,Qty,Unit Price,Line Total,Currency\n"


def playbook(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "playbook", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PLAYBOOK_STACK_PREFIX": PREFIX})


def test_a_file_is_delivered_and_loaded_through_the_deployed_function(pipeline_stack, tmp_path):
    order = f"SO-CLI-{uuid.uuid4().hex[:6]}"
    path = tmp_path / f"{order}.csv"
    path.write_text(HEADER + f"{order},1,2024-01-05,00042,Widget,2,10.50,21.00,GBP\n")
    result = playbook("ingest", "sales", str(path))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["function"] == f"{PREFIX}-ingest-sales" and out["key"] == f"landing/sales/{order}.csv"
    (loaded,) = out["summary"]["results"]
    assert loaded["status"] == "committed" and loaded["rows_inserted"] == 1
    assert os.path.exists(out["log"])
    again = json.loads(playbook("ingest", "sales", str(path)).stdout)
    assert again["summary"]["results"][0]["status"] == "already_loaded"


def test_a_bad_file_fails_with_the_loader_s_words(pipeline_stack, tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text(HEADER + 'SO-B,1,2024-01-05,00042,"Widget,2,10.50,21.00,GBP\n')
    result = playbook("ingest", "sales", str(path))
    assert result.returncode == 1
    assert "broken.csv: row 2" in result.stderr and "quoted value opens there and never closes" in result.stderr


def test_unknown_source_and_api_source_are_refused(pipeline_stack, tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a\n")
    result = playbook("ingest", "nosuch", str(path))
    assert result.returncode == 2 and "unknown source 'nosuch'" in result.stderr
    api = playbook("ingest", "sales_api", str(path), "--config", "examples/business_api.yaml")
    assert api.returncode == 2 and "is a rest_api source" in api.stderr


def test_on_aws_the_command_waits_for_the_batch_the_upload_started(pipeline_stack, tmp_path):
    """On AWS the landing bucket's notification runs the function; the command reads the outcome from the
    ledger instead of invoking it again. Here the local run plays the notification's part."""
    from datetime import UTC, datetime

    from playbook.ingest import awaited_batch

    since = datetime.now(UTC)
    good, bad = tmp_path / "awaited.csv", tmp_path / "awaited-bad.csv"
    good.write_text(HEADER + f"SO-AW-{uuid.uuid4().hex[:6]},1,2024-01-05,00042,Widget,2,10.50,21.00,GBP\n")
    bad.write_text(HEADER + 'SO-AWB,1,2024-01-05,00042,"Widget,2,10.50,21.00,GBP\n')
    assert playbook("ingest", "sales", str(good)).returncode == 0
    assert playbook("ingest", "sales", str(bad)).returncode == 1
    loaded = awaited_batch("sales", "landing/sales/awaited.csv", since, timeout_s=5)
    assert loaded["status"] == "ok" and loaded["summary"]["rows_inserted"] == 1
    failed = awaited_batch("sales", "landing/sales/awaited-bad.csv", since, timeout_s=5)
    assert failed["status"] == "error" and "never closes" in failed["error"]["errorMessage"]


def counts(table_rows=("meta.batches", "meta.quarantine", "core.sales")) -> dict[str, int]:
    import psycopg2

    from playbook.database import database_url

    conn = psycopg2.connect(database_url())
    try:
        with conn.cursor() as cur:
            out = {}
            for table in table_rows:
                cur.execute(f"select count(*) from {table}")  # noqa: S608 - the tables named above
                out[table] = cur.fetchone()[0]
            return out
    finally:
        conn.close()


def test_a_dry_run_reports_what_would_load_and_commits_nothing(pipeline_stack, tmp_path):
    import boto3

    order = f"SO-DRY-{uuid.uuid4().hex[:6]}"
    path = tmp_path / f"{order}.csv"
    path.write_text(HEADER + f"{order},1,2024-01-05,00042,Widget,2,10.50,21.00,GBP\n"
                    + f"{order},2,2024-01-05,00042,Widget,1,10.50,12.3O,GBP\n"
                    + f"{order},3,2024-13-05,00042,Widget,1,10.50,10.50,GBP\n"
                    + f"{order},4,2024-01-05,00042,Widget,1,10.50,10.50,GBP\n")
    before = counts()
    result = playbook("ingest", "--dry-run", "sales", str(path))
    assert result.returncode == 0, result.stderr
    assert "nothing was committed" in result.stderr
    out = json.loads(result.stdout)
    run = out["dry_run"]
    assert run["status"] == "dry_run" and (run["rows_read"], run["rows_inserted"], run["rows_quarantined"]) == (4, 2, 2)
    assert run["amount_loaded"] == "31.50"
    assert sum(r["rows"] for r in run["quarantine_reasons"]) == 2
    examples = " ".join(e for r in run["quarantine_reasons"] for e in r["examples"])
    assert "row 3: amount '12.3O' is not a number" in examples and "'2024-13-05'" in examples
    assert counts() == before  # ledger, quarantine and core unchanged
    dry = boto3.client("s3").list_objects_v2(Bucket=pipeline_stack["LandingBucketName"], Prefix="dry-run/")
    assert dry.get("KeyCount", 0) == 0  # the dry run's copy is gone
    # the real load afterwards is a first load, and refreshes the marts
    loaded = json.loads(playbook("ingest", "sales", str(path)).stdout)
    assert loaded["summary"]["results"][0]["rows_inserted"] == 2
    assert "client_day_sales" in loaded["marts_refreshed"]


def test_a_source_added_since_the_provisioning_is_named_with_the_command_to_run(pipeline_stack, tmp_path):
    import yaml

    from playbook.settings import DEFAULT_CONFIG

    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["sources"]["refunds"] = {**data["sources"]["sales"], "prefix": "landing/refunds/"}
    data["sources"]["sales"]["description"] = "order lines, now described"
    added = tmp_path / "added.yaml"
    added.write_text(yaml.safe_dump(data))
    check = playbook("config", "check", "--config", str(added), "--target", "local")
    assert check.returncode == 0, check.stderr
    assert "source refunds is new since the last provisioning: run `playbook provision --target local`" in check.stdout
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "SO-R,1,2024-01-05,00042,Widget,1,1.00,1.00,GBP\n")
    refused = playbook("ingest", "refunds", str(path), "--config", str(added))
    assert refused.returncode == 2 and "run `playbook provision --target local`" in refused.stderr
    del data["sources"]["refunds"]
    described = tmp_path / "described.yaml"
    described.write_text(yaml.safe_dump(data))
    assert "changed since the last deploy: run `playbook deploy --target local`" in playbook(
        "config", "check", "--config", str(described), "--target", "local").stdout
    assert "runs this configuration" in playbook("config", "check", "--target", "local").stdout
    data["sources"]["sales"]["natural_key"] = ["order_id", "line_no", "order_date"]
    rekeyed = tmp_path / "rekeyed.yaml"
    rekeyed.write_text(yaml.safe_dump(data))
    assert "source sales: its key (natural_key or compose) changed" in playbook(
        "config", "check", "--config", str(rekeyed), "--target", "local").stdout


def test_an_api_credential_is_stored_from_standard_input_and_never_printed(pipeline_stack):
    import boto3

    secret = f"tok-{uuid.uuid4().hex}"
    done = subprocess.run([sys.executable, "-m", "playbook", "secret", "set", "sales_api", "--config",
                           "examples/business_api.yaml"], input=secret + "\n", capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PLAYBOOK_STACK_PREFIX": PREFIX})
    assert done.returncode == 0, done.stderr
    assert secret not in done.stdout + done.stderr
    out = json.loads(done.stdout)
    stored = boto3.client("secretsmanager").get_secret_value(SecretId=out["secret"])["SecretString"]
    assert json.loads(stored) == {"token": secret}
    window = playbook("ingest", "sales_api", "--from", "2024-01-01", "--config", "examples/business_api.yaml")
    assert window.returncode == 2 and "give both --from and --to" in window.stderr


def test_an_oauth_refresh_token_is_stored_with_its_client(pipeline_stack):
    import boto3

    values = ["client-1", f"secret-{uuid.uuid4().hex}", f"refresh-{uuid.uuid4().hex}"]
    done = subprocess.run([sys.executable, "-m", "playbook", "secret", "set", "invoices_api", "--config",
                           "examples/accounting_api.yaml"], input="\n".join(values) + "\n", capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PLAYBOOK_STACK_PREFIX": PREFIX})
    assert done.returncode == 0, done.stderr
    assert not any(v in done.stdout + done.stderr for v in values[1:])
    stored = boto3.client("secretsmanager").get_secret_value(SecretId=json.loads(done.stdout)["secret"])
    assert json.loads(stored["SecretString"]) == dict(zip(("client_id", "client_secret", "refresh_token"), values,
                                                          strict=True))


def test_an_oauth_api_source_loads_through_the_deployed_function_and_rotates_its_token(pipeline_stack, stack):
    """`playbook ingest trade_invoices --from --to` as a consultant runs it: the deployed function (the local
    runtime, as Lambda runs it) spends the refresh token the secret holds, stores the new one, reads the nested
    invoices and loads their lines; a second window works with the rotated token. Expected rows from pandas."""
    from decimal import Decimal

    import boto3
    import psycopg2

    from playbook.config import load_config
    from playbook.demo.company import INVOICES_SOURCE, build_company
    from tests.playbook.deployed import demo_accounting_system

    secret = load_config().sources[INVOICES_SOURCE].api.auth.secret
    with demo_accounting_system(stack["database_url"]) as business:
        tokens = []
        for first, after in (("2026-10-01", "2026-11-01"), ("2026-11-01", "2026-12-01")):
            done = playbook("ingest", INVOICES_SOURCE, "--from", first, "--to", after)
            assert done.returncode == 0, done.stdout + done.stderr
            out = json.loads(done.stdout)
            assert out["summary"]["batch"]["status"] == "committed" and out["summary"]["pages"] >= 1
            tokens.append(json.loads(boto3.client("secretsmanager").get_secret_value(SecretId=secret)
                                     ["SecretString"])["refresh_token"])
        assert tokens[0] != tokens[1] and tokens[1] == business.refresh_token
        assert business.grants == [("refresh_token", 200)] * 2
        lines = build_company().invoice_lines
        lines = lines[(lines["order_date"] >= "2026-10-01") & (lines["order_date"] < "2026-12-01")]
        with psycopg2.connect(stack["database_url"]) as conn, conn.cursor() as cur:
            cur.execute("select count(*), sum(amount) from core.sales_lineage where _source = %s",
                        (INVOICES_SOURCE,))
            count, amount = cur.fetchone()
        conn.close()
        assert (count, amount) == (len(lines), Decimal(int(lines["amount"].sum())).scaleb(-2))
