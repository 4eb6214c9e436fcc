"""`playbook provision --target local|aws`: create or update every stack, idempotently, through change sets.

Order: storage (the artifact bucket), then the artifacts (function zip, layer, validated configuration),
then network, database, the ingest, reporting and monitor roles' secrets, pipeline and proxy, each fed the
outputs of the ones before. A stack whose template and parameters are unchanged gets a change set with no changes,
which is deleted: a second run reports "no changes" everywhere. What differs between the local stack and
AWS is the target's (playbook.targets): locally the same templates go to the moto server, and every resource
moto does not create is listed with what stands in for it (see playbook/stand_ins.py). The command then has
the deployed migrate function apply the schema and give the roles their logins, on either target.

A first create that fails rolls back to ROLLBACK_COMPLETE with nothing of it left (the retained buckets and
the cluster are RetainExceptOnCreate, and the cluster gets its deletion protection only once its create has
completed): the next run deletes that stack and creates it again. Values looked up at provisioning are
resolved once and then kept: the proxy's AMI and the cluster's engine version on a first create, the alarm
email when given; a later run passes the deployed values, so an unchanged deployment is no change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playbook.errors import PlaybookError

CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"]
TEMPLATE_BODY_LIMIT = 51_200
NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
ENV_PROXY_ALLOW = "PLAYBOOK_PROXY_ALLOW"
ENV_RESERVED_CONCURRENCY = "PLAYBOOK_RESERVED_CONCURRENCY"
ENV_ALARM_EMAIL = "PLAYBOOK_ALARM_EMAIL"
RESERVED_CONCURRENCY_SETTING = f"--reserved-concurrency (or {ENV_RESERVED_CONCURRENCY}=1)"
# Lambda refuses a reservation that leaves fewer than this many of the account's concurrent executions unreserved
UNRESERVED_MINIMUM = 100
PROXY_IMAGE_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
ENGINE_MAJOR = "16"  # the database template's parameter group family is aurora-postgresql16
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


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
    settings: list[str] = field(default_factory=list)  # what was chosen or kept, and why, in words

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
    text = "; ".join(reasons[:5]) or "see the stack's events"
    if "already exists" in text:
        text += (" (a resource of that name exists outside the stack, left by an earlier attempt: delete it, then "
                 "provision again)")
    return text


def _stuck_resources(cfn, name: str) -> list[str]:
    """The resources CloudFormation failed to delete, with their physical ids and why."""
    listed = cfn.list_stack_resources(StackName=name).get("StackResourceSummaries", [])
    return [f"{r['LogicalResourceId']} ({r.get('PhysicalResourceId') or 'no physical id'}): "
            f"{r.get('ResourceStatusReason') or r['ResourceStatus']}"
            for r in listed if r.get("ResourceStatus") == "DELETE_FAILED"]


def _recover_failed_create(cfn, name: str, timeout: float, delay: float) -> str:
    """Delete a stack a failed first create left in ROLLBACK_COMPLETE (nothing of it is left: the rollback
    removed what it had made), so that it can be created again. Returns what was done, in words."""
    cfn.delete_stack(StackName=name)
    final = _wait(lambda: _stack_status(cfn, name), lambda s: s in (None, "DELETE_COMPLETE", "DELETE_FAILED"),
                  timeout, f"the deletion of {name}", delay)
    if final == "DELETE_FAILED":
        raise PlaybookError(_stuck_hint(cfn, name, final))
    return (f"stack {name} was ROLLBACK_COMPLETE, left by a first create that failed and rolled back: deleted it "
            "and created it again")


def _stuck_hint(cfn, name: str, status: str) -> str:
    stuck = _stuck_resources(cfn, name)
    what = "; ".join(stuck) if stuck else "see the stack's events"
    return (f"stack {name} is {status}: CloudFormation could not delete {what}. Delete (or empty) those yourself, "
            f"then `aws cloudformation delete-stack --stack-name {name}` and provision again")


def deploy_stack(cfn, name: str, template: dict[str, Any], parameters: dict[str, str], *,
                 template_url: str | None = None, timeout: float = 3600, delay: float = 5,
                 notes: list[str] | None = None) -> str:
    """Create or update one stack through a change set; returns created, updated or no changes. A stack a
    failed first create left in ROLLBACK_COMPLETE is deleted and created again (said in `notes`)."""
    from botocore.exceptions import ClientError

    status = _stack_status(cfn, name)
    if status == "ROLLBACK_COMPLETE":
        done = _recover_failed_create(cfn, name, timeout, delay)
        if notes is not None:
            notes.append(done)
        status = None
    if status in ("ROLLBACK_FAILED", "DELETE_FAILED"):
        raise PlaybookError(_stuck_hint(cfn, name, status))
    if status == "UPDATE_ROLLBACK_FAILED":
        raise PlaybookError(f"stack {name} is UPDATE_ROLLBACK_FAILED: finish its rollback (`aws cloudformation "
                            f"continue-update-rollback --stack-name {name}`; its events name what blocks it: "
                            f"{_failure_reasons(cfn, name)}) and provision again")
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
        again = (" Once the cause is fixed, provision again: it deletes the rolled-back stack and creates it anew."
                 if final == "ROLLBACK_COMPLETE" else "")
        raise PlaybookError(f"stack {name} ended {final}: {_failure_reasons(cfn, name)}.{again}")
    return "created" if kind == "CREATE" else "updated"


def stack_parameters(cfn, name: str) -> dict[str, str]:
    """A deployed stack's parameter values (an SSM-typed parameter's resolved value); {} when there is none."""
    status = _stack_status(cfn, name)
    if status in (None, "ROLLBACK_COMPLETE", "REVIEW_IN_PROGRESS"):
        return {}
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    return {p["ParameterKey"]: p.get("ResolvedValue") or p.get("ParameterValue", "")
            for p in stack.get("Parameters", [])}


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


# -- what provisioning checks and looks up -----------------------------------------------------------------
def reserved_concurrency_setting(given: bool | None) -> bool:
    """Whether the functions reserve their concurrency: given, else $PLAYBOOK_RESERVED_CONCURRENCY; off by default."""
    if given is not None:
        return given
    return os.environ.get(ENV_RESERVED_CONCURRENCY, "").strip().lower() in ("1", "true", "yes", "on")


def check_concurrency_quota(lambda_client, wanted: dict[str, int]) -> str:
    """Refuse reservations the account cannot afford: Lambda keeps UNRESERVED_MINIMUM concurrent executions
    unreserved, and a fresh account's quota is often 10. `wanted` is {function name: reserved executions};
    what those functions already reserve is counted back. Returns the check's outcome in words."""
    limits = lambda_client.get_account_settings()["AccountLimit"]
    unreserved = int(limits["UnreservedConcurrentExecutions"])
    total = int(limits.get("ConcurrentExecutions", unreserved))
    held = 0
    for name in wanted:
        try:
            held += int(lambda_client.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")
                        or 0)
        except lambda_client.exceptions.ResourceNotFoundException:
            continue
    after = unreserved + held - sum(wanted.values())
    if after < UNRESERVED_MINIMUM:
        raise PlaybookError(
            f"{RESERVED_CONCURRENCY_SETTING} reserves {sum(wanted.values())} concurrent executions for the pipeline's "
            f"functions, which would leave {after} of this account's {total} unreserved; Lambda keeps at least "
            f"{UNRESERVED_MINIMUM}. Ask for a higher 'Concurrent executions' quota (Service Quotas, AWS Lambda) or "
            "provision without the setting (the functions then share the account's unreserved pool)")
    return (f"reserved concurrency: {sum(wanted.values())} executions reserved, {after} of the account's {total} "
            "left unreserved")


