"""A provisioned pipeline of the tests' own (prefix pbrt) and small probe functions deployed beside it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import textwrap
import zipfile
from collections.abc import Iterator

import boto3

PREFIX = "pbrt"
PROBE_TIMEOUT_S = 2
PROBE_MEMORY_MB = 128

PROBE_MODULE = textwrap.dedent('''
    import json
    import logging
    import os
    import sys
    import time

    SERVED = []  # module state: kept while the execution environment stays warm


    def echo(event, context):
        SERVED.append(context.aws_request_id)
        logging.getLogger("probe").info("echo for %s", context.aws_request_id)
        try:
            import playbook  # noqa: F401
            playbook_importable = True
        except ImportError:
            playbook_importable = False
        return {
            "event": event, "remaining_ms": context.get_remaining_time_in_millis(),
            "context": {k: getattr(context, k) for k in (
                "function_name", "function_version", "invoked_function_arn", "memory_limit_in_mb",
                "aws_request_id", "log_group_name", "log_stream_name")},
            "env": {k: os.environ.get(k) for k in (
                "PROBE_SETTING", "AWS_ENDPOINT_URL", "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                "AWS_REGION", "LAMBDA_TASK_ROOT")},
            "sys_path": sys.path, "playbook_importable": playbook_importable, "cwd": os.getcwd(),
            "pid": os.getpid(), "served": list(SERVED),
        }


    def sleep(event, context):
        print(json.dumps({"pid": os.getpid()}), flush=True)
        time.sleep(event.get("seconds", 60))
        return "woke"


    def allocate(event, context):
        print(json.dumps({"pid": os.getpid()}), flush=True)
        chunks = []
        for _ in range(64):  # up to 1 GiB, 16 MiB at a time, every page written
            chunks.append(b"\\x01" * (16 << 20))
            time.sleep(0.02)
        return len(chunks)


    def fail(event, context):
        raise ValueError("the probe failed on purpose")
''')


def probe_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("probe.py", PROBE_MODULE)
    return buffer.getvalue()


def outputs() -> dict[str, str]:
    from playbook.targets import LocalTarget

    return LocalTarget().outputs()


_provisioned: dict[str, dict[str, str]] = {}  # state dir -> outputs: provisioned once per stack


@contextlib.contextmanager
def provisioned_pipeline() -> Iterator[dict[str, str]]:
    """The pipeline provisioned on the session's local stack under prefix pbrt (its outputs), its migrate function
    run (the roles' logins), plus the probe functions; PLAYBOOK_STACK_PREFIX names it meanwhile. Provisioned once
    per stack and reused."""
    from playbook.provision import provision
    from playbook.targets import resolve_target

    saved = os.environ.get("PLAYBOOK_STACK_PREFIX")
    os.environ["PLAYBOOK_STACK_PREFIX"] = PREFIX
    try:
        key = os.environ["PLAYBOOK_STATE_DIR"]
        if key not in _provisioned or not _still_there():  # a reused stack is emptied for each test session
            target = resolve_target("local")
            result = provision(target)
            target.migrate()
            deploy_probes(result.outputs["ArtifactBucketName"])
            _provisioned[key] = result.outputs
        yield _provisioned[key]
    finally:
        if saved is None:
            os.environ.pop("PLAYBOOK_STACK_PREFIX", None)
        else:
            os.environ["PLAYBOOK_STACK_PREFIX"] = saved


def _still_there() -> bool:
    from playbook.stack_outputs import outputs_of, stack_name

    return outputs_of(boto3.client("cloudformation"), stack_name("pipeline", PREFIX)) is not None


def deploy_probes(bucket: str) -> None:
    """One function per probe handler, created directly through the Lambda API from a zip in S3."""
    from botocore.exceptions import ClientError

    iam, lam, s3 = boto3.client("iam"), boto3.client("lambda"), boto3.client("s3")
    try:
        role = iam.get_role(RoleName=f"{PREFIX}-probe")["Role"]["Arn"]
    except ClientError:
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                         "Principal": {"Service": "lambda.amazonaws.com"}}]}
        role = iam.create_role(RoleName=f"{PREFIX}-probe", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    s3.put_object(Bucket=bucket, Key="tests/probe.zip", Body=probe_zip())
    for name in ("echo", "sleep", "allocate", "fail"):
        function = f"{PREFIX}-probe-{name}"
        with contextlib.suppress(ClientError):
            lam.delete_function(FunctionName=function)
        lam.create_function(FunctionName=function, Runtime="python3.12", Role=role, Handler=f"probe.{name}",
                            Code={"S3Bucket": bucket, "S3Key": "tests/probe.zip"}, Timeout=PROBE_TIMEOUT_S,
                            MemorySize=PROBE_MEMORY_MB, Environment={"Variables": {"PROBE_SETTING": "from-deploy"}})


@contextlib.contextmanager
def demo_accounting_system(database_url: str) -> Iterator[object]:
    """The demo's accounting system serving the default company where its source reads it, its credential in
    the session's Secrets Manager; on the way out, everything its source loaded is taken out of the warehouse
    again (rows, their history and quarantine, batches, cursor, call limit), so the tests after it find only
    their own data."""
    import psycopg2

    from pipeline.model import TABLES
    from playbook.demo.business_system import serve_business_system
    from playbook.demo.company import INVOICES_SOURCE

    business = serve_business_system()
    try:
        yield business
    finally:
        business.stop()
        with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
            cur.execute("select array_agg(batch_id) from meta.batches where source = %s", (INVOICES_SOURCE,))
            batches = cur.fetchone()[0] or []
            for table in TABLES:
                for name in (table, f"{table}_history"):
                    cur.execute(f"delete from core.{name} where _batch_id = any(%s)", (batches,))
            cur.execute("delete from meta.quarantine where batch_id = any(%s)", (batches,))
            cur.execute("delete from meta.source_state where source = %s", (INVOICES_SOURCE,))
            cur.execute("delete from meta.api_call_limits where source = %s", (INVOICES_SOURCE,))
            cur.execute("delete from meta.batches where batch_id = any(%s)", (batches,))
        conn.close()
