"""`playbook provision --target local` through the CLI, on the session's own local stack."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pytest

PREFIX = "pbinfra"


def playbook(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "playbook", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PLAYBOOK_STACK_PREFIX": PREFIX, **(env or {})})


def events(cfn) -> dict[str, int]:
    names = [s["StackName"] for s in cfn.describe_stacks()["Stacks"] if s["StackName"].startswith(f"{PREFIX}-")]
    return {n: len(cfn.describe_stack_events(StackName=n)["StackEvents"]) for n in names}


@pytest.fixture(scope="module")
def provisioned(stack):
    cfn = boto3.client("cloudformation")
    first = playbook("provision", "--target", "local")
    assert first.returncode == 0, first.stdout + first.stderr
    after_first = events(cfn)
    second = playbook("provision", "--target", "local")
    assert second.returncode == 0, second.stdout + second.stderr
    return {"first": first.stdout, "second": second.stdout, "events_first": after_first, "events_second": events(cfn),
            "state_dir": Path(os.environ["PLAYBOOK_STATE_DIR"])}


def test_first_run_creates_every_stack_and_second_changes_nothing(provisioned):
    for stack in ("storage", "network", "database", "pipeline", "proxy"):
        assert f"{PREFIX}-{stack}" in provisioned["first"]
    actions = {run: re.findall(rf"^  {PREFIX}-(\w+) +(created|updated|no changes)$", provisioned[run], re.M)
               for run in ("first", "second")}
    assert [a for _, a in actions["first"]] == ["created"] * 5
    assert [a for _, a in actions["second"]] == ["no changes"] * 5
    assert "changes: none" in provisioned["second"]
    assert len(provisioned["events_first"]) == 5
    assert provisioned["events_first"] == provisioned["events_second"], "the second run must not touch a stack"


def test_outputs_are_printed_and_readable_through_stack_outputs(provisioned, stack):
    from playbook.stack_outputs import stack_outputs
    from playbook.targets import LocalTarget

    os.environ["PLAYBOOK_STACK_PREFIX"] = PREFIX
    try:
        outputs = stack_outputs(LocalTarget())
    finally:
        os.environ.pop("PLAYBOOK_STACK_PREFIX")
    for key in ("ArtifactBucketName", "LandingBucketName", "IngestSalesFunctionArn", "MigrateFunctionName",
                "ClusterEndpoint", "DatabaseSecretArn", "ProxyAddress"):
        assert outputs.get(key), key
        assert f"{key} = {outputs[key]}" in provisioned["second"]
    # the outputs name real things: the function exists with the deployed handler and environment
    fn = boto3.client("lambda").get_function(FunctionName=outputs["IngestSalesFunctionName"])["Configuration"]
    assert fn["Handler"] == "pipeline.handlers.ingest_object.handler" and fn["MemorySize"] == 512
    env = fn["Environment"]["Variables"]
    # it logs in as the ingest role; only the migrate function holds the owner's secret
    from playbook.warehouse import secret_arn

    assert env["DB_SECRET_ARN"] == secret_arn("pipeline_ingest") != outputs["DatabaseSecretArn"]
    migrate_env = boto3.client("lambda").get_function(
        FunctionName=outputs["MigrateFunctionName"])["Configuration"]["Environment"]["Variables"]
    assert migrate_env["DB_SECRET_ARN"] == outputs["DatabaseSecretArn"]
    # and it gives every role, the monitor role included, its login from the secret provisioning made for it
    from playbook.warehouse import SECRET_NAMES

    assert json.loads(migrate_env["ROLE_SECRET_ARNS"]) == {role: secret_arn(role) for role in SECRET_NAMES}
    assert "pipeline_monitor" in SECRET_NAMES
    assert env["PIPELINE_CONFIG_URI"] == f"s3://{outputs['ArtifactBucketName']}/config/pipeline.json"
    assert env["LANDING_BUCKET"] == outputs["LandingBucketName"]
    # the database secret holds the local DSN, and no value of it appears in what was printed
    secret = json.loads(boto3.client("secretsmanager").get_secret_value(
        SecretId=outputs["DatabaseSecretArn"])["SecretString"])
    assert secret == {"url": stack["database_url"]}
    password = stack["database_url"].split(":")[2].split("@")[0]
    assert password not in provisioned["first"] + provisioned["second"]


def test_code_config_and_layer_are_in_the_artifact_bucket(provisioned):
    from playbook.config import load_config
    from playbook.stack_outputs import stack_outputs
    from playbook.targets import LocalTarget

    os.environ["PLAYBOOK_STACK_PREFIX"] = PREFIX
    try:
        outputs = stack_outputs(LocalTarget())
    finally:
        os.environ.pop("PLAYBOOK_STACK_PREFIX")
    s3 = boto3.client("s3")
    bucket = outputs["ArtifactBucketName"]
    config = json.loads(s3.get_object(Bucket=bucket, Key="config/pipeline.json")["Body"].read())
    assert config == load_config().model_dump(mode="json")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="lambda/")["Contents"]]
    code_key = next(k for k in keys if k.startswith("lambda/pipeline-"))
    local_zip = provisioned["state_dir"] / "code.zip"
    s3.download_file(bucket, code_key, str(local_zip))
    names = zipfile.ZipFile(local_zip).namelist()
    assert "pipeline/db.py" in names and "pipeline/sql/migrations/001_schemas.sql" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert any(k.startswith("lambda/layer-") for k in keys)


def test_every_skipped_resource_is_listed_with_its_stand_in(provisioned):
    from playbook.templates import STACKS

    state_dir = provisioned["state_dir"]
    recorded = json.loads((state_dir / "stand_ins.json").read_text())["resources"]
    types = {r["type"] for r in recorded}
    assert {"AWS::RDS::DBCluster", "AWS::Scheduler::Schedule", "AWS::CloudWatch::Alarm"} <= types
    cfn = boto3.client("cloudformation")
    for part in STACKS:
        name = f"{PREFIX}-{part}"
        body = cfn.get_template(StackName=name)["TemplateBody"]
        template = json.loads(body) if isinstance(body, str) else body
        created = {r["LogicalResourceId"] for r in cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
                   if r.get("LogicalResourceId") and r.get("PhysicalResourceId")}
        listed = {r["logical_id"] for r in recorded if r["stack"] == name}
        conditional = {k for k, v in template["Resources"].items() if "Condition" in v}
        assert set(template["Resources"]) - conditional - created <= listed, f"{name}: skipped silently"
        for r in recorded:
            assert r["stand_in"] and r["stand_in"] != "no local stand-in", r
            assert f"{r['logical_id']} ({r['type']}): " in provisioned["first"]


def test_schedules_are_recorded_for_the_local_scheduler(provisioned):
    from playbook.config import load_config

    config = load_config()
    schedules = json.loads((provisioned["state_dir"] / "schedules.json").read_text())[f"{PREFIX}-pipeline"]
    by_name = {s["name"]: s for s in schedules}
    assert len(by_name) == len(config.sources) + 2
    email = by_name[f"{PREFIX}-send-expense-email"]
    assert (email["expression"], email["timezone"]) == ("cron(0 8 * * ? *)", "Europe/London")
    assert email["function"] == f"{PREFIX}-send-expense-email" and email["input"]["job"] == "send_expense_email"
    sales = by_name[f"{PREFIX}-ingest-sales"]
    assert sales["expression"] == config.sources["sales"].schedule and sales["input"]["source"] == "sales"
    notifications = json.loads((provisioned["state_dir"] / "notifications.json").read_text())[f"{PREFIX}-pipeline"]
    assert {n["prefix"]: n["function"] for n in notifications}["landing/payments/"] == f"{PREFIX}-ingest-payments"


def test_aws_target_refuses_to_run_without_an_allow_list(stack):
    result = playbook("provision", "--target", "aws", env={"AWS_ENDPOINT_URL": ""})
    assert result.returncode == 2
    assert "--allow-cidr" in result.stderr
    result = playbook("provision", "--target", "aws", "--allow-cidr", "0.0.0.0/0")
    assert result.returncode == 2 and "0.0.0.0/0" in result.stderr


# -- provisioning's decisions, against stand-ins for the AWS APIs -------------------------------------------
class NotFound(Exception):
    pass


class FakeCloudFormation:
    """CloudFormation as deploy_stack uses it, holding one stack in a given state."""

    def __init__(self, status: str | None, stuck: list[dict] | None = None):
        from botocore.exceptions import ClientError

        self.status, self.stuck, self.calls = status, stuck or [], []
        self._missing = ClientError({"Error": {"Code": "ValidationError", "Message": "Stack x does not exist"}},
                                    "DescribeStacks")

    def describe_stacks(self, StackName):
        self.calls.append(("describe_stacks", self.status))
        if self.status is None:
            raise self._missing
        return {"Stacks": [{"StackName": StackName, "StackStatus": self.status, "Parameters": []}]}

    def delete_stack(self, StackName):
        self.calls.append(("delete_stack", self.status))
        self.status = None

    def create_change_set(self, StackName, ChangeSetName, ChangeSetType, **_):
        self.calls.append(("create_change_set", ChangeSetType))
        self.kind = ChangeSetType

    def describe_change_set(self, StackName, ChangeSetName):
        return {"Status": "CREATE_COMPLETE"}

    def execute_change_set(self, StackName, ChangeSetName):
        self.calls.append(("execute_change_set", self.kind))
        self.status = "CREATE_COMPLETE" if self.kind == "CREATE" else "UPDATE_COMPLETE"

    def describe_stack_events(self, StackName):
        return {"StackEvents": []}

    def list_stack_resources(self, StackName):
        return {"StackResourceSummaries": self.stuck}


def test_a_stack_a_failed_first_create_left_behind_is_deleted_and_created_again():
    """ROLLBACK_COMPLETE is what a first create that failed leaves (nothing of it exists any more): provisioning
    deletes that stack, creates it anew and says so, instead of asking for a deletion by hand."""
    from playbook.provision import deploy_stack

    cfn, notes = FakeCloudFormation("ROLLBACK_COMPLETE"), []
    assert deploy_stack(cfn, "pb-storage", {"Resources": {}}, {}, delay=0, notes=notes) == "created"
    steps = [c for c in cfn.calls if c[0] != "describe_stacks"]
    assert steps == [("delete_stack", "ROLLBACK_COMPLETE"), ("create_change_set", "CREATE"),
                     ("execute_change_set", "CREATE")]
    assert notes == ["stack pb-storage was ROLLBACK_COMPLETE, left by a first create that failed and rolled back: "
                     "deleted it and created it again"]
    # a complete stack is updated as before, with nothing deleted
    cfn = FakeCloudFormation("CREATE_COMPLETE")
    assert deploy_stack(cfn, "pb-storage", {"Resources": {}}, {}, delay=0, notes=notes) == "updated"
    assert "delete_stack" not in [c[0] for c in cfn.calls]


@pytest.mark.parametrize("status", ["ROLLBACK_FAILED", "DELETE_FAILED"])
def test_a_stack_cloudformation_could_not_clean_up_names_what_to_remove(status):
    from playbook.errors import PlaybookError
    from playbook.provision import deploy_stack

    stuck = [{"LogicalResourceId": "LandingBucket", "PhysicalResourceId": "pb-landing-1-eu-west-2",
              "ResourceStatus": "DELETE_FAILED", "ResourceStatusReason": "The bucket you tried to delete is not empty"}]
    cfn = FakeCloudFormation(status, stuck)
    with pytest.raises(PlaybookError) as raised:
        deploy_stack(cfn, "pb-pipeline", {"Resources": {}}, {}, delay=0)
    message = str(raised.value)
    assert "LandingBucket (pb-landing-1-eu-west-2): The bucket you tried to delete is not empty" in message
    assert "aws cloudformation delete-stack --stack-name pb-pipeline" in message and "provision again" in message
    assert [c[0] for c in cfn.calls] == ["describe_stacks"], "nothing was changed"


class FakeLambda:
    """Lambda's account settings and the functions' current reservations."""

    class exceptions:  # noqa: N801 - boto3's spelling
        ResourceNotFoundException = NotFound

    def __init__(self, total: int, unreserved: int, held: dict[str, int] | None = None):
        self.total, self.unreserved, self.held = total, unreserved, held or {}

    def get_account_settings(self):
        return {"AccountLimit": {"ConcurrentExecutions": self.total,
                                 "UnreservedConcurrentExecutions": self.unreserved}}

    def get_function_concurrency(self, FunctionName):
        if FunctionName not in self.held:
            raise NotFound(FunctionName)
        return {"ReservedConcurrentExecutions": self.held[FunctionName]}


def test_reserving_concurrency_is_refused_where_the_account_cannot_keep_100_unreserved():
    from playbook.errors import PlaybookError
    from playbook.provision import check_concurrency_quota

    wanted = {"pb-ingest-sales": 2, "pb-ingest-payments": 2, "pb-refresh-marts": 1}
    with pytest.raises(PlaybookError) as raised:
        check_concurrency_quota(FakeLambda(total=10, unreserved=10), wanted)  # a fresh account
    message = str(raised.value)
    assert "--reserved-concurrency" in message and "PLAYBOOK_RESERVED_CONCURRENCY" in message
    assert "leave 5 of this account's 10 unreserved" in message and "at least 100" in message
    assert "104 of" in check_concurrency_quota(FakeLambda(total=1000, unreserved=109), wanted)
    with pytest.raises(PlaybookError):
        check_concurrency_quota(FakeLambda(total=1000, unreserved=104), wanted)
    # what the functions already reserve comes back to the pool first: a second run asks for nothing new
    held = FakeLambda(total=1000, unreserved=100, held={"pb-ingest-sales": 2, "pb-ingest-payments": 2,
                                                        "pb-refresh-marts": 1})
    assert "100 of the account's 1000" in check_concurrency_quota(held, wanted)


def test_provisioning_with_reservation_refuses_before_a_stack_is_touched(monkeypatch, tmp_path):
    """On AWS the quota is checked first: a refused reservation leaves every stack as it was. (The company's
    configuration without the demo's accounting system, which answers on this machine only.)"""
    import boto3
    import yaml

    from playbook.settings import DEFAULT_CONFIG

    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    del data["sources"]["trade_invoices"]
    (tmp_path / "aws.yaml").write_text(yaml.safe_dump(data))

    from playbook.errors import PlaybookError
    from playbook.provision import provision
    from playbook.targets import AwsTarget

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"{name} was called before the quota check refused")

    clients = {"lambda": FakeLambda(total=10, unreserved=10)}
    monkeypatch.setattr(boto3, "client", lambda service, *a, **k: clients.get(service, Untouchable()))
    with pytest.raises(PlaybookError, match="--reserved-concurrency"):
        provision(AwsTarget(), str(tmp_path / "aws.yaml"), allow=["203.0.113.10/32"], reserved_concurrency=True)


