"""The validated company configuration as the functions see it: JSON at PIPELINE_CONFIG_URI (s3://...).

The playbook uploads it at deploy time; a function reads it once per container. A `file://` URI or a
plain path is accepted too, for running a handler outside AWS.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import boto3

from pipeline.config import PipelineConfig, parse_config

ENV_CONFIG_URI = "PIPELINE_CONFIG_URI"


@lru_cache(maxsize=4)
def _load(uri: str) -> PipelineConfig:
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        body = boto3.client("s3").get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
    else:
        body = Path(parsed.path if parsed.scheme == "file" else uri).read_bytes()
    return parse_config(json.loads(body), origin=uri)


def pipeline_config(uri: str | None = None) -> PipelineConfig:
    uri = uri or os.environ.get(ENV_CONFIG_URI)
    if not uri:
        raise RuntimeError(f"{ENV_CONFIG_URI} is not set: the function does not know its configuration")
    return _load(uri)
