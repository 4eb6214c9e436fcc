"""Faults mid-batch: a killed process, a killed connection, two deliveries at once. Nothing half-loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psycopg2

ROWS = 150_000
HEADER = "Order No,Line,Order Date,Client Code,Product,Qty,Unit Price,Line Total,Currency\n"


def big_sales(rows: int = ROWS) -> bytes:
    lines = [HEADER] + [f"SO-{i},1,2024-01-{1 + i % 28:02d},{i % 300:05d},Widget,1,1.25,1.25,GBP\n"
                        for i in range(rows)]
    return "".join(lines).encode()


def start_handler(landing, key: str, name: str) -> subprocess.Popen:
    code = ("import json, sys; from pipeline.handlers.ingest_object import handler; "
            f"print(json.dumps(handler({{'bucket': {landing.bucket!r}, 'key': {key!r}}}), default=str))")
    env = {**os.environ, "AWS_LAMBDA_FUNCTION_NAME": name}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_copy(landing, name: str, proc: subprocess.Popen, timeout: float = 60) -> int:
    """The backend pid of the handler's connection once its COPY is running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the handler ended before its COPY was seen: {proc.communicate()}"
        rows = landing.query("select pid from pg_stat_activity where application_name = %s and state = 'active' "
                             "and query ilike 'copy%%'", (name,))
        if rows:
            return rows[0][0]
        time.sleep(0.01)
    raise AssertionError("the COPY never started")


def committed(landing, key: str) -> list[tuple]:
    return landing.query("select batch_id, rows_inserted from meta.batches where object_key = %s "
                         "and status = 'committed'", (key,))


def test_sigkill_mid_copy_leaves_nothing_and_a_rerun_converges(landing):
    key = "landing/sales/2024/big-kill.csv"
    landing.put(key, big_sales())
    name = f"kill-{uuid.uuid4().hex[:6]}"
    proc = start_handler(landing, key, name)
    wait_for_copy(landing, name, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    time.sleep(0.5)
    assert committed(landing, key) == []
    assert landing.query("select count(*) from core.sales") == [(0,)]
    rerun = landing.ingest(key)
    assert rerun["rows_inserted"] == ROWS and len(committed(landing, key)) == 1


def test_connection_terminated_mid_batch_leaves_nothing_and_a_rerun_converges(landing):
    key = "landing/sales/2024/big-terminate.csv"
    landing.put(key, big_sales())
    name = f"term-{uuid.uuid4().hex[:6]}"
    proc = start_handler(landing, key, name)
    pid = wait_for_copy(landing, name, proc)
    assert landing.query("select pg_terminate_backend(%s)", (pid,)) == [(True,)]
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "terminat" in err.lower()
    assert committed(landing, key) == [] and landing.query("select count(*) from core.sales") == [(0,)]
    assert landing.ingest(key)["rows_inserted"] == ROWS
    assert landing.ingest(key)["status"] == "already_loaded"


def test_two_concurrent_deliveries_of_one_object_make_one_batch(landing):
    key = "landing/sales/2024/twice.csv"
    landing.put(key, big_sales(50_000))
    procs = [start_handler(landing, key, f"twin-{i}-{uuid.uuid4().hex[:4]}") for i in range(2)]
    outputs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    statuses = sorted(o["results"][0]["status"] for o in outputs)
    assert statuses == ["already_loaded", "committed"]
    assert [r[1] for r in committed(landing, key)] == [50_000]
    assert landing.query("select count(*) from core.sales") == [(50_000,)]
    with psycopg2.connect(landing.database_url) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from meta.batches where object_key = %s", (key,))
        assert cur.fetchone() == (1,)
