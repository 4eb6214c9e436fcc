"""`playbook provision --target local|aws`: create or update every stack, idempotently, through change sets.

Order: storage (the artifact bucket), then the artifacts (function zip, layer, validated configuration),
then network, database, pipeline and proxy, each fed the outputs of the ones before. A stack whose
template and parameters are unchanged gets a change set with no changes, which is deleted: a second run
reports "no changes" everywhere. On the local stack the same templates go to the moto server, and every
resource moto does not create is listed with what stands in for it (see playbook/stand_ins.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playbook.errors import PlaybookError

CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"]
TEMPLATE_BODY_LIMIT = 51_200
NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
ENV_PROXY_ALLOW = "PLAYBOOK_PROXY_ALLOW"
LOCAL_ALLOW = ["127.0.0.1/32"]


@dataclass
class StackResult:
    part: str
    name: str
    action: str  # created | updated | no changes
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class Provisioned:
    target: str
    stacks: list[StackResult]
    outputs: dict[str, str]
    missing: list[Any]  # stand_ins.Missing
    notes: list[str]

    @property
    def changed(self) -> bool:
        return any(s.action != "no changes" for s in self.stacks)


# -- one stack ---------------------------------------------------------------------------------------
def _wait(poll, done, timeout: float, what: str, delay: float):
    deadline = time.monotonic() + timeout
    while True:
        value = poll()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise PlaybookError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)


def _stack_status(cfn, name: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        return cfn.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise


def _failure_reasons(cfn, name: str) -> str:
    events = cfn.describe_stack_events(StackName=name).get("StackEvents", [])
    reasons = [f"{e['LogicalResourceId']}: {e['ResourceStatusReason']}" for e in events
               if e.get("ResourceStatus", "").endswith("FAILED") and e.get("ResourceStatusReason")]
    return "; ".join(reasons[:5]) or "see the stack's events"


def deploy_stack(cfn, name: str, template: dict[str, Any], parameters: dict[str, str], *,
                 template_url: str | None = None, timeout: float = 3600, delay: float = 5) -> str:
    """Create or update one stack through a change set; returns created, updated or no changes."""
    from botocore.exceptions import ClientError

    status = _stack_status(cfn, name)
    if status in ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED"):
        raise PlaybookError(f"stack {name} is {status} from an earlier failed attempt: delete it "
                            f"(`aws cloudformation delete-stack --stack-name {name}`) and provision again")
    if status and status.endswith("IN_PROGRESS") and status != "REVIEW_IN_PROGRESS":
        raise PlaybookError(f"stack {name} is busy ({status}): wait for it to finish and run again")
    kind = "UPDATE" if status and status != "REVIEW_IN_PROGRESS" else "CREATE"
    body = {"TemplateURL": template_url} if template_url else {"TemplateBody": _json(template)}
    change_set = f"playbook-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}"
    try:
        cfn.create_change_set(
            StackName=name, ChangeSetName=change_set, ChangeSetType=kind, Capabilities=CAPABILITIES,
            Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in sorted(parameters.items())],
            Tags=[{"Key": "playbook:stack", "Value": name}], **body)
        described = _wait(lambda: cfn.describe_change_set(StackName=name, ChangeSetName=change_set),
                          lambda d: d["Status"] in ("CREATE_COMPLETE", "FAILED"), 600, f"change set of {name}",
                          delay)
        if described["Status"] == "FAILED":
            reason = described.get("StatusReason", "")
            cfn.delete_change_set(StackName=name, ChangeSetName=change_set)
            if any(marker in reason for marker in NO_CHANGES):
                return "no changes"
            raise PlaybookError(f"stack {name}: the change set failed: {reason}")
        cfn.execute_change_set(StackName=name, ChangeSetName=change_set)
    except ClientError as exc:
        if any(marker in str(exc) for marker in NO_CHANGES):
            return "no changes"
        raise PlaybookError(f"stack {name}: {exc}") from exc
    final = _wait(lambda: _stack_status(cfn, name), lambda s: s is not None and not s.endswith("IN_PROGRESS"),
                  timeout, f"stack {name}", delay)
    if final not in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
        raise PlaybookError(f"stack {name} ended {final}: {_failure_reasons(cfn, name)}")
    return "created" if kind == "CREATE" else "updated"


def _json(template: dict[str, Any]) -> str:
    from playbook.templates import to_json

    return to_json(template)


# -- artifacts ---------------------------------------------------------------------------------------
def _upload_if_absent(s3, bucket: str, key: str, path: Path) -> None:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
        return
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
    s3.upload_file(str(path), bucket, key)


def _put_if_changed(s3, bucket: str, key: str, body: bytes, content_type: str) -> None:
    from botocore.exceptions import ClientError

    try:
        if s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body:
            return
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)


def upload_artifacts(s3, bucket: str, config, target: str, build_dir: Path) -> dict[str, str]:
    """The function zip, the layer and config/pipeline.json, under content-addressed keys."""
    from playbook.package import build_dependency_layer, build_function_zip, build_local_layer_zip, sha256

    code = build_function_zip(build_dir)
    layer = build_local_layer_zip(build_dir) if target == "local" else build_dependency_layer(build_dir)
    keys = {"CodeKey": f"lambda/pipeline-{sha256(code)[:16]}.zip", "LayerKey": f"lambda/layer-{sha256(layer)[:16]}.zip"}
    _upload_if_absent(s3, bucket, keys["CodeKey"], code)
    _upload_if_absent(s3, bucket, keys["LayerKey"], layer)
    config_json = json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True).encode()
    _put_if_changed(s3, bucket, "config/pipeline.json", config_json, "application/json")
    return keys


def _template_url(s3, bucket: str, region: str, part: str, template: dict[str, Any]) -> str | None:
    body = _json(template).encode()
    if len(body) <= TEMPLATE_BODY_LIMIT:
        return None
    key = f"templates/{part}-{hashlib.sha256(body).hexdigest()[:16]}.json"
    _put_if_changed(s3, bucket, key, body, "application/json")
    return f"https://{bucket}.s3.{region}.amazonaws.com/{key}"


# -- the local database's stand-in -----------------------------------------------------------------------
def local_database_secret(prefix: str, database_url: str) -> str:
    """The database secret in moto's Secrets Manager, as db.py reads it: {"url": ...}. Returns its ARN."""
    import boto3

    sm = boto3.client("secretsmanager")
    name = f"{prefix}/database"
    value = json.dumps({"url": database_url})
    try:
        current = sm.get_secret_value(SecretId=name)
    except sm.exceptions.ResourceNotFoundException:
        return sm.create_secret(Name=name, SecretString=value,
                                Description="Local stand-in for the Aurora master user secret")["ARN"]
    if current["SecretString"] != value:
        sm.put_secret_value(SecretId=name, SecretString=value)
    return current["ARN"]


