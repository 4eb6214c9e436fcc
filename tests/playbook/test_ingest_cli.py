"""`playbook ingest SOURCE PATH`: the file lands under the source's prefix and the deployed function loads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.playbook.deployed import PREFIX, provisioned_pipeline

HEADER = "Order No,Line,Order Date,Client Code,Product,Qty,Unit Price,Line Total,Currency\n"


@pytest.fixture(scope="module")
def pipeline_stack(stack):
    with provisioned_pipeline() as outputs:
        yield outputs


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
    assert "broken.csv: row 2" in result.stderr and "quoted field" in result.stderr


def test_unknown_source_and_api_source_are_refused(pipeline_stack, tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a\n")
    result = playbook("ingest", "nosuch", str(path))
    assert result.returncode == 2 and "unknown source 'nosuch'" in result.stderr
