"""Where the pipeline runs: the local default or an AWS account, as one object with one interface.

The CLI and the notebooks turn their `--target local|aws` parameter into a target once (`resolve_target`)
and pass it down; below that boundary nothing compares target names. A target answers everything that
differs between the two places:

- reaching it: `activate()` is the preflight. Locally the stack comes up and boto3 is pointed at it through
  the standard AWS_ENDPOINT_URL (with dummy credentials and a region): the one place the playbook changes
  its own environment. On AWS an AWS_ENDPOINT_URL is refused and a region is required;
- the deployment: `outputs()` (the stacks' outputs, the contract between infrastructure and code) and
  `function(job)`, a pipeline function's name from them;
- the warehouse as the consultant side reaches it: `database_url()` (the local database's owner, or on AWS
  PLAYBOOK_DATABASE_URL: the pipeline_monitor role's login, which reads meta, core and marts and writes only
  validation's results, through the BI proxy) and `reporting_url()`;
- production code: `invoke(function, event, wait=True)` runs a *deployed* function, locally through
  playbook.runtime from the deployed zip, on AWS through Lambda's Invoke (RequestResponse, or Event when not
  waiting). Every stage that runs production code goes through it: `call()`, `migrate()`,
  `refresh_marts()`, `landed()` (what an upload starts) and the email;
- provisioning: which dependency layer is built, the database's TLS mode and the CA bundle it verifies
  with, whether the account's quotas are checked, the cluster's default engine version, how often
  CloudFormation is polled, the proxy's default allow-list, and locally the stand-ins for what moto cannot
  create.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from playbook.errors import PlaybookError
from playbook.runtime import InvokeResult
from playbook.templates import RDS_CA_BUNDLE_ON_LAMBDA

LAMBDA_LIMIT_S = 15 * 60
LOCAL_ALLOW = ["127.0.0.1/32"]


class Target:
    """What differs between running the pipeline locally and on AWS (see the module's docstring)."""

    name: str = ""
    # provisioning
    database_ssl_mode: str = "require"  # libpq sslmode of the functions' connections
    database_ssl_root_cert: str = ""  # the CA bundle (a path on the function) verify-full checks the server with
    checks_account_quotas: bool = False  # whether provisioning checks the account's Lambda concurrency quota
    creates_cluster: bool = True  # whether its CloudFormation creates the Aurora cluster (its deletion protection)
    stack_poll_s: float = 5.0  # how often CloudFormation is asked whether a stack or change set is done
    update_poll_s: float = 2.0  # how often Lambda is asked whether a code update is done
    default_allow_list: list[str] | None = None  # the BI proxy's allow-list when none is given
    # running many invocations of one function: waiting for each (False), or queueing them and reading their
    # completion from the ledger (True)
    asynchronous_fan_out: bool = False
    # whether a report run sends the operations email itself, or leaves it to the function's schedule
    sends_run_email: bool = True
    email_note: str = ""
    runs_functions: str = ""  # where a deployed function runs, in words
    reaches_this_machine: bool = True  # whether its functions reach a server on this machine's loopback

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.status.items() if k != "target")
        return f"<{self.name} target{': ' + shown if shown else ''}>"

    # -- reaching it ---------------------------------------------------------------------------------
    def activate(self) -> Target:
        """The preflight: point boto3 at the target, or refuse with what to do. Returns the target."""
        raise NotImplementedError

    # -- the deployment ------------------------------------------------------------------------------
    def outputs(self, parts: tuple[str, ...] | None = None) -> dict[str, str]:
        """Every output of the deployment's stacks (all of them, or the named parts)."""
        from playbook.stack_outputs import stack_outputs

        return stack_outputs(self, parts)

    def stack_outputs_of(self, cfn, name: str) -> dict[str, str] | None:
        """One stack's outputs as CloudFormation gives them; None when the stack does not exist."""
        from playbook.stack_outputs import outputs_of

        return outputs_of(cfn, name)

    def function(self, job: str) -> str:
        """A pipeline function's name from the stack outputs: `RefreshMarts` -> <prefix>-refresh-marts."""
        key = f"{job}FunctionName"
        name = self.outputs(parts=("pipeline",)).get(key)
        if not name:
            raise PlaybookError(f"the pipeline stack on {self} has no output {key}: run `playbook provision "
                                f"--target {self}` first")
        return name

    # -- the warehouse as the consultant side reaches it ---------------------------------------------
    def database_url(self) -> str:
        """The connection the playbook reads the warehouse with (carries a password: never shown): locally the
        owner's; on AWS the pipeline_monitor role's at the BI proxy."""
        raise NotImplementedError

    def reporting_url(self) -> str:
        """The reporting role's connection, for the reports (carries a password: never shown)."""
        raise NotImplementedError

    def bi_address(self, reporting_url: str) -> tuple[str, int]:
        """Where a BI tool connects (host, port): the BI proxy. On AWS the reporting URL already names it."""
        from urllib.parse import urlsplit

        parts = urlsplit(reporting_url)
        return parts.hostname or "", parts.port or 5432

    def role_secrets(self) -> dict[str, str]:
        """{role: secret ARN} of the ingest, reporting and monitor logins, made before the pipeline stack that names
        them; the migrate function gives the roles these logins."""
        raise NotImplementedError

    def restrict_reporting_role(self) -> list[str]:
        """Where the reporting role may connect from, applied where the playbook applies it; the rules."""
        return []

    # -- production code -----------------------------------------------------------------------------
    def invoke(self, function: str, event: Any = None, *, wait: bool = True,
               log_dir: Path | None = None) -> InvokeResult:
        """Run the deployed function once. Waiting, the result is Lambda's (payload, or errorType and
        errorMessage); not waiting, the invocation is queued (status `queued`) as Lambda's Event invokes are."""
        raise NotImplementedError

    def call(self, function: str, event: Any = None, *, log_dir: Path | None = None) -> Any:
        """The deployed function's payload; PlaybookError with Lambda's words when the invocation failed."""
        result = self.invoke(function, {} if event is None else event, log_dir=log_dir)
        if not result.ok:
            raise PlaybookError(f"{function} failed: {error_text(result)}"
                                + (f" (log: {result.log_path})" if result.log_path else ""))
        return result.payload

    def check_handler(self, function: str) -> InvokeResult | None:
        """Import the deployed handler as a cold start would, without calling it; None where that cannot be
        done from here."""
        return None

    def migrate(self) -> dict[str, Any]:
        """The migrate function: the schema, the database's time zone and the roles' logins from their secrets."""
        return self.call(self.function("Migrate"))

    def refresh_marts(self, log_dir: Path | None = None) -> dict[str, Any]:
        """The refresh function (CALL marts.refresh()): its summary per mart, or PlaybookError when a mart failed."""
        return self.call(self.function("RefreshMarts"), {}, log_dir=log_dir) or {}

    def landed(self, function: str, bucket: str, key: str) -> InvokeResult | None:
        """What follows an object landing under a source's prefix: the outcome of the function it started, or
        None when the landing bucket's notification started it out of reach (then read the ledger)."""
        raise NotImplementedError

    # -- the operations email ------------------------------------------------------------------------
    def ses_sent_count(self) -> int | None:
        """How many deliveries SES has attempted so far, where that can be asked."""
        return None

    def ses_holds(self, message_id: str, sent_before: int | None) -> bool | None:
        """Whether SES holds the message; None where SES keeps no list to look in (its MessageId is the receipt)."""
        return None

    # -- provisioning and deployment -----------------------------------------------------------------
    def build_layer(self, build_dir: Path) -> Path:
        """The dependency layer zip provisioning uploads."""
        raise NotImplementedError

    def deploy_layer(self, build_dir: Path, s3, bucket: str) -> str:
        """What a deploy does with the dependency layer, in words for its report."""
        raise NotImplementedError

    def adapt_templates(self, templates: dict[str, dict[str, Any]]) -> None:
        """Change the rendered templates where this target needs it (in place)."""

    def default_engine_version(self, major: str) -> str | None:
        """The current default minor version of Aurora PostgreSQL `major` for a new cluster here; None where
        there is none to ask (the template's default applies)."""
        return None

    def stand_in_database(self, prefix: str) -> str:
        """Before the database stack: what stands in for the cluster here, in words ('' when nothing does)."""
        return ""

    def stand_ins(self, cfn, name: str, template: dict[str, Any], parameters: dict[str, str],
                  database_note: str) -> tuple[list[Any], list[str]]:
        """After a stack: the resources it did not create, each given its stand-in, and notes on what is
        modelled only in part."""
        return [], []

    def record_stand_ins(self, missing: list[Any]) -> bool:
        """After every stack: the stand-ins recorded (stand_ins.json); False where nothing stands in."""
        return False

    # whether this target's scheduler takes local entries (register_schedule): the report run
    keeps_local_schedules = False

    def register_schedule(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A schedule whose target is a command (the report run), where this target's scheduler takes one."""
        raise NotImplementedError


def error_text(result: InvokeResult) -> str:
    """An invocation's error as one line: errorType: errorMessage."""
    error = result.error or {}
    if isinstance(error, dict):
        return f"{error.get('errorType', result.status)}: {error.get('errorMessage', '')}".strip()
    return str(error)


class LocalTarget(Target):
    """The local default: the moto server and the local database; functions run through playbook.runtime."""

    name = "local"
    # the functions' secret holds the local database's URL, which names the TLS front and the local CA
    database_ssl_mode = "verify-full"
    creates_cluster = False  # the local database stands in for the cluster moto does not create
    stack_poll_s = 0.2
    update_poll_s = 0.2
    default_allow_list = LOCAL_ALLOW
    asynchronous_fan_out = False
    sends_run_email = True  # into moto's SES: the run shows the message it sends
    runs_functions = "playbook.runtime (the deployed zip, in warm handler processes)"

    def __init__(self) -> None:
        super().__init__()
        self._queued: list[threading.Thread] = []

    def activate(self) -> LocalTarget:
        from playbook.local.stack import current, environment, redact

        stack = current()
        status = stack.status()
        if not status["healthy"]:
            status = stack.up()
        os.environ.update(environment(status))
        self.status = {"target": self.name, "aws_endpoint_url": status["aws_endpoint_url"],
                       "region": status["region"], "database": redact(status["database_url"])}
        return self

    def _require_endpoint(self) -> None:
        from playbook.runtime import require_local_endpoint

        require_local_endpoint()

    def outputs(self, parts: tuple[str, ...] | None = None) -> dict[str, str]:
        self._require_endpoint()
        return super().outputs(parts)

    def stack_outputs_of(self, cfn, name: str) -> dict[str, str] | None:
        from playbook.stack_outputs import outputs_of, stand_in_outputs

        outputs = outputs_of(cfn, name)
        return None if outputs is None else stand_in_outputs(cfn, name, outputs)

    def database_url(self) -> str:
        from playbook.database import database_url

        return database_url()

    def reporting_url(self) -> str:
        # locally the playbook reaches the database: it gives the role its login (the secret's password)
        from playbook.warehouse import REPORTING_ROLE, ensure_role_logins

        return ensure_role_logins(self.database_url())[REPORTING_ROLE]

    def bi_address(self, reporting_url: str) -> tuple[str, int]:
        # the local BI proxy (`playbook proxy up`), in front of the database's TLS front
        from playbook.proxy import current

        status = current().status()
        if not status["healthy"]:
            raise PlaybookError("the local BI proxy is not running: start it with `playbook proxy up`")
        host, port = status["listen"].rsplit(":", 1)
        return host, int(port)

    def role_secrets(self) -> dict[str, str]:
        from playbook.warehouse import ensure_role_urls

        return ensure_role_urls(self.database_url())

    def restrict_reporting_role(self) -> list[str]:
        from playbook.settings import ENV_DATABASE_URL
        from playbook.warehouse import apply_reporting_allow_list

        if os.environ.get(ENV_DATABASE_URL):  # an external server keeps its own allow-list
            return []
        return apply_reporting_allow_list()

    def invoke(self, function: str, event: Any = None, *, wait: bool = True,
               log_dir: Path | None = None) -> InvokeResult:
        from playbook import runtime

        if wait:
            return runtime.invoke(function, event, log_dir=log_dir)
        # queued, as an Event invoke is: the invocation runs on in the background, its outcome in its log
        thread = threading.Thread(target=runtime.invoke, args=(function, event), kwargs={"log_dir": log_dir},
                                  name=f"queued-{function}")
        thread.start()
        self._queued.append(thread)
        return InvokeResult(function, "", "queued")

    def check_handler(self, function: str) -> InvokeResult:
        from playbook.runtime import check_handler

        return check_handler(function)

    def landed(self, function: str, bucket: str, key: str) -> InvokeResult:
        # moto records the landing notification without running it (notifications.json): the playbook plays
        # its part, with the event S3 sends
        from urllib.parse import quote_plus

        import boto3

        head = boto3.client("s3").head_object(Bucket=bucket, Key=key)
        obj = {"key": quote_plus(key), "size": head["ContentLength"], "eTag": head["ETag"].strip('"'),
               **({"versionId": head["VersionId"]} if head.get("VersionId") else {})}
        record = {"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": os.environ.get("AWS_REGION", ""),
                  "eventName": "ObjectCreated:Put",
                  "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                         "object": obj}}
        return self.invoke(function, {"Records": [record]})

    def ses_sent_count(self) -> int:
        from playbook.reports.email import _ses_delivery_attempts

        return _ses_delivery_attempts()

    def ses_holds(self, message_id: str, sent_before: int | None) -> bool:
        from playbook.reports.email import _ses_delivery_attempts, ses_raw_messages

        messages = ses_raw_messages()
        if messages is None:  # SES's own statistics: more delivery attempts than before the send
            return _ses_delivery_attempts() > (sent_before or 0)
        return any(m.get("id") == message_id for m in messages)

    def build_layer(self, build_dir: Path) -> Path:
        from playbook.package import build_local_layer_zip

        return build_local_layer_zip(build_dir)

    def deploy_layer(self, build_dir: Path, s3, bucket: str) -> str:
        return "not built (the local runtime uses this machine's dependencies)"

    def adapt_templates(self, templates: dict[str, dict[str, Any]]) -> None:
        # the functions carry no layer reference: the local runtime runs them on this machine's dependencies,
        # and moto fails to update (500) a function with layers through CloudFormation
        for resource in templates["pipeline"]["Resources"].values():
            if resource["Type"] == "AWS::Lambda::Function":
                resource["Properties"].pop("Layers", None)

    def stand_in_database(self, prefix: str) -> str:
        from urllib.parse import urlsplit

        from playbook.local.stack import redact
        from playbook.provision import local_database_secret
        from playbook.stack_outputs import record_stand_in_attributes, stack_name

        url = self.database_url()
        parts = urlsplit(url)
        secret_arn = local_database_secret(prefix, url)
        # what stands in for the cluster's attributes (moto creates no cluster to read them from)
        record_stand_in_attributes(stack_name("database", prefix), {
            "Cluster.Endpoint.Address": parts.hostname or "127.0.0.1", "Cluster.Endpoint.Port": str(parts.port or 5432),
            "Cluster.MasterUserSecret.SecretArn": secret_arn, "Cluster.DBClusterResourceId": "cluster-local"})
        return f"the local database {redact(url)}; its connection is in the secret {secret_arn} as " '{"url": ...}'

    def stand_ins(self, cfn, name: str, template: dict[str, Any], parameters: dict[str, str],
                  database_note: str) -> tuple[list[Any], list[str]]:
        import boto3

        from playbook import stand_ins
        from playbook.settings import local_settings

        state_dir = local_settings().state_dir
        listed = cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
        # moto lists a resource it skipped with no logical id, and some it failed with no physical id
        physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in listed
                    if r.get("LogicalResourceId") and r.get("PhysicalResourceId")}
        ctx = stand_ins.Context(stack=name, template=template, parameters=parameters, physical=physical,
                                region=boto3.session.Session().region_name, account=stand_ins.account_id())
        expected = stand_ins.expected_resources(template, ctx.parameters)
        gone = [stand_ins.Missing(name, lid, rtype) for lid, rtype in expected.items() if lid not in physical]
        stand_ins.apply(ctx, gone, state_dir, database_note)
        notes = stand_ins.apply_bucket_properties(ctx, state_dir)
        notes += [f"{name} {lid} ({rtype}): {stand_ins.PARTIAL[rtype]}"
                  for lid, rtype in expected.items() if lid in physical and rtype in stand_ins.PARTIAL]
        return gone, notes

    def record_stand_ins(self, missing: list[Any]) -> bool:
        from playbook.stack_outputs import record_stand_in_resources

        record_stand_in_resources(missing)
        return True

    keeps_local_schedules = True

    def register_schedule(self, entry: dict[str, Any]) -> dict[str, Any]:
        from playbook.scheduler import register_local_schedule

        return register_local_schedule(entry)


class AwsTarget(Target):
    """An AWS account through the caller's standard profile and region; functions run on Lambda."""

    name = "aws"
    database_ssl_mode = "verify-full"
    database_ssl_root_cert = RDS_CA_BUNDLE_ON_LAMBDA
    checks_account_quotas = True
    stack_poll_s = 5.0
    update_poll_s = 2.0
    default_allow_list = None  # the proxy's allow-list is the company's: it must be given
    asynchronous_fan_out = True  # windows run as Event invokes; their outcome is read from meta.batches
    sends_run_email = False
    email_note = "on AWS the send_expense_email function sends it on its schedule"
    runs_functions = "Lambda"
    reaches_this_machine = False

    def activate(self) -> AwsTarget:
        import boto3

        if os.environ.get("AWS_ENDPOINT_URL"):
            raise PlaybookError("AWS_ENDPOINT_URL is set (it points boto3 at the local stack): unset it for "
                                "--target aws, which uses your profile and region")
        region = boto3.session.Session().region_name
        if not region:
            raise PlaybookError("no AWS region: set AWS_REGION or configure your profile's region")
        account = boto3.client("sts").get_caller_identity()["Account"]
        self.status = {"target": self.name, "region": region, "account": account}
        return self

    def database_url(self) -> str:
        # ledger polling (ingest, backfill), validation and the reports' address: the monitor role reads meta,
        # core and marts and writes only meta.accuracy_results (migration 015)
        from playbook.settings import ENV_DATABASE_URL
        from playbook.warehouse import MONITOR_ROLE, SECRET_NAMES

        url = os.environ.get(ENV_DATABASE_URL)
        if not url:
            raise PlaybookError(f"on AWS the warehouse is reached through the BI proxy: set {ENV_DATABASE_URL} to "
                                f"the {MONITOR_ROLE} role's login (its password is in the secret "
                                f"{SECRET_NAMES[MONITOR_ROLE]}) at the proxy's address (ProxyAddress in the stack "
                                "outputs), e.g. postgresql://pipeline_monitor:<password>@<ProxyAddress>:5432/playbook"
                                "?sslmode=verify-ca&sslrootcert=<RDS CA bundle>; not the cluster's master login, "
                                "which RDS rotates")
        return url

    def reporting_url(self) -> str:
        # the migrate function gave the role its login inside the VPC: log in with its secret at the proxy
        from playbook.warehouse import REPORTING_ROLE, role_url_at

        return role_url_at(REPORTING_ROLE, self.database_url())

    def role_secrets(self) -> dict[str, str]:
        from playbook.warehouse import ensure_role_secrets

        return ensure_role_secrets()

    def invoke(self, function: str, event: Any = None, *, wait: bool = True,
               log_dir: Path | None = None) -> InvokeResult:
        import boto3
        from botocore.config import Config

        payload = json.dumps({} if event is None else event).encode()
        # a synchronous invocation may run for Lambda's whole limit: no read timeout shorter than that, and no
        # retry that would run it twice
        client = boto3.client("lambda", config=Config(read_timeout=LAMBDA_LIMIT_S + 60,
                                                      retries={"total_max_attempts": 1, "mode": "standard"}))
        if not wait:
            response = client.invoke(FunctionName=function, InvocationType="Event", Payload=payload)
            return InvokeResult(function, response.get("ResponseMetadata", {}).get("RequestId", ""), "queued")
        started = time.monotonic()
        response = client.invoke(FunctionName=function, InvocationType="RequestResponse", Payload=payload)
        body = response["Payload"].read()
        answer = json.loads(body) if body else None
        result = InvokeResult(function, response.get("ResponseMetadata", {}).get("RequestId", ""), "ok",
                              duration_ms=round((time.monotonic() - started) * 1000, 2),
                              log_path=f"CloudWatch Logs /aws/lambda/{function}")
        if response.get("FunctionError"):
            result.status = "error"
            result.error = answer if isinstance(answer, dict) else {"errorMessage": str(answer)}
            if "Task timed out" in str(result.error.get("errorMessage", "")):
                result.status = "timeout"
        else:
            result.payload = answer
        return result

    def landed(self, function: str, bucket: str, key: str) -> None:
        return None  # the landing bucket's notification has started the function

    def default_engine_version(self, major: str) -> str | None:
        import boto3

        versions = boto3.client("rds").describe_db_engine_versions(
            Engine="aurora-postgresql", DBParameterGroupFamily=f"aurora-postgresql{major}", DefaultOnly=True)
        found = [v["EngineVersion"] for v in versions.get("DBEngineVersions", [])]
        return found[0] if found else None

    def build_layer(self, build_dir: Path) -> Path:
        from playbook.package import build_dependency_layer

        return build_dependency_layer(build_dir)

    def deploy_layer(self, build_dir: Path, s3, bucket: str) -> str:
        from playbook.package import sha256
        from playbook.provision import _upload_if_absent

        layer = self.build_layer(build_dir)
        layer_key = f"lambda/layer-{sha256(layer)[:16]}.zip"
        _upload_if_absent(s3, bucket, layer_key, layer)
        return f"uploaded as {layer_key}; `playbook provision --target aws` publishes it if it changed"

    def register_schedule(self, entry: dict[str, Any]) -> dict[str, Any]:
        return {**entry, "registered": False,
                "note": "on AWS the same command runs as a scheduled job (README: Scheduled report runs)"}


TARGETS: dict[str, type[Target]] = {"local": LocalTarget, "aws": AwsTarget}


def target_named(name: str) -> Target:
    """The target a `--target` value names, not yet reached (see `resolve_target`)."""
    try:
        return TARGETS[name]()
    except KeyError:
        raise PlaybookError(f"unknown target {name!r}: choose {' or '.join(TARGETS)}") from None


def resolve_target(name: str) -> Target:
    """The CLI's and the notebooks' `--target local|aws`, reached: the preflight done, boto3 pointed at it."""
    return target_named(name).activate()