# -- the whole deployment ----------------------------------------------------------------------------------
def _without_layers(template: dict[str, Any]) -> None:
    """Locally the functions carry no layer reference: the local runtime runs them on this machine's
    dependencies, and moto fails to update (500) a function with layers through CloudFormation."""
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Lambda::Function":
            resource["Properties"].pop("Layers", None)


def _role_secrets(target: str, database_url: str | None, timezone: str) -> dict[str, str]:
    """{role: secret ARN} for the ingest and reporting logins the functions use (never the owner's).

    Locally the playbook reaches the database: it migrates it and gives the roles their logins. On AWS only
    the migrate function inside the VPC can: the secrets are created here, their passwords applied by it.
    """
    from playbook import warehouse

    if target == "local":
        from playbook.database import migrate

        migrate(database_url, timezone)
        warehouse.ensure_role_logins(database_url)
    else:
        warehouse.ensure_role_secrets()
    return {role: warehouse.secret_arn(role) for role in warehouse.SECRET_NAMES}


def resolve_allow_list(target: str, allow: list[str] | None) -> list[str]:
    from playbook.templates import validate_cidrs

    given = list(allow or []) or [c for c in os.environ.get(ENV_PROXY_ALLOW, "").split(",") if c.strip()]
    if not given:
        if target == "aws":
            raise PlaybookError("provisioning AWS needs the proxy's allow-list: pass --allow-cidr CIDR (your "
                                f"office or BI tool's public address, e.g. 203.0.113.10/32) or set {ENV_PROXY_ALLOW}")
        given = LOCAL_ALLOW
    return validate_cidrs(given)


