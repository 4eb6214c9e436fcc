"""Fixtures for the handlers: a landing bucket, the configuration at PIPELINE_CONFIG_URI, the ingest role."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

import boto3
import psycopg2
import pytest

from pipeline.config import PipelineConfig
from pipeline.sources.objects import ObjectRef
from playbook.config import load_config

TRUNCATE = ("truncate meta.quarantine, meta.source_state, meta.api_call_limits, core.clients, core.sales, "
            "core.payments, core.operating_costs, core.tax, core.interactions, core.clients_history, "
            "core.sales_history, core.payments_history, core.operating_costs_history, core.tax_history, "
            "core.interactions_history, meta.batches cascade")


@dataclass
class Landing:
    bucket: str
    config: PipelineConfig
    database_url: str  # the owner's, for assertions
    ingest_url: str

    def put(self, key: str, body: bytes) -> ObjectRef:
        meta = boto3.client("s3").put_object(Bucket=self.bucket, Key=key, Body=body)
        return ObjectRef(self.bucket, key, meta.get("VersionId"), meta["ETag"].strip('"'))

    def ingest(self, key: str, body: bytes | None = None, config: PipelineConfig | None = None) -> dict:
        """Deliver (when body is given) and load one object the way the handler does."""
        from pipeline.handlers import ingest_object

        if body is not None:
            self.put(key, body)
        conn = psycopg2.connect(self.ingest_url)
        try:
            return ingest_object.ingest(conn, config or self.config, ObjectRef(self.bucket, key),
                                        lambda: float("inf"))
        finally:
            conn.close()

    def query(self, statement: str, params=None) -> list[tuple]:
        with psycopg2.connect(self.database_url) as conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall()


@pytest.fixture(scope="session")
def landing_session(stack) -> Landing:
    from playbook.warehouse import ensure_role_logins, secret_arn

    bucket = f"landing-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": os.environ["AWS_DEFAULT_REGION"]})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    config = load_config()
    s3.put_object(Bucket=bucket, Key="config/pipeline.json", Body=json.dumps(config.model_dump(mode="json")).encode())
    urls = ensure_role_logins(stack["database_url"])
    os.environ["DB_SECRET_ARN"] = secret_arn("pipeline_ingest")
    os.environ["PIPELINE_CONFIG_URI"] = f"s3://{bucket}/config/pipeline.json"
    os.environ["LANDING_BUCKET"] = bucket
    return Landing(bucket, config, stack["database_url"], urls["pipeline_ingest"])


@pytest.fixture()
def landing(landing_session: Landing) -> Landing:
    """An empty warehouse for each test, so every count below is this test's own."""
    with psycopg2.connect(landing_session.database_url) as conn, conn.cursor() as cur:
        cur.execute(TRUNCATE)
    return landing_session


@pytest.fixture(scope="module")
def pipeline_stack(stack):
    """The tests' provisioned pipeline (tests/playbook/deployed.py), for what the playbook runs through its
    deployed functions (`playbook report`'s email, `playbook refresh`, validate's refresh)."""
    from tests.playbook.deployed import provisioned_pipeline

    with provisioned_pipeline() as outputs:
        yield outputs


@pytest.fixture()
def found_unchanged(monkeypatch) -> list[int]:
    """How many rows each load found already in core without typing them, in order: a file typed in the handler
    that is a loaded batch's rows again (BatchLoad._unchanged_from_handler)."""
    from pipeline.loader import BatchLoad

    seen = []
    again = BatchLoad._unchanged_from_handler

    def recognised(self, *args):
        summary = again(self, *args)
        seen.append(summary["rows_unchanged"] if summary else 0)
        return summary

    monkeypatch.setattr(BatchLoad, "_unchanged_from_handler", recognised)
    return seen
