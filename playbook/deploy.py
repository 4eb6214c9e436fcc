"""`playbook deploy --target local|aws`: ship the current lambda_src to every pipeline function.

Builds the function zip (reproducible, so unchanged code gives unchanged bytes), uploads it to the
artifact bucket under its content-addressed key, and updates the code of each function whose deployed
CodeSha256 differs, waiting for each update to finish. The validated configuration goes to the functions'
PIPELINE_CONFIG_URI when it changed. On AWS the dependency layer is built for the Lambda runtime
(manylinux wheels for its Python) and uploaded too; the layer itself is a resource of the pipeline stack,
so a changed layer is published by `playbook provision`, which this command says when it applies.
Locally the runtime uses the dependencies built for this machine, so no layer is built.

Code updated here and the stack's CodeKey parameter agree again at the next `playbook provision`, which
builds the same zip from the same lambda_src and so names the same key.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from playbook.errors import PlaybookError

UPDATE_TIMEOUT_S = 300


@dataclass
class Deployed:
    target: str
    code_key: str
    code_sha256: str
    functions: dict[str, str] = field(default_factory=dict)  # function name -> updated | unchanged
    config: str = "unchanged"  # uploaded | unchanged
    layer: str = ""  # what the target did with the dependency layer

    @property
    def changed(self) -> bool:
        return self.config != "unchanged" or any(a != "unchanged" for a in self.functions.values())


def _sha_b64(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return base64.b64encode(digest.digest()).decode()


def pipeline_functions(outputs: dict[str, str]) -> list[str]:
    """Every function of the pipeline stack, by name, from its outputs (`<Job>FunctionName`)."""
    return sorted(v for k, v in outputs.items() if k.endswith("FunctionName"))


def wait_for_update(lam, name: str, timeout: float = UPDATE_TIMEOUT_S, delay: float = 0.5) -> dict:
    """Poll until the function's last update is no longer in progress; fail on a failed update."""
    deadline = time.monotonic() + timeout
    while True:
        conf = lam.get_function_configuration(FunctionName=name)
        status = conf.get("LastUpdateStatus", "Successful")
        if status == "Failed":
            raise PlaybookError(f"updating {name} failed: {conf.get('LastUpdateStatusReason', '')}")
        if status != "InProgress" and conf.get("State", "Active") != "Pending":
            return conf
        if time.monotonic() > deadline:
            raise PlaybookError(f"timed out after {timeout:.0f}s waiting for {name} to update")
        time.sleep(delay)


def upload_config(s3, config, uri: str) -> bool:
    """The validated configuration as JSON at its s3:// URI, written only when it changed."""
    from playbook.provision import _put_if_changed

    parts = urlsplit(uri)
    if parts.scheme != "s3":
        raise PlaybookError(f"PIPELINE_CONFIG_URI {uri!r} is not an s3:// location")
    body = json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True).encode()
    key = parts.path.lstrip("/")
    before = _etag(s3, parts.netloc, key)
    _put_if_changed(s3, parts.netloc, key, body, "application/json")
    return _etag(s3, parts.netloc, key) != before