def test_reservation_is_off_unless_asked(monkeypatch):
    from playbook.provision import ENV_RESERVED_CONCURRENCY, reserved_concurrency_setting

    monkeypatch.delenv(ENV_RESERVED_CONCURRENCY, raising=False)
    assert reserved_concurrency_setting(None) is False
    monkeypatch.setenv(ENV_RESERVED_CONCURRENCY, "1")
    assert reserved_concurrency_setting(None) is True and reserved_concurrency_setting(False) is False


def test_the_proxy_ami_is_resolved_for_a_new_proxy_and_kept_after():
    from playbook.provision import PROXY_IMAGE_PARAMETER, proxy_image

    class Ssm:
        asked = []

        def get_parameter(self, Name):
            self.asked.append(Name)
            return {"Parameter": {"Value": "ami-0newest"}}

    ssm = Ssm()
    assert proxy_image(ssm, "", refresh=False)[0] == "ami-0newest" and ssm.asked == [PROXY_IMAGE_PARAMETER]
    kept, said = proxy_image(ssm, "ami-0running", refresh=False)
    assert kept == "ami-0running" and len(ssm.asked) == 1 and "--refresh-proxy-ami" in said
    refreshed, said = proxy_image(ssm, "ami-0running", refresh=True)
    assert refreshed == "ami-0newest" and "replaces the proxy instance (was ami-0running)" in said


