"""The validated company configuration as the functions see it: JSON at PIPELINE_CONFIG_URI (s3://...).

The playbook uploads it at deploy time. A warm function keeps the parsed configuration and asks S3 on each
invocation only whether it changed (a conditional GET on its ETag), so a configuration deployed while
environments are warm takes effect at their next invocation. A `file://` URI or a plain path is accepted
too, for running a handler outside AWS.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

import boto3
from botocore.exceptions import ClientError

from pipeline.config import PipelineConfig, parse_config

ENV_CONFIG_URI = "PIPELINE_CONFIG_URI"
ENV_LANDING_BUCKET = "LANDING_BUCKET"


def landing_bucket() -> str:
    """The landing bucket the function was deployed with (its files, its API pages)."""
    from pipeline.sources import LoadError

    bucket = os.environ.get(ENV_LANDING_BUCKET)
    if not bucket:
        raise LoadError(f"{ENV_LANDING_BUCKET} is not set: the function does not know its landing bucket")
    return bucket


_cache: dict[str, tuple[str, PipelineConfig]] = {}  # uri -> (version seen, configuration)


def _load(uri: str) -> PipelineConfig:
    parsed = urlparse(uri)
    cached = _cache.get(uri)
    if parsed.scheme == "s3":
        request = {"Bucket": parsed.netloc, "Key": parsed.path.lstrip("/")}
        try:
            obj = boto3.client("s3").get_object(**request, **({"IfNoneMatch": cached[0]} if cached else {}))
        except ClientError as exc:
            if cached and exc.response.get("Error", {}).get("Code") in ("304", "NotModified"):
                return cached[1]
            raise
        version, body = obj["ETag"], obj["Body"].read()
    else:
        path = Path(parsed.path if parsed.scheme == "file" else uri)
        version = str(path.stat().st_mtime_ns)
        if cached and cached[0] == version:
            return cached[1]
        body = path.read_bytes()
    config = parse_config(json.loads(body), origin=uri)
    _cache[uri] = (version, config)
    return config


def pipeline_config(uri: str | None = None) -> PipelineConfig:
    uri = uri or os.environ.get(ENV_CONFIG_URI)
    if not uri:
        raise RuntimeError(f"{ENV_CONFIG_URI} is not set: the function does not know its configuration")
    return _load(uri)
