"""The REST API source as accounting systems serve it: OAuth 2.0 (client credentials, rotating refresh tokens),
invoices with nested lines, declared date formats, incremental windows by a `where` filter or If-Modified-Since,
and call limits announced in response headers. Against the demo company's API server (a real HTTP server),
moto's Secrets Manager and PostgreSQL; expected values come from the company's own tables.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, date, datetime

import boto3
import psycopg2
import pytest

from pipeline.config import ConfigError, parse_config
from pipeline.handlers import ingest_api
from pipeline.sources import LoadError, rest_api
from pipeline.sources.rest_api import RateLimited, TokenSource, moment_text, parse_moment_as, pg_refresh_lock
from playbook.config import load_config
from playbook.demo.api_server import CLIENT_ID, BusinessApi
from playbook.demo.company import build_company
from tests.pipeline.test_rest_api import EXAMPLE, ledger, publish_config
from tests.pipeline.test_rest_api import expected_sales as expected_order_lines

ACCOUNTING = EXAMPLE.parent / "accounting_api.yaml"
WINDOW = {"from": "2024-01-01", "to": "2024-01-15"}


@pytest.fixture(scope="module")
def company():
    return build_company(end=date(2024, 3, 31), years=1, clients=40)


@pytest.fixture(scope="module")
def api(company):
    with BusinessApi(company, retry_after_s=1) as server:
        yield server


@pytest.fixture()
def accounting(api, landing, monkeypatch):
    api.clear_faults()
    api.log.clear()
    api.grants.clear()
    api.spent_refresh_tokens.clear()
    api.token_delay_s = 0.0
    api.new_refresh_token()
    rest_api._CALLS_RESUME.clear()
    yield Accounting(api, landing, monkeypatch)
    rest_api._CALLS_RESUME.clear()


class Accounting:
    def __init__(self, api: BusinessApi, landing, monkeypatch):
        self.api, self.landing, self.monkeypatch = api, landing, monkeypatch
        self.secret = f"playbook/api/accounting-{uuid.uuid4().hex[:8]}"
        boto3.client("secretsmanager").create_secret(Name=self.secret, SecretString=json.dumps(
            {"client_id": CLIENT_ID, "client_secret": api.token, "refresh_token": api.refresh_token}))

    def stored(self) -> dict:
        return json.loads(boto3.client("secretsmanager").get_secret_value(SecretId=self.secret)["SecretString"])

    def configure(self, source: str = "invoices_api", example=ACCOUNTING, **api) -> None:
        data = load_config(example).model_dump(mode="json")
        options = data["sources"][source]["api"]
        options["base_url"] = self.api.url
        options["auth"]["secret"] = self.secret
        if options["auth"].get("token_url"):
            options["auth"]["token_url"] = f"{self.api.url}/oauth/token"
        publish_config(self.landing, self.monkeypatch, data, options, api)

    def run(self, event: dict, context=None) -> dict:
        return ingest_api.handler({"source": "invoices_api", **event}, context)

    def sales_rows(self) -> set:
        return set(self.landing.query("select order_id, line_no, order_date::text, client_id, product, quantity, "
                                      "unit_price, amount from core.sales"))

    def invoice_calls(self) -> list[tuple[str, int]]:
        return [(path, status) for path, status in self.api.log if path.startswith("/v2/")]


class Budget:
    """A Lambda context with a fixed time left."""

    aws_request_id = "req-accounting-test"

    def __init__(self, seconds: float):
        self.seconds = seconds

    def get_remaining_time_in_millis(self) -> int:
        return int(self.seconds * 1000)


# -- OAuth 2.0 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("client_auth", ["basic", "body"])
def test_client_credentials_fetch_one_token_for_every_page(accounting, company, client_auth):
    boto3.client("secretsmanager").put_secret_value(SecretId=accounting.secret, SecretString=json.dumps(
        {"client_id": CLIENT_ID, "client_secret": accounting.api.token}))
    accounting.configure(source="costs_api", example=EXAMPLE, auth={
        "type": "oauth2_client_credentials", "token_url": f"{accounting.api.url}/oauth/token",
        "scope": "accounting.transactions.read", "client_auth": client_auth},
        resource={"params": {"paging": "cursor"}}, pagination={"page_size": 5, "cursor_path": "meta.next_cursor"})
    summary = ingest_api.handler({"source": "costs_api", "from": "2024-01-01", "to": "2024-02-01"})
    assert summary["pages"] > 5 and summary["records"] > 25 and summary["batch"]["status"] == "committed"
    assert accounting.api.grants == [("client_credentials", 200)]  # the access token kept for all the pages


def test_wrong_client_secret_says_what_to_store(accounting):
    boto3.client("secretsmanager").put_secret_value(SecretId=accounting.secret, SecretString=json.dumps(
        {"client_id": CLIENT_ID, "client_secret": "wrong", "refresh_token": accounting.api.refresh_token}))
    accounting.configure()
    with pytest.raises(LoadError, match=r"invoices_api: the client id or secret in 'playbook/api/accounting-\w+' "
                                        r"was refused \(invalid_client .*`playbook secret set invoices_api`"):
        accounting.run(WINDOW)
    assert accounting.invoice_calls() == []


def test_the_refresh_token_rotates_and_is_stored_before_the_access_token_is_used(accounting, company):
    accounting.configure()
    first = accounting.api.refresh_token
    stored_at_first_call: list[str] = []
    answer = accounting.api.answer

    def watching(method, target, headers, body=b""):
        if target.startswith("/v2/") and not stored_at_first_call:
            stored_at_first_call.append(accounting.stored()["refresh_token"])
        return answer(method, target, headers, body)

    accounting.monkeypatch.setattr(accounting.api, "answer", watching)
    summary = accounting.run(WINDOW)
    second = accounting.api.refresh_token
    assert second != first and accounting.api.spent_refresh_tokens[-1:] == [first]
    assert stored_at_first_call == [second]  # written back before the first call with the access token
    assert accounting.stored() == {"client_id": CLIENT_ID, "client_secret": accounting.api.token,
                                   "refresh_token": second}
    assert accounting.api.grants == [("refresh_token", 200)] and summary["pages"] > 3
    # the next run spends the new one, and stores the one after
    accounting.run({"from": "2024-01-15", "to": "2024-01-20"})
    assert accounting.api.spent_refresh_tokens[-2:] == [first, second]
    assert accounting.stored()["refresh_token"] == accounting.api.refresh_token not in (first, second)
    # no credential in the ledger, the state or the lineage
    stored = accounting.landing.query(
        "select coalesce(string_agg(coalesce(source_ref, '') || coalesce(error, ''), ' '), '') from meta.batches")[0][0]
    stored += accounting.landing.query("select string_agg(cursor::text, ' ') from meta.source_state")[0][0]
    stored += accounting.landing.query("select string_agg(distinct _source_ref, ' ') from core.sales_lineage")[0][0]
    assert "/v2/Invoices?" in stored
    assert all(secret not in stored for secret in (first, second, accounting.api.token))


@pytest.mark.parametrize(("lifetime_s", "grants"), [(3600, 1), (60, 3)])
def test_an_access_token_is_kept_for_its_lifetime(accounting, lifetime_s, grants):
    accounting.api.token_ttl_s = lifetime_s  # kept for its lifetime less a minute: 60 s is not kept at all
    options = load_config(ACCOUNTING).sources["invoices_api"].api
    options = options.model_copy(update={"auth": options.auth.model_copy(update={
        "secret": accounting.secret, "token_url": f"{accounting.api.url}/oauth/token"})})
    tokens = TokenSource(options, "invoices_api", None)
    try:
        assert len({tokens.token() for _ in range(3)}) == grants
    finally:
        accounting.api.token_ttl_s = 1800
    assert accounting.api.grants == [("refresh_token", 200)] * grants


def _refresh_in_a_process(options_json: str, ingest_url: str, locked: bool, start, results) -> None:
    """One function's refresh: its own process and database connection, the secret already in its cache (as a
    warm function has it)."""
    from pipeline.config import ApiOptions

    options = ApiOptions.model_validate_json(options_json)
    conn = psycopg2.connect(ingest_url)
    try:
        rest_api._secret(options.auth.secret)
        tokens = TokenSource(options, "invoices_api", pg_refresh_lock(conn) if locked else no_lock)
        start.wait()
        results.put(tokens.token())
    except LoadError as exc:
        results.put(f"LoadError: {exc}")
    finally:
        conn.close()


@contextmanager
def no_lock(key):
    yield


def _refresh_at_once(accounting, locked: bool) -> list[str]:
    """Two functions refresh the same secret at the same moment, each in its own process."""
    options = load_config(ACCOUNTING).sources["invoices_api"].api
    options = options.model_copy(update={"auth": options.auth.model_copy(update={
        "secret": accounting.secret, "token_url": f"{accounting.api.url}/oauth/token"})})
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_refresh_in_a_process, args=(
        options.model_dump_json(), accounting.landing.ingest_url, locked, start, results)) for _ in range(2)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(30)
    return outcomes


def test_two_refreshes_at_once_never_spend_the_same_refresh_token(accounting):
    accounting.api.token_delay_s = 0.3  # both ask while the other's refresh is under way
    first = accounting.api.refresh_token
    outcomes = _refresh_at_once(accounting, locked=True)
    assert not any(o.startswith("LoadError") for o in outcomes) and outcomes[0] != outcomes[1]
    spent = accounting.api.spent_refresh_tokens
    assert spent[0] == first and len(spent) == len(set(spent)) == 2  # each spent once, the second after the first
    assert accounting.api.grants == [("refresh_token", 200)] * 2
    assert accounting.stored()["refresh_token"] == accounting.api.refresh_token
    # the lock is PostgreSQL's: another process's connection cannot take it while a refresh holds it
    holder, other = (psycopg2.connect(accounting.landing.ingest_url) for _ in range(2))
    try:
        probe = "select pg_try_advisory_xact_lock(hashtextextended(%s, 0))"
        with pg_refresh_lock(holder)(accounting.secret), other.cursor() as cur:
            cur.execute(probe, (f"oauth refresh {accounting.secret}",))
            assert cur.fetchone() == (False,)
            other.rollback()
        with other.cursor() as cur:
            cur.execute(probe, (f"oauth refresh {accounting.secret}",))
            assert cur.fetchone() == (True,)
    finally:
        holder.close()
        other.close()
    # without the lock the same token goes twice, and the API refuses the second use
    accounting.api.grants.clear()
    outcomes = _refresh_at_once(accounting, locked=False)
    assert sorted(status for _, status in accounting.api.grants) == [200, 400]
    assert any(o.startswith("LoadError") and "revoked" in o for o in outcomes)


def test_a_revoked_grant_says_to_authorise_again(accounting):
    accounting.configure()
    accounting.api.revoke()
    with pytest.raises(LoadError, match=r"invoices_api: the refresh token was revoked or has expired \(invalid_grant "
                                        r"from http://.*/oauth/token\): authorise the app again and store the new "
                                        r"refresh token with `playbook secret set invoices_api`"):
        accounting.run(WINDOW)
    assert accounting.invoice_calls() == [] and accounting.sales_rows() == set()
    assert accounting.landing.query("select status from meta.batches") == [("failed",)]


# -- nested records, dates, windows ------------------------------------------------------------------------
def test_invoice_lines_load_with_their_invoice_fields_and_ms_json_dates(accounting, company):
    accounting.configure()
    summary = accounting.run(WINDOW)
    expected = expected_order_lines(company, WINDOW["from"], WINDOW["to"])
    assert len(expected) > 1000 and summary["records"] == len(expected) and summary["complete"]
    assert accounting.sales_rows() == expected
    entry = ledger(accounting.landing, summary["batch"]["batch_id"])
    assert entry["amount_in"] == entry["amount_loaded"] == sum(r[7] for r in expected)
    assert accounting.landing.query("select distinct currency from core.sales") == [("GBP",)]
    # the window went as the where filter, the tenant as its header
    (path, _), *_ = accounting.invoice_calls()
    assert "where=UpdatedDateUTC%3E%3DDateTime%282024%2C01%2C01%29%26%26UpdatedDateUTC%3CDateTime%282024%2C01%2C15" \
           "%29" in path
    (state,) = accounting.landing.query("select cursor from meta.source_state where source = 'invoices_api'")
    assert state[0]["next_from"] == "2024-01-15T00:00:00+00:00"


def test_if_modified_since_carries_the_window(accounting, company):
    accounting.configure(incremental={"params": {}, "header": "If-Modified-Since"})
    accounting.run({"from": "2024-03-25", "to": "2024-03-26"})
    # the header has no upper bound: everything changed since the start
    assert accounting.sales_rows() == expected_order_lines(company, "2024-03-25", "2024-04-01")
    assert all("where=" not in path for path, _ in accounting.invoice_calls())


def test_a_date_that_does_not_fit_its_format_is_quarantined_naming_column_and_format(accounting, company):
    accounting.configure()
    accounting.api.set_fault("bad_date", times=1)
    summary = accounting.run(WINDOW)
    expected = expected_order_lines(company, WINDOW["from"], WINDOW["to"])
    loaded = accounting.sales_rows()
    first_invoice = {r for r in expected if r[0] == min(e[0] for e in expected)}
    assert loaded == expected - first_invoice and first_invoice
    reasons = accounting.landing.query("select source_row, reason, raw->>'^.InvoiceNumber' from meta.quarantine "
                                       "order by source_row")
    assert [r[0] for r in reasons] == list(range(1, len(first_invoice) + 1))
    assert all(re.fullmatch(r"row \d+: order_date '2024-01-01' is not a date in the format ms_json \(api.formats; "
                            r"e.g. /Date\(1539993600000\+0000\)/\)", r[1]) for r in reasons)
    assert {r[2] for r in reasons} == {next(iter(first_invoice))[0]}
    entry = ledger(accounting.landing, summary["batch"]["batch_id"])
    assert entry["rows_quarantined"] == len(first_invoice) and entry["rows_read"] == len(expected)


@pytest.mark.parametrize(("text", "fmt", "as_date", "as_timestamp"), [
    ("/Date(1539993600000+0000)/", "ms_json", "2018-10-20", "2018-10-20 00:00:00+00:00"),
    ("/Date(1539993600000)/", "ms_json", "2018-10-20", "2018-10-20 00:00:00+00:00"),
    ("/Date(1540000000000+0100)/", "ms_json", "2018-10-20", "2018-10-20 02:46:40+01:00"),
    ("/Date(1539993600000-0500)/", "ms_json", "2018-10-19", "2018-10-19 19:00:00-05:00"),
    ("1539993600", "epoch_s", "2018-10-20", "2018-10-20 00:00:00+00:00"),
    ("1539993600000", "epoch_ms", "2018-10-20", "2018-10-20 00:00:00+00:00"),
    ("2018-10-20T23:30:00-05:00", "iso", "2018-10-20", "2018-10-20 23:30:00-05:00"),
    ("2018-10-20T23:30:00Z", "iso", "2018-10-20", "2018-10-20 23:30:00+00:00"),
    ("2018-10-20", "iso", "2018-10-20", "2018-10-20 00:00:00"),
    ("20/10/2018 14:05", "%d/%m/%Y %H:%M", "2018-10-20", "2018-10-20 14:05:00"),
])
def test_date_formats(text, fmt, as_date, as_timestamp):
    moment = parse_moment_as(text, fmt)
    assert (moment_text(moment, "date"), moment_text(moment, "timestamp")) == (as_date, as_timestamp)


@pytest.mark.parametrize(("text", "fmt"), [("2018-10-20", "ms_json"), ("/Date(x)/", "ms_json"), ("12.5.2018", "iso"),
                                           ("soon", "epoch_s"), ("2018-10-20", "%d/%m/%Y")])
def test_date_formats_refuse_what_does_not_fit(text, fmt):
    with pytest.raises(ValueError):
        parse_moment_as(text, fmt)


def test_api_options_refuse_unknown_formats_templates_and_paths():
    data = load_config(ACCOUNTING).model_dump(mode="json")
    options = data["sources"]["invoices_api"]["api"]
    options["formats"] = {"order_date": "excel"}
    options["incremental"] = {"params": {"where": "Updated>={since:%Y}"}}
    options["resource"]["records"] = "Invoices[]LineItems"
    options["auth"].pop("token_url")
    with pytest.raises(ConfigError) as bad:
        parse_config(data, "accounting_api.yaml")
    text = str(bad.value)
    assert "api.formats: order_date: 'excel' is not a date format" in text
    assert "params.where: {since} is not a window end" in text
    assert "write nested lists as Parent[].Child[]" in text
    assert "token_url: oauth2_refresh_token authentication needs the API's token endpoint" in text
    # a format for a column the source does not map would be ignored: refused, naming api.formats
    data = load_config(ACCOUNTING).model_dump(mode="json")
    data["sources"]["invoices_api"]["api"]["formats"] = {"paymentdate": "ms_json"}
    with pytest.raises(ConfigError, match=r"api.formats: paymentdate is not a mapped column or attribute"):
        parse_config(data, "accounting_api.yaml")


# -- call limits -----------------------------------------------------------------------------------------
def test_call_limits_are_waited_for_across_pages(accounting, company):
    accounting.configure()
    accounting.api.rate_limit = (3, 1.0)
    started = time.monotonic()
    summary = accounting.run(WINDOW, Budget(300))
    assert [status for _, status in accounting.invoice_calls()] == [200] * summary["pages"] and summary["pages"] > 6
    assert summary["waited_for_limit_s"] > 1 and time.monotonic() - started > 1
    assert accounting.sales_rows() == expected_order_lines(company, WINDOW["from"], WINDOW["to"])


def test_a_limit_longer_than_the_budget_commits_nothing_and_says_when(accounting):
    accounting.configure(reserve_s=10)
    accounting.api.rate_limit = (2, 120.0)
    with pytest.raises(RateLimited, match=r"the API's call limit is spent; the API takes calls again at "
                                          r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in 1\d\d s\), longer than this run "
                                          r"can wait: nothing of this window was committed"):
        accounting.run(WINDOW, Budget(60))
    assert len(accounting.invoice_calls()) == 2 and accounting.sales_rows() == set()
    assert accounting.landing.query("select status from meta.batches") == [("failed",)]
    assert accounting.landing.query("select count(*) from meta.source_state")[0][0] == 0
    # the next invocation knows the limit is spent and does not call until it resets
    with pytest.raises(RateLimited, match="takes calls again at"):
        accounting.run(WINDOW, Budget(60))
    assert len(accounting.invoice_calls()) == 2
    resume = rest_api._CALLS_RESUME[accounting.api.url]
    assert 100 < resume - datetime.now(UTC).timestamp() <= 120
    # a cold start (another function instance) knows it too, from the ledger's meta.api_call_limits
    rest_api._CALLS_RESUME.clear()
    with pytest.raises(RateLimited, match="takes calls again at"):
        accounting.run(WINDOW, Budget(60))
    assert len(accounting.invoice_calls()) == 2
    (kept,) = accounting.landing.query("select source, extract(epoch from resume_at)::float8 "
                                       "from meta.api_call_limits where base_url = %s", (accounting.api.url,))
    assert kept[0] == "invoices_api" and abs(kept[1] - resume) < 0.01


def test_a_429_under_a_declared_limit_waits_for_retry_after(accounting, company):
    accounting.configure()
    accounting.api.rate_limit = (4, 1.0)
    accounting.configure(rate_limit={"remaining_header": "X-Other-Header"})  # the limit goes unread: 429s come
    summary = accounting.run(WINDOW, Budget(300))
    statuses = [status for _, status in accounting.invoice_calls()]
    assert 429 in statuses and statuses.count(200) == summary["pages"]
    assert summary["waited_for_limit_s"] >= 1
    assert accounting.sales_rows() == expected_order_lines(company, WINDOW["from"], WINDOW["to"])
