"""The operations email: the real handler in-process against the real marts (reporting role, from Secrets
Manager), configuration from S3, SES and the idempotency claim in the moto server; and `playbook report`,
which invokes the deployed function."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import date, timedelta
from decimal import Decimal
from email import policy
from email.parser import BytesParser
from html.parser import HTMLParser

import boto3
import psycopg2
import pytest

from pipeline.money import format_money
from playbook.config import load_config
from playbook.settings import PROJECT_ROOT
from tests.pipeline.email_handler import send_expense_email_locally
from tests.reporting_data import reporting_url, synthetic_company

pytestmark = pytest.mark.stack

BUCKET = "test-reports-email"
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "expense_email"


@pytest.fixture(scope="module")
def company(stack):
    with synthetic_company(stack["database_url"]) as made:
        yield made


@pytest.fixture(scope="module")
def config():
    return load_config()


@pytest.fixture(scope="module")
def environment(stack, company, config) -> dict[str, str]:
    from playbook.warehouse import REPORTING_ROLE, secret_arn
    from tests.pipeline.email_handler import ensure_email_resources

    reporting_url(stack["database_url"])  # the reporting role's login and its secret playbook/db/reporting
    return ensure_email_resources(config, secret_arn(REPORTING_ROLE), bucket=BUCKET)


def sql_costs(database_url: str, start: date, end: date) -> dict[str, dict[str, Decimal]]:
    """{currency: {category: amount}} from core's live rows (a cost that names no currency is the company's)."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("select coalesce(currency, 'GBP'), category, sum(amount) from core.operating_costs"
                        " where cost_date between %s and %s and _deleted_by is null group by 1, 2", (start, end))
            found: dict[str, dict[str, Decimal]] = {}
            for currency, category, amount in cur.fetchall():
                found.setdefault(currency, {})[category] = amount
            return found
    finally:
        conn.close()


def sent_so_far() -> int:
    """SES's delivery attempts, from its send statistics (which always answer, where moto's list of sent
    messages fails once the server holds a Lambda function)."""
    from playbook.reports.email import _ses_delivery_attempts

    return _ses_delivery_attempts()


def parse(path):
    return BytesParser(policy=policy.default).parsebytes(path.read_bytes())


def plain_text_tables(text: str) -> dict[str, dict[str, list[str]]]:
    """{currency: {category, 'Total <currency>' or 'Daily average': its cells after the label}}, from each
    "In <currency>" table of the text (columns are two or more spaces apart)."""
    found: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in text.splitlines():
        if re.fullmatch(r"In [A-Z]{3}", line):
            section = found.setdefault(line[3:], {})
        elif not line.strip():
            section = None
        elif section is not None and not line.startswith("Category  "):
            label, *cells = re.split(r"\s{2,}", line)
            section[label] = cells
    return found


def plain_text_totals(text: str) -> dict[str, dict[str, str]]:
    """{currency: {category with entries in the period, or 'Total <currency>': its amount as written}}."""
    return {k: {label: cells[0] for label, cells in rows.items() if label != "Daily average" and cells[1] != "0"}
            for k, rows in plain_text_tables(text).items()}


