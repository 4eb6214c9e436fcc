"""A warm function keeps its parsed configuration and still sees a new one as soon as it is deployed."""

from __future__ import annotations

import json

import boto3

from pipeline import runtime_config
from playbook.config import load_config


def test_the_configuration_is_parsed_once_and_reread_when_it_changes(stack):
    s3 = boto3.client("s3")
    bucket = "runtime-config-test"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": s3.meta.region_name})
    config = load_config().model_dump(mode="json")
    s3.put_object(Bucket=bucket, Key="pipeline.json", Body=json.dumps(config).encode())
    uri = f"s3://{bucket}/pipeline.json"

    first = runtime_config.pipeline_config(uri)
    assert runtime_config.pipeline_config(uri) is first  # unchanged: S3 answered 304, nothing parsed again

    config["company"]["name"] = "Renamed Ltd"
    s3.put_object(Bucket=bucket, Key="pipeline.json", Body=json.dumps(config).encode())
    second = runtime_config.pipeline_config(uri)
    assert second is not first and second.company.name == "Renamed Ltd"
