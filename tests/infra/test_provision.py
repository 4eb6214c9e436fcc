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