class _Cells(HTMLParser):
    """The text of every <td> of an HTML part, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def html_rows(body: str) -> list[list[str]]:
    parser = _Cells()
    parser.feed(body)
    return [r for r in parser.rows if r]


def per_send(config) -> int:
    """What one message adds to SES's counter: moto counts each recipient once for the Destinations of
    SendRawEmail and once for the To header."""
    return 2 * len(config.reports.email.recipients)


def test_email_parts_recipients_and_totals(stack, environment, config, tmp_path):
    event = {"period": "custom", "from": "2024-04-01", "to": "2024-04-30", "run_key": "test-april-2024"}
    before = sent_so_far()
    result = send_expense_email_locally(ARTIFACTS, event, environment)
    assert sent_so_far() - before == per_send(config), "one message reached SES"
    assert result["status"] == "sent" and result["in_ses"] is True
    msg = parse(result["eml"])

    assert msg.get_content_type() == "multipart/alternative"
    plain, related = msg.get_payload()
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html_part, image = related.get_payload()
    assert html_part.get_content_type() == "text/html"
    assert image.get_content_type() == "image/png" and image.get_content_disposition() == "inline"
    assert image.get_content().startswith(b"\x89PNG\r\n\x1a\n")
    cid = image["Content-ID"].strip().strip("<>")
    assert f'src="cid:{cid}"' in html_part.get_content()

    email_config = config.reports.email
    assert [a.addr_spec for a in msg["To"].addresses] == list(email_config.recipients)
    assert msg["From"].addresses[0].addr_spec == email_config.sender
    assert msg["X-Playbook-Run-Key"] == "test-april-2024"

    expected = sql_costs(stack["database_url"], date(2024, 4, 1), date(2024, 4, 30))
    assert expected, "the synthetic company has costs in April 2024"
    assert set(expected) == {"GBP", "EUR"}, "the synthetic company has costs in pounds and in euros in April 2024"
    text = plain.get_content()
    sections = plain_text_totals(text)
    assert list(sections) == ["GBP", "EUR"]  # the company's currency first
    for currency, costs in expected.items():
        totals = sections[currency]
        assert totals.pop(f"Total {currency}") == format_money(sum(costs.values()), currency)
        assert totals == {category: format_money(amount, currency) for category, amount in costs.items()}
    assert result["categories"] == {k: {c: str(a) for c, a in costs.items()} for k, costs in expected.items()}
    assert result["totals"] == {k: str(sum(costs.values())) for k, costs in expected.items()}
    subject = msg["Subject"]
    assert subject.endswith(f"{format_money(sum(expected['GBP'].values()), 'GBP')} and "
                            f"{format_money(sum(expected['EUR'].values()), 'EUR')}")
    body = html_part.get_content()
    assert "In GBP" in body and "In EUR" in body and "Total EUR" in body
    assert "1 Apr 2024 – 30 Apr 2024 (30 days)" in text and "1 Apr 2024 – 30 Apr 2024" in html_part.get_content()
    assert "Data as of the last successful load" in text and "test_reports_operating_costs" in text


def expected_change(now: Decimal, then: Decimal | None, currency: str) -> str:
    """The change as the email should write it: the difference rounded as shown, then signed; the percent of
    what it was, to one place."""
    if then is None:
        return "no data"
    diff = (now - then).quantize(Decimal("0.01"), rounding="ROUND_HALF_UP")
    sign = "+" if diff > 0 else ""
    if then == 0:
        return f"{sign}{format_money(diff, currency)}" + (" (new)" if now else "")
    percent = abs(diff / then * 100).quantize(Decimal("0.1"), rounding="ROUND_HALF_UP")
    signed = ("+" if diff > 0 else "-") if percent else ""
    return f"{sign}{format_money(diff, currency)} ({signed}{percent}%)"


def test_each_category_is_compared_with_the_previous_period_and_the_year_before(stack, environment, config):
    """April 2024, a calendar month, against March (the month before: each holds one of every monthly bill) and
    April 2023, read from core's live rows in SQL of the test's own: every cell of both parts, the order (the
    biggest change against the previous period first), and the daily trend the chart draws."""
    event = {"period": "custom", "from": "2024-04-01", "to": "2024-04-30", "run_key": "test-april-2024-compared"}
    result = send_expense_email_locally(ARTIFACTS / "compared", event, environment)
    msg = parse(result["eml"])
    text = msg.get_body(("plain",)).get_content()
    body = msg.get_body(("html",)).get_content()

    start, end = date(2024, 4, 1), date(2024, 4, 30)
    previous = (date(2024, 3, 1), date(2024, 3, 31))
    now = sql_costs(stack["database_url"], start, end)
    before = sql_costs(stack["database_url"], *previous)
    year = sql_costs(stack["database_url"], date(2023, 4, 1), date(2023, 4, 30))
    tables = plain_text_tables(text)
    html_cells = html_rows(body)
    for currency in ("GBP", "EUR"):
        categories = set(now[currency]) | set(before.get(currency, {})) | set(year.get(currency, {}))
        expected = {}
        for category in categories:
            a, p, y = (d.get(currency, {}).get(category, Decimal(0)) for d in (now, before, year))
            expected[category] = [format_money(a, currency), format_money(p, currency),
                                  expected_change(a, p, currency), format_money(y, currency),
                                  expected_change(a, y, currency)]
            compared = result["compared"][currency][category]
            assert [Decimal(compared[k]) for k in ("amount", "previous", "year_before")] == [a, p, y]
        rows = tables[currency]
        labels = [label for label in rows if label not in (f"Total {currency}", "Daily average")]
        got = {label: [cells[0], *cells[2:]] for label, cells in rows.items() if label in expected}
        assert got == expected
        changes = [abs(now[currency].get(c, 0) - before.get(currency, {}).get(c, 0)) for c in labels]
        assert changes == sorted(changes, reverse=True), "the biggest change first"
        totals = [sum(d.get(currency, {}).values(), Decimal(0)) for d in (now, before, year)]
        total = rows[f"Total {currency}"]
        assert [total[0], *total[2:]] == [format_money(totals[0], currency), format_money(totals[1], currency),
                                          expected_change(totals[0], totals[1], currency),
                                          format_money(totals[2], currency),
                                          expected_change(totals[0], totals[2], currency)]
        per_day = [totals[0] / 30, totals[1] / 31, totals[2] / 30]
        assert rows["Daily average"] == [format_money(per_day[0], currency), format_money(per_day[1], currency),
                                         expected_change(per_day[0], per_day[1], currency),
                                         format_money(per_day[2], currency),
                                         expected_change(per_day[0], per_day[2], currency)]
        # the HTML part holds the same rows, cell for cell
        for label, cells in rows.items():
            assert [label, *cells] in [[c for c in r if c] for r in html_cells]

    # the trend: the company's daily costs over the 60 days to 30 April, last 7 days against the first 7
    conn = psycopg2.connect(stack["database_url"])
    try:
        with conn.cursor() as cur:
            cur.execute("select cost_date, sum(amount) from core.operating_costs where _deleted_by is null"
                        " and coalesce(currency, 'GBP') = 'GBP' and cost_date between %s and %s group by 1",
                        (end - timedelta(59), end))
            by_day = dict(cur.fetchall())
    finally:
        conn.close()
    daily = [by_day.get(end - timedelta(days=59 - i), Decimal(0)) for i in range(60)]
    first, last = sum(daily[:7]) / 7, sum(daily[-7:]) / 7
    trend = (f"Daily trend in GBP over the last 60 days: {format_money(last, 'GBP')} a day in the last 7 days "
             f"against {format_money(first, 'GBP')} in the first 7: {expected_change(last, first, 'GBP')}.")
    assert trend in text and trend in body
    dates = ("Compared with 1 Mar 2024 – 31 Mar 2024 (31 days) and the same days a year earlier "
             "(1 Apr 2023 – 30 Apr 2023")
    assert dates in text and dates in body


def test_a_period_the_marts_do_not_reach_back_from_is_not_compared(environment, config):
    """The synthetic company's costs start on 1 Jan 2023. 10 to 20 Jan 2023 has a previous period (30 Dec 2022 to
    9 Jan 2023) the marts hold only part of, and no year before: the email says 'no data' rather than reading the
    days before as days without costs."""
    event = {"period": "custom", "from": "2023-01-10", "to": "2023-01-20", "run_key": "test-first-month"}
    result = send_expense_email_locally(ARTIFACTS / "first-month", event, environment)
    assert result["compared"]["GBP"], "the synthetic company has costs in mid-January 2023"
    assert all(c["previous"] is None and c["year_before"] is None
               for k in result["compared"].values() for c in k.values())
    rows = plain_text_tables(parse(result["eml"]).get_body(("plain",)).get_content())["GBP"]
    assert rows["Total GBP"][2:] == ["no data"] * 4


def test_a_sales_line_far_from_its_neighbours_loaded_in_the_period_is_named_in_the_email(stack, environment):
    """One order line of 20,000 of P7 (the synthetic company's lines hold 1 to 20), in a batch committed now: the
    email for a period that began before it names the line, its group's median (worked out here with
    statistics.median) and where it came from, in both parts; a batch committed before the period began is not
    today's news and is not named."""
    import statistics

    conn = psycopg2.connect(stack["database_url"])
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("insert into meta.batches (source, source_kind, target_table, source_ref, status, rows_read,"
                    " rows_inserted, finished_at) values ('test_outlier_sales', 's3_csv', 'sales',"
                    " 's3://landing/sales/2024/sales_2024-05-20.csv', 'committed', 1, 1, now()) returning batch_id")
        batch_id = cur.fetchone()[0]
        cur.execute("insert into core.sales (order_id, line_no, order_date, client_id, product, quantity, unit_price,"
                    " amount, currency, _batch_id, _source_row, _row_hash, _key) values ('T-O999999', 1, '2024-05-20',"
                    " 'T-C001', 'P7', 20000, 2.50, 50000.00, 'GBP', %s, 17, 'h', 'T-O999999' || chr(31) || '1')",
                    (batch_id,))
        cur.execute("select quantity from core.sales where product = 'P7' and _deleted_by is null")
        median = statistics.median(q for (q,) in cur.fetchall())
    try:
        event = {"period": "week", "time": "2024-05-21T07:00:00Z", "run_key": "test-outlier-named"}
        result = send_expense_email_locally(ARTIFACTS / "outlier", event, environment)
        # (other tests' loads in this session may hold lines of their own to check: this one is named once)
        assert [o for o in result["outliers"] if o["batch_id"] == batch_id] == [
            {"order_id": "T-O999999", "line_no": 1, "quantity": "20000", "batch_id": batch_id, "row": 17}]
        msg = parse(result["eml"])
        line = (f"Order T-O999999 line 1: quantity 20000 where the median of product P7 is {median:g} (")
        where = f"sales/2024/sales_2024-05-20.csv, row 17, batch {batch_id}"
        for part in (msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()):
            assert (f"Sales lines to check: {len(result['outliers'])} far from their neighbours in the data loaded "
                    "since 14 May 2024") in part
            assert line in part and where in part
        with conn.cursor() as cur:  # committed before the week began: not named
            cur.execute("update meta.batches set finished_at = '2024-05-13 22:59:59+00' where batch_id = %s",
                        (batch_id,))
        earlier = send_expense_email_locally(ARTIFACTS / "outlier-earlier", {**event, "run_key": "test-outlier-old"},
                                             environment)
        assert [o for o in earlier["outliers"] if o["batch_id"] == batch_id] == []
        assert "T-O999999" not in parse(earlier["eml"]).get_body(("plain",)).get_content()
    finally:
        with conn.cursor() as cur:
            cur.execute("delete from core.sales where _batch_id = %s", (batch_id,))
            cur.execute("delete from meta.batches where batch_id = %s", (batch_id,))
        conn.close()


