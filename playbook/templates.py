"""The CloudFormation templates: the files in infra/cloudformation/, rendered for one company.

Storage, network and database are deployed as written. The pipeline and proxy templates are base files
the configuration completes: one ingest function per source (with its schedule and, for file sources, its
landing-prefix notification), the marts refresh, the expense email and migrate; and one proxy ingress rule
per allow-listed CIDR with the nginx configuration in the UserData.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import PipelineConfig
from pipeline.sources.kinds import source_kind
from playbook.errors import PlaybookError
from playbook.settings import PROJECT_ROOT

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


def render_proxy(allow: list[str]) -> dict[str, Any]:
    template = load_template("proxy")
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
    user_data = resources["ProxyInstance"]["Properties"]["UserData"]["Fn::Base64"]
    user_data["Fn::Sub"] = user_data["Fn::Sub"].replace(NGINX_CONF_MARKER, conf.rstrip("\n"))
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
    concurrency: int
    schedule: str | None = None
    schedule_input: dict[str, Any] = field(default_factory=dict)
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


def jobs(config: PipelineConfig) -> list[Job]:
    result = []
    for name, source in config.sources.items():
        file_source = source.delivers == "files"
        job = Job(
            logical=f"Ingest{_camel(name)}", name=f"ingest-{name.replace('_', '-')}",
            handler=source_kind(source.kind).handler, timeout=300, memory=512, concurrency=2,
            schedule=source.schedule, schedule_input={"job": "ingest", "source": name, **SCHEDULED},
            source=name, prefix=source.prefix if file_source else None, environment={"SOURCE_NAME": name},
        )
        api = getattr(source, "api", None)
        secret = api.auth.secret if api is not None and api.auth is not None else None
        if secret:
            arn = secret if secret.startswith("arn:") else (
                "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:" + secret + "-??????")
            job.statements = [{"Sid": "ReadOwnApiSecret", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                               "Resource": {"Fn::Sub": arn}}]
        if file_source:
            job.statements = [
                {"Sid": "ReadOwnLandingPrefix", "Effect": "Allow",
                 "Action": ["s3:GetObject", "s3:GetObjectVersion"], "Resource": _landing_arn(f"/{source.prefix}*")},
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
        environment={"REPORTS_BUCKET": {"Ref": EMAIL_BUCKET_PARAMETER}}, statements=email_statements()))
    result.append(Job(
        logical="Migrate", name="migrate", handler=HANDLERS["migrate"], timeout=300, memory=256, concurrency=1,
        database="owner",
        environment={"ROLE_SECRET_ARNS": {"Fn::Sub": '{"pipeline_ingest": "${IngestDatabaseSecretArn}", '
                                                     '"pipeline_reporting": "${ReportingDatabaseSecretArn}"}'}},
        statements=[{"Sid": "ReadRoleSecrets", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                     "Resource": [{"Ref": "IngestDatabaseSecretArn"}, {"Ref": "ReportingDatabaseSecretArn"}]}]))
    return result


def email_statements() -> list[dict[str, Any]]:
    """What the email function does beyond every function's own: under its prefix of the reports bucket, the
    conditional put that claims its run (If-None-Match: *; the receipt beside it is put the same way, so no
    claim is ever overwritten), get and head to find a run's claim (HEAD needs s3:GetObject), delete to
    release the claim of a run whose send failed; and SES's SendRawEmail as the configured sender only."""
    emails = {"Fn::Sub": "arn:${AWS::Partition}:s3:::${" + EMAIL_BUCKET_PARAMETER + "}/" + EMAIL_PREFIX + "*"}
    return [
        {"Sid": "ClaimTheRunWithAConditionalPut", "Effect": "Allow", "Action": "s3:PutObject", "Resource": emails,
         "Condition": {"Null": {"s3:if-none-match": "false"}}},
        {"Sid": "FindTheRunsClaim", "Effect": "Allow", "Action": "s3:GetObject", "Resource": emails},
        {"Sid": "ReleaseTheClaimOfAFailedSend", "Effect": "Allow", "Action": "s3:DeleteObject", "Resource": emails},
        {"Sid": "SendAsTheReportSender", "Effect": "Allow", "Action": "ses:SendRawEmail",
         "Resource": {"Fn::Sub": "arn:${AWS::Partition}:ses:${AWS::Region}:${AWS::AccountId}:"
                                 "identity/${SenderIdentity}"},
         "Condition": {"StringEquals": {"ses:FromAddress": {"Ref": "SenderIdentity"}}}},
    ]


def _function_resources(job: Job, timezone: str) -> dict[str, dict[str, Any]]:
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
                         "customer-managed key would protect nothing; the default encryption at rest applies."}]}},
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
                "ReservedConcurrentExecutions": job.concurrency,
                "DeadLetterConfig": {"TargetArn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}},
                "VpcConfig": {"SubnetIds": {"Ref": "AppSubnetIds"},
                              "SecurityGroupIds": [{"Ref": "LambdaSecurityGroupId"}]},
                "Environment": {"Variables": {
                    "DB_SECRET_ARN": {"Ref": DATABASE_SECRETS[job.database]},
                    "DB_SSLMODE": {"Ref": "DatabaseSslMode"},
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
        ("Throttles", "Sum", 1, "was throttled (reserved concurrency reached)"),
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


def render_pipeline(config: PipelineConfig) -> dict[str, Any]:
    template = load_template("pipeline")
    template.pop("Metadata", None)  # the base file's lint exception does not apply to the rendered whole
    resources, outputs = template["Resources"], template["Outputs"]
    all_jobs = jobs(config)
    for job in all_jobs:
        rendered = _function_resources(job, config.company.timezone)
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


def render_all(config: PipelineConfig, allow: list[str]) -> dict[str, dict[str, Any]]:
    """Every stack's template for this company, in deployment order."""
    return {
        "storage": load_template("storage"),
        "network": load_template("network"),
        "database": load_template("database"),
        "pipeline": render_pipeline(config),
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
