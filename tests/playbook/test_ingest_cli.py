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