def test_the_costs_are_reported_when_the_lines_to_check_cannot_be_read(stack, company, config):
    """The outlier lines are a courtesy of the costs email: when they cannot be read (here, limits the function
    refuses), the email says so and reports the costs all the same."""
    from pipeline.expense_email import _plain_text, read_report
    from pipeline.periods import Period

    loose = config.model_copy(update={"accuracy": config.accuracy.model_copy(update={"outlier_ratio": Decimal("1.5")})})
    conn = psycopg2.connect(reporting_url(stack["database_url"]))
    try:
        report = read_report(conn, Period(date(2024, 4, 1), date(2024, 4, 30)), loose)
    finally:
        conn.close()
    assert report.outliers == [] and "limits looser than robust_z 3, ratio 2, min_rows 8" in report.outliers_error
    assert report.categories and report.freshness, "the costs and their freshness were read all the same"
    assert "The lines to check could not be read: marts.sales_outliers: limits looser than" in _plain_text(
        report, config, "")


def test_same_run_key_sends_nothing_more(environment, tmp_path):
    event = {"period": "day", "run_key": "test-once"}
    first = send_expense_email_locally(tmp_path / "first", event, environment)
    before = sent_so_far()
    second = send_expense_email_locally(tmp_path / "second", event, environment)
    assert first["status"] == "sent" and second["status"] == "skipped" and second["in_ses"] is None
    assert sent_so_far() == before
    # what the second run keeps is the message the first one sent
    assert (tmp_path / "second" / "expense_email.eml").read_bytes() == first["eml"].read_bytes()


