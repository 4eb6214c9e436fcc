"""`playbook provision --target local|aws`: create or update every stack, idempotently, through change sets.

Order: storage (the artifact bucket), then the artifacts (function zip, layer, validated configuration),
then network, database, the ingest and reporting roles' secrets, pipeline and proxy, each fed the outputs of
the ones before. A stack whose template and parameters are unchanged gets a change set with no changes,
which is deleted: a second run reports "no changes" everywhere. What differs between the local stack and
AWS is the target's (playbook.targets): locally the same templates go to the moto server, and every resource
moto does not create is listed with what stands in for it (see playbook/stand_ins.py). The command then has
the deployed migrate function apply the schema and give the roles their logins, on either target.
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
    missing: list[Any]  # stand_ins.Missing, each with what stands in for it
    notes: list[str]
    stand_ins: bool = False  # whether the target stands in for what its CloudFormation does not create

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


def upload_artifacts(s3, bucket: str, config, target, build_dir: Path) -> dict[str, str]:
    """The function zip, the target's dependency layer and config/pipeline.json, under content-addressed keys."""
    from playbook.package import build_function_zip, sha256

    code = build_function_zip(build_dir)
    layer = target.build_layer(build_dir)
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
def resolve_allow_list(target, allow: list[str] | None) -> list[str]:
    """The BI proxy's allow-list: given, from $PLAYBOOK_PROXY_ALLOW, or the target's default (none on AWS)."""
    from playbook.templates import validate_cidrs

    given = list(allow or []) or [c for c in os.environ.get(ENV_PROXY_ALLOW, "").split(",") if c.strip()]
    if not given:
        if target.default_allow_list is None:
            raise PlaybookError(f"provisioning {target} needs the proxy's allow-list: pass --allow-cidr CIDR (your "
                                f"office or BI tool's public address, e.g. 203.0.113.10/32) or set {ENV_PROXY_ALLOW}")
        given = list(target.default_allow_list)
    return validate_cidrs(given)


def provision(target, config_file: str | None = None, allow: list[str] | None = None,
              nat_gateways: str = "single", cluster_mode: str = "serverless") -> Provisioned:
    """Every stack on a target (playbook.targets, activated), created or updated; the warehouse's schema and
    logins are the migrate function's job afterwards (playbook.stages.prepare_warehouse)."""
    import boto3

    from playbook.config import load_config
    from playbook.settings import local_settings
    from playbook.stack_outputs import stack_name, stack_prefix
    from playbook.templates import render_all

    allow_list = resolve_allow_list(target, allow)
    config = load_config(config_file)
    settings = local_settings()
    region = boto3.session.Session().region_name
    prefix = stack_prefix()
    templates = render_all(config, allow_list)
    target.adapt_templates(templates)
    cfn, s3 = boto3.client("cloudformation"), boto3.client("s3")
    results: list[StackResult] = []
    outputs: dict[str, str] = {}
    missing: list[Any] = []
    notes: list[str] = []

    def deploy(part: str, parameters: dict[str, str], database_note: str = "") -> None:
        name = stack_name(part, prefix)
        template = templates[part]
        parameters = {"Prefix": prefix, **parameters}
        url = _template_url(s3, outputs["ArtifactBucketName"], region, part, template) if part != "storage" else None
        action = deploy_stack(cfn, name, template, parameters, template_url=url, delay=target.stack_poll_s)
        gone, partial = target.stand_ins(cfn, name, template, parameters, database_note)
        missing.extend(gone)
        notes.extend(partial)
        got = target.stack_outputs_of(cfn, name) or {}
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
    deploy("database", database_params, target.stand_in_database(prefix))
    role_secrets = target.role_secrets()
    deploy("pipeline", {
        "IngestDatabaseSecretArn": role_secrets["pipeline_ingest"],
        "ReportingDatabaseSecretArn": role_secrets["pipeline_reporting"],
        "DatabaseSslMode": target.database_ssl_mode,
        "ArtifactBucket": outputs["ArtifactBucketName"], "AccessLogsBucket": outputs["AccessLogsBucketName"],
        **keys, "AppSubnetIds": outputs["AppSubnetIds"], "LambdaSecurityGroupId": outputs["LambdaSecurityGroupId"],
        "DatabaseSecretArn": outputs["DatabaseSecretArn"], "DatabaseHost": outputs["ClusterEndpoint"],
        "DatabasePort": outputs["ClusterPort"], "DatabaseName": outputs["DatabaseName"],
        "SenderIdentity": outputs["SenderIdentity"]})
    deploy("proxy", {"PublicSubnetId": outputs["PublicSubnetIds"].split(",")[0],
                     "ProxySecurityGroupId": outputs["ProxySecurityGroupId"],
                     "DatabaseEndpoint": outputs["ClusterEndpoint"], "DatabasePort": outputs["ClusterPort"]})
    return Provisioned(target.name, results, outputs, missing, notes, stand_ins=target.record_stand_ins(missing))


def report(result: Provisioned) -> str:
    lines = [f"provisioned on {result.target}:"]
    lines += [f"  {s.name:<28} {s.action}" for s in result.stacks]
    lines.append("outputs:")
    lines += [f"  {key} = {value}" for key, value in sorted(result.outputs.items())]
    if result.stand_ins:
        lines.append(f"not created by moto, and what stands in for them locally ({len(result.missing)}):")
        lines += [f"  {m.stack} {m.logical_id} ({m.type}): {m.stand_in}" for m in result.missing]
        lines.append("modelled in part by moto:")
        lines += [f"  {note}" for note in result.notes]
    lines.append("changes: " + ("applied" if result.changed else "none (everything was up to date)"))
    return "\n".join(lines)


# -- CLI -------------------------------------------------------------------------------------------------
def cmd_provision(args: argparse.Namespace) -> int:
    from playbook.stages import prepare_warehouse
    from playbook.targets import target_named

    target = target_named(args.target)
    allow = resolve_allow_list(target, args.allow_cidr)  # before anything is reached: a wrong list costs nothing
    result = provision(target.activate(), args.config, allow, args.nat_gateways, args.cluster_mode)
    print(report(result))
    warehouse = prepare_warehouse(target)
    applied = warehouse["migrations_applied"]
    print(f"warehouse (the {target.function('Migrate')} function): "
          f"{'applied ' + ', '.join(applied) if applied else 'schema up to date'}; logins for "
          f"{', '.join(warehouse['logins']) or 'no role'}")
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
