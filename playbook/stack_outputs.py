"""Stack outputs are the contract between the infrastructure and the code: read them, never copy them.

`stack_outputs(target)` (a target's `outputs()`) merges the outputs of every stack of the deployment. On the
local stack, an output whose resource moto could not create (the Aurora cluster's endpoint and secret) comes
from what stands in for that resource, as provisioning recorded it (see `stand_in_outputs`); no output is
kept on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from playbook.errors import PlaybookError
from playbook.settings import local_settings

ENV_STACK_PREFIX = "PLAYBOOK_STACK_PREFIX"
DEFAULT_STACK_PREFIX = "playbook"


def stack_prefix() -> str:
    return os.environ.get(ENV_STACK_PREFIX) or DEFAULT_STACK_PREFIX


def stack_name(part: str, prefix: str | None = None) -> str:
    return f"{prefix or stack_prefix()}-{part}"


def stand_ins_file() -> Path:
    return local_settings().state_dir / "stand_ins.json"


def read_stand_ins() -> dict[str, Any]:
    path = stand_ins_file()
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def _write_stand_ins(data: dict[str, Any]) -> None:
    path = stand_ins_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def record_stand_in_attributes(stack: str, attributes: dict[str, str]) -> None:
    """The attributes of resources moto did not create, as their local stand-ins provide them."""
    data = read_stand_ins()
    data.setdefault("attributes", {})[stack] = attributes
    _write_stand_ins(data)


def record_stand_in_resources(missing: list[Any]) -> None:
    """Which resources moto did not create and what stands in for each (stand_ins.Missing records)."""
    data = read_stand_ins()
    data["resources"] = [{"stack": m.stack, "logical_id": m.logical_id, "type": m.type, "stand_in": m.stand_in}
                         for m in missing]
    _write_stand_ins(data)


def outputs_of(cfn, name: str) -> dict[str, str] | None:
    """One stack's outputs, or None when the stack does not exist."""
    from botocore.exceptions import ClientError

    try:
        stacks = cfn.describe_stacks(StackName=name)["Stacks"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs") or []}


def stand_in_outputs(cfn, name: str, outputs: dict[str, str]) -> dict[str, str]:
    """On the local stack: one stack's outputs with those moto leaves out (its change sets evaluate none, and
    none can name a resource it skipped) evaluated from the live stack: its template, parameters and resources
    as CloudFormation reports them, plus the recorded stand-in attributes of skipped resources."""
    import boto3

    from playbook import stand_ins

    template = cfn.get_template(StackName=name)["TemplateBody"]
    if isinstance(template, str):
        template = json.loads(template)
    if set(template.get("Outputs") or {}) <= set(outputs):
        return outputs
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    listed = cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
    attributes = read_stand_ins().get("attributes", {}).get(name, {})
    ctx = stand_ins.Context(
        stack=name, template=template,
        parameters={p["ParameterKey"]: p["ParameterValue"] for p in stack.get("Parameters") or []},
        physical={r["LogicalResourceId"]: r["PhysicalResourceId"] for r in listed
                  if r.get("LogicalResourceId") and r.get("PhysicalResourceId")},
        region=boto3.session.Session().region_name, account=stand_ins.account_id(),
        attributes={tuple(key.split(".", 1)): value for key, value in attributes.items()})
    return {**outputs, **stand_ins.missing_outputs(ctx, outputs)}


def stack_outputs(target, parts: tuple[str, ...] | None = None) -> dict[str, str]:
    """Every output of the deployment's stacks on a target (playbook.targets), keyed by output name (names are
    unique across stacks)."""
    import boto3

    from playbook.templates import STACKS

    cfn = boto3.client("cloudformation")
    merged: dict[str, str] = {}
    found = False
    for part in parts or STACKS:
        outputs = target.stack_outputs_of(cfn, stack_name(part))
        if outputs is None:
            continue
        found = True
        merged.update(outputs)
    if not found:
        raise PlaybookError(f"no stacks named {stack_prefix()}-* on {target}: run `playbook provision --target "
                            f"{target}` first")
    return merged
