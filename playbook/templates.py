"""The CloudFormation templates: the files in infra/cloudformation/, rendered for one company.

Storage and database are deployed as written. The network, pipeline and proxy templates are base files the
configuration completes: the functions' egress to the REST sources' ports; one ingest function per source
(with its schedule and, for file sources, its landing-prefix notification), the marts refresh, the expense
email and migrate; and one proxy ingress rule per allow-listed CIDR with the nginx configuration in the
proxy instance's AWS::CloudFormation::Init metadata (applied again by cfn-hup when it changes).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from pipeline.config import EmailReport, PipelineConfig
from pipeline.schedules import occurrences
from pipeline.sources.kinds import API_PAGES_PREFIX, DRY_RUN_PREFIX, source_kind
from playbook.errors import PlaybookError
from playbook.settings import PROJECT_ROOT, names_this_machine

TEMPLATE_DIR = PROJECT_ROOT / "infra" / "cloudformation"
NGINX_TEMPLATE = PROJECT_ROOT / "infra" / "nginx" / "stream.conf.template"
STACKS = ("storage", "network", "database", "pipeline", "proxy")
RUNTIME = "python3.12"
HANDLERS = {  # the ingest functions' handlers are their source kinds' (pipeline.sources.kinds)
    "refresh_marts": "pipeline.handlers.refresh_marts.handler",
    "send_expense_email": "pipeline.handlers.send_expense_email.handler",
    "migrate": "pipeline.handlers.migrate.handler",
}
NGINX_CONF_MARKER = "@NGINX_CONF@"
NGINX_CONF_PATH = "/etc/nginx/nginx.conf"  # where cfn-init writes the proxy's configuration on the instance
# the ports every function reaches outside the VPC: AWS's APIs (and REST sources on HTTPS)
BASE_EGRESS_PORTS = (443,)
# the RDS CA bundle the functions verify the cluster's certificate with (sslmode verify-full): a data file of
# the function zip, whose root is lambda_src/, so on Lambda it sits under /var/task/
RDS_CA_BUNDLE = "pipeline/certs/rds-global-bundle.pem"
RDS_CA_BUNDLE_FILE = PROJECT_ROOT / "lambda_src" / RDS_CA_BUNDLE
RDS_CA_BUNDLE_ON_LAMBDA = f"/var/task/{RDS_CA_BUNDLE}"
# where the email function keeps each run's raw message, the claim that makes it send once per run key: a
# prefix of the artifact bucket (private, versioned, encrypted, TLS only, logged), and nothing else of it.
# It is pipeline.expense_email's EMAIL_PREFIX (tests/infra/test_templates.py holds them equal).
EMAIL_BUCKET_PARAMETER = "ArtifactBucket"
EMAIL_PREFIX = "emails/expense/"


# -- reading the YAML files: CloudFormation's short tags become their long forms -----------------------
class _CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _tag)


def load_template(name: str) -> dict[str, Any]:
    """A base template from infra/cloudformation/ as a plain dict."""
    path = TEMPLATE_DIR / f"{name}.yaml"
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


def to_json(template: dict[str, Any]) -> str:
    """The body sent to CloudFormation: compact and stable, so an unchanged template is byte-identical."""
    return json.dumps(template, sort_keys=True, separators=(",", ":"))


# -- the allow-list --------------------------------------------------------------------------------------
def validate_cidrs(cidrs: Iterable[str]) -> list[str]:
    """Normalised IPv4 CIDRs; the whole Internet is refused, whatever its spelling."""
    result = []
    for raw in cidrs:
        try:
            net = ipaddress.ip_network(raw.strip(), strict=False)
        except ValueError:
            raise PlaybookError(f"--allow-cidr {raw!r} is not a CIDR such as 203.0.113.10/32") from None
        if net.version != 4:
            raise PlaybookError(f"--allow-cidr {raw!r}: only IPv4 CIDRs are supported")
        if net.prefixlen < 8:
            raise PlaybookError(f"--allow-cidr {raw!r} admits too much of the Internet: allow-list your "
                                "offices and BI tools (a /8 at most), never 0.0.0.0/0")
        if str(net) not in result:
            result.append(str(net))
    if not result:
        raise PlaybookError("the proxy needs an allow-list: give --allow-cidr CIDR (e.g. your office's /32)")
    return result


def render_nginx_conf(*, listen: str, upstream: str, allow: list[str], stream_module: str, pid_file: str,
                      error_log: str, access_log: str, resolver: str = "") -> str:
    """infra/nginx/stream.conf.template with its placeholders filled (the same file locally and on EC2)."""
    values = {
        "listen": listen, "upstream": upstream, "stream_module": stream_module, "pid_file": pid_file,
        "error_log": error_log, "access_log": access_log, "resolver": resolver,
        "allow_rules": "\n".join(f"        allow {cidr};" for cidr in allow),
    }
    text = NGINX_TEMPLATE.read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{ " + key + " }}", value)
    left = re.findall(r"\{\{ *\w+ *\}\}", text)
    if left:
        raise PlaybookError(f"{NGINX_TEMPLATE}: unknown placeholders {', '.join(left)}")
    return text


def proxy_nginx_conf(template: dict[str, Any]) -> dict[str, Any]:
    """The nginx.conf the proxy instance's cfn-init writes (its entry under files), from a rendered template."""
    init = template["Resources"]["ProxyHost"]["Metadata"]["AWS::CloudFormation::Init"]
    return init["nginx"]["files"][NGINX_CONF_PATH]