# AWS's global RDS CA bundle: every region's root CAs (docs.aws.amazon.com, "Using SSL/TLS to encrypt a
# connection to a DB cluster")
RDS_CA_BUNDLE_URL = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"


def check_rds_ca_bundle(path: Path) -> int:
    """The RDS CA bundle the functions verify the cluster's certificate with (sslmode verify-full): present in
    the function zip's source and holding Amazon RDS CA certificates. Returns how many it holds."""
    hint = f"delete it and provision again, or run `make rds-ca-bundle` (it fetches {RDS_CA_BUNDLE_URL})"
    if not path.exists():
        raise PlaybookError(f"{path} is missing: the functions verify the cluster's certificate with it; {hint}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise PlaybookError(f"{path} holds no readable PEM certificates ({exc.reason}): {hint}") from None
    rds = [c for c in context.get_ca_certs() if "Amazon RDS" in json.dumps(c.get("subject"))]
    if not rds:
        raise PlaybookError(f"{path} holds no Amazon RDS CA certificate: {hint}")
    return len(rds)


def rds_ca_bundle(path: Path, url: str = RDS_CA_BUNDLE_URL, refresh: bool = False) -> tuple[int, str]:
    """The RDS CA bundle at `path`, fetched from AWS (over verified HTTPS) when it is missing or `refresh` is
    asked, and checked before it replaces the file. Returns (how many Amazon RDS CAs it holds, what was done)."""
    import urllib.request

    if path.exists() and not refresh:
        return check_rds_ca_bundle(path), f"kept {path.name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fetched = path.with_suffix(".fetched")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - the URL is AWS's or a test's
            fetched.write_bytes(response.read())
    except OSError as exc:
        raise PlaybookError(f"could not fetch the RDS CA bundle from {url} ({exc}): the functions verify the "
                            "cluster's certificate with it; check this machine reaches it, then provision again"
                            ) from None
    try:
        count = check_rds_ca_bundle(fetched)
    except PlaybookError:
        fetched.unlink()
        raise
    fetched.replace(path)
    return count, f"fetched from {url}"


def alarm_email_setting(given: str | None, deployed: str) -> tuple[str, str]:
    """The alarm topic's email subscription: given (`none` removes it), else $PLAYBOOK_ALARM_EMAIL, else the one
    the pipeline stack has. Returns (address or '', what was decided in words)."""
    value, source = given, "given"
    if value is None and os.environ.get(ENV_ALARM_EMAIL):
        value, source = os.environ[ENV_ALARM_EMAIL], f"from {ENV_ALARM_EMAIL}"
    if value is None:
        value, source = deployed, "kept from the pipeline stack"
    value = value.strip()
    if value.lower() == "none":
        value = ""
    if value and not _EMAIL.match(value):
        raise PlaybookError(f"--alarm-email {value!r} is not an email address")
    if not value:
        return "", ("alarm email: none, so the alarms reach nobody; give --alarm-email ADDRESS (or "
                    f"{ENV_ALARM_EMAIL}) to subscribe one")
    confirm = "" if value == deployed else "; SNS mails it a confirmation link, and the alarms reach it once followed"
    return value, f"alarm email: {value} ({source}){confirm}"


def proxy_image(ssm, deployed: str, refresh: bool) -> tuple[str, str]:
    """The proxy's AMI: the one it runs, unless asked to refresh or the stack is new; then the latest Amazon
    Linux 2023 AMI from its public SSM parameter. Returns (AMI id, what was decided in words)."""
    if deployed.startswith("ami-") and not refresh:
        return deployed, f"proxy AMI: {deployed}, the one it runs (--refresh-proxy-ami replaces it with the latest)"
    latest = ssm.get_parameter(Name=PROXY_IMAGE_PARAMETER)["Parameter"]["Value"]
    why = "asked to refresh" if deployed else "a new proxy"
    replaced = f"; replaces the proxy instance (was {deployed})" if deployed and deployed != latest else ""
    return latest, f"proxy AMI: {latest}, the latest Amazon Linux 2023 ({why}){replaced}"


def engine_version(target, given: str | None, deployed: str, fallback: str) -> tuple[str, str]:
    """The cluster's engine version: given, else the deployed one, else the region's current default minor of
    the major version (the target's to say), else the template's default. Returns (version, in words)."""
    if given:
        if not re.match(rf"^{ENGINE_MAJOR}\.\d+$", given):
            raise PlaybookError(f"--engine-version {given!r}: give an Aurora PostgreSQL {ENGINE_MAJOR} version such "
                                f"as {fallback}")
        return given, f"engine version: {given} (given)"
    if deployed:
        return deployed, f"engine version: {deployed}, the deployed one (RDS applies minor upgrades itself)"
    default = target.default_engine_version(ENGINE_MAJOR)
    if default:
        return default, f"engine version: {default}, the region's current default for PostgreSQL {ENGINE_MAJOR}"
    return fallback, f"engine version: {fallback}, the template's default"


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
              nat_gateways: str = "single", cluster_mode: str = "serverless", *,
              reserved_concurrency: bool | None = None, alarm_email: str | None = None,
              engine: str | None = None, refresh_proxy_ami: bool = False) -> Provisioned:
    """Every stack on a target (playbook.targets, activated), created or updated; the warehouse's schema and
    logins are the migrate function's job afterwards (playbook.stages.prepare_warehouse).

    reserved_concurrency (default: $PLAYBOOK_RESERVED_CONCURRENCY, else off) reserves each function's
    concurrency, checked first against the account's quota where the target has one; alarm_email subscribes an
    address to the alarm topic (`none` removes it; by default the deployed one is kept); engine pins the
    cluster's engine version; refresh_proxy_ami moves the proxy to the latest AMI (replacing its instance)."""
    import boto3

    from playbook.config import load_config
    from playbook.deploy import refuse_unreachable_apis
    from playbook.settings import PROJECT_ROOT, local_settings
    from playbook.stack_outputs import stack_name, stack_prefix
    from playbook.stages import refresh_report_schedule
    from playbook.templates import RDS_CA_BUNDLE_FILE, render_all, reservations

    allow_list = resolve_allow_list(target, allow)
    config = load_config(config_file)
    refuse_unreachable_apis(target, config)
    settings = local_settings()
    region = boto3.session.Session().region_name
    prefix = stack_prefix()
    cfn, s3 = boto3.client("cloudformation"), boto3.client("s3")
    chosen: list[str] = []
    # everything that can refuse does so before a stack is touched
    reserve = reserved_concurrency_setting(reserved_concurrency)
    if reserve and target.checks_account_quotas:
        wanted = {f"{prefix}-{suffix}": n for suffix, n in reservations(config).items()}
        chosen.append(check_concurrency_quota(boto3.client("lambda"), wanted))
    elif reserve:
        chosen.append(f"reserved concurrency: on ({sum(reservations(config).values())} executions; {target} has "
                      "no account quota to check)")
    else:
        chosen.append(f"reserved concurrency: off (the functions share the account's unreserved pool; "
                      f"{RESERVED_CONCURRENCY_SETTING} reserves {sum(reservations(config).values())})")
    if target.database_ssl_root_cert:
        count, done = rds_ca_bundle(RDS_CA_BUNDLE_FILE)
        chosen.append(f"database TLS: {target.database_ssl_mode} against the RDS CA bundle ({count} CA certificates "
                      f"in {RDS_CA_BUNDLE_FILE.relative_to(PROJECT_ROOT)}, {done})")
    deployed = {part: stack_parameters(cfn, stack_name(part, prefix)) for part in ("database", "pipeline", "proxy")}
    alarm, said = alarm_email_setting(alarm_email, deployed["pipeline"].get("AlarmEmail", ""))
    chosen.append(said)
    templates = render_all(config, allow_list, reserved_concurrency=reserve)
    version, said = engine_version(target, engine, deployed["database"].get("EngineVersion", ""),
                                   templates["database"]["Parameters"]["EngineVersion"]["Default"])
    chosen.append(said)
    image, said = proxy_image(boto3.client("ssm"), deployed["proxy"].get("ImageId", ""), refresh_proxy_ami)
    chosen.append(said)
    target.adapt_templates(templates)
    results: list[StackResult] = []
    outputs: dict[str, str] = {}
    missing: list[Any] = []
    notes: list[str] = []

    def deploy(part: str, parameters: dict[str, str], database_note: str = "") -> str:
        name = stack_name(part, prefix)
        template = templates[part]
        parameters = {"Prefix": prefix, **parameters}
        url = _template_url(s3, outputs["ArtifactBucketName"], region, part, template) if part != "storage" else None
        action = deploy_stack(cfn, name, template, parameters, template_url=url, delay=target.stack_poll_s,
                              notes=chosen)
        if part == "database" and parameters.get("DeletionProtection") == "false":
            # created without deletion protection, so that a failed first create could remove the cluster:
            # protected now that it is complete
            deploy_stack(cfn, name, template, {**parameters, "DeletionProtection": "true"}, template_url=url,
                         delay=target.stack_poll_s)
            chosen.append(f"stack {name}: the cluster's deletion protection turned on once its create completed")
        gone, partial = target.stand_ins(cfn, name, template, parameters, database_note)
        missing.extend(gone)
        notes.extend(partial)
        got = target.stack_outputs_of(cfn, name) or {}
        unavailable = sorted(set(template.get("Outputs") or {}) - set(got))
        if unavailable:
            notes.append(f"{name}: outputs nothing stands in for locally: {', '.join(unavailable)}")
        results.append(StackResult(part, name, action, got))
        outputs.update(got)
        return action

    deploy("storage", {"SenderAddress": config.reports.email.sender})
    keys = upload_artifacts(s3, outputs["ArtifactBucketName"], config, target, settings.state_dir / "build")
    deploy("network", {"NatGatewayMode": nat_gateways})
    database_params = {k: outputs[k] for k in ("VpcId", "LambdaSecurityGroupId", "ProxySecurityGroupId")}
    first_cluster = target.creates_cluster and not deployed["database"]
    database_params.update(DbSubnetIds=outputs["DbSubnetIds"], ClusterMode=cluster_mode, EngineVersion=version,
                           DeletionProtection="false" if first_cluster else "true")
    deploy("database", database_params, target.stand_in_database(prefix))
    role_secrets = target.role_secrets()
    deploy("pipeline", {
        "IngestDatabaseSecretArn": role_secrets["pipeline_ingest"],
        "ReportingDatabaseSecretArn": role_secrets["pipeline_reporting"],
        "MonitorDatabaseSecretArn": role_secrets["pipeline_monitor"],
        "DatabaseSslMode": target.database_ssl_mode, "DatabaseSslRootCert": target.database_ssl_root_cert,
        "AlarmEmail": alarm,
        "ArtifactBucket": outputs["ArtifactBucketName"], "AccessLogsBucket": outputs["AccessLogsBucketName"],
        **keys, "AppSubnetIds": outputs["AppSubnetIds"], "LambdaSecurityGroupId": outputs["LambdaSecurityGroupId"],
        "DatabaseSecretArn": outputs["DatabaseSecretArn"], "DatabaseHost": outputs["ClusterEndpoint"],
        "DatabasePort": outputs["ClusterPort"], "DatabaseName": outputs["DatabaseName"],
        "SenderIdentity": outputs["SenderIdentity"]})
    deploy("proxy", {"PublicSubnetId": outputs["PublicSubnetIds"].split(",")[0],
                     "ProxySecurityGroupId": outputs["ProxySecurityGroupId"], "ImageId": image,
                     "DatabaseEndpoint": outputs["ClusterEndpoint"], "DatabasePort": outputs["ClusterPort"]})
    refresh_report_schedule(target, config)
    return Provisioned(target.name, results, outputs, missing, notes, stand_ins=target.record_stand_ins(missing),
                       settings=chosen)


