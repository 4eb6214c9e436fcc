"""`playbook cost`: what the deployment would cost a month on AWS, before anything is deployed.

The estimate reads three things, each kept apart so a line can be checked by hand:
- **what is deployed**, from the rendered templates (playbook.templates.render_all) and the provisioning
  choices: the cluster's mode and capacity, the NAT gateways and public addresses, the proxy's instance and
  disk, the interface endpoints, the functions and their memory, the secrets, keys and alarms;
- **how much it is used**: the functions' runs a month from their schedules (a year of occurrences / 12) and
  their seconds per run from the ledger (meta.batches: the average load of each source; the marts' refresh
  from meta.mart_refreshes), the database's size from the database itself; what the ledger cannot know
  (I/Os, NAT and S3 gigabytes, log volume, the cluster's busy ACU-hours) is an assumption of `Usage`, stated
  in the output;
- **the prices**: playbook/prices/<region>.yaml, one region and one date, USD before VAT.

Not counted: data transfer out to BI tools (the first 100 GB a month are free), SES, SQS, SNS, EventBridge
Scheduler and S3 requests (cents at an SME's scale), backups within the retention (free up to the cluster's
size), support plans, taxes. It writes cost.md and cost.json, with cheaper variants and their trade-offs.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from playbook.errors import PlaybookError

CENT = Decimal("0.01")
DEFAULT_REGION = "eu-west-2"
# the seconds of a run the ledger has none for (a function that has not run yet)
DEFAULT_RUN_SECONDS = Decimal(5)


# -- the three inputs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prices:
    region: str
    as_of: str
    currency: str
    hours: Decimal  # a month's hours
    table: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.table[key]

    def of(self, key: str, kind: str) -> Decimal:
        """A price by instance type or class, naming the file when the type is not in it."""
        try:
            return Decimal(self.table[key][kind])
        except KeyError:
            raise PlaybookError(f"playbook/prices/{self.region}.yaml: no {key} price for {kind!r}; add it") from None


def load_prices(region: str = DEFAULT_REGION) -> Prices:
    try:
        text = files("playbook").joinpath("prices", f"{region}.yaml").read_text()
    except FileNotFoundError:
        raise PlaybookError(f"no price table for {region}: copy playbook/prices/{DEFAULT_REGION}.yaml to "
                            f"{region}.yaml with that region's prices") from None
    data = yaml.safe_load(text)
    table = {k: (Decimal(v) if isinstance(v, str) else {t: Decimal(p) for t, p in v.items()})
             for k, v in data["prices"].items()}
    return Prices(data["region"], str(data["as_of"]), data["currency"], Decimal(data["hours_per_month"]), table)


@dataclass(frozen=True)
class Function:
    name: str
    memory_mb: int
    runs: Decimal  # a month
    seconds: Decimal  # a run, on average
    seconds_from: str  # where `seconds` comes from, in words


@dataclass(frozen=True)
class Deployment:
    """What the templates deploy, as the estimate counts it."""

    cluster_mode: str  # serverless | provisioned
    min_acu: Decimal
    max_acu: Decimal
    instance_class: str
    nat_gateways: int
    public_ipv4: int  # Elastic IPs: the NAT gateways' and the proxy's
    proxy_instance: str
    proxy_disk_gb: int
    proxy_detailed_monitoring: bool
    interface_endpoint_azs: int  # interface endpoints × the subnets (AZs) each sits in
    secrets: int
    kms_keys: int
    alarms: int
    functions: tuple[Function, ...] = ()


@dataclass(frozen=True)
class Usage:
    """What the ledger cannot say, per month (the defaults: an SME of the demo company's scale)."""

    busy_acu_hours: Decimal = Decimal(20)  # above the floor: loads, refreshes, reports
    database_gb: Decimal = Decimal(10)
    io_millions: Decimal = Decimal(5)
    nat_gb: Decimal = Decimal(5)  # REST API pages, package downloads: S3 goes through its free gateway endpoint
    s3_gb: Decimal = Decimal(10)
    logs_gb: Decimal = Decimal(1)
    measured: tuple[str, ...] = field(default_factory=tuple)  # which of these the warehouse settled


def deployment(templates: dict[str, dict], *, nat_gateways: str = "single", cluster_mode: str = "serverless",
               functions: tuple[Function, ...] = ()) -> Deployment:
    """The billable parts of the rendered templates, with the provisioning choices applied."""
    network, database, proxy, pipeline = (templates[n] for n in ("network", "database", "proxy", "pipeline"))
    conditions = {"NatPerAz": nat_gateways == "per-az", "Serverless": cluster_mode == "serverless"}

    def present(template: dict, kind: str) -> list[dict]:
        return [r for r in template["Resources"].values()
                if r["Type"] == kind and conditions.get(r.get("Condition"), True)]

    db_params = database["Parameters"]
    [host] = present(proxy, "AWS::EC2::Instance")
    disk = sum(m["Ebs"]["VolumeSize"] for m in host["Properties"].get("BlockDeviceMappings", []) if "Ebs" in m)
    endpoints = [e for e in present(network, "AWS::EC2::VPCEndpoint")
                 if e["Properties"].get("VpcEndpointType") == "Interface"]
    # the cluster's master secret (RDS makes it), the ingest, reporting and monitor logins (provisioning makes
    # them), one per REST source that signs in (its function's policy reads it), and any the templates declare
    signing_in = json.dumps(pipeline).count('"ReadOwnApiSecret"')
    secrets = 4 + signing_in + sum(len(present(t, "AWS::SecretsManager::Secret")) for t in templates.values())
    return Deployment(
        cluster_mode=cluster_mode, min_acu=Decimal(str(db_params["MinCapacity"]["Default"])),
        max_acu=Decimal(str(db_params["MaxCapacity"]["Default"])), instance_class=db_params["InstanceClass"]["Default"],
        nat_gateways=len(present(network, "AWS::EC2::NatGateway")),
        public_ipv4=sum(len(present(t, "AWS::EC2::EIP")) for t in templates.values()),
        proxy_instance=proxy["Parameters"]["InstanceType"]["Default"], proxy_disk_gb=disk,
        proxy_detailed_monitoring=bool(host["Properties"].get("Monitoring")),
        interface_endpoint_azs=sum(len(e["Properties"].get("SubnetIds", [])) for e in endpoints),
        secrets=secrets, kms_keys=sum(len(present(t, "AWS::KMS::Key")) for t in templates.values()),
        alarms=sum(len(present(t, "AWS::CloudWatch::Alarm")) for t in templates.values()),
        functions=functions)


def runs_a_month(expression: str | None, timezone: str) -> Decimal:
    """A schedule's runs in an average month: a year's occurrences / 12 (a fixed year: the figure does not
    depend on the day it is asked)."""
    from pipeline.schedules import occurrences

    if not expression:
        return Decimal(0)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return Decimal(len(occurrences(expression, timezone, start, start + timedelta(days=365)))) / 12


def functions_of(config, conn=None) -> tuple[Function, ...]:
    """The pipeline's functions with their runs a month and seconds a run (from the ledger when `conn`)."""
    from playbook.templates import jobs

    seconds: dict[str, Decimal] = {}
    if conn is not None:
        with conn.cursor() as cur:
            cur.execute("select source, avg(extract(epoch from finished_at - started_at))::numeric(12, 3) "
                        "from meta.batches where finished_at is not null group by source")
            seconds.update({f"ingest-{s.replace('_', '-')}": v for s, v in cur.fetchall()})
            cur.execute("select avg(seconds)::numeric(12, 3) from (select sum(extract(epoch from finished_at - "
                        "started_at)) seconds from meta.mart_refreshes where finished_at is not null "
                        "group by run_id) r")
            (refresh,) = cur.fetchone()
            if refresh is not None:
                seconds["refresh-marts"] = refresh
    result = []
    for job in jobs(config):
        found = seconds.get(job.name)
        result.append(Function(job.name, job.memory, runs_a_month(job.schedule, config.company.timezone),
                               found if found is not None else DEFAULT_RUN_SECONDS,
                               "the ledger's average" if found is not None else f"{DEFAULT_RUN_SECONDS} s assumed"))
    return tuple(result)


# -- the estimate ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Line:
    part: str
    billed: str
    amount: Decimal


def estimate(dep: Deployment, usage: Usage, prices: Prices) -> list[Line]:
    """The month's bill, line by line, in the price table's currency (unrounded: rounded when shown)."""
    h = prices.hours
    lines = []
    if dep.cluster_mode == "serverless":
        acu_hours = dep.min_acu * h + usage.busy_acu_hours
        lines.append(Line("Aurora Serverless v2", f"{acu_hours} ACU-hours ({dep.min_acu} ACU floor x {h} h + "
                          f"{usage.busy_acu_hours} busy)", acu_hours * prices["aurora_acu_hour"]))
    else:
        lines.append(Line("Aurora instance", f"{dep.instance_class}, {h} h",
                          h * prices.of("aurora_instance_hour", dep.instance_class)))
    lines.append(Line("Aurora storage and I/O", f"{usage.database_gb} GB-months, {usage.io_millions} million I/Os",
                      usage.database_gb * prices["aurora_storage_gb_month"]
                      + usage.io_millions * prices["aurora_io_million"]))
    lines.append(Line("NAT gateways", f"{dep.nat_gateways} x {h} h, {usage.nat_gb} GB processed",
                      dep.nat_gateways * h * prices["nat_gateway_hour"] + usage.nat_gb * prices["nat_gateway_gb"]))
    lines.append(Line("public IPv4 addresses", f"{dep.public_ipv4} x {h} h", dep.public_ipv4 * h
                      * prices["public_ipv4_hour"]))
    metrics = 7 if dep.proxy_detailed_monitoring else 0
    lines.append(Line("the proxy's EC2", f"{dep.proxy_instance} {h} h, {dep.proxy_disk_gb} GB gp3, {metrics} "
                      "detailed-monitoring metrics", h * prices.of("ec2_instance_hour", dep.proxy_instance)
                      + dep.proxy_disk_gb * prices["ebs_gp3_gb_month"]
                      + metrics * prices["ec2_detailed_monitoring_metric_month"]))
    lines.append(Line("interface endpoints", f"{dep.interface_endpoint_azs} endpoint-AZs x {h} h",
                      dep.interface_endpoint_azs * h * prices["interface_endpoint_az_hour"]))
    lines.append(Line("Secrets Manager", f"secrets: {dep.secrets}", dep.secrets * prices["secret_month"]))
    lines.append(Line("KMS", f"keys: {dep.kms_keys}", dep.kms_keys * prices["kms_key_month"]))
    gb_seconds = sum((f.runs * f.seconds * Decimal(f.memory_mb) / 1024 for f in dep.functions), Decimal(0))
    requests = sum((f.runs for f in dep.functions), Decimal(0))
    billed_gbs = max(Decimal(0), gb_seconds - prices["lambda_free_gb_seconds"])
    billed_requests = max(Decimal(0), requests - prices["lambda_free_requests"])
    lines.append(Line("Lambda", f"{gb_seconds.quantize(CENT)} GB-s, {requests.quantize(CENT)} requests (free tier: "
                      f"{prices['lambda_free_gb_seconds']} GB-s, {prices['lambda_free_requests']} requests)",
                      billed_gbs * prices["lambda_gb_second"]
                      + billed_requests / 1_000_000 * prices["lambda_request_million"]))
    lines.append(Line("S3", f"{usage.s3_gb} GB-months", usage.s3_gb * prices["s3_gb_month"]))
    lines.append(Line("CloudWatch", f"{dep.alarms} alarms, {usage.logs_gb} GB of logs",
                      dep.alarms * prices["cloudwatch_alarm_month"] + usage.logs_gb * prices["cloudwatch_logs_gb"]))
    return lines


def total(lines: list[Line]) -> Decimal:
    return sum((line.amount for line in lines), Decimal(0))


def variants(dep: Deployment, usage: Usage, prices: Prices) -> list[dict[str, Any]]:
    """Other ways to deploy the same pipeline: each one's month and what it trades."""
    base = total(estimate(dep, usage, prices))
    options = []
    if dep.nat_gateways == 1:
        options.append(("a NAT gateway per AZ (--nat-gateways per-az)",
                        replace(dep, nat_gateways=2, public_ipv4=dep.public_ipv4 + 1),
                        "the functions keep reaching REST APIs when one AZ fails; twice the NAT hours"))
    if dep.cluster_mode == "serverless" and dep.min_acu > 0:
        options.append(("Aurora Serverless v2 scaling to zero (MinCapacity 0)", replace(dep, min_acu=Decimal(0)),
                        "the cluster pauses when idle; the first query after a pause waits about 15 s, so the "
                        "08:00 email and a BI user's first click may wait"))
    if dep.cluster_mode == "serverless":
        options.append(("a provisioned db.t4g.medium writer (--cluster-mode provisioned)",
                        replace(dep, cluster_mode="provisioned", instance_class="db.t4g.medium"),
                        "a fixed price and no scaling; 4 GB of memory for every query"))
    if dep.interface_endpoint_azs:
        options.append(("Secrets Manager through the NAT gateway instead of its endpoint",
                        replace(dep, interface_endpoint_azs=0),
                        "cheaper; the functions' secret reads leave the VPC through the NAT gateway (still TLS)"))
    months = [(name, total(estimate(d, usage, prices)), why) for name, d, why in options]
    return [{"variant": name, "month": month, "difference": month - base, "trade_off": why}
            for name, month, why in months]


# -- output ----------------------------------------------------------------------------------------------------
def cents(amount: Decimal) -> Decimal:
    """An amount to the cent, half up: cost.md and cost.json round alike."""
    return amount.quantize(CENT, ROUND_HALF_UP)


def money(amount: Decimal) -> str:
    return f"${cents(amount):,}"


def write(out: Path, dep: Deployment, usage: Usage, prices: Prices) -> Decimal:
    """cost.md and cost.json in `out`; the month's total."""
    lines = estimate(dep, usage, prices)
    month = total(lines)
    others = variants(dep, usage, prices)
    out.mkdir(parents=True, exist_ok=True)
    data = {"region": prices.region, "prices_as_of": prices.as_of, "currency": prices.currency,
            "month": float(cents(month)),
            "lines": [{"part": line.part, "billed": line.billed, "month": float(cents(line.amount))}
                      for line in lines],
            "deployment": {k: (str(v) if isinstance(v, Decimal) else v) for k, v in asdict(dep).items()
                           if k != "functions"},
            "functions": [{**asdict(f), "runs": str(f.runs.quantize(CENT)), "seconds": str(f.seconds)}
                          for f in dep.functions],
            "usage": {k: (str(v) if isinstance(v, Decimal) else v) for k, v in asdict(usage).items()},
            "variants": [{**v, "month": float(cents(v["month"])), "difference": float(cents(v["difference"]))}
                         for v in others]}
    (out / "cost.json").write_text(json.dumps(data, indent=2) + "\n")
    words = {"busy_acu_hours": "ACU-hours above the floor", "database_gb": "GB in the database",
             "io_millions": "million I/Os", "nat_gb": "GB through the NAT gateway", "s3_gb": "GB in S3",
             "logs_gb": "GB of logs"}
    assumed = [k for k in words if k not in usage.measured]
    md = [f"# What it costs a month on AWS ({prices.region})", "",
          f"On-demand list prices of {prices.as_of} in {prices.currency}, before VAT "
          f"(playbook/prices/{prices.region}.yaml); confirm them in the AWS Pricing Calculator before quoting.", "",
          "| part | what is billed | a month |", "| --- | --- | ---: |",
          *(f"| {line.part} | {line.billed} | {money(line.amount)} |" for line in lines),
          f"| **total** | | **{money(month)}** |", "",
          "Assumed, not measured: " + ", ".join(f"{getattr(usage, k)} {words[k]}" for k in assumed)
          + ". The functions' runs come from their schedules, their seconds from the ledger where it has them.", "",
          "Not counted: data out to BI tools (the first 100 GB a month are free), SES, SQS, SNS, EventBridge "
          "Scheduler, S3 requests, backups within the retention, support, taxes.", "",
          "## Cheaper or safer variants", "", "| variant | a month | difference | trade-off |",
          "| --- | ---: | ---: | --- |",
          *(f"| {v['variant']} | {money(v['month'])} | {'+' if v['difference'] >= 0 else '-'}"
            f"{money(abs(v['difference']))} | {v['trade_off']} |" for v in others), ""]
    (out / "cost.md").write_text("\n".join(md))
    return month


def measured_usage(conn) -> Usage:
    """The defaults, with the database's size as the warehouse holds it (Aurora bills the storage used)."""
    with conn.cursor() as cur:
        cur.execute("select pg_database_size(current_database())")
        (size,) = cur.fetchone()
    return Usage(database_gb=(Decimal(size) / 1024 ** 3).quantize(CENT, ROUND_CEILING), measured=("database_gb",))


def estimate_for(config, target, out: Path, *, region: str = DEFAULT_REGION, nat_gateways: str = "single",
                 cluster_mode: str = "serverless") -> tuple[Decimal, Prices]:
    """cost.md and cost.json in `out` for this company's deployment, its usage read from the target's ledger;
    returns the month's total and the prices used. `playbook cost` and the reports stage both call it."""
    import psycopg2

    from playbook.templates import render_all

    prices = load_prices(region)
    conn = psycopg2.connect(target.database_url(), connect_timeout=10, application_name="playbook cost")
    try:
        functions = functions_of(config, conn)
        usage = measured_usage(conn)
    finally:
        conn.close()
    dep = deployment(render_all(config, ["203.0.113.0/32"]), nat_gateways=nat_gateways, cluster_mode=cluster_mode,
                     functions=functions)
    return write(out, dep, usage, prices), prices


def cmd_cost(args: argparse.Namespace) -> int:
    from playbook.config import load_config
    from playbook.settings import reports_root
    from playbook.targets import resolve_target

    out = Path(args.out) if args.out else reports_root() / "cost"
    month, prices = estimate_for(load_config(args.config), resolve_target(args.target), out, region=args.region,
                                 nat_gateways=args.nat_gateways, cluster_mode=args.cluster_mode)
    print(f"about {money(month)} a month on AWS ({prices.region}, prices of {prices.as_of}); "
          f"{out / 'cost.md'} and cost.json")
    return 0


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("cost", help="the monthly AWS bill of this deployment, from its templates, the "
                                           "ledger's usage and a price table (cost.md, cost.json)")
    p.add_argument("--target", choices=("local", "aws"), default="local", help="whose ledger gives the usage")
    p.add_argument("--config", help="configuration file (default: $PLAYBOOK_CONFIG or playbook.yaml)")
    p.add_argument("--region", default=DEFAULT_REGION, help="the price table: playbook/prices/<region>.yaml")
    p.add_argument("--nat-gateways", choices=("single", "per-az"), default="single")
    p.add_argument("--cluster-mode", choices=("serverless", "provisioned"), default="serverless")
    p.add_argument("--out", help="folder for cost.md and cost.json (default: reports/cost/)")
    p.set_defaults(func=cmd_cost)