def render_proxy(allow: list[str]) -> dict[str, Any]:
    """The proxy template with the allow-list: one ingress rule per CIDR, and nginx.conf in the instance's
    cfn-init metadata. The UserData and every instance property stay the same whatever the list, so a new
    list changes the metadata only (applied by cfn-hup in place), never the instance."""
    template = load_template("proxy")
    template.pop("Metadata", None)  # the base file's lint exception does not apply to the rendered whole
    resources = template["Resources"]
    for i, cidr in enumerate(validate_cidrs(allow), start=1):
        resources[f"AllowListIngress{i}"] = {
            "Type": "AWS::EC2::SecurityGroupIngress",
            "Properties": {
                "GroupId": {"Ref": "ProxySecurityGroupId"}, "Description": f"BI clients {cidr}",
                "IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "CidrIp": cidr,
            },
        }
    conf = render_nginx_conf(
        listen="5432", upstream="${DatabaseEndpoint}:${DatabasePort}", allow=validate_cidrs(allow),
        stream_module="/usr/lib64/nginx/modules/ngx_stream_module.so", pid_file="/run/nginx.pid",
        error_log="/var/log/nginx/error.log", access_log="/var/log/nginx/bi-proxy.log",
        resolver="resolver 169.254.169.253 valid=10s;")
    content = proxy_nginx_conf(template)["content"]
    if content.get("Fn::Sub", "").strip() != NGINX_CONF_MARKER:
        raise PlaybookError(f"{TEMPLATE_DIR / 'proxy.yaml'}: {NGINX_CONF_PATH} must hold {NGINX_CONF_MARKER} alone")
    content["Fn::Sub"] = conf
    return template


# -- the network: where the functions may connect outside the VPC -----------------------------------------
def egress_ports(config: PipelineConfig) -> dict[int, list[str]]:
    """{TCP port: the REST sources that need it}: 443 for AWS's APIs always, and each REST source's base_url
    port (443 for https, 80 for http, or the one it names)."""
    ports: dict[int, list[str]] = {port: [] for port in BASE_EGRESS_PORTS}
    for name, source in config.sources.items():
        api = getattr(source, "api", None)
        if api is None:
            continue
        url = urlsplit(api.base_url)
        if names_this_machine(url.hostname):  # this machine's (the demo's): reached on the local stack only
            continue
        ports.setdefault(url.port or (443 if url.scheme == "https" else 80), []).append(name)
    return ports


