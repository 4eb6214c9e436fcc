"""What stands in locally for the resources moto's CloudFormation cannot create.

moto 5 skips some resource types with a warning (the Aurora cluster, schedules, alarms, bucket policies,
the SES identity...). After each local deployment the playbook compares the template's resources with
what `list_stack_resources` reports, and gives every missing one its stand-in: applied through the
service's API where moto has one (bucket policies, the sender identity), recorded in the state directory
where a playbook part plays the role (schedules for the local scheduler, the landing notifications for
the local runtime), or the local database itself. Nothing is skipped silently: each appears in the report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

# Resources moto does create, but models only in part: said in the report too.
PARTIAL = {
    "AWS::RDS::DBInstance": "moto ignores DBClusterIdentifier and records a standalone instance; the local "
                            "database stands in for the cluster's writer",
    "AWS::Lambda::Function": "moto stores the function (code, handler, environment); the playbook's local "
                             "runtime executes it from the deployed zip",
    "AWS::EC2::Instance": "a record only; `playbook proxy up` runs the same nginx configuration on loopback",
}


# Missing resources whose stand-in is a fact of the local stack, not an action.
STATIC = {
    "AWS::EC2::SecurityGroupIngress": "none needed: everything listens on 127.0.0.1 only; the local database "
                                      "admits loopback clients (pg_hba) and the local proxy enforces the allow-list",
    "AWS::RDS::DBSubnetGroup": "none needed: the local database listens on 127.0.0.1 only",
    "AWS::Lambda::Permission": "the landing notifications recorded in notifications.json, which the local runtime "
                               "follows; no invoke permission is checked locally",
    "AWS::SNS::Subscription": "none that mails anyone: no alarm is evaluated locally (alarms.json records them)",
}


@dataclass
class Missing:
    stack: str
    logical_id: str
    type: str
    stand_in: str = "no local stand-in"


@dataclass
class Context:
    """What the resolver knows about one deployed stack."""

    stack: str
    template: dict[str, Any]
    parameters: dict[str, str]
    physical: dict[str, str]  # logical id -> physical id of the resources moto created
    region: str
    account: str
    attributes: dict[tuple[str, str], str] = field(default_factory=dict)  # stand-in GetAtt values


def account_id() -> str:
    return boto3.client("sts").get_caller_identity()["Account"]


# -- conditions and intrinsic functions, as far as these templates use them ----------------------------
def parameter_values(template: dict[str, Any], given: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, spec in (template.get("Parameters") or {}).items():
        value = given.get(name, spec.get("Default"))
        if isinstance(value, str) and spec.get("Type", "").startswith("List<"):
            value = value.split(",")
        values[name] = value
    return values


def condition(template: dict[str, Any], name: str, params: dict[str, Any]) -> bool:
    def ev(node: Any) -> Any:
        if isinstance(node, dict):
            (fn, arg), = node.items()
            if fn == "Ref":
                return params.get(arg)
            if fn == "Condition":
                return condition(template, arg, params)
            if fn == "Fn::Equals":
                return str(ev(arg[0])) == str(ev(arg[1]))
            if fn == "Fn::Not":
                return not ev(arg[0])
            if fn == "Fn::And":
                return all(ev(a) for a in arg)
            if fn == "Fn::Or":
                return any(ev(a) for a in arg)
            raise ValueError(f"unsupported condition function {fn}")
        return node
    return bool(ev(template["Conditions"][name]))


def expected_resources(template: dict[str, Any], given: dict[str, str]) -> dict[str, str]:
    """Logical id -> type of every resource the template creates with these parameters."""
    params = parameter_values(template, given)
    return {lid: res["Type"] for lid, res in template["Resources"].items()
            if "Condition" not in res or condition(template, res["Condition"], params)}


class Resolver:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.params = parameter_values(ctx.template, ctx.parameters)
        self.pseudo = {"AWS::Region": ctx.region, "AWS::AccountId": ctx.account, "AWS::Partition": "aws",
                       "AWS::StackName": ctx.stack, "AWS::URLSuffix": "amazonaws.com"}

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            return self.params[name]
        if name in self.ctx.physical:
            return self.ctx.physical[name]
        raise KeyError(f"Ref {name}")

    def get_att(self, logical: str, attr: str) -> str:
        if (logical, attr) in self.ctx.attributes:
            return self.ctx.attributes[(logical, attr)]
        rtype = self.ctx.template["Resources"][logical]["Type"]
        phys = self.ctx.physical.get(logical)
        if phys is None:
            raise KeyError(f"GetAtt {logical}.{attr}: the resource was not created")
        if attr == "Arn":
            if rtype == "AWS::S3::Bucket":
                return f"arn:aws:s3:::{phys}"
            if rtype == "AWS::Lambda::Function":
                return boto3.client("lambda").get_function(FunctionName=phys)["Configuration"]["FunctionArn"]
            if rtype == "AWS::IAM::Role":
                return boto3.client("iam").get_role(RoleName=phys)["Role"]["Arn"]
            if rtype == "AWS::SQS::Queue":
                return boto3.client("sqs").get_queue_attributes(
                    QueueUrl=phys, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        if rtype == "AWS::SQS::Queue" and attr == "QueueName":
            return phys.rsplit("/", 1)[-1]
        raise KeyError(f"GetAtt {logical}.{attr} ({rtype})")

    def __call__(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self(n) for n in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Ref":
                return self.ref(arg)
            if fn == "Fn::GetAtt":
                logical, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(logical, attr)
            if fn == "Fn::Sub":
                text, local = (arg, {}) if isinstance(arg, str) else (arg[0], {k: self(v) for k, v in arg[1].items()})
                return self._sub(text, local)
            if fn == "Fn::Join":
                return arg[0].join(str(x) for x in self(arg[1]))
            if fn == "Fn::Select":
                return self(arg[1])[int(self(arg[0]))]
            if fn.startswith("Fn::"):
                raise KeyError(f"unsupported function {fn}")
        return {k: self(v) for k, v in node.items()}

    def _sub(self, text: str, local: dict[str, Any]) -> str:
        def one(match: re.Match) -> str:
            name = match.group(1)
            if name in local:
                return str(local[name])
            if "." in name and not name.startswith("AWS::"):
                return self.get_att(*name.split(".", 1))
            return str(self.ref(name))
        return re.sub(r"\$\{([^}!]+)\}", one, text)


# -- the stand-ins ------------------------------------------------------------------------------------------
def _write_json(path: Path, key: str, records: list[dict[str, Any]]) -> None:
    """Records of one stack's resources, merged into a state-dir file keyed by stack."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = records
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def apply(ctx: Context, missing: list[Missing], state_dir: Path, database_note: str) -> None:
    """Give every missing resource of one stack its stand-in and say what it is."""
    resolve = Resolver(ctx)
    resources = ctx.template["Resources"]
    schedules, alarms = [], []
    for item in missing:
        needs_values = item.type in ("AWS::S3::BucketPolicy", "AWS::SES::EmailIdentity", "AWS::Scheduler::Schedule",
                                     "AWS::CloudWatch::Alarm")
        props = resolve(resources[item.logical_id].get("Properties", {})) if needs_values else {}
        if item.type == "AWS::S3::BucketPolicy":
            item.stand_in = _bucket_policy(props["Bucket"], props["PolicyDocument"])
        elif item.type == "AWS::SES::EmailIdentity":
            boto3.client("ses").verify_email_identity(EmailAddress=props["EmailIdentity"])
            item.stand_in = f"{props['EmailIdentity']} verified through the SES API"
        elif item.type == "AWS::Scheduler::Schedule":
            target = props["Target"]
            schedules.append({"name": props["Name"], "expression": props["ScheduleExpression"],
                              "timezone": props.get("ScheduleExpressionTimezone", "UTC"),
                              "start_date": props.get("StartDate"),
                              "state": props.get("State", "ENABLED"), "target_arn": target["Arn"],
                              "function": target["Arn"].rsplit(":", 1)[-1], "input": json.loads(target["Input"]),
                              "retry_policy": target.get("RetryPolicy"),
                              "dead_letter_arn": (target.get("DeadLetterConfig") or {}).get("Arn")})
            item.stand_in = f"the playbook's local scheduler (recorded in {state_dir / 'schedules.json'})"
        elif item.type == "AWS::CloudWatch::Alarm":
            alarms.append({"logical_id": item.logical_id, "description": props.get("AlarmDescription"),
                           "namespace": props["Namespace"], "metric": props["MetricName"],
                           "dimensions": props.get("Dimensions"), "threshold": props["Threshold"],
                           "comparison": props["ComparisonOperator"]})
            item.stand_in = ("none that pages anyone: a failed local run shows in the runtime's output and "
                             f"meta.batches (recorded in {state_dir / 'alarms.json'})")
        elif item.type == "AWS::RDS::DBCluster":
            item.stand_in = database_note
        elif item.type in STATIC:
            item.stand_in = STATIC[item.type]
        elif item.type == "AWS::Lambda::LayerVersion":
            item.stand_in = ("the playbook's virtual environment, which installs lambda_src/requirements.txt (a "
                             "small local layer zip is uploaded to the artifact bucket for the record)")
        elif item.type == "AWS::RDS::DBClusterParameterGroup":
            item.stand_in = "the local database's own settings (loopback only, so TLS is not enforced there)"
    _write_json(state_dir / "schedules.json", ctx.stack, sorted(schedules, key=lambda s: s["name"]))
    _write_json(state_dir / "alarms.json", ctx.stack, sorted(alarms, key=lambda a: a["logical_id"]))


