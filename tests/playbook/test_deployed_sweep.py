"""Scheduled firings of the file sources as deployed: each sweeps its landing prefix and loads what no
notification brought, oldest first; an empty sweep succeeds; a file whose content already failed is left for
its sender; a sweep cut short by the function's time leaves the rest for the next one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import boto3
import pytest

from tests.playbook.deployed import PREFIX, demo_accounting_system

pytestmark = pytest.mark.stack

# 15 May 2024 (a Wednesday, the 15th: payments are due) in London: interactions at 05:00, sales at 05:30,
# payments at 06:00 BST, i.e. 04:00, 04:30 and 05:00 UTC
FROM, TO = "2024-05-15T03:55:00Z", "2024-05-15T05:05:00Z"
SALES_HEADER = "Order No,Line,Order Date,Client Code,Product,Qty,Unit Price,Line Total,Currency\n"


def schedule_run() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "playbook", "schedule", "run", "--from", FROM, "--to", TO],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PLAYBOOK_STACK_PREFIX": PREFIX})


def payments_workbook(ref: str) -> bytes:
    from tests.pipeline.test_ingest_excel import payment, workbook

    return workbook({"Payments - Barclays": [payment(ref, 12.07)]})


def committed(database_url: str, keys: list[str]) -> dict[str, int]:
    import psycopg2

    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("select object_key, rows_inserted from meta.batches where status = 'committed' "
                    "and object_key = any(%s)", (keys,))
        return dict(cur.fetchall())


def test_scheduled_sweeps_load_what_no_notification_brought(pipeline_stack, stack):
    from playbook.deploy import deploy
    from playbook.targets import LocalTarget

    deploy(LocalTarget())  # this lambda_src, on every function of the provisioned pipeline
    bucket = pipeline_stack["LandingBucketName"]
    run = uuid.uuid4().hex[:8]
    s3 = boto3.client("s3")
    sales_keys = [f"landing/sales/sweep-{run}-{n}.csv" for n in (1, 2)]
    for n, key in enumerate(sales_keys, start=1):  # uploaded straight to S3: no notification plays its part
        s3.put_object(Bucket=bucket, Key=key, Body=(SALES_HEADER + f"SW-{run}-{n},1,2024-05-14,00042,Widget,1,"
                                                    "12.07,12.07,GBP\n").encode())
    payments_key = f"landing/payments/sweep-{run}.xlsx"
    s3.put_object(Bucket=bucket, Key=payments_key, Body=payments_workbook(f"PAY-{run}"))
    broken_key = f"landing/sales/sweep-{run}-broken.csv"
    s3.put_object(Bucket=bucket, Key=broken_key, Body=(SALES_HEADER + 'SW-B,1,2024-05-14,00042,"Widget,1\n').encode())

    with demo_accounting_system(stack["database_url"]):  # the trade invoices' API, on the same schedule
        fired = schedule_run()
        assert fired.returncode == 0, fired.stdout + fired.stderr
        for name in ("ingest-interactions", "ingest-sales", "ingest-trade-invoices", "ingest-payments"):
            assert re.search(rf"  {PREFIX}-{name} +lambda {PREFIX}-{name}  ok$", fired.stdout, re.M), fired.stdout
        assert "4 firings, 0 failed" in fired.stdout  # the interactions sweep found nothing: a success
        assert committed(stack["database_url"], [*sales_keys, payments_key]) == {
            sales_keys[0]: 1, sales_keys[1]: 1, payments_key: 1}
        assert committed(stack["database_url"], [broken_key]) == {}  # its failure is in the ledger

        # the same firings again: everything is loaded, the broken file (its content unchanged) is left alone
        again = schedule_run()
        assert again.returncode == 0 and "4 firings, 0 failed" in again.stdout, again.stdout + again.stderr
    import psycopg2

    with psycopg2.connect(stack["database_url"]) as conn, conn.cursor() as cur:
        cur.execute("select object_key, status from meta.batches where object_key = any(%s) order by batch_id",
                    ([*sales_keys, payments_key, broken_key],))
        attempts = cur.fetchall()
    assert sorted(attempts) == sorted([(k, "committed") for k in [*sales_keys, payments_key]]
                                      + [(broken_key, "failed")])


def test_a_sweep_leaves_what_its_time_does_not_allow_for_the_next_one(stack, monkeypatch):
    """The sweep itself, in this process: with no time left it starts nothing and names what is left."""
    import psycopg2

    from pipeline.handlers.ingest_object import sweep
    from playbook.config import load_config
    from playbook.warehouse import ensure_role_logins

    bucket = f"sweep-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": os.environ["AWS_DEFAULT_REGION"]})
    s3.put_object(Bucket=bucket, Key="landing/sales/a.csv", Body=SALES_HEADER.encode())
    monkeypatch.setenv("LANDING_BUCKET", bucket)
    conn = psycopg2.connect(ensure_role_logins(stack["database_url"])["pipeline_ingest"])
    try:
        summary = sweep(conn, load_config(), "sales", lambda: 1.0, None)
    finally:
        conn.close()
    assert summary["objects"] == 0 and summary["left_for_next_sweep"] == ["landing/sales/a.csv"]
