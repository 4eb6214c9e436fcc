"""`playbook ingest SOURCE PATH`: deliver one local file the way the source would, and load it.

The file goes to the landing bucket under the source's prefix (from the stack outputs and the company
configuration), then the source's *deployed* ingest function runs on it: locally through the Lambda
runtime (the deployed zip in a subprocess), on AWS by a synchronous invoke.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from playbook.errors import PlaybookError


def ingest_file(source: str, path: str | Path, config_file: str | None = None, target: str = "local",
                key: str | None = None) -> dict[str, Any]:
    import boto3

    from playbook.backfill import function_output_key
    from playbook.config import load_config
    from playbook.stack_outputs import stack_outputs

    config = load_config(config_file)
    if source not in config.sources:
        raise PlaybookError(f"unknown source {source!r}; the configuration has {', '.join(config.sources)}")
    cfg = config.sources[source]
    if not cfg.prefix:
        raise PlaybookError(f"source {source!r} is a {cfg.kind} source: it does not take files")
    file = Path(path)
    if not file.is_file():
        raise PlaybookError(f"{file}: no such file")
    if target == "local":
        from playbook.local.stack import activate

        activate()
    outputs = stack_outputs(target)
    bucket, function = outputs.get("LandingBucketName"), outputs.get(function_output_key(source))
    if not bucket or not function:
        raise PlaybookError(f"the {target} stacks are not provisioned: run `playbook provision --target {target}`")
    object_key = key or f"{cfg.prefix}{file.name}"
    if not object_key.startswith(cfg.prefix):
        raise PlaybookError(f"--key {object_key!r} must lie under the source's prefix {cfg.prefix!r}")
    boto3.client("s3").upload_file(str(file), bucket, object_key)
    event = {"bucket": bucket, "key": object_key}
    if target == "local":
        from playbook.runtime import invoke

        result = invoke(function, event)
        return {"function": function, "key": object_key, "status": result.status, "log": result.log_path,
                "summary": result.payload if result.ok else None, "error": result.error}
    response = boto3.client("lambda").invoke(FunctionName=function, Payload=json.dumps(event).encode())
    payload = json.loads(response["Payload"].read() or b"null")
    failed = "FunctionError" in response
    return {"function": function, "key": object_key, "status": "error" if failed else "ok",
            "summary": None if failed else payload, "error": payload if failed else None}


def cmd_ingest(args: argparse.Namespace) -> int:
    result = ingest_file(args.source, args.path, args.config, args.target, args.key)
    print(json.dumps(result, indent=2, default=str))
    if result["status"] != "ok":
        error = result.get("error") or {}
        print(f"playbook: {args.path} did not load: {error.get('errorMessage', result['status'])}", file=sys.stderr)
        return 1
    return 0


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("ingest", help="deliver a local file to a source's landing prefix and load it")
    p.add_argument("source", help="the source's name in the configuration, e.g. payments")
    p.add_argument("path", help="the file to deliver")
    p.add_argument("--config", help="configuration file (default: $PLAYBOOK_CONFIG or playbook.yaml)")
    p.add_argument("--target", choices=("local", "aws"), default="local")
    p.add_argument("--key", help="object key (default: the source's prefix + the file name)")
    p.set_defaults(func=cmd_ingest)