def render_network(config: PipelineConfig) -> dict[str, Any]:
    """The network template with an egress rule of the functions' security group per port a REST source's
    base_url names beyond HTTPS (a REST source on another port would otherwise time out)."""
    template = load_template("network")
    rules = template["Resources"]["LambdaSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    for port, sources in sorted(egress_ports(config).items()):
        if port in BASE_EGRESS_PORTS:
            continue
        rules.append({"Description": f"REST sources {', '.join(sources)} (port {port})", "IpProtocol": "tcp",
                      "FromPort": port, "ToPort": port, "CidrIp": "0.0.0.0/0"})
    return template


# -- the pipeline: one function per job ------------------------------------------------------------------
@dataclass
class Job:
    """One Lambda function of the pipeline and everything that belongs to it alone."""

    logical: str  # CamelCase stem of its resources and outputs, e.g. IngestSales
    name: str  # function name suffix, e.g. ingest-sales
    handler: str
    timeout: int
    memory: int
    concurrency: int  # its reserved concurrent executions, when the deployment reserves them
    schedule: str | None = None
    schedule_input: dict[str, Any] = field(default_factory=dict)
    schedule_start: datetime | None = None  # the cycle's start of a rate schedule (SourceConfig.start_date)
    source: str | None = None
    prefix: str | None = None  # landing prefix of a file source
    statements: list[dict[str, Any]] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    database: str = "ingest"  # whose login the function uses: ingest, reporting, or owner (migrate only)


# what every scheduled target receives besides its own input: EventBridge Scheduler fills in the scheduled
# time and the execution id, so a retried run keeps its window and its idempotency key
SCHEDULED = {"trigger": "schedule", "time": "<aws.scheduler.scheduled-time>", "id": "<aws.scheduler.execution-id>"}

# the template parameter holding each database login's secret ARN
DATABASE_SECRETS = {"ingest": "IngestDatabaseSecretArn", "reporting": "ReportingDatabaseSecretArn",
                    "owner": "DatabaseSecretArn"}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[_\-]", name) if part)


def _landing_arn(suffix: str = "") -> dict:
    # a name, not !GetAtt: the bucket's notifications depend on the functions, so they may not depend on it
    return {"Fn::Sub": "arn:${AWS::Partition}:s3:::${Prefix}-landing-${AWS::AccountId}-${AWS::Region}" + suffix}


def start_date(expression: str, timezone: str, start: datetime, now: datetime | None = None) -> str:
    """A schedule's StartDate (UTC): its cycle's start, or, once that is past (EventBridge Scheduler refuses a
    StartDate more than minutes in the past), the cycle's first fire an hour or more from now: a rate counts
    from its StartDate, so either keeps the configured days."""
    earliest = (now or datetime.now(UTC)) + timedelta(hours=1)
    if start < earliest:
        start = occurrences(expression, timezone, earliest - timedelta(microseconds=1), earliest + timedelta(days=800),
                            start)[0]
    return start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def jobs(config: PipelineConfig) -> list[Job]:
    result = []
    for name, source in config.sources.items():
        file_source = source.delivers == "files"
        job = Job(
            logical=f"Ingest{_camel(name)}", name=f"ingest-{name.replace('_', '-')}",
            handler=source_kind(source.kind).handler, timeout=300, memory=512, concurrency=2,
            schedule=source.schedule, schedule_input={"job": "ingest", "source": name, **SCHEDULED},
            schedule_start=source.starts(config.company.timezone), source=name,
            prefix=source.prefix if file_source else None, environment={"SOURCE_NAME": name},
        )
        api = getattr(source, "api", None)
        secret = api.auth.secret if api is not None and api.auth is not None else None
        if secret:
            arn = secret if secret.startswith("arn:") else (
                "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:" + secret + "-??????")
            job.statements = [{"Sid": "ReadOwnApiSecret", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                               "Resource": {"Fn::Sub": arn}}]
            if api.auth.type == "oauth2_refresh_token":  # a rotated refresh token is written back before use
                job.statements.append({"Sid": "RotateOwnRefreshToken", "Effect": "Allow",
                                       "Action": "secretsmanager:PutSecretValue", "Resource": {"Fn::Sub": arn}})
        if not file_source:  # the window's pages, kept for validation and audit (pipeline.sources.rest_api)
            job.statements = [*job.statements, {
                "Sid": "KeepOwnApiPages", "Effect": "Allow", "Action": "s3:PutObject",
                "Resource": _landing_arn(f"/{API_PAGES_PREFIX}{name}/*")}]
        if file_source:
            job.statements = [
                {"Sid": "ReadOwnLandingPrefix", "Effect": "Allow",
                 "Action": ["s3:GetObject", "s3:GetObjectVersion"],
                 # and a dry run's copy of a file (`playbook ingest --dry-run`), where no notification fires
                 "Resource": [_landing_arn(f"/{source.prefix}*"), _landing_arn(f"/{DRY_RUN_PREFIX}{source.prefix}*")]},
                {"Sid": "ListOwnLandingPrefix", "Effect": "Allow", "Action": "s3:ListBucket",
                 "Resource": _landing_arn(), "Condition": {"StringLike": {"s3:prefix": [f"{source.prefix}*"]}}},
            ]
        result.append(job)
    result.append(Job(
        logical="RefreshMarts", name="refresh-marts", handler=HANDLERS["refresh_marts"], timeout=600, memory=256,
        concurrency=1, schedule=config.reports.schedule,
        schedule_input={"job": "refresh_marts", **SCHEDULED}))
    result.append(Job(
        logical="SendExpenseEmail", name="send-expense-email", handler=HANDLERS["send_expense_email"],
        timeout=120, memory=256, concurrency=1, schedule=config.reports.email.schedule, database="reporting",
        schedule_input={"job": "send_expense_email", "period": config.reports.email.period, **SCHEDULED},
        environment={"REPORTS_BUCKET": {"Ref": EMAIL_BUCKET_PARAMETER}},
        statements=email_statements(config.reports.email)))
    result.append(Job(
        logical="Migrate", name="migrate", handler=HANDLERS["migrate"], timeout=300, memory=256, concurrency=1,
        database="owner",
        environment={"ROLE_SECRET_ARNS": {"Fn::Sub": '{"pipeline_ingest": "${IngestDatabaseSecretArn}", '
                                                     '"pipeline_reporting": "${ReportingDatabaseSecretArn}", '
                                                     '"pipeline_monitor": "${MonitorDatabaseSecretArn}"}'}},
        statements=[{"Sid": "ReadRoleSecrets", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                     "Resource": [{"Ref": "IngestDatabaseSecretArn"}, {"Ref": "ReportingDatabaseSecretArn"},
                                  {"Ref": "MonitorDatabaseSecretArn"}]}]))
    return result


def ses_identities(email: EmailReport) -> list[str]:
    """The SES identities a send of the report is authorised against: the sender's address and its domain (the
    domain identity with DKIM that deliverability wants), and, while the account is in SES's sandbox, every
    recipient's address and domain too (in the sandbox SES checks the caller's permission on the identities
    that verify each recipient)."""
    identities: list[str] = []
    for address in (email.sender, *email.recipients):
        for identity in (address, address.rsplit("@", 1)[1]):
            if identity not in identities:
                identities.append(identity)
    return identities


def email_statements(email: EmailReport) -> list[dict[str, Any]]:
    """What the email function does beyond every function's own: under its prefix of the reports bucket, the
    conditional put that claims its run (If-None-Match: *; the receipt beside it is put the same way, so no
    claim is ever overwritten), get and head to find a run's claim (HEAD needs s3:GetObject), delete to
    release the claim of a run whose send failed; and SES's SendRawEmail as the configured sender only, on
    the identities of ses_identities (the sender's, and the recipients' for the sandbox)."""
    emails = {"Fn::Sub": "arn:${AWS::Partition}:s3:::${" + EMAIL_BUCKET_PARAMETER + "}/" + EMAIL_PREFIX + "*"}
    identity = "arn:${AWS::Partition}:ses:${AWS::Region}:${AWS::AccountId}:identity/"
    sender = [{"Fn::Sub": identity + "${SenderIdentity}"}]
    others = [{"Fn::Sub": identity + name} for name in ses_identities(email) if name != email.sender]
    return [
        {"Sid": "ClaimTheRunWithAConditionalPut", "Effect": "Allow", "Action": "s3:PutObject", "Resource": emails,
         "Condition": {"Null": {"s3:if-none-match": "false"}}},
        {"Sid": "FindTheRunsClaim", "Effect": "Allow", "Action": "s3:GetObject", "Resource": emails},
        {"Sid": "ReleaseTheClaimOfAFailedSend", "Effect": "Allow", "Action": "s3:DeleteObject", "Resource": emails},
        {"Sid": "SendAsTheReportSender", "Effect": "Allow", "Action": "ses:SendRawEmail",
         "Resource": sender + others,
         "Condition": {"StringEquals": {"ses:FromAddress": {"Ref": "SenderIdentity"}}}},
    ]


UNRESERVED_REASON = ("Reserving concurrency is a provisioning setting (--reserved-concurrency), off by default: a "
                     "fresh account's quota (often 10) allows no reservation, as Lambda keeps 100 executions "
                     "unreserved. The functions then share the account's pool, and each one's Throttles alarm says "
                     "when it runs out.")


def _function_resources(job: Job, timezone: str, reserve: bool) -> dict[str, dict[str, Any]]:
    fn, role, logs = f"{job.logical}Function", f"{job.logical}Role", f"{job.logical}LogGroup"
    function_name = {"Fn::Sub": "${Prefix}-" + job.name}
    statements = [
        {"Sid": "WriteOwnLogs", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": {"Fn::GetAtt": [logs, "Arn"]}},
        {"Sid": "ReadDatabaseSecret", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
         "Resource": {"Ref": DATABASE_SECRETS[job.database]}},
        {"Sid": "ReadPipelineConfig", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": {"Fn::Sub": "arn:${AWS::Partition}:s3:::${ArtifactBucket}/config/pipeline.json"}},
        {"Sid": "DeadLetters", "Effect": "Allow", "Action": "sqs:SendMessage",
         "Resource": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}},
        *job.statements,
    ]
    resources: dict[str, dict[str, Any]] = {
        logs: {
            "Type": "AWS::Logs::LogGroup",
            "Metadata": {"checkov": {"skip": [{"id": "CKV_AWS_158", "comment":
                         "Function logs carry no secrets (JSON logs without values of credentials); CloudWatch "
                         "Logs encrypts them at rest with its own key."}]}},
            "Properties": {"LogGroupName": {"Fn::Sub": "/aws/lambda/${Prefix}-" + job.name}, "RetentionInDays": 90},
        },
        role: {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "Description": f"{job.name}: only what this function touches",
                "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
                "ManagedPolicyArns": [{"Ref": "LambdaNetworkPolicy"}],
                "Policies": [{"PolicyName": job.name, "PolicyDocument": {"Version": "2012-10-17",
                                                                          "Statement": statements}}],
            },
        },
        fn: {
            "Type": "AWS::Lambda::Function",
            "Metadata": {"checkov": {"skip": [{"id": "CKV_AWS_173", "comment":
                         "The environment holds names and ARNs only (DB_SECRET_ARN, never a secret value), so a "
                         "customer-managed key would protect nothing; the default encryption at rest applies."},
                         *([] if reserve else [{"id": "CKV_AWS_115", "comment": UNRESERVED_REASON}])]}},
            "Properties": {
                "FunctionName": function_name,
                "Description": f"{job.name} ({job.handler})",
                "Runtime": RUNTIME,
                "Handler": job.handler,
                "Architectures": ["x86_64"],
                "Code": {"S3Bucket": {"Ref": "ArtifactBucket"}, "S3Key": {"Ref": "CodeKey"}},
                "Layers": [{"Ref": "DependenciesLayer"}],
                "Role": {"Fn::GetAtt": [role, "Arn"]},
                "MemorySize": job.memory,
                "Timeout": job.timeout,
                **({"ReservedConcurrentExecutions": job.concurrency} if reserve else {}),
                "DeadLetterConfig": {"TargetArn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}},
                "VpcConfig": {"SubnetIds": {"Ref": "AppSubnetIds"},
                              "SecurityGroupIds": [{"Ref": "LambdaSecurityGroupId"}]},
                "Environment": {"Variables": {
                    "DB_SECRET_ARN": {"Ref": DATABASE_SECRETS[job.database]},
                    "DB_SSLMODE": {"Ref": "DatabaseSslMode"},
                    "PGSSLROOTCERT": {"Ref": "DatabaseSslRootCert"},  # libpq's own: verify-full's CA bundle
                    "DB_HOST": {"Ref": "DatabaseHost"},
                    "DB_PORT": {"Ref": "DatabasePort"},
                    "DB_NAME": {"Ref": "DatabaseName"},
                    "PIPELINE_CONFIG_URI": {"Fn::Sub": "s3://${ArtifactBucket}/config/pipeline.json"},
                    "LANDING_BUCKET": {"Fn::Sub": "${Prefix}-landing-${AWS::AccountId}-${AWS::Region}"},
                    "LOG_LEVEL": {"Ref": "LogLevel"},
                    **job.environment,
                }},
            },
        },
    }
    for metric, statistic, threshold, what in (
        ("Errors", "Sum", 1, "failed"),
        ("Throttles", "Sum", 1, "was throttled (its reserved concurrency, or the account's, was reached)"),
        ("Duration", "Maximum", int(job.timeout * 1000 * 0.8), "ran for more than 80% of its timeout"),
    ):
        resources[f"{job.logical}{metric}Alarm"] = {
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "AlarmDescription": f"{job.name} {what}",
                "Namespace": "AWS/Lambda", "MetricName": metric,
                "Dimensions": [{"Name": "FunctionName", "Value": {"Ref": fn}}],
                "Statistic": statistic, "Period": 300, "EvaluationPeriods": 1, "Threshold": threshold,
                "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "notBreaching",
                "AlarmActions": [{"Ref": "AlarmTopic"}],
            },
        }
    if job.schedule:
        resources[f"{job.logical}Schedule"] = {
            "Type": "AWS::Scheduler::Schedule",
            "Properties": {
                "Name": {"Fn::Sub": "${Prefix}-" + job.name},
                "Description": f"{job.name} on the company's schedule ({timezone})",
                "ScheduleExpression": job.schedule,
                "ScheduleExpressionTimezone": timezone,
                **({"StartDate": start_date(job.schedule, timezone, job.schedule_start)} if job.schedule_start else {}),
                "FlexibleTimeWindow": {"Mode": "OFF"},
                "State": "ENABLED",
                "Target": {
                    "Arn": {"Fn::GetAtt": [fn, "Arn"]},
                    "RoleArn": {"Fn::GetAtt": ["SchedulerRole", "Arn"]},
                    "Input": json.dumps(job.schedule_input, sort_keys=True),
                    "RetryPolicy": {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 3600},
                    "DeadLetterConfig": {"Arn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}},
                },
            },
        }
    if job.prefix:
        resources[f"{job.logical}LandingPermission"] = {
            "Type": "AWS::Lambda::Permission",
            "Properties": {
                "FunctionName": {"Fn::GetAtt": [fn, "Arn"]}, "Action": "lambda:InvokeFunction",
                "Principal": "s3.amazonaws.com", "SourceAccount": {"Ref": "AWS::AccountId"},
                "SourceArn": _landing_arn(),
            },
        }
    return resources


def reservations(config: PipelineConfig) -> dict[str, int]:
    """{function name suffix: reserved concurrent executions} each function gets when reservation is on."""
    return {job.name: job.concurrency for job in jobs(config)}


def render_pipeline(config: PipelineConfig, *, reserved_concurrency: bool = False) -> dict[str, Any]:
    """The pipeline template for the company. With reserved_concurrency, each function reserves its
    concurrency (`reservations`), which the account's unreserved pool must afford (Lambda keeps 100 of it);
    without, the functions share the account's pool."""
    template = load_template("pipeline")
    template.pop("Metadata", None)  # the base file's lint exception does not apply to the rendered whole
    resources, outputs = template["Resources"], template["Outputs"]
    all_jobs = jobs(config)
    for job in all_jobs:
        rendered = _function_resources(job, config.company.timezone, reserved_concurrency)
        clash = set(rendered) & set(resources)
        if clash:
            raise PlaybookError(f"source names collide in the pipeline template: {', '.join(sorted(clash))}")
        resources.update(rendered)
        if len(f"{'x' * 21}-{job.name}") > 64:
            raise PlaybookError(f"sources.{job.source}: the name is too long for a Lambda function name "
                                "(at most 35 characters)")
        outputs[f"{job.logical}FunctionName"] = {"Value": {"Ref": f"{job.logical}Function"}}
        outputs[f"{job.logical}FunctionArn"] = {"Value": {"Fn::GetAtt": [f"{job.logical}Function", "Arn"]}}
    scheduled = [j for j in all_jobs if j.schedule]
    resources["SchedulerRole"]["Properties"]["Policies"].append({
        "PolicyName": "invoke-scheduled-functions",
        "PolicyDocument": {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "lambda:InvokeFunction",
            "Resource": [{"Fn::GetAtt": [f"{j.logical}Function", "Arn"]} for j in scheduled]}]},
    })
    file_jobs = [j for j in all_jobs if j.prefix]
    if file_jobs:
        bucket = resources["LandingBucket"]
        bucket["DependsOn"] = [f"{j.logical}LandingPermission" for j in file_jobs]
        bucket["Properties"]["NotificationConfiguration"] = {"LambdaConfigurations": [
            {"Event": "s3:ObjectCreated:*", "Function": {"Fn::GetAtt": [f"{j.logical}Function", "Arn"]},
             "Filter": {"S3Key": {"Rules": [{"Name": "prefix", "Value": j.prefix}]}}}
            for j in file_jobs
        ]}
    return template


def render_all(config: PipelineConfig, allow: list[str], *,
               reserved_concurrency: bool = False) -> dict[str, dict[str, Any]]:
    """Every stack's template for this company, in deployment order."""
    return {
        "storage": load_template("storage"),
        "network": render_network(config),
        "database": load_template("database"),
        "pipeline": render_pipeline(config, reserved_concurrency=reserved_concurrency),
        "proxy": render_proxy(allow),
    }


def write_rendered(templates: dict[str, dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """The rendered templates as JSON files (for cfn-lint, checkov and review)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, template in templates.items():
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(copy.deepcopy(template), indent=2, sort_keys=True) + "\n")
        paths[name] = path
    return paths
