"""The 08:00 operations email as deployed: the pipeline provisioned and deployed locally, its schedule fired by
`playbook schedule run` over 08:00 company time, the message found in SES, and a second firing of the same run
sending nothing more."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from email import policy
from email.parser import BytesParser

import boto3
import pytest

from tests.playbook.deployed import PREFIX
from tests.reporting_data import synthetic_company

pytestmark = pytest.mark.stack

# 08:00 in London on Tuesday 21 May 2024 (BST) is 07:00 UTC; between 06:45 and 07:15 UTC nothing else is due
# (the refresh fires at 06:30 UTC, the report run at 06:30 UTC, the loads before)
FROM, TO = "2024-05-21T06:45:00Z", "2024-05-21T07:15:00Z"
FIRED = re.compile(rf"^2024-05-21T07:00:00Z  \(2024-05-21 08:00 BST\)  {PREFIX}-send-expense-email +"
                   rf"lambda {PREFIX}-send-expense-email  ok$", re.M)


@pytest.fixture(scope="module")
def company(stack):
    with synthetic_company(stack["database_url"]) as made:
        yield made


def schedule_run() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "playbook", "schedule", "run", "--from", FROM, "--to", TO],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PLAYBOOK_STACK_PREFIX": PREFIX})


def ses_deliveries() -> int:
    from playbook.reports.email import _ses_delivery_attempts

    return _ses_delivery_attempts()


def test_the_deployed_schedule_sends_the_morning_email_once_per_run_key(pipeline_stack, company):
    from pipeline.expense_email import email_object_key
    from playbook.config import load_config
    from playbook.deploy import deploy
    from playbook.reports.email import ses_raw_messages
    from playbook.targets import LocalTarget

    config = load_config()
    deploy(LocalTarget())  # this lambda_src, on every function of the provisioned pipeline
    function = pipeline_stack["SendExpenseEmailFunctionName"]
    bucket = pipeline_stack["ArtifactBucketName"]
    deployed = boto3.client("lambda").get_function_configuration(FunctionName=function)
    assert deployed["Environment"]["Variables"]["REPORTS_BUCKET"] == bucket  # its reports bucket, from the stack

    before = ses_deliveries()
    fired = schedule_run()
    assert fired.returncode == 0, fired.stdout + fired.stderr
    assert FIRED.search(fired.stdout), fired.stdout
    assert "1 firings, 0 failed" in fired.stdout
    # one message reached SES (moto counts each recipient once for the Destinations and once for the To header)
    assert ses_deliveries() - before == 2 * len(config.reports.email.recipients)

    # the function kept the message it sent as its run's claim, and SES's MessageId beside it
    run_key = "scheduled-2024-05-21T07:00:00Z"
    key = email_object_key(run_key)
    s3 = boto3.client("s3")
    message = BytesParser(policy=policy.default).parsebytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert message["X-Playbook-Run-Key"] == run_key
    assert message["X-Playbook-Period"] == "2024-05-14/2024-05-20"  # the week of complete days before 08:00
    assert [a.addr_spec for a in message["To"].addresses] == list(config.reports.email.recipients)
    assert message["From"].addresses[0].addr_spec == config.reports.email.sender
    receipt = json.loads(s3.get_object(Bucket=bucket, Key=key.removesuffix(".eml") + ".sent.json")["Body"].read())
    assert receipt["run_key"] == run_key and receipt["message_id"]
    messages = ses_raw_messages()  # moto's list of sent messages, where its data API answers
    if messages is not None:
        assert [m for m in messages if m.get("id") == receipt["message_id"]]

    # the same schedule time again (an EventBridge retry, a second scheduler): the run's key is taken
    again = schedule_run()
    assert again.returncode == 0, again.stdout + again.stderr
    assert FIRED.search(again.stdout) and "1 firings, 0 failed" in again.stdout
    assert ses_deliveries() - before == 2 * len(config.reports.email.recipients), "nothing more reached SES"
    retried = LocalTarget().call(function, {"job": "send_expense_email", "period": "week", "trigger": "schedule",
                                            "time": "2024-05-21T07:00:00Z", "id": "another-execution"})
    assert retried["status"] == "skipped" and retried["key"] == key
    assert ses_deliveries() - before == 2 * len(config.reports.email.recipients)