def report(result: Provisioned) -> str:
    lines = [f"provisioned on {result.target}:"]
    lines += [f"  {s.name:<28} {s.action}" for s in result.stacks]
    if result.settings:
        lines.append("settings and what was done:")
        lines += [f"  {line}" for line in result.settings]
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
    result = provision(target.activate(), args.config, allow, args.nat_gateways, args.cluster_mode,
                       reserved_concurrency=args.reserved_concurrency, alarm_email=args.alarm_email,
                       engine=args.engine_version, refresh_proxy_ami=args.refresh_proxy_ami)
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
    p.add_argument("--reserved-concurrency", action="store_true", default=None,
                   help=f"reserve each function's concurrency (off by default; or ${ENV_RESERVED_CONCURRENCY}=1); on "
                        f"AWS the account must keep {UNRESERVED_MINIMUM} executions unreserved after it")
    p.add_argument("--alarm-email", metavar="ADDRESS",
                   help=f"subscribe this address to the pipeline's alarms (or ${ENV_ALARM_EMAIL}; `none` removes "
                        "it; by default the deployed one is kept)")
    p.add_argument("--engine-version", metavar="VERSION",
                   help=f"Aurora PostgreSQL {ENGINE_MAJOR}.x version (default: the deployed one, or on a first "
                        "create the region's current default)")
    p.add_argument("--refresh-proxy-ami", action="store_true",
                   help="move the BI proxy to the latest Amazon Linux 2023 AMI (replaces its instance; by default "
                        "the AMI it runs is kept)")
    p.set_defaults(func=cmd_provision)