def test_the_engine_version_is_the_regions_default_on_a_first_create_and_the_deployed_one_after():
    from playbook.errors import PlaybookError
    from playbook.provision import engine_version

    class Region:
        def default_engine_version(self, major):
            return f"{major}.9"

    class Nothing:
        def default_engine_version(self, major):
            return None

    assert engine_version(Region(), None, "", "16.6")[0] == "16.9"
    assert engine_version(Nothing(), None, "", "16.6")[0] == "16.6"
    assert engine_version(Region(), None, "16.4", "16.6")[0] == "16.4"
    assert engine_version(Region(), "16.8", "16.4", "16.6")[0] == "16.8"
    with pytest.raises(PlaybookError, match="--engine-version"):
        engine_version(Region(), "17.2", "16.4", "16.6")


def test_the_alarm_email_is_given_or_kept_and_none_removes_it(monkeypatch):
    from playbook.errors import PlaybookError
    from playbook.provision import ENV_ALARM_EMAIL, alarm_email_setting

    monkeypatch.delenv(ENV_ALARM_EMAIL, raising=False)
    assert alarm_email_setting(None, "")[0] == "" and "reach nobody" in alarm_email_setting(None, "")[1]
    address, said = alarm_email_setting("ops@northwind.example", "")
    assert address == "ops@northwind.example" and "confirmation" in said
    assert alarm_email_setting(None, "ops@northwind.example")[0] == "ops@northwind.example", "kept"
    assert alarm_email_setting("none", "ops@northwind.example")[0] == ""
    monkeypatch.setenv(ENV_ALARM_EMAIL, "it@northwind.example")
    assert alarm_email_setting(None, "ops@northwind.example")[0] == "it@northwind.example"
    with pytest.raises(PlaybookError, match="not an email address"):
        alarm_email_setting("ops at northwind", "")