def test_scheduled_event_reports_the_days_before_its_time(environment, stack):
    # 07:00 UTC on 21 May is 08:00 in London (BST): the default week is the 7 complete days before
    event = {"id": "0d1f-test-a", "detail-type": "Scheduled Event", "source": "aws.events",
             "time": "2024-05-21T07:00:00Z"}
    result = send_expense_email_locally(ARTIFACTS / "scheduled", event, environment)
    assert result["status"] == "sent"
    assert result["period"] == {"from": "2024-05-14", "to": "2024-05-20"}
    expected = sql_costs(stack["database_url"], date(2024, 5, 14), date(2024, 5, 20))
    assert result["totals"] == {k: str(sum(costs.values())) for k, costs in expected.items()}
    # EventBridge delivering the same schedule again (another event id, same time) sends nothing
    again = send_expense_email_locally(ARTIFACTS / "scheduled-again", {**event, "id": "0d1f-test-b"}, environment)
    assert again["status"] == "skipped"


def test_claim_is_released_when_sending_fails(environment, config):
    """An unverified sender is refused by SES: the run's claim is removed so that a retry can send."""
    from pipeline.expense_email import ExpenseReport, build_message, email_object_key, send_once
    from pipeline.periods import Period

    message = build_message(ExpenseReport(Period(date(2024, 5, 1), date(2024, 5, 1)), [], []), config, "test-fail")
    with pytest.raises(Exception, match="authority|verified|Rejected"):
        send_once(message, BUCKET, "test-fail", "nobody@unverified.example", ["ops@northwind.example"])
    s3 = boto3.client("s3")
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=email_object_key("test-fail"))["KeyCount"] == 0


