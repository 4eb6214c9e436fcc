"""The REST API source against a mock server that knows nothing of this project: Stoplight Prism serving the
business API's OpenAPI description (tests/openapi/business_api.yaml), read through the deployed ingest function.

Prism answers with the description's examples and checks every request against it (parameters, security) and
every answer against its schemas (--errors: a violation is an error, not a warning). It serves the first example
of an answer, or the one a request names with `__example`: the examples' next-page URLs and cursors name the
example holding the next page, so the source walks the pages as it would on the real API.
Expected rows and money come from the description's examples (pandas, decimals as written), never from what the
pipeline read.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import time
import uuid
from decimal import Decimal
from pathlib import Path

import boto3
import pandas as pd
import pytest
import requests
import yaml

from pipeline.handlers import ingest_api
from pipeline.sources import LoadError
from playbook.config import load_config

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTION = ROOT / "tests" / "openapi" / "business_api.yaml"
EXAMPLE = ROOT / "examples" / "business_api.yaml"
PRISM = ROOT / "node_modules" / ".bin" / "prism"
WINDOW = {"from": "2024-01-01", "to": "2024-01-08"}


class ExactLoader(yaml.SafeLoader):
    """YAML with its decimals as written: 12.30 is Decimal('12.30'), not a float."""


ExactLoader.add_constructor("tag:yaml.org,2002:float", lambda loader, node: Decimal(loader.construct_scalar(node)))


def description() -> dict:
    return yaml.load(DESCRIPTION.read_text(), Loader=ExactLoader)  # noqa: S506 - a SafeLoader subclass


def example_pages(path: str) -> list[dict]:
    """The 200 answer's examples of GET `path`, in the order the description gives them."""
    content = description()["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
    return [example["value"] for example in content["examples"].values()]


def example_records(path: str, columns: dict[str, str]) -> pd.DataFrame:
    """Every record of every example page, flattened, with the canonical column names of `columns`."""
    items = [item for page in example_pages(path) for item in page["data"]["items"]]
    frame = pd.json_normalize(items)
    return frame[list(columns.values())].set_axis(list(columns), axis=1)


def free_low_port() -> int:
    """A free port below 32768, out of the kernel's ephemeral range, so no outgoing connection takes it meanwhile."""
    rng = random.Random()  # noqa: S311 - picking a port, not a secret
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32767")


@pytest.fixture(scope="module")
def prism(tmp_path_factory):
    """Prism mocking the description on 127.0.0.1: its URL."""
    if not PRISM.exists():
        pytest.fail(f"Stoplight Prism is not installed ({PRISM.relative_to(ROOT)} is missing): run "
                    "`bash scripts/node-deps.sh` (or `make system-deps`), which installs Node.js and the "
                    "@stoplight/prism-cli that package.json pins")
    log_path = tmp_path_factory.mktemp("prism") / "prism.log"
    for _ in range(3):  # another process may take the port between the check and Prism's bind
        port = free_low_port()
        url = f"http://127.0.0.1:{port}"
        with log_path.open("w") as log_file:
            proc = subprocess.Popen(  # noqa: S603 - our own pinned tool, fixed arguments
                [str(PRISM), "mock", "--host", "127.0.0.1", "--port", str(port), "--errors", str(DESCRIPTION)],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 90  # Node starts slowly on a busy machine
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                requests.get(f"{url}/v1/costs", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.3)
        if proc.poll() is None and time.monotonic() < deadline:
            break
        proc.kill()
        proc.wait()
        if "EADDRINUSE" not in log_path.read_text():
            pytest.fail(f"Prism did not start serving {DESCRIPTION.name} on {url}:\n{log_path.read_text()[-3000:]}")
    else:
        pytest.fail(f"Prism found no free port:\n{log_path.read_text()[-3000:]}")
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def source(prism, landing, monkeypatch):
    """Configure a source of examples/business_api.yaml against Prism; returns the configuration function."""
    secret = f"playbook/api/prism-{uuid.uuid4().hex[:8]}"
    token = uuid.uuid4().hex  # Prism checks that credentials come as the description says, not their value
    boto3.client("secretsmanager").create_secret(Name=secret, SecretString=json.dumps(
        {"token": token, "api_key": token, "username": "playbook", "password": token}))

    def configure(name: str, pagination: dict, params: dict, auth: str = "bearer", **settings) -> dict:
        data = load_config(EXAMPLE).model_dump(mode="json")
        src = data["sources"][name]
        src.update(settings)
        options = src["api"]
        options["base_url"] = prism
        options["auth"] = {"type": "none"} if auth == "none" else {"type": auth, "secret": secret}
        options["resource"]["params"] = params
        options["pagination"] = pagination
        options["retry"] = {"attempts": 2, "backoff_s": 0.05, "max_backoff_s": 0.2}
        key = f"config/prism-{uuid.uuid4().hex[:8]}.json"
        boto3.client("s3").put_object(Bucket=landing.bucket, Key=key, Body=json.dumps(data).encode())
        monkeypatch.setenv("PIPELINE_CONFIG_URI", f"s3://{landing.bucket}/{key}")
        return src

    return configure


def ledger(landing, batch_id: int) -> tuple:
    return landing.query("select status, rows_read, rows_inserted, amount_in, amount_loaded, source_kind "
                         "from meta.batches where batch_id = %s", (batch_id,))[0]


def test_order_lines_follow_the_next_urls_of_the_description(source, landing):
    src = source("sales_api", {"style": "next_url", "page_size": 3, "next_url_path": "links.next"},
                 {"paging": "next"}, amounts="signed")
    summary = ingest_api.handler({"source": "sales_api", **WINDOW}, None)

    expected = example_records("/v1/orders", src["columns"])
    assert len(example_pages("/v1/orders")) == 3 and len(expected) == 8
    assert summary["pages"] == 3 and summary["records"] == len(expected)
    assert summary["complete"] and summary["resume"] is None

    rows = landing.query("select order_id, line_no, order_date::text, client_id, product, quantity, unit_price, "
                         "amount, currency from core.sales")
    want = list(expected[["order_id", "line_no", "order_date", "client_id", "product", "quantity", "unit_price",
                          "amount", "currency"]].itertuples(index=False, name=None))
    assert sorted(rows) == sorted(want)
    assert all(isinstance(r[6], Decimal) and isinstance(r[7], Decimal) for r in rows)

    total = sum(expected["amount"], Decimal(0))
    assert total == Decimal("4499.03")  # the examples' line totals as written, a refund of 12.30 among them
    assert (expected["amount"] < 0).sum() == 1
    by_currency = expected.groupby("currency")["amount"].apply(lambda s: sum(s, Decimal(0))).to_dict()
    assert landing.query("select currency, sum(amount) from core.sales group by currency order by 1") == sorted(
        by_currency.items())
    assert Decimal(summary["batch"]["amount_loaded"]) == total
    assert ledger(landing, summary["batch"]["batch_id"]) == (
        "committed", len(expected), len(expected), total, total, "rest_api")
    assert landing.query("select count(*) from meta.batches where status <> 'committed'")[0][0] == 0


def test_costs_follow_the_cursors_of_the_description(source, landing):
    # the cursor goes back as __example: the mock's way to choose the page a cursor names
    src = source("costs_api", {"style": "body_cursor", "page_size": 2, "cursor_param": "__example",
                               "cursor_path": "meta.next_cursor"}, {"paging": "cursor"})
    summary = ingest_api.handler({"source": "costs_api", **WINDOW}, None)

    expected = example_records("/v1/costs", src["columns"])
    assert summary["pages"] == len(example_pages("/v1/costs")) == 2 and summary["records"] == len(expected) == 3
    rows = landing.query("select cost_id, cost_date::text, category, vendor, amount from core.operating_costs")
    assert sorted(rows) == sorted(expected[["cost_id", "cost_date", "category", "vendor", "amount"]].itertuples(
        index=False, name=None))
    total = sum(expected["amount"], Decimal(0))
    assert total == Decimal("2768.48")
    assert landing.query("select sum(amount) from core.operating_costs")[0][0] == total
    assert ledger(landing, summary["batch"]["batch_id"])[:5] == ("committed", 3, 3, total, total)


def test_a_request_without_the_described_credentials_is_refused(source, landing):
    source("costs_api", {"style": "body_cursor", "page_size": 2, "cursor_param": "__example",
                         "cursor_path": "meta.next_cursor"}, {"paging": "cursor"}, auth="none")
    with pytest.raises(LoadError, match=r"/v1/costs.*401"):
        ingest_api.handler({"source": "costs_api", **WINDOW}, None)
    assert landing.query("select count(*) from core.operating_costs")[0][0] == 0
