"""Faults mid-batch: a killed process, a killed connection, two deliveries at once. Nothing half-loads."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile

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


def test_connection_terminated_mid_batch_leaves_nothing_and_a_rerun_converges(landing):
    """The attempt is a failed row whose reason a person reads ("the database connection was lost"), written
    on a new connection since its own is gone; a rerun loads the file whole."""
    key = "landing/sales/2024/big-terminate.csv"
    landing.put(key, big_sales())
    name = f"term-{uuid.uuid4().hex[:6]}"
    proc = start_handler(landing, key, name)
    pid = wait_for_copy(landing, name, proc)
    assert landing.query("select pg_terminate_backend(%s)", (pid,)) == [(True,)]
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "database connection was lost" in err
    assert committed(landing, key) == [] and landing.query("select count(*) from core.sales") == [(0,)]
    [(status, error)] = attempts(landing, key)
    assert status == "failed" and error.startswith(f"{key}: the database connection was lost during the load")
    assert error.endswith("nothing was committed") and "\x00" not in error
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


def attempts(landing, key: str) -> list[tuple]:
    return landing.query("select status, error from meta.batches where object_key = %s order by batch_id", (key,))


def test_sigkill_mid_copy_leaves_nothing_but_its_attempt_and_a_rerun_converges(landing):
    """Killed mid-COPY, nothing of the batch is left but its attempt's started row (its transaction is gone);
    once its expiry passes it is abandoned, which failed_batches reports until a later batch loads the file."""
    from playbook.accuracy import ledger

    key = "landing/sales/2024/big-abandoned.csv"
    landing.put(key, big_sales())
    name = f"abandon-{uuid.uuid4().hex[:6]}"
    proc = start_handler(landing, key, name)
    wait_for_copy(landing, name, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    time.sleep(0.5)
    assert committed(landing, key) == [] and landing.query("select count(*) from core.sales") == [(0,)]
    assert attempts(landing, key) == [("started", None)]
    # the function's time is up (a handler without a deadline expires after Lambda's 15 minutes, and a margin)
    assert landing.query("select expires_at - started_at > interval '15 minutes' from meta.batches "
                         "where object_key = %s", (key,)) == [(True,)]
    landing.query("update meta.batches set expires_at = clock_timestamp() - interval '1 second' "
                  "where object_key = %s returning 1", (key,))
    with psycopg2.connect(landing.database_url) as conn, conn.cursor() as cur:
        found = ledger.failed_batches(cur, landing.config, landing.config.accuracy)
    assert [f["file"] for r in found for f in r.findings] == [key]
    assert "stopped before it finished" in found[[r.subject for r in found].index("sales")].findings[0]["error"]
    rerun = landing.ingest(key)  # the next attempt marks it abandoned and loads the file
    assert rerun["rows_inserted"] == ROWS and len(committed(landing, key)) == 1
    assert [s for s, _ in attempts(landing, key)] == ["abandoned", "committed"]
    with psycopg2.connect(landing.database_url) as conn, conn.cursor() as cur:
        assert all(not r.findings for r in ledger.failed_batches(cur, landing.config, landing.config.accuracy))


def damaged_workbook() -> bytes:
    """A workbook whose directory is whole but whose sheet is not: its local header's signature is gone, as a
    transfer that garbled a few bytes leaves it (zipfile: 'Bad magic number for file header')."""
    from tests.pipeline.test_ingest_excel import payment, workbook

    body = bytearray(workbook({"Payments - Barclays": [payment("P-1", 1.0)]}))
    at = zipfile.ZipFile(io.BytesIO(bytes(body))).getinfo("xl/worksheets/sheet1.xml").header_offset
    body[at:at + 4] = b"XXXX"
    return bytes(body)


def test_each_object_of_an_event_has_its_own_outcome_and_ledger_row(landing):
    """A corrupt workbook between two good files: the two load, the workbook fails with its own ledger row and
    a reason in words, and the invocation fails so the event is retried (the loaded two then answer
    already_loaded)."""
    import pytest

    from pipeline.handlers.ingest_object import IngestFailed, handler

    good = b"Order No,Line,Order Date,Client Code,Product,Qty,Unit Price,Line Total,Currency\n" \
           b"SO-1,1,2024-01-05,00042,Widget,1,1.00,1.00,GBP\n"
    landing.put("landing/sales/2024/one.csv", good)
    landing.put("landing/payments/2024/broken.xlsx", damaged_workbook())
    landing.put("landing/sales/2024/three.csv", good.replace(b"SO-1", b"SO-3"))
    event = {"objects": [{"bucket": landing.bucket, "key": k} for k in (
        "landing/sales/2024/one.csv", "landing/payments/2024/broken.xlsx", "landing/sales/2024/three.csv")]}
    with pytest.raises(IngestFailed, match="broken.xlsx, sheet 'Payments - Barclays': the workbook is damaged"):
        handler(event)
    rows = landing.query("select object_key, status, error from meta.batches order by batch_id")
    assert [(k.rsplit("/", 1)[1], s) for k, s, _ in rows] == [
        ("one.csv", "committed"), ("broken.xlsx", "failed"), ("three.csv", "committed")]
    assert "open it in Excel, save it as .xlsx" in rows[1][2]
    assert "magic" not in rows[1][2] and "Error" not in rows[1][2]
    assert landing.query("select count(*) from core.sales") == [(2,)]


def test_a_utf16_file_without_its_mark_fails_with_the_setting_to_add(landing):
    key = "landing/sales/2024/unicode.txt"
    body = "Order No\tLine\n".encode("utf-16-le")
    import pytest

    from pipeline.sources import LoadError

    with pytest.raises(LoadError, match="looks like UTF-16 text.*read.encoding: utf-16le"):
        landing.ingest(key, body)
    [(status, error)] = attempts(landing, key)
    assert status == "failed" and "\x00" not in error and "read.encoding: utf-16le" in error
