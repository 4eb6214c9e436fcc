"""`playbook cost`: each line of the estimate against figures worked out by hand for a small usage profile."""

from __future__ import annotations

import contextlib
import io
import json
import statistics
from decimal import Decimal

import psycopg2
import pytest

from playbook import cli, cost
from playbook.config import load_config
from playbook.templates import render_all

# a small profile: one function run a million and a half times a month for a second at 512 MB
PROFILE = (cost.Function("ingest-sales", 512, Decimal(1_500_000), Decimal(1), "given"),)
USAGE = cost.Usage(busy_acu_hours=Decimal(20), database_gb=Decimal(10), io_millions=Decimal(5), nat_gb=Decimal(5),
                   s3_gb=Decimal(10), logs_gb=Decimal(1))
# by hand, at playbook/prices/eu-west-2.yaml's prices (730 hours a month)
BY_HAND = {
    "Aurora Serverless v2": Decimal("53.90"),  # (0.5 x 730 + 20) ACU-hours x 0.14
    "Aurora storage and I/O": Decimal("2.20"),  # 10 x 0.11 + 5 x 0.22
    "NAT gateways": Decimal("36.75"),  # 730 x 0.050 + 5 x 0.050
    "public IPv4 addresses": Decimal("7.30"),  # 2 x 730 x 0.005 (the NAT gateway's and the proxy's)
    "the proxy's EC2": Decimal("11.458"),  # 730 x 0.0118 + 8 x 0.093 + 7 x 0.30
    "interface endpoints": Decimal("16.06"),  # Secrets Manager's, in 2 AZs: 2 x 730 x 0.011
    "Secrets Manager": Decimal("2.00"),  # master, ingest, reporting, monitor and one API source's: 5 x 0.40
    "KMS": Decimal("1.00"),
    # 750,000 GB-s less 400,000 free at 0.0000166667; 1,500,000 requests less 1,000,000 free at 0.20 a million
    "Lambda": Decimal("350000") * Decimal("0.0000166667") + Decimal("0.10"),
    "S3": Decimal("0.24"),  # 10 x 0.024
    "CloudWatch": Decimal("4.00"),  # 34 alarms x 0.10 + 1 GB x 0.60
}


@pytest.fixture(scope="module")
def templates():
    return render_all(load_config(), ["203.0.113.0/32"])


def test_each_line_is_the_hand_computed_figure(templates):
    assert sum(r["Type"] == "AWS::CloudWatch::Alarm" for r in templates["pipeline"]["Resources"].values()) == 34
    dep = cost.deployment(templates, functions=PROFILE)
    lines = cost.estimate(dep, USAGE, cost.load_prices())
    assert {line.part: line.amount for line in lines} == BY_HAND
    assert cost.total(lines) == sum(BY_HAND.values()) == Decimal("140.841345")


def test_the_provisioning_choices_change_their_lines(templates):
    prices = cost.load_prices()
    per_az = cost.deployment(templates, nat_gateways="per-az", functions=PROFILE)
    assert (per_az.nat_gateways, per_az.public_ipv4) == (2, 3)
    lines = {line.part: line.amount for line in cost.estimate(per_az, USAGE, prices)}
    assert lines["NAT gateways"] == Decimal("73.25") and lines["public IPv4 addresses"] == Decimal("10.95")
    fixed = cost.deployment(templates, cluster_mode="provisioned", functions=PROFILE)
    lines = {line.part: line.amount for line in cost.estimate(fixed, USAGE, prices)}
    assert "Aurora Serverless v2" not in lines and lines["Aurora instance"] == Decimal("59.86")  # 730 x 0.082
    variants = {v["variant"]: v for v in cost.variants(cost.deployment(templates, functions=PROFILE), USAGE, prices)}
    assert variants["a NAT gateway per AZ (--nat-gateways per-az)"]["difference"] == Decimal("40.15")  # 36.50 + 3.65
    assert variants["Aurora Serverless v2 scaling to zero (MinCapacity 0)"]["difference"] == Decimal("-51.10")
    assert variants["Secrets Manager through the NAT gateway instead of its endpoint"]["difference"] == \
        Decimal("-16.06")  # 2 x 730 x 0.011