def provision(target: str, config_file: str | None = None, allow: list[str] | None = None,
              nat_gateways: str = "single", cluster_mode: str = "serverless") -> Provisioned:
    import boto3

    from playbook import stand_ins
    from playbook.config import load_config
    from playbook.settings import local_settings
    from playbook.stack_outputs import (
        live_outputs,
        record_stand_in_attributes,
        record_stand_in_resources,
        stack_name,
        stack_prefix,
    )
    from playbook.templates import render_all

    if target not in ("local", "aws"):
        raise PlaybookError(f"unknown target {target!r}: choose local or aws")
    allow_list = resolve_allow_list(target, allow)
    config = load_config(config_file)
    settings = local_settings()
    if target == "local":
        from playbook.local.stack import activate

        status = activate()
        delay = 0.2
    else:
        if os.environ.get("AWS_ENDPOINT_URL"):
            raise PlaybookError("AWS_ENDPOINT_URL is set (it points boto3 at the local stack): unset it to "
                                "provision AWS with your profile and region")
        if not boto3.session.Session().region_name:
            raise PlaybookError("no AWS region: set AWS_REGION or configure your profile's region")
        status, delay = {}, 5.0
    region = boto3.session.Session().region_name
    prefix = stack_prefix()
    templates = render_all(config, allow_list)
    if target == "local":
        _without_layers(templates["pipeline"])
    cfn, s3 = boto3.client("cloudformation"), boto3.client("s3")
    account = stand_ins.account_id() if target == "local" else ""
    results: list[StackResult] = []
    outputs: dict[str, str] = {}
    missing: list[stand_ins.Missing] = []
    notes: list[str] = []

    def deploy(part: str, parameters: dict[str, str], database_note: str = "") -> None:
        name = stack_name(part, prefix)
        template = templates[part]
        url = _template_url(s3, outputs["ArtifactBucketName"], region, part, template) if part != "storage" else None
        action = deploy_stack(cfn, name, template, {"Prefix": prefix, **parameters}, template_url=url, delay=delay)
        if target == "local":
            listed = cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
            # moto lists a resource it skipped with no logical id, and some it failed with no physical id
            physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in listed
                        if r.get("LogicalResourceId") and r.get("PhysicalResourceId")}
            ctx = stand_ins.Context(stack=name, template=template, parameters={"Prefix": prefix, **parameters},
                                    physical=physical, region=region, account=account)
            expected = stand_ins.expected_resources(template, ctx.parameters)
            gone = [stand_ins.Missing(name, lid, rtype) for lid, rtype in expected.items() if lid not in physical]
            stand_ins.apply(ctx, gone, settings.state_dir, database_note)
            missing.extend(gone)
            notes.extend(stand_ins.apply_bucket_properties(ctx, settings.state_dir))
            notes.extend(f"{name} {lid} ({rtype}): {stand_ins.PARTIAL[rtype]}"
                         for lid, rtype in expected.items() if lid in physical and rtype in stand_ins.PARTIAL)
        got = live_outputs(cfn, name, target) or {}
        unavailable = sorted(set(template.get("Outputs") or {}) - set(got))
        if unavailable:
            notes.append(f"{name}: outputs nothing stands in for locally: {', '.join(unavailable)}")
        results.append(StackResult(part, name, action, got))
        outputs.update(got)

    deploy("storage", {"SenderAddress": config.reports.email.sender})
    keys = upload_artifacts(s3, outputs["ArtifactBucketName"], config, target, settings.state_dir / "build")
    deploy("network", {"NatGatewayMode": nat_gateways})
    database_params = {k: outputs[k] for k in ("VpcId", "LambdaSecurityGroupId", "ProxySecurityGroupId")}
    database_params.update(DbSubnetIds=outputs["DbSubnetIds"], ClusterMode=cluster_mode)
    database_note = ""
    if target == "local":
        from urllib.parse import urlsplit

        from playbook.local.stack import redact

        url = status["database_url"]
        parts = urlsplit(url)
        secret_arn = local_database_secret(prefix, url)
        # what stands in for the cluster's attributes (moto creates no cluster to read them from)
        record_stand_in_attributes(stack_name("database", prefix), {
            "Cluster.Endpoint.Address": parts.hostname or "127.0.0.1", "Cluster.Endpoint.Port": str(parts.port or 5432),
            "Cluster.MasterUserSecret.SecretArn": secret_arn, "Cluster.DBClusterResourceId": "cluster-local"})
        database_note = (f"the local database {redact(url)}; its connection is in the secret {secret_arn} as "
                         '{"url": ...}')
    deploy("database", database_params, database_note)
    role_secrets = _role_secrets(target, status.get("database_url"), config.company.timezone)
    deploy("pipeline", {
        "IngestDatabaseSecretArn": role_secrets["pipeline_ingest"],
        "ReportingDatabaseSecretArn": role_secrets["pipeline_reporting"],
        "DatabaseSslMode": "prefer" if target == "local" else "require",
        "ArtifactBucket": outputs["ArtifactBucketName"], "AccessLogsBucket": outputs["AccessLogsBucketName"],
        **keys, "AppSubnetIds": outputs["AppSubnetIds"], "LambdaSecurityGroupId": outputs["LambdaSecurityGroupId"],
        "DatabaseSecretArn": outputs["DatabaseSecretArn"], "DatabaseHost": outputs["ClusterEndpoint"],
        "DatabasePort": outputs["ClusterPort"], "DatabaseName": outputs["DatabaseName"],
        "SenderIdentity": outputs["SenderIdentity"]})
    deploy("proxy", {"PublicSubnetId": outputs["PublicSubnetIds"].split(",")[0],
                     "ProxySecurityGroupId": outputs["ProxySecurityGroupId"],
                     "DatabaseEndpoint": outputs["ClusterEndpoint"], "DatabasePort": outputs["ClusterPort"]})
    if target == "local":
        record_stand_in_resources(missing)
    return Provisioned(target, results, outputs, missing, notes)