def _etag(s3, bucket: str, key: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        return s3.head_object(Bucket=bucket, Key=key)["ETag"]
    except ClientError:
        return None


def refuse_unreachable_apis(target, config) -> None:
    """An API source whose URL names this machine cannot be read by functions that run elsewhere (Lambda)."""
    from playbook.settings import names_this_machine

    if target.reaches_this_machine:
        return
    for name, source in config.sources.items():
        api = source.api
        for setting, url in (("base_url", api and api.base_url), ("auth.token_url", api and api.auth.token_url)):
            if url and names_this_machine(urlsplit(url).hostname):
                raise PlaybookError(f"sources.{name}.api.{setting} is {url}, this machine: the functions on {target} "
                                    "cannot reach it. Point it at the system's own API, or leave the source out of "
                                    "this configuration (the demo's accounting system runs on the local stack only)")


def deploy(target, config_file: str | None = None, source: Path | None = None) -> Deployed:
    """Build, upload and roll out the function code (and configuration) to the pipeline deployed on a target."""
    import boto3

    from playbook.config import load_config
    from playbook.package import LAMBDA_SRC, build_function_zip, sha256
    from playbook.provision import _upload_if_absent
    from playbook.settings import local_settings
    from playbook.stages import refresh_report_schedule

    config = load_config(config_file)
    refuse_unreachable_apis(target, config)
    outputs = target.outputs(parts=("storage", "pipeline"))
    bucket = outputs.get("ArtifactBucketName")
    functions = pipeline_functions(outputs)
    if not bucket or not functions:
        raise PlaybookError(f"no pipeline deployed on {target}: run `playbook provision --target {target}` first")
    build_dir = local_settings().state_dir / "build" / "deploy"
    code = build_function_zip(build_dir, source or LAMBDA_SRC)
    code_key = f"lambda/pipeline-{sha256(code)[:16]}.zip"  # the key provisioning gives the same bytes
    s3, lam = boto3.client("s3"), boto3.client("lambda")
    _upload_if_absent(s3, bucket, code_key, code)
    result = Deployed(target.name, code_key, _sha_b64(code))
    result.layer = target.deploy_layer(build_dir, s3, bucket)
    config_uris = set()
    for name in functions:
        conf = lam.get_function_configuration(FunctionName=name)
        uri = ((conf.get("Environment") or {}).get("Variables") or {}).get("PIPELINE_CONFIG_URI")
        if uri:
            config_uris.add(uri)
        if conf.get("CodeSha256") == result.code_sha256:
            result.functions[name] = "unchanged"
            continue
        lam.update_function_code(FunctionName=name, S3Bucket=bucket, S3Key=code_key)
        updated = wait_for_update(lam, name, delay=target.update_poll_s)
        if updated.get("CodeSha256") != result.code_sha256:
            raise PlaybookError(f"{name}: the update finished but the function does not run {code_key}")
        result.functions[name] = "updated"
    if any(upload_config(s3, config, uri) for uri in sorted(config_uris)):
        result.config = "uploaded"
    refresh_report_schedule(target, config)
    return result


def report(result: Deployed) -> str:
    lines = [f"deployed on {result.target}: {result.code_key} (sha256 {result.code_sha256})"]
    lines += [f"  {name:<36} {action}" for name, action in sorted(result.functions.items())]
    lines.append(f"configuration: {result.config}")
    lines.append(f"dependency layer: {result.layer}")
    lines.append("changes: " + ("applied" if result.changed else "none (everything was up to date)"))
    return "\n".join(lines)


def cmd_deploy(args: argparse.Namespace) -> int:
    from playbook.targets import resolve_target

    print(report(deploy(resolve_target(args.target), args.config)))
    return 0


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("deploy", help="build the function zip and update every pipeline function's code")
    p.add_argument("--target", choices=["local", "aws"], default="local")
    p.add_argument("--config", help="configuration file (default: $PLAYBOOK_CONFIG or playbook.yaml)")
    p.set_defaults(func=cmd_deploy)


# what a source's template is made of: a change to one of these needs `provision`, any other change `deploy`
TEMPLATE_SETTINGS = ("kind", "table", "prefix", "schedule", "start_date", "api")
# what a row's _key is made of: rows already loaded keep the key they were loaded with
KEY_SETTINGS = ("natural_key", "compose")


class Need(NamedTuple):
    """A change the configuration made since the deployment: the source it is about (None: all of it), the
    command it needs (provision or deploy), and what to tell the consultant."""

    source: str | None
    command: str
    text: str


def deployed_config(target, outputs: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The configuration the deployed functions read (at their PIPELINE_CONFIG_URI), None when none is deployed.
    outputs: the target's stack outputs, when the caller has them already."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    functions = pipeline_functions(outputs if outputs is not None else target.outputs(parts=("storage", "pipeline")))
    if not functions:
        return None
    try:
        conf = boto3.client("lambda").get_function_configuration(FunctionName=functions[0])
        uri = ((conf.get("Environment") or {}).get("Variables") or {}).get("PIPELINE_CONFIG_URI")
        if not uri:
            return None
        parts = urlsplit(uri)
        body = boto3.client("s3").get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))["Body"].read()
    except (BotoCoreError, ClientError):
        return None
    return json.loads(body)


def changes_needed(target, config, outputs: dict[str, str] | None = None) -> list[Need]:
    """What the configuration changed since the deployment, each with the command it needs: a source added or
    one whose schedule, prefix, kind or API changed needs `provision` (its function, schedule and permissions);
    any other change `deploy` (the functions read the configuration they were given)."""
    to_provision, to_deploy = (f"`playbook provision --target {target}`", f"`playbook deploy --target {target}`")
    deployed = deployed_config(target, outputs)
    if deployed is None:
        return [Need(None, "provision", f"nothing is deployed on {target}: run {to_provision}")]
    now = config.model_dump(mode="json")
    was = deployed.get("sources", {})
    needs = []
    for name, source in now["sources"].items():
        if name not in was:
            needs.append(Need(name, "provision", f"source {name} is new since the last provisioning: run "
                                                 f"{to_provision} (its function, schedule and permissions)"))
            continue
        if changed := [k for k in TEMPLATE_SETTINGS if source.get(k) != was[name].get(k)]:
            needs.append(Need(name, "provision", f"source {name}: {', '.join(changed)} changed since the last "
                                                 f"provisioning: run {to_provision}"))
        if any(source.get(k) != was[name].get(k) for k in KEY_SETTINGS):
            needs.append(Need(name, "deploy", f"source {name}: its key (natural_key or compose) changed: rows "
                                              "loaded before keep their old key, so the same rows delivered again "
                                              "are new rows: empty the source's rows first (or keep the old key), "
                                              f"then run {to_deploy}"))
    needs += [Need(name, "provision", f"source {name} was removed from the configuration: run {to_provision}")
              for name in was if name not in now["sources"]]
    if not needs and now != deployed:
        needs.append(Need(None, "deploy", f"the configuration changed since the last deploy: run {to_deploy}"))
    return needs
