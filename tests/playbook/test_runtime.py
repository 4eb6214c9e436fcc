"""The local Lambda runtime runs the deployed functions from their deployed zips, with their limits."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

from playbook import runtime
from playbook.deploy import pipeline_functions
from playbook.settings import PROJECT_ROOT
from tests.playbook.deployed import PREFIX, PROBE_MEMORY_MB, PROBE_TIMEOUT_S

EXPECTED_MARTS = {"client_day_sales", "company_daily", "daily_costs_by_category", "daily_activity", "yearly_sales"}


def test_every_deployed_handler_resolves_inside_the_unpacked_zip(pipeline_stack):
    functions = pipeline_functions(pipeline_stack)
    assert len(functions) >= 9  # six sources, the refresh, the email, migrate
    for name in functions:
        fn = runtime.prepare(name)
        assert fn.code_dir.parent == runtime.runtime_dir() / "code"
        assert fn.code_dir.name == base64.b64decode(fn.code_sha256).hex()
        module_path = fn.code_dir / (fn.handler.rpartition(".")[0].replace(".", "/") + ".py")
        result = runtime.check_handler(name)
        assert module_path.exists(), f"{name}: the deployed zip has no {module_path.name}"
        assert result.status == "ok", (name, result.error)
        probe = result.payload
        assert Path(probe["module_file"]) == module_path
        assert Path(probe["pipeline_file"]) == fn.code_dir / "pipeline" / "__init__.py"
        assert probe["playbook_importable"] is False
        assert probe["sys_path"][0] == str(fn.code_dir)
        assert not any(p.startswith(str(PROJECT_ROOT / "lambda_src")) or p == str(PROJECT_ROOT)
                       for p in probe["sys_path"])


def test_playbook_invoke_runs_refresh_marts_from_its_zip(pipeline_stack, stack, db):
    with db.cursor() as cur:
        cur.execute("select count(*) from meta.mart_refreshes")
        before = cur.fetchone()[0]
    name = pipeline_stack["RefreshMartsFunctionName"]
    done = subprocess.run([sys.executable, "-m", "playbook", "invoke", name, "--payload", "{}"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PLAYBOOK_STACK_PREFIX": PREFIX})
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "ok" and result["payload"]["status"] == "ok"
    assert {m["mart"] for m in result["payload"]["marts"]} == EXPECTED_MARTS
    with db.cursor() as cur:
        cur.execute("select count(*) from meta.mart_refreshes")
        assert cur.fetchone()[0] == before + len(EXPECTED_MARTS)
    log = Path(result["log_path"])
    assert log.parent == Path(os.environ["PLAYBOOK_STATE_DIR"]) / "logs" / name
    text = log.read_text()
    assert text.startswith(f"START RequestId: {result['request_id']}")
    assert f"END RequestId: {result['request_id']}" in text and "Max Memory Used" in text
    assert "marts refreshed" in text
    password = stack["database_url"].split(":")[2].split("@")[0]
    assert password not in text and password not in done.stdout


def test_ingest_object_loads_a_csv_dropped_in_the_landing_bucket(pipeline_stack, db):
    import boto3

    bucket, key = pipeline_stack["LandingBucketName"], f"landing/sales/runtime/{uuid.uuid4().hex[:8]}.csv"
    body = ("Order No,Line,Order Date,Client Code,Product,Qty,Unit Price,Line Total,Currency\n"
            "RT-1,1,2024-02-05,00042,Widget,2,10.50,21.00,GBP\n"
            "RT-1,2,2024-02-05,00042,Gadget,1,0.10,0.10,GBP\n")
    put = boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body.encode())
    event = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {
        "bucket": {"name": bucket}, "object": {"key": key, "eTag": put["ETag"].strip('"'), "size": len(body)}}}]}
    result = runtime.invoke(pipeline_stack["IngestSalesFunctionName"], event)
    assert result.status == "ok", result.error
    assert result.payload["committed"] == 1 and result.payload["failed"] == 0
    batch = result.payload["results"][0]["batch_id"]
    with db.cursor() as cur:
        cur.execute("select sum(amount), count(*) from core.sales where _batch_id = %s", (batch,))
        total, rows = cur.fetchone()
    assert (str(total), rows) == ("21.10", 2)
    again = runtime.invoke(pipeline_stack["IngestSalesFunctionName"], event)
    assert again.ok and again.payload["already_loaded"] == 1


def test_the_handler_gets_a_lambda_shaped_context_and_the_deployed_environment(pipeline_stack):
    name = f"{PREFIX}-probe-echo"
    result = runtime.invoke(name, {"hello": "world"})
    assert result.status == "ok", result.error
    got = result.payload
    assert got["event"] == {"hello": "world"}
    assert 0 < got["remaining_ms"] <= PROBE_TIMEOUT_S * 1000
    ctx = got["context"]
    assert ctx["function_name"] == name and ctx["memory_limit_in_mb"] == PROBE_MEMORY_MB
    assert ctx["invoked_function_arn"].endswith(f":function:{name}") and ctx["aws_request_id"] == result.request_id
    assert ctx["log_group_name"] == f"/aws/lambda/{name}" and ctx["function_version"] == "$LATEST"
    env = got["env"]
    assert env["PROBE_SETTING"] == "from-deploy" and env["AWS_LAMBDA_FUNCTION_NAME"] == name
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == str(PROBE_MEMORY_MB)
    assert env["AWS_ENDPOINT_URL"] == os.environ["AWS_ENDPOINT_URL"]
    assert got["playbook_importable"] is False and got["cwd"] == env["LAMBDA_TASK_ROOT"] == got["sys_path"][0]


def test_a_handler_past_its_timeout_is_killed_and_reported_as_lambda_does(pipeline_stack):
    started = time.monotonic()
    result = runtime.invoke(f"{PREFIX}-probe-sleep", {"seconds": 60})
    elapsed = time.monotonic() - started
    assert result.status == "timeout"
    assert result.error["errorMessage"].endswith(f"Task timed out after {PROBE_TIMEOUT_S:.2f} seconds")
    assert PROBE_TIMEOUT_S <= result.duration_ms / 1000 < PROBE_TIMEOUT_S + 1 and elapsed < PROBE_TIMEOUT_S + 4
    pid = json.loads(next(line for line in Path(result.log_path).read_text().splitlines() if '"pid"' in line))["pid"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_handler_past_its_memory_size_is_killed_and_reported_out_of_memory(pipeline_stack):
    result = runtime.invoke(f"{PREFIX}-probe-allocate", {})
    assert result.status == "out_of_memory", (result.status, result.payload)
    assert result.error["errorType"] == "Runtime.OutOfMemory"
    assert "Runtime exited" in result.error["errorMessage"] and "out of memory" in result.error["errorMessage"]
    assert PROBE_MEMORY_MB < result.max_rss_mb < 1024  # stopped long before its 1 GiB
    assert "Max Memory Used" in Path(result.log_path).read_text()


def test_a_failing_handler_reports_error_type_message_and_stack_trace(pipeline_stack):
    result = runtime.invoke(f"{PREFIX}-probe-fail", {})
    assert result.status == "error"
    assert result.error["errorType"] == "ValueError"
    assert result.error["errorMessage"] == "the probe failed on purpose"
    assert any("probe.py" in frame for frame in result.error["stackTrace"])
    assert "[ERROR] ValueError: the probe failed on purpose" in Path(result.log_path).read_text()


def test_invoke_many_fans_out_over_parallel_environments_and_keeps_the_order(pipeline_stack):
    events = [{"n": n} for n in range(4)]
    results = runtime.invoke_many(f"{PREFIX}-probe-echo", events, concurrency=2)
    assert [r.payload["event"] for r in results] == events
    assert len({r.request_id for r in results}) == 4 and all(r.ok for r in results)
    assert len({r.log_path for r in results}) == 4


def test_a_warm_environment_serves_the_next_invocation_and_a_failed_one_is_replaced(pipeline_stack):
    """As on Lambda: the cold start imports the handler once; the next invocation reuses the process, its
    module state and its log stream, with a log file, request id and Init-free REPORT of its own."""
    name = f"{PREFIX}-probe-echo"
    runtime.shutdown_environments()
    cold = runtime.invoke(name, {"n": 1})
    warm = runtime.invoke(name, {"n": 2})
    assert cold.ok and warm.ok, (cold.error, warm.error)
    assert cold.init_ms is not None and warm.init_ms is None
    assert warm.payload["pid"] == cold.payload["pid"]
    assert warm.payload["served"] == [cold.request_id, warm.request_id]
    assert warm.payload["context"]["log_stream_name"] == cold.payload["context"]["log_stream_name"]
    cold_log, warm_log = Path(cold.log_path).read_text(), Path(warm.log_path).read_text()
    assert f"echo for {cold.request_id}" in cold_log and warm.request_id not in cold_log
    assert warm_log.startswith(f"START RequestId: {warm.request_id}")
    assert f"echo for {warm.request_id}" in warm_log and "Init Duration" not in warm_log

    fresh = runtime.invoke(name, {"n": 3}, fresh=True)
    assert fresh.ok and fresh.init_ms is not None and fresh.payload["pid"] != cold.payload["pid"]

    # a timeout ends its environment: the next invocation of that function starts cold
    sleeper = f"{PREFIX}-probe-sleep"
    assert runtime.invoke(sleeper, {"seconds": 0}).ok
    assert runtime.invoke(sleeper, {"seconds": 60}).status == "timeout"
    after = runtime.invoke(sleeper, {"seconds": 0})
    assert after.ok and after.init_ms is not None
    runtime.shutdown_environments()
    assert not psutil.pid_exists(cold.payload["pid"]) or \
        psutil.Process(cold.payload["pid"]).status() == psutil.STATUS_ZOMBIE