def report(result: Provisioned) -> str:
    lines = [f"provisioned on {result.target}:"]
    lines += [f"  {s.name:<28} {s.action}" for s in result.stacks]
    lines.append("outputs:")
    lines += [f"  {key} = {value}" for key, value in sorted(result.outputs.items())]
    if result.target == "local":
        lines.append(f"not created by moto, and what stands in for them locally ({len(result.missing)}):")
        lines += [f"  {m.stack} {m.logical_id} ({m.type}): {m.stand_in}" for m in result.missing]
        lines.append("modelled in part by moto:")
        lines += [f"  {note}" for note in result.notes]
    lines.append("changes: " + ("applied" if result.changed else "none (everything was up to date)"))
    return "\n".join(lines)


# -- CLI -------------------------------------------------------------------------------------------------
def cmd_provision(args: argparse.Namespace) -> int:
    result = provision(args.target, args.config, args.allow_cidr, args.nat_gateways, args.cluster_mode)
    print(report(result))
    return 0


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("provision", help="create or update the stacks (local moto server or AWS)")
    p.add_argument("--target", choices=["local", "aws"], required=True)
    p.add_argument("--config", help="configuration file (default: $PLAYBOOK_CONFIG or playbook.yaml)")
    p.add_argument("--allow-cidr", action="append", metavar="CIDR",
                   help=f"a CIDR the BI proxy admits (repeatable; required on aws; or ${ENV_PROXY_ALLOW})")
    p.add_argument("--nat-gateways", choices=["single", "per-az"], default="single",
                   help="one shared NAT gateway (cheaper) or one per AZ (survives an AZ outage)")
    p.add_argument("--cluster-mode", choices=["serverless", "provisioned"], default="serverless")
    p.set_defaults(func=cmd_provision)