def test_handler_package_does_not_import_the_playbook():
    code = ("import sys; import pipeline.handlers.send_expense_email; "
            "bad = [m for m in sys.modules if m == 'playbook' or m.startswith('playbook.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT / "lambda_src", check=True,
                   env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT / "lambda_src")})


def test_cli_report_sends_the_email_into_the_run_folder(stack, environment, config, pipeline_stack, tmp_path, capsys):
    from playbook.cli import main

    conn = psycopg2.connect(stack["database_url"])
    with conn, conn.cursor() as cur:
        cur.execute("select max(cost_date) from core.operating_costs")
        last_cost_day = cur.fetchone()[0]
    conn.close()
    before = sent_so_far()
    assert main(["report", "--out", str(tmp_path), "--email-period", "week"]) == 0
    msg = parse(tmp_path / "expense_email.eml")
    assert [a.addr_spec for a in msg["To"].addresses] == list(config.reports.email.recipients)
    # the week ends on the last day with costs
    assert msg["X-Playbook-Period"] == f"{last_cost_day - timedelta(days=6)}/{last_cost_day}"
    assert sent_so_far() - before == per_send(config)  # one message reached SES
    assert "expense_email" in capsys.readouterr().out


def race(monkeypatch, environment, event: dict, *, unconditional: bool = False) -> tuple[list[dict], list[str]]:
    """Two invocations of the handler with the same event at once, in two threads: each holds its claim (the put of
    the .eml) at a barrier until the other has reached its own, so both claims reach S3 together after both found
    the key free; SES's send is slowed so the winner is still sending while the loser claims. Returns the two
    results and the invocations that called SendRawEmail. `unconditional` drops the put's If-None-Match."""
    import threading
    import time

    from pipeline.handlers.send_expense_email import handler

    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    barrier = threading.Barrier(2, timeout=60)
    made, sends, claims = threading.Lock(), [], []

    def hold_the_claim(request, **_):
        if request.url.split("?")[0].endswith(".eml"):
            claims.append(threading.current_thread().name)
            if claims.count(threading.current_thread().name) == 1:  # a retried put goes straight on
                barrier.wait()

    def drop_the_condition(params, **_):
        params.pop("IfNoneMatch", None)

    def slow_send(**_):
        sends.append(threading.current_thread().name)
        time.sleep(0.5)

    real_client = boto3.client

    def client(service, *args, **kwargs):
        with made:  # building clients from boto3's default session is not thread-safe; using them is
            built = real_client(service, *args, **kwargs)
        if service == "s3":
            built.meta.events.register("before-send.s3.PutObject", hold_the_claim)
            if unconditional:
                built.meta.events.register("before-parameter-build.s3.PutObject", drop_the_condition)
        elif service == "ses":
            built.meta.events.register("before-call.ses.SendRawEmail", slow_send)
        return built

    monkeypatch.setattr(boto3, "client", client)
    results, failures = {}, {}

    def invoke(name):
        try:
            results[name] = handler(dict(event), None)
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures[name] = exc

    threads = [threading.Thread(target=invoke, args=(name,), name=name) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not failures, f"an invocation failed (a broken barrier: one of them never reached its claim): {failures}"
    assert set(results) == {"first", "second"}, "an invocation did not finish"
    return [results["first"], results["second"]], sends


def test_two_invocations_racing_for_one_run_send_one_email(environment, config, monkeypatch):
    """An EventBridge retry running beside the first delivery: both find the run's key free, both claim it at the
    same moment, and the conditional put (If-None-Match: *) lets exactly one through. One message reaches SES; the
    other invocation sends nothing and says the run was claimed by another; the kept .eml and the receipt are the
    winner's."""
    before = sent_so_far()
    results, sends = race(monkeypatch, environment, {"period": "custom", "from": "2024-05-01", "to": "2024-05-07",
                                                     "run_key": "test-race"})
    assert sorted(r["status"] for r in results) == ["sent", "skipped"], results
    assert len(sends) == 1, f"SendRawEmail was called by {sends}"
    assert sent_so_far() - before == per_send(config), "exactly one message reached SES"
    sent, skipped = sorted(results, key=lambda r: r["status"])
    assert skipped["reason"] == "another invocation of this run claimed it"  # lost the put, not the first look
    assert skipped["key"] == sent["key"]
    s3 = boto3.client("s3")
    kept = BytesParser(policy=policy.default).parsebytes(s3.get_object(Bucket=BUCKET, Key=sent["key"])["Body"].read())
    assert kept["X-Playbook-Run-Key"] == "test-race" and kept["X-Playbook-Period"] == "2024-05-01/2024-05-07"
    receipt = s3.get_object(Bucket=BUCKET, Key=sent["key"].removesuffix(".eml") + ".sent.json")["Body"].read()
    assert json.loads(receipt)["message_id"] == sent["message_id"]


def test_the_race_sends_twice_when_the_claim_is_not_conditional(environment, config, monkeypatch):
    """The race above is a real one: with the put's If-None-Match dropped, both invocations get past the first look
    and both claims succeed, so both send. What stops the second email there is the condition, nothing else."""
    before = sent_so_far()
    results, sends = race(monkeypatch, environment, {"period": "custom", "from": "2024-05-01", "to": "2024-05-07",
                                                     "run_key": "test-race-unconditional"}, unconditional=True)
    assert [r["status"] for r in results] == ["sent", "sent"] and len(sends) == 2
    assert sent_so_far() - before == 2 * per_send(config)


def allowed(statements: list[dict], action: str, resource: str, params: dict) -> bool:
    """Whether an Allow statement of a (resolved) policy grants the call: its action, a resource its patterns
    match, and every condition the templates use (Null on s3:if-none-match, StringEquals on ses:FromAddress)."""
    import fnmatch

    def holds(condition: dict) -> bool:
        for operator, tests in condition.items():
            for key, value in tests.items():
                if (operator, key) == ("Null", "s3:if-none-match"):
                    if ("IfNoneMatch" not in params) != (value == "true"):
                        return False
                elif (operator, key) == ("StringEquals", "ses:FromAddress"):
                    if params.get("Source") != value:
                        return False
                else:
                    raise AssertionError(f"a condition this check does not evaluate: {operator} {key}")
        return True

    for s in statements:
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        patterns = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        if s["Effect"] == "Allow" and action in actions and any(fnmatch.fnmatchcase(resource, p) for p in patterns) \
                and holds(s.get("Condition", {})):
            return True
    return False


def test_the_email_function_s_role_allows_each_call_the_handler_makes_and_nothing_it_does_not(
        environment, config, monkeypatch):
    """The handler's AWS calls over a run that sends, the same run again, and a run whose send fails (its claim
    released), checked against the role the pipeline template gives the deployed function (resolved for this
    test's bucket and secret): every call is allowed, and every S3 or SES action the role grants was needed."""
    from botocore.exceptions import ClientError

    from pipeline import db as handler_db
    from pipeline.handlers.send_expense_email import handler
    from playbook.stand_ins import Context, Resolver
    from playbook.templates import render_pipeline

    calls: list[tuple[str, str, dict]] = []
    real_client = boto3.client
    failing = {"send": False}

    def fail_the_send(**_):
        if failing["send"]:
            raise ClientError({"Error": {"Code": "Throttling", "Message": "the send fails on purpose"}},
                              "SendRawEmail")

    def client(service, *args, **kwargs):
        built = real_client(service, *args, **kwargs)
        built.meta.events.register("before-parameter-build", lambda params, model, **_: calls.append(
            (service, model.name, dict(params))))
        if service == "ses":
            built.meta.events.register("before-call.ses.SendRawEmail", fail_the_send)
        return built

    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(boto3, "client", client)
    handler_db._secret.cache_clear()  # read the secret again, as a new execution environment does
    event = {"period": "custom", "from": "2024-05-01", "to": "2024-05-07", "run_key": "test-policy"}
    assert handler(dict(event), None)["status"] == "sent"
    assert handler(dict(event), None)["status"] == "skipped"
    failing["send"] = True
    with pytest.raises(ClientError, match="on purpose"):
        handler({**event, "run_key": "test-policy-failing"}, None)
    monkeypatch.setattr(boto3, "client", real_client)

    region, account = boto3.session.Session().region_name, boto3.client("sts").get_caller_identity()["Account"]
    template = render_pipeline(config)
    ctx = Context(stack="test", template=template, physical={}, region=region, account=account,
                  parameters={"Prefix": "test", "ArtifactBucket": BUCKET, "SenderIdentity": config.reports.email.sender,
                              "ReportingDatabaseSecretArn": environment["DB_SECRET_ARN"]})
    statements = [s for s in template["Resources"]["SendExpenseEmailRole"]["Properties"]["Policies"][0]
                  ["PolicyDocument"]["Statement"] if not s["Sid"].startswith(("WriteOwnLogs", "DeadLetters"))]
    statements = Resolver(ctx)(statements)
    actions = {("s3", "HeadObject"): "s3:GetObject", ("s3", "GetObject"): "s3:GetObject",
               ("s3", "PutObject"): "s3:PutObject", ("s3", "DeleteObject"): "s3:DeleteObject",
               ("ses", "SendRawEmail"): "ses:SendRawEmail",
               ("secretsmanager", "GetSecretValue"): "secretsmanager:GetSecretValue"}
    used = set()
    for service, operation, params in calls:
        action = actions[(service, operation)]
        resource = {"s3": lambda p: f"arn:aws:s3:::{p['Bucket']}/{p['Key']}",
                    "ses": lambda p: f"arn:aws:ses:{region}:{account}:identity/{p['Source']}",
                    "secretsmanager": lambda p: p["SecretId"]}[service](params)
        assert allowed(statements, action, resource, params), f"{operation} {resource} is not allowed"
        used.add(action)
    assert used == {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "ses:SendRawEmail",
                    "secretsmanager:GetSecretValue"}
    granted = {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
               if a.startswith(("s3:", "ses:"))}
    assert granted <= used, f"granted and never used: {granted - used}"


def test_the_function_says_whether_its_runtimes_boto3_can_claim_a_run():
    """Asked {"check": "runtime"}, the email function sends nothing and reports its boto3's conditional put."""
    from pipeline.handlers.send_expense_email import handler

    answer = handler({"check": "runtime"})
    assert answer["conditional_put"] is True and answer["boto3"]