def _bucket_policy(bucket: str, document: dict[str, Any]) -> str:
    """Apply a bucket policy through the S3 API, less its TLS-only statements.

    moto enforces bucket policies, and the local endpoint is plain HTTP on loopback: a deny on
    aws:SecureTransport=false would refuse every local request, so those statements are left out here.
    """
    def tls_only(statement: dict[str, Any]) -> bool:
        return "aws:SecureTransport" in json.dumps(statement.get("Condition", {}))

    kept = [s for s in document.get("Statement", []) if not tls_only(s)]
    dropped = len(document.get("Statement", [])) - len(kept)
    note = f" ({dropped} TLS-only statement(s) left out: the local endpoint is HTTP on loopback)" if dropped else ""
    if kept:
        boto3.client("s3").put_bucket_policy(Bucket=bucket, Policy=json.dumps({**document, "Statement": kept}))
        return f"applied to bucket {bucket} through the S3 API{note}"
    return f"nothing to apply to bucket {bucket}{note}"


def apply_bucket_properties(ctx: Context, state_dir: Path) -> list[str]:
    """moto's CloudFormation applies only a bucket's encryption: apply the rest through the S3 API.

    Versioning and the public access block are set; the landing notifications are recorded for the local
    runtime (moto would try to run the function in a container). Returns what was done, for the report.
    """
    s3 = boto3.client("s3")
    resolve = Resolver(ctx)
    notes, notifications = [], []
    for lid, res in ctx.template["Resources"].items():
        if res["Type"] != "AWS::S3::Bucket" or lid not in ctx.physical:
            continue
        bucket = ctx.physical[lid]
        props = res.get("Properties", {})
        done = []
        if props.get("VersioningConfiguration"):
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={
                "Status": props["VersioningConfiguration"]["Status"]})
            done.append("versioning")
        if props.get("PublicAccessBlockConfiguration"):
            s3.put_public_access_block(Bucket=bucket,
                                       PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"])
            done.append("public access block")
        for conf in (props.get("NotificationConfiguration") or {}).get("LambdaConfigurations", []):
            rules = conf.get("Filter", {}).get("S3Key", {}).get("Rules", [])
            arn = resolve(conf["Function"])
            notifications.append({"bucket": bucket, "event": conf["Event"], "function_arn": arn,
                                  "function": arn.rsplit(":", 1)[-1],
                                  "prefix": next((r["Value"] for r in rules if r["Name"] == "prefix"), "")})
        if notifications:
            done.append(f"notifications recorded in {state_dir / 'notifications.json'}")
        notes.append(f"bucket {bucket}: {', '.join(done)} applied through the S3 API; lifecycle rules and "
                     "access logging are not modelled locally")
    _write_json(state_dir / "notifications.json", ctx.stack, sorted(notifications, key=lambda n: n["prefix"]))
    return notes


def missing_outputs(ctx: Context, outputs: dict[str, str]) -> dict[str, str]:
    """Values for the template outputs CloudFormation could not give, from the stand-ins' attributes."""
    resolve = Resolver(ctx)
    values = {}
    for key, spec in (ctx.template.get("Outputs") or {}).items():
        if key not in outputs:
            try:
                values[key] = str(resolve(spec["Value"]))
            except KeyError:
                continue  # it names a resource nothing stands in for: reported as an output moto cannot give
    return values