def test_a_schedules_runs_are_a_years_occurrences_over_twelve():
    assert cost.runs_a_month("cron(30 5 * * ? *)", "Europe/London") == Decimal(365) / 12
    assert cost.runs_a_month("cron(0 6 1,15 * ? *)", "Europe/London") == 2
    assert cost.runs_a_month("cron(0 5 ? * MON *)", "Europe/London") == Decimal(52) / 12  # 2025 has 52 Mondays
    assert cost.runs_a_month("rate(1 hour)", "UTC") == Decimal(365 * 24) / 12
    assert cost.runs_a_month(None, "UTC") == 0


def test_a_type_missing_from_the_price_table_is_named(templates):
    dep = cost.deployment(templates, cluster_mode="provisioned")
    with pytest.raises(cost.PlaybookError, match=r"playbook/prices/eu-west-2.yaml: no aurora_instance_hour price "
                                                  r"for 'db.x2g.large'; add it"):
        cost.estimate(cost.replace(dep, instance_class="db.x2g.large"), USAGE, cost.load_prices())
    with pytest.raises(cost.PlaybookError, match="no price table for mars-east-1"):
        cost.load_prices("mars-east-1")


@pytest.fixture()
def two_sales_loads(stack):
    """Two loads of the sales source in the ledger, of 3.5 s and 6.25 s; removed after."""
    with psycopg2.connect(stack["database_url"]) as conn, conn.cursor() as cur:
        ids = []
        for seconds in ("3.5", "6.25"):
            cur.execute("insert into meta.batches (source, source_kind, target_table, source_ref, status, rows_read, "
                        "rows_inserted, started_at, finished_at) values ('sales', 's3_csv', 'sales', %s, 'committed', "
                        "0, 0, now() - interval '1 hour', now() - interval '1 hour' + %s * interval '1 second') "
                        "returning batch_id", (f"s3://landing/cost-test/{seconds}.csv", seconds))
            ids.append(cur.fetchone()[0])
    yield
    with psycopg2.connect(stack["database_url"]) as conn, conn.cursor() as cur:
        cur.execute("delete from meta.batches where batch_id = any(%s)", (ids,))
    conn.close()


@pytest.mark.stack
def test_the_command_reads_the_ledger_and_writes_the_estimate(stack, two_sales_loads, tmp_path):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["cost", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "cost.json").read_text())
    assert f"about ${data['month']:,.2f} a month on AWS (eu-west-2" in printed.getvalue()
    assert round(sum(line["month"] for line in data["lines"]), 2) == pytest.approx(data["month"], abs=0.06)
    # each function's seconds a run: the ledger's mean of its source's loads, computed here from the rows
    with psycopg2.connect(stack["database_url"]) as conn, conn.cursor() as cur:
        cur.execute("select source, started_at, finished_at from meta.batches where finished_at is not null")
        rows = cur.fetchall()
        cur.execute("select pg_database_size(current_database())")
        (size,) = cur.fetchone()
    conn.close()
    by_source: dict[str, list[float]] = {}
    for source, started, finished in rows:
        by_source.setdefault(f"ingest-{source.replace('_', '-')}", []).append((finished - started).total_seconds())
    functions = {f["name"]: f for f in data["functions"]}
    assert set(functions) >= {"ingest-sales", "refresh-marts", "send-expense-email", "migrate"}
    assert "ingest-sales" in by_source and functions["migrate"]["seconds_from"] == "5 s assumed"
    for name, f in functions.items():
        if name in by_source:
            assert float(f["seconds"]) == pytest.approx(statistics.mean(by_source[name]), abs=0.001)
            assert f["seconds_from"] == "the ledger's average"
    assert float(data["usage"]["database_gb"]) == pytest.approx(size / 1024 ** 3, abs=0.011)
    md = (tmp_path / "cost.md").read_text()
    assert "| **total** | |" in md and "Not counted:" in md and "## Cheaper or safer variants" in md
    assert "GB in the database" not in md.split("Assumed, not measured:")[1].split("\n")[0]