def test_the_rds_ca_bundle_must_hold_amazon_rds_certificates(tmp_path):
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from playbook.errors import PlaybookError
    from playbook.provision import check_rds_ca_bundle, rds_ca_bundle

    def ca(common_name: str) -> bytes:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Amazon RDS" if "RDS" in common_name
                                             else "Elsewhere"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM)

    bundle = tmp_path / "bundle.pem"
    with pytest.raises(PlaybookError, match="is missing"):
        check_rds_ca_bundle(bundle)
    bundle.write_text("<html>not found</html>")
    with pytest.raises(PlaybookError, match="make rds-ca-bundle"):
        check_rds_ca_bundle(bundle)
    bundle.write_bytes(ca("Some Other Root CA"))
    with pytest.raises(PlaybookError, match="no Amazon RDS CA certificate"):
        check_rds_ca_bundle(bundle)
    bundle.write_bytes(ca("Amazon RDS eu-west-2 Root CA RSA2048 G1") + ca("Amazon RDS eu-west-2 Root CA ECC384 G1"))
    assert check_rds_ca_bundle(bundle) == 2

    # provisioning fetches a missing bundle over HTTP, and keeps a wrong download out of the function zip
    import http.server
    import threading

    served = {"body": bundle.read_bytes()}

    class Bundle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(served["body"])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Bundle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/global-bundle.pem"
    try:
        fetched = tmp_path / "certs" / "rds-global-bundle.pem"
        assert rds_ca_bundle(fetched, url) == (2, f"fetched from {url}")
        assert fetched.read_bytes() == served["body"]
        assert rds_ca_bundle(fetched, url) == (2, "kept rds-global-bundle.pem")
        served["body"] = b"<html>captive portal</html>"
        with pytest.raises(PlaybookError, match="no readable PEM"):
            rds_ca_bundle(fetched, url, refresh=True)
        assert fetched.read_bytes() == bundle.read_bytes()  # the good bundle stays
        assert not list(fetched.parent.glob("*.fetched"))
    finally:
        server.shutdown()


def test_values_looked_up_at_provisioning_are_resolved_once_and_kept(provisioned):
    """The proxy's AMI comes from its SSM parameter when the proxy is new, and the second run passes the deployed
    one (no change, no replacement); the reservation is off and the output says how to turn it on."""
    cfn = boto3.client("cloudformation")
    (first_ami,) = re.findall(r"proxy AMI: (ami-\w+), the latest Amazon Linux 2023 \(a new proxy\)",
                              provisioned["first"])
    assert f"proxy AMI: {first_ami}, the one it runs" in provisioned["second"]
    parameters = {p["ParameterKey"]: p["ParameterValue"]
                  for p in cfn.describe_stacks(StackName=f"{PREFIX}-proxy")["Stacks"][0]["Parameters"]}
    assert parameters["ImageId"] == first_ami
    for run in ("first", "second"):
        assert "reserved concurrency: off" in provisioned[run] and "--reserved-concurrency" in provisioned[run]
        assert "alarm email: none" in provisioned[run]
