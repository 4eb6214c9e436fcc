"""The REST API source against the demo company's business API: a real HTTP server, moto, PostgreSQL.

Expected values come from the company's own tables (integer pence), never from what the pipeline read.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import date
from decimal import Decimal
from pathlib import Path

import boto3
import numpy as np
import psycopg2
import pytest

from pipeline.config import ConfigError, parse_config
from pipeline.handlers import ingest_api
from pipeline.logs import JsonFormatter
from pipeline.sources import LoadError
from playbook.config import load_config
from playbook.demo.api_server import BusinessApi
from playbook.demo.company import build_company

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "business_api.yaml"
WINDOW = {"from": "2024-01-01", "to": "2024-01-15"}
STYLES = {  # pagination style -> (the server's paging=, the options that read it)
    "page_number": ("page", {"total_pages_path": "meta.total_pages"}),
    "offset": ("offset", {"total_count_path": "meta.total_count"}),
    "body_cursor": ("cursor", {"cursor_path": "meta.next_cursor"}),
    "link_header": ("link", {}),
    "next_url": ("next", {"next_url_path": "links.next"}),
}


@pytest.fixture(scope="module")
def company():
    return build_company(end=date(2024, 3, 31), years=1, clients=40)


@pytest.fixture(scope="module")
def api(company):
    with BusinessApi(company, retry_after_s=1, slow_s=1.0) as server:
        yield server


@pytest.fixture()
def business(api, landing, monkeypatch):
    """The API with no faults, a secret holding its token, and a way to run the handler on a configuration."""
    api.clear_faults()
    api.log.clear()
    return Business(api, landing, monkeypatch)


def publish_config(landing, monkeypatch, data: dict, options: dict, api: dict) -> None:
    """A source's api options with quick retries and `api`'s settings over them (a dict merged into a dict), the
    configuration uploaded where the handler reads it."""
    options["retry"] = {"attempts": 4, "backoff_s": 0.05, "max_backoff_s": 0.2}
    for key, value in api.items():
        if isinstance(value, dict) and isinstance(options.get(key), dict):
            options[key].update(value)
        else:
            options[key] = value
    key = f"config/api-{uuid.uuid4().hex[:8]}.json"
    boto3.client("s3").put_object(Bucket=landing.bucket, Key=key, Body=json.dumps(data).encode())
    monkeypatch.setenv("PIPELINE_CONFIG_URI", f"s3://{landing.bucket}/{key}")


class Business:
    def __init__(self, api: BusinessApi, landing, monkeypatch):
        self.api, self.landing, self.monkeypatch = api, landing, monkeypatch
        self.secret = self.make_secret(api.token)

    @staticmethod
    def make_secret(token: str) -> str:
        name = f"playbook/api/business-{uuid.uuid4().hex[:8]}"
        boto3.client("secretsmanager").create_secret(Name=name, SecretString=json.dumps(
            {"token": token, "api_key": token, "username": "playbook", "password": token}))
        return name

    def configure(self, source: str = "sales_api", style: str = "page_number", page_size: int = 100,
                  secret: str | None = None, **api) -> None:
        """The example configuration pointed at this server, uploaded where the handler reads it."""
        data = load_config(EXAMPLE).model_dump(mode="json")
        options = data["sources"][source]["api"]
        paging, reads = STYLES[style]
        options["base_url"] = self.api.url
        options["auth"]["secret"] = secret or self.secret
        options["resource"]["params"] = {"paging": paging}
        options["pagination"] = {"style": style, "page_size": page_size, **reads}
        publish_config(self.landing, self.monkeypatch, data, options, api)

    def run(self, event: dict, context=None) -> dict:
        return ingest_api.handler(event, context)

    def state(self, source: str = "sales_api"):
        rows = self.landing.query("select cursor, batch_id, updated_at from meta.source_state where source = %s",
                                  (source,))
        return rows[0] if rows else None

    def sales(self) -> tuple:
        return self.landing.query("select count(*), sum(amount), count(distinct _batch_id) from core.sales")[0]

    def sales_rows(self) -> set:
        return set(self.landing.query("select order_id, line_no, order_date::text, client_id, product, quantity, "
                                      "unit_price, amount from core.sales"))


class ShrinkingContext:
    """A Lambda context whose remaining time drops by `step_s` at every look."""

    aws_request_id = "req-api-test"

    def __init__(self, start_s: float, step_s: float):
        self.left, self.step = start_s, step_s

    def get_remaining_time_in_millis(self) -> int:
        self.left -= self.step
        return int(self.left * 1000)


def expected_sales(company, start: str, end: str) -> set:
    """Order lines the API owes for [start, end): updated at 17:00 UTC on their order date."""
    s = company.sales
    days = s["order_date"].to_numpy().astype("datetime64[D]")
    pick = (days >= np.datetime64(start)) & (days < np.datetime64(end))
    return {(f"SO-{int(o):07d}", int(n), str(d), c, p, int(q), Decimal(int(u)) / 100, Decimal(int(a)) / 100)
            for o, n, d, c, p, q, u, a in zip(s["order_no"][pick], s["line_no"][pick], days[pick],
                                              s["client_id"][pick], s["product"][pick], s["quantity"][pick],
                                              s["unit_price"][pick], s["amount"][pick], strict=True)}


def ledger(landing, batch_id: int) -> dict:
    cols = ("status", "rows_read", "rows_inserted", "rows_quarantined", "amount_in", "amount_loaded",
            "source_ref", "window_from::date::text", "window_to::date::text", "source_kind")
    row = landing.query(f"select {', '.join(cols)} from meta.batches where batch_id = %s", (batch_id,))[0]
    return dict(zip(cols, row, strict=True))


# -- every pagination style ---------------------------------------------------------------------------
@pytest.mark.parametrize("style", list(STYLES))
def test_every_pagination_style_loads_the_same_records(business, company, style):
    business.configure(style=style)
    summary = business.run({"source": "sales_api", **WINDOW})
    expected = expected_sales(company, WINDOW["from"], WINDOW["to"])
    assert len(expected) > 1000 and summary["pages"] == -(-len(expected) // 100)
    assert summary["records"] == len(expected) and summary["complete"] and summary["resume"] is None
    assert json.loads(json.dumps(summary)) == summary  # what Lambda marshals; money as exact text
    assert Decimal(summary["batch"]["amount_loaded"]) == sum(r[7] for r in expected)
    assert business.sales_rows() == expected
    entry = ledger(business.landing, summary["batch"]["batch_id"])
    assert entry["status"] == "committed" and entry["rows_inserted"] == len(expected)
    assert entry["amount_in"] == entry["amount_loaded"] == sum(r[7] for r in expected)
    assert (entry["window_from::date::text"], entry["window_to::date::text"], entry["source_kind"]) == (
        "2024-01-01", "2024-01-15", "rest_api")
    assert entry["source_ref"] == (f"{business.api.url}/v1/orders?paging={STYLES[style][0]}"
                                   "&updated_since=2024-01-01T00%3A00%3A00Z&updated_before=2024-01-15T00%3A00%3A00Z")
    refs = business.landing.query("select distinct _source, _source_ref from core.sales_lineage")
    assert refs == [("sales_api", f"{entry['source_ref']}#pages 1-{summary['pages']}")]
    # the window is committed: the cursor moved to its end
    assert business.state()[0]["next_from"] == "2024-01-15T00:00:00+00:00"


def test_costs_keep_exact_money_and_nested_fields(business, company):
    business.configure(source="costs_api", style="body_cursor", page_size=7)
    summary = business.run({"source": "costs_api", "from": "2024-01-01", "to": "2024-03-01"})
    c = company.costs
    days = c["cost_date"].to_numpy().astype("datetime64[D]")
    pick = (days >= np.datetime64("2024-01-01")) & (days < np.datetime64("2024-03-01"))
    expected = {(f"EX-{int(n):06d}", v, Decimal(int(a)) / 100)
                for n, v, a in zip(c["cost_no"][pick], c["vendor"][pick], c["amount"][pick], strict=True)}
    assert summary["pages"] == -(-len(expected) // 7) > 5
    rows = set(business.landing.query("select cost_id, vendor, amount from core.operating_costs"))
    assert rows == expected
    assert business.landing.query("select sum(amount)::text from core.operating_costs")[0][0] == str(
        sum(e[2] for e in expected).quantize(Decimal("0.01")))


@pytest.mark.parametrize("auth", ["bearer", "api_key_header", "api_key_query", "basic"])
def test_every_auth_style_reads_its_secret(business, auth):
    business.configure(source="costs_api", style="body_cursor", auth={"type": auth})
    summary = business.run({"source": "costs_api", "from": "2024-01-01", "to": "2024-01-08"})
    assert summary["records"] > 0 and summary["batch"]["status"] == "committed"


# -- faults -------------------------------------------------------------------------------------------
def test_429_with_retry_after_waits_and_succeeds(business, company):
    business.configure()
    business.api.set_fault("rate_limit", times=2)  # Retry-After: 1 (seconds), then an HTTP date
    started = time.monotonic()
    summary = business.run({"source": "sales_api", **WINDOW})
    assert time.monotonic() - started >= 1.0
    assert [status for _, status in business.api.log[:3]] == [429, 429, 200]
    assert summary["retries"] == 2 and business.sales_rows() == expected_sales(company, **_window())


def test_500s_then_success(business, company):
    business.configure()
    business.api.set_fault("server_error", times=3)
    summary = business.run({"source": "sales_api", **WINDOW})
    assert summary["retries"] == 3 and business.sales_rows() == expected_sales(company, **_window())


def test_a_timeout_is_retried_then_a_clear_error(business):
    business.configure(timeout_s=0.2, retry={"attempts": 3})
    business.api.set_fault("slow")
    with pytest.raises(LoadError, match=r"GET http://127\.0\.0\.1:\d+/v1/orders\?.*no answer within 0\.2 s "
                                        r"\(timed out\); gave up after 3 attempts"):
        business.run({"source": "sales_api", **WINDOW})
    assert business.sales()[0] == 0
    assert business.landing.query("select status from meta.batches") == [("failed",)]


def test_truncated_json_fails_the_batch_commits_nothing_and_keeps_the_cursor(business):
    business.configure()
    business.run({"source": "sales_api", "from": "2023-12-01", "to": "2023-12-02"})
    before, loaded = business.state(), business.sales()
    business.api.set_fault("truncated")
    with pytest.raises(LoadError, match=r"/v1/orders\?.*page=2.*: the body is not valid JSON .*truncated"):
        business.run({"source": "sales_api", **WINDOW})
    assert business.state() == before and business.sales() == loaded
    assert business.landing.query("select status, coalesce(error, '') like '%%not valid JSON%%' from meta.batches "
                                  "order by batch_id") == [("committed", False), ("failed", True)]


def test_html_with_status_200_is_a_clear_error(business):
    business.configure()
    business.api.set_fault("html")
    with pytest.raises(LoadError, match=r"HTTP 200 with an HTML page \(text/html.*instead of JSON"):
        business.run({"source": "sales_api", **WINDOW})
    assert business.sales()[0] == 0 and business.state() is None


@pytest.mark.parametrize(("style", "message"), [
    ("body_cursor", r"the next cursor '.*' was already followed"),
    ("next_url", r"the next page's URL http://.*page=2 was already fetched"),
    ("link_header", r"the next page's URL http://.*page=2 was already fetched"),
    ("page_number", r"page 2 holds exactly the records of the page before"),
    ("offset", r"page 2 holds exactly the records of the page before"),
])
def test_paging_that_repeats_is_a_clear_error(business, style, message):
    business.configure(style=style)
    business.api.set_fault("repeat_cursor")
    with pytest.raises(LoadError, match=message):
        business.run({"source": "sales_api", **WINDOW})
    assert business.sales()[0] == 0 and business.state() is None


@pytest.mark.parametrize("style", ["page_number", "body_cursor", "link_header"])
def test_runaway_paging_stops_at_the_page_guard(business, style):
    business.configure(style=style, max_pages=30)
    business.api.set_fault("runaway")
    with pytest.raises(LoadError, match=r"more than 30 pages \(api.max_pages\) and the API still offers another"):
        business.run({"source": "sales_api", **WINDOW})
    assert len(business.api.log) == 30 and business.sales()[0] == 0


def test_401_is_not_retried_and_names_the_url_and_status(business):
    business.configure(secret=business.make_secret("not-the-token"))
    with pytest.raises(LoadError, match=r"GET http://127\.0\.0\.1:\d+/v1/orders\?paging=page&updated_since=.*: "
                                        r"HTTP 401 Unauthorized; not retried"):
        business.run({"source": "sales_api", **WINDOW})
    assert [status for _, status in business.api.log] == [401]


def test_404_is_not_retried_and_names_the_url_and_status(business):
    business.configure(resource={"path": "/v1/invoices"})
    with pytest.raises(LoadError, match=r"GET http://127\.0\.0\.1:\d+/v1/invoices\?.*: HTTP 404 Not Found; "
                                        r"not retried"):
        business.run({"source": "sales_api", **WINDOW})
    assert [status for _, status in business.api.log] == [404]


# -- time budget and the incremental cursor ------------------------------------------------------------
def test_a_time_budget_cut_commits_whole_pages_and_resumes_to_the_same_totals(business, company, monkeypatch):
    business.configure(reserve_s=10)
    expected = expected_sales(company, **_window())
    first = business.run({"source": "sales_api", **WINDOW}, ShrinkingContext(20, 1))
    assert first["stopped_for_time"] and not first["complete"] and 0 < first["pages"] < 17
    assert first["records"] == first["pages"] * 100 == business.sales()[0]
    state = business.state()
    assert state[0]["pending"]["position"] == {"page": first["pages"] + 1} and state[1] == first["batch"]["batch_id"]
    assert state[0].get("next_from") is None  # the window is not done: the cursor has not moved
    # the scheduled runs that follow finish the pending window first, then continue from its end
    monkeypatch.setenv("PIPELINE_SOURCE", "sales_api")
    scheduled = {"source": "aws.events", "detail-type": "Scheduled Event", "time": "2024-01-15T05:30:00Z"}
    runs = [first]
    while not runs[-1]["complete"]:
        runs.append(business.run(scheduled, ShrinkingContext(20, 1)))
        assert runs[-1]["resumed"] and runs[-1]["window"] == runs[0]["window"]
        assert len(runs) < 5
    assert sum(r["pages"] for r in runs) == 17 and sum(r["records"] for r in runs) == len(expected)
    cut = (business.sales(), business.sales_rows())
    assert cut[0][2] == len(runs) and cut[1] == expected
    assert business.state()[0]["next_from"] == "2024-01-15T00:00:00+00:00"
    after = business.run(scheduled)
    assert after["window"] == {"from": "2024-01-15T00:00:00+00:00", "to": "2024-01-15T05:30:00+00:00"}
    assert after["records"] == 0 and after["complete"]

    # one uninterrupted run of the same window gives the same totals
    with psycopg2.connect(business.landing.database_url) as conn, conn.cursor() as cur:
        cur.execute("truncate core.sales, core.sales_history, meta.quarantine, meta.source_state, meta.batches "
                    "cascade")
    whole = business.run({"source": "sales_api", **WINDOW})
    assert whole["pages"] == 17 and business.sales()[:2] == cut[0][:2] and business.sales_rows() == cut[1]


def test_scheduled_runs_follow_the_saved_cursor(business, company, monkeypatch):
    business.configure()
    monkeypatch.setenv("PIPELINE_SOURCE", "sales_api")
    event = {"source": "aws.events", "detail-type": "Scheduled Event", "time": "2024-01-10T05:30:00Z"}
    first = business.run(event)  # a first run: one schedule period (a day) before the event's time
    assert first["window"] == {"from": "2024-01-09T05:30:00+00:00", "to": "2024-01-10T05:30:00+00:00"}
    assert business.sales_rows() == expected_sales(company, "2024-01-09", "2024-01-10")
    # the Scheduler's own input names the source; a run two days later picks up where the cursor stands
    second = business.run({"job": "ingest", "source": "sales_api", "trigger": "schedule",
                           "time": "2024-01-12T05:30:00Z"})
    assert second["window"] == {"from": "2024-01-10T05:30:00+00:00", "to": "2024-01-12T05:30:00+00:00"}
    assert business.sales_rows() == expected_sales(company, "2024-01-09", "2024-01-12")
    assert business.state()[0]["next_from"] == "2024-01-12T05:30:00+00:00"


def test_a_batch_that_fails_after_fetching_leaves_the_cursor(business):
    business.configure(reserve_s=10)
    business.run({"source": "sales_api", "from": "2023-12-01", "to": "2023-12-02"})
    before, loaded = business.state(), business.sales()
    # plenty of time while paging, then the commit margin is gone before the merge: the loader rolls back
    context = ShrinkingContext(60, 0.01)
    original = ingest_api.BatchLoad.run

    def starved(self, margin):
        context.left = margin + 0.015  # passes the check after COPY, fails the one after the merge
        return original(self, margin)

    business.monkeypatch.setattr(ingest_api.BatchLoad, "run", starved)
    with pytest.raises(ingest_api.TimeBudgetExceeded):
        business.run({"source": "sales_api", **WINDOW}, context)
    assert business.state() == before and business.sales() == loaded


def test_the_secret_is_read_from_secrets_manager_and_never_logged(business):
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    keep = Keep()
    keep.setFormatter(JsonFormatter())
    logging.getLogger("pipeline.ingest_api").addHandler(keep)
    try:
        business.configure(source="costs_api", style="body_cursor", auth={"type": "api_key_query"})
        ok = business.run({"source": "costs_api", "from": "2024-01-01", "to": "2024-02-01"})
        assert ok["records"] > 0  # the key from the secret was accepted
        business.configure(source="costs_api", style="body_cursor", auth={"type": "api_key_query"},
                           resource={"path": "/v1/missing"})
        with pytest.raises(LoadError) as failure:
            business.run({"source": "costs_api", "from": "2024-01-01", "to": "2024-02-01"})
    finally:
        logging.getLogger("pipeline.ingest_api").removeHandler(keep)
    token = business.api.token
    assert any("api window processed" in r for r in records) and any("HTTP 404" in r for r in records)
    assert token not in str(failure.value) and "/v1/missing?" in str(failure.value)
    assert all(token not in r for r in records)
    stored = business.landing.query(
        "select string_agg(coalesce(source_ref, '') || coalesce(error, ''), ' ') from meta.batches")[0][0]
    stored += business.landing.query("select string_agg(distinct _source_ref, ' ') || string_agg(cursor::text, ' ') "
                                     "from core.operating_costs_lineage, meta.source_state")[0][0]
    assert "/v1/costs?" in stored and token not in stored
    # the configuration holds only the secret's name
    assert token not in json.dumps(load_config(EXAMPLE).model_dump(mode="json"))


def test_a_missing_secret_fails_the_batch_naming_it(business):
    business.configure(secret="playbook/api/nowhere")
    with pytest.raises(LoadError, match=r"auth.secret: cannot read the secret 'playbook/api/nowhere' from Secrets "
                                        r"Manager \(ResourceNotFoundException\)"):
        business.run({"source": "sales_api", **WINDOW})
    assert business.landing.query("select status from meta.batches") == [("failed",)] and business.api.log == []


def test_api_options_are_required_for_rest_api_and_forbidden_elsewhere():
    data = load_config(EXAMPLE).model_dump(mode="json")
    data["sources"]["sales_api"].pop("api")
    with pytest.raises(ConfigError, match=r"sources.sales_api: .*api: a rest_api source needs its api options"):
        parse_config(data)
    data = load_config().model_dump(mode="json")
    data["sources"]["sales"]["api"] = load_config(EXAMPLE).sources["sales_api"].api.model_dump(mode="json")
    with pytest.raises(ConfigError, match=r"sources.sales: .*api: only a rest_api source takes api options"):
        parse_config(data)
    data = load_config(EXAMPLE).model_dump(mode="json")
    data["sources"]["sales_api"]["api"]["headers"] = {"Authorization": "Bearer abc"}
    data["sources"]["sales_api"]["api"]["pagination"]["style"] = "pages"
    with pytest.raises(ConfigError) as bad:
        parse_config(data, "business_api.yaml")
    assert "business_api.yaml: sources.sales_api.api.headers: Authorization: credentials belong in auth.secret" in (
        str(bad.value))
    assert "business_api.yaml: sources.sales_api.api.pagination.style: Input should be" in str(bad.value)


def _window() -> dict:
    return {"start": WINDOW["from"], "end": WINDOW["to"]}


def test_a_page_that_repeats_is_caught_by_validation_where_it_happened(business, pipeline_stack, tmp_path):
    """The seeded API defect: the batch fails whole, and validation reports the failed window with the URL and
    the loader's words until a later run loads it. (Validation refreshes stale marts through the local target's
    deployed refresh function: the tests' provisioned pipeline, on the same warehouse.)"""
    from playbook.accuracy import AccuracyBreach, validate
    from playbook.targets import LocalTarget

    business.configure(style="next_url")
    business.api.set_fault("repeat_cursor")
    for _ in range(2):  # failed twice (as a retried invocation would): still one window missing
        with pytest.raises(LoadError):
            business.run({"source": "sales_api", **WINDOW})
    config = load_config(EXAMPLE)
    with pytest.raises(AccuracyBreach) as breach:
        validate(business.landing.database_url, config, out_dir=tmp_path, target=LocalTarget())
    (failed,) = breach.value.report.by_check("failed_batches") and [
        r for r in breach.value.report.by_check("failed_batches") if r.subject == "sales_api"]
    assert failed.status == "fail" and failed.observed == 1
    (finding,) = failed.findings
    assert finding["file"].startswith(business.api.url) and "was already fetched" in finding["error"]
    assert "sales_api" in (tmp_path / "accuracy.md").read_text()
    # loaded later by a wider window (not the same URL): the finding is gone
    business.api.clear_faults()
    business.run({"source": "sales_api", "from": WINDOW["from"], "to": "2024-02-01"})
    again = validate(business.landing.database_url, config, out_dir=tmp_path, target=LocalTarget(), thresholds={
        k: 10**6 for k in ("max_quarantined_rows", "max_orphans", "max_missed_deliveries")})
    assert [r.status for r in again.by_check("failed_batches") if r.subject == "sales_api"] == ["pass"]


def test_a_backfill_window_on_aws_is_found_in_the_ledger_by_the_window_its_batch_records(business):
    """On AWS the backfill invokes API windows asynchronously and reads their outcome from meta.batches."""
    from datetime import UTC, datetime, timedelta

    import psycopg2

    from playbook.backfill import _window_state, function_output_key, plan_windows

    business.configure()
    config = load_config(EXAMPLE)
    outputs = {"LandingBucketName": business.landing.bucket, function_output_key("sales_api"): "fn"}
    (window, *_) = plan_windows(config, outputs, sources=["sales_api"], grain="month", api_start=date(2024, 1, 1))
    since = datetime.now(UTC) - timedelta(seconds=5)
    with psycopg2.connect(business.landing.database_url) as conn:
        assert _window_state(conn, window, since) == (0, 0, 0)
        business.run(window.event)
        assert _window_state(conn, window, since) == (0, 1, 0)
    conn.close()
