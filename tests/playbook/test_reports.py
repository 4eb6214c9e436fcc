"""The charts and the sales dashboard, built from the real marts through the real reporting role; the dashboard
driven in headless Chromium and its numbers checked against marts.top_clients."""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
import xml.etree.ElementTree as ET
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest

from pipeline.money import format_money
from pipeline.periods import Period
from playbook.config import load_config
from playbook.settings import PROJECT_ROOT
from tests.reporting_data import reporting_url, synthetic_company

pytestmark = pytest.mark.stack

ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "reports"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def company(stack):
    with synthetic_company(stack["database_url"]) as made:
        yield made


@pytest.fixture(scope="module")
def reporting(stack) -> str:
    return reporting_url(stack["database_url"])


@pytest.fixture(scope="module")
def config():
    return load_config()


@pytest.fixture(scope="module")
def built(company, reporting, config) -> dict[str, Path]:
    from playbook.reports import build_reports

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    return build_reports(ARTIFACTS, config, reporting)


def sql_top_clients(reporting: str, period: Period, n: int, currency: str | None = None,
                    filters: dict | None = None) -> list[tuple]:
    conn = psycopg2.connect(reporting)
    try:
        with conn.cursor() as cur:
            cur.execute("select * from marts.top_clients(%s, %s, %s, %s, %s::jsonb)",
                        (period.start, period.end, n, currency, json.dumps(filters or {})))
            return cur.fetchall()
    finally:
        conn.close()


def sql_one(url: str, query: str, params: tuple = ()):
    return psycopg2_rows(url, query, params)[0]


# -- the reporting role -----------------------------------------------------------------------------
def test_reporting_role_reads_marts_and_nothing_else(company, reporting):
    assert sql_one(reporting, "select current_user")[0] == "pipeline_reporting"
    assert sql_one(reporting, "select count(*) from marts.client_day_sales")[0] > 0
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        sql_one(reporting, "select count(*) from core.sales")


# -- charts -----------------------------------------------------------------------------------------
def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def svg_text(path: Path) -> str:
    root = ET.parse(path).getroot()  # noqa: S314 - our own file
    assert root.tag.endswith("svg")
    return " ".join(t for t in root.itertext() if t.strip())


@pytest.mark.parametrize("name", ["activity", "yearly_sales"])
def test_chart_written_as_png_and_svg(built, name):
    width, height = png_size(built[f"{name}_png"])
    assert width >= 900 and height >= 500
    assert built[f"{name}_svg"].stat().st_size > 5_000
    text = svg_text(built[f"{name}_svg"])
    assert "Northwind Provisions Ltd" in text
    assert "Data as of the last successful load of each source" in text
    assert "test_reports_sales" in text  # the freshness of this data's own batch


def test_activity_chart_states_its_default_period(built, reporting, config):
    first, last = sql_one(reporting, "select min(day), max(day) from marts.daily_activity")
    period = Period(max(first, last - timedelta(days=config.reports.activity_days - 1)), last)
    text = svg_text(built["activity_svg"])
    assert period.describe() in text
    assert "£" in text  # the money axis speaks the company's currency
    totals = dict(psycopg2_rows(reporting, "select currency, sum(sales_amount) from marts.daily_activity "
                                           "where day between %s and %s group by 1", (period.start, period.end)))
    assert set(totals) == {"GBP", "EUR"} and all(totals.values())
    assert f"sales {format_money(totals['GBP'], 'GBP', 0)}" in text  # the chart's own currency
    assert f"EUR (not drawn): sales {format_money(totals['EUR'], 'EUR', 0)}" in text  # the other one, named apart


def test_the_activity_chart_states_its_forecast_s_backtest_and_draws_only_what_beats_the_naive(built, reporting,
                                                                                              config):
    """forecast.json holds the method, the horizon and each series' backtest (model and naive errors per day);
    the chart's footnote states them, and its legend has a forecast for exactly the series that beat the naive
    forecast. Each series is made from its own last day with data, read here from the marts."""
    doc = json.loads(built["forecast_json"].read_text())
    assert doc["method"].startswith("ETS") and doc["horizon_days"] == config.reports.forecast_days
    last_sale, last_cost = sql_one(reporting, "select max(day) filter (where sales_amount <> 0),"
                                              " max(day) filter (where operating_costs <> 0) from marts.daily_activity"
                                              " where currency = 'GBP'")
    assert {k: s["made_on"] for k, s in doc["series"].items()} == {"sales": last_sale.isoformat(),
                                                                   "operating_costs": last_cost.isoformat()}
    text = svg_text(built["activity_svg"])
    for name, words, legend in (("sales", "Sales", "Sales forecast"),
                                ("operating_costs", "Operating costs", "Operating costs forecast, 7-day mean")):
        s = doc["series"][name]
        b = s["backtest"]
        assert b["origins"] == 4 and b["days_scored"] == 4 * doc["horizon_days"]
        assert s["drawn"] == (b["model_mae"] < b["naive_mae"])
        model, naive = format_money(b["model_mae"], "GBP", 0), format_money(b["naive_mae"], "GBP", 0)
        if s["drawn"]:
            assert f"{words} forecast, {doc['horizon_days']} days: backtest error {model} a day against {naive}" in text
            assert f"{legend} (80% interval)" in text
            assert len(s["days"]) == doc["horizon_days"]
        else:
            assert f"{words} forecast not drawn: its backtest error ({model} a day)" in text
            assert f"{legend} (80% interval)" not in text


def test_yearly_chart_labels_growth_on_the_same_days_of_the_year_before(built, reporting, stack):
    """Growth compares like with like, computed here from core.sales: a year to date against the same dates a
    year earlier, and no figure at all against a year the data only partly covers. The chart shows the
    mart's figure (marts.yearly_sales, to 0.01%), so a BI tool reading the mart sees the same growth."""
    text = svg_text(built["yearly_sales_svg"])
    ((start, end),) = psycopg2_rows(reporting, "select min(day), max(day) from marts.company_daily")
    years = [y for (y,) in psycopg2_rows(reporting, "select year from marts.yearly_sales order by year")]
    for year in years:
        assert str(year) in text
        first, last = max(start, date(year, 1, 1)), min(end, date(year, 12, 31))
        before = (first.replace(year=year - 1), last.replace(year=year - 1))
        if year == years[0]:
            assert "first year" in text
            continue
        if before[0] < start:
            assert "no full year before" in text
            continue
        ((now, then),) = psycopg2_rows(stack["database_url"], (
            "select sum(amount) filter (where order_date between %s and %s),"
            " sum(amount) filter (where order_date between %s and %s) from core.sales"
            " where coalesce(currency, 'GBP') = 'GBP' and _deleted_by is null"), (first, last, *before))
        label = f"{float(round(100 * (now - then) / abs(then), 2)):+.1f}%"  # the mart's figure, to 0.01%
        assert (label + (" (same dates)" if (first, last) != (date(year, 1, 1), date(year, 12, 31)) else "")) in text
    assert "to 20 May" in text  # 2024 is marked as partial
    assert "Sales (GBP)" in text
    eur = psycopg2_rows(reporting, "select year, sales_amount from marts.yearly_sales where currency = 'EUR' "
                                   "order by year")
    assert eur and all(f"{year} {format_money(amount, 'EUR', 0)}" in text for year, amount in eur)


def psycopg2_rows(url: str, query: str, params: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()
    finally:
        conn.close()


def test_run_dir_and_latest_link(tmp_path):
    from playbook.reports import new_run_dir

    first = new_run_dir(tmp_path)
    second = new_run_dir(tmp_path)
    assert first.parent == tmp_path / "runs" and first != second
    assert (tmp_path / "latest").resolve() == second.resolve()


def test_cli_report(company, tmp_path, capsys):
    from playbook.cli import main

    assert main(["report", "--out", str(tmp_path), "--no-email"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["activity.png", "activity.svg", "dashboard.html", "forecast.json", "yearly_sales.png",
                     "yearly_sales.svg"]
    assert str(tmp_path) in capsys.readouterr().out


# -- the dashboard in a real browser ----------------------------------------------------------------
def table_rows(page) -> list[dict]:
    return page.eval_on_selector_all("#top-clients tbody tr.client", "rows => rows.map(r => ({...r.dataset, "
                                     "cells: [...r.cells].map(c => c.textContent)}))")


def assert_matches_sql(rows: list[dict], expected: list[tuple], currency: str = "GBP") -> None:
    assert len(rows) == len(expected) > 0
    for row, (rank, client_id, name, amount, share, orders, previous, change, in_currency) in zip(rows, expected,
                                                                                                 strict=True):
        assert in_currency == currency
        assert int(row["rank"]) == rank
        assert row["clientId"] == client_id
        assert row["clientName"] == (name or "")
        assert Decimal(row["amount"]) == amount
        assert Decimal(row["share"]) == share
        assert int(row["orders"]) == orders
        assert Decimal(row["previous"]) == previous
        assert (None if row["change"] == "" else Decimal(row["change"])) == change
        cells = row["cells"]
        assert cells[2] == format_money(amount, currency) and cells[5] == format_money(previous, currency)
        assert cells[3] == f"{share}%"
        assert cells[6] == ("new" if change is None else f"{'+' if change > 0 else ''}{change}%")


def shown_period(page) -> Period:
    from datetime import date

    table = page.locator("#top-clients")
    return Period(date.fromisoformat(table.get_attribute("data-from")),
                  date.fromisoformat(table.get_attribute("data-to")))


def last_quarter(today) -> Period:
    from datetime import date

    q = (today.month - 1) // 3
    if q == 0:
        return Period(date(today.year - 1, 10, 1), date(today.year - 1, 12, 31))
    return Period(date(today.year, 3 * q - 2, 1), date(today.year, 3 * q + 1, 1) - timedelta(days=1))


def test_dashboard_in_chromium_matches_top_clients(built, reporting, config):
    from datetime import date

    from playwright.sync_api import sync_playwright

    html = built["dashboard"].read_text(encoding="utf-8")
    assert "<script src" not in html and "<link" not in html  # self-contained
    last_day = sql_one(reporting, "select max(day) from marts.client_day_sales")[0]
    n = config.reports.top_n
    requests = []
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        # a fresh profile for every run; Playwright never downloads a browser here: it drives Debian's
        browser = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                       args=CHROMIUM_FLAGS, viewport={"width": 1200, "height": 900})
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(built["dashboard"].as_uri())
            page.wait_for_selector("#top-clients tbody tr")
            assert errors == []
            assert f"{last_day.day} {last_day:%b %Y}" in page.inner_text("#today")
            assert "Data as of the last successful load" in page.inner_text("#freshness")

            # the default: this month, 1 May 2024 to the last day with data
            this_month = shown_period(page)
            assert this_month == Period(last_day.replace(day=1), last_day)
            assert this_month.describe() in page.inner_text("#period")
            month_rows = table_rows(page)
            assert any(Decimal(r["amount"]) % Decimal("0.01") for r in month_rows)  # a sub-penny amount, exact
            assert_matches_sql(month_rows, sql_top_clients(reporting, this_month, n))
            page.screenshot(path=str(ARTIFACTS / "dashboard-this-month.png"), full_page=True)

            page.click("#preset-last-quarter")
            quarter = shown_period(page)
            assert quarter == last_quarter(last_day)
            assert_matches_sql(table_rows(page), sql_top_clients(reporting, quarter, n))

            page.click("#preset-year-to-date")
            ytd = shown_period(page)
            assert ytd == Period(date(last_day.year, 1, 1), last_day)
            ytd_rows = table_rows(page)
            assert_matches_sql(ytd_rows, sql_top_clients(reporting, ytd, n))
            assert [r["amount"] for r in ytd_rows] != [r["amount"] for r in month_rows]  # the period matters

            page.fill("#from", "2023-02-11")
            page.fill("#to", "2023-09-03")
            page.click("#apply")
            custom = shown_period(page)
            assert custom == Period(date(2023, 2, 11), date(2023, 9, 3))
            assert_matches_sql(table_rows(page), sql_top_clients(reporting, custom, n))

            page.select_option("#top-n", "5")
            assert_matches_sql(table_rows(page), sql_top_clients(reporting, custom, 5))
            page.screenshot(path=str(ARTIFACTS / "dashboard-custom.png"), full_page=True)

            # a region and a currency, combined with the period: the same answer as marts.top_clients with them
            assert page.is_visible("#currency")
            assert page.eval_on_selector_all("#filter-region option", "os => os.map(o => o.textContent)") == \
                ["All", "North", "South"]
            gbp_rows = table_rows(page)
            page.select_option("#filter-region", label="North")
            north = table_rows(page)
            assert_matches_sql(north, sql_top_clients(reporting, custom, 5, None, {"region": "North"}))
            assert north != gbp_rows
            page.select_option("#currency", "EUR")
            table = page.locator("#top-clients")
            assert (table.get_attribute("data-currency"), json.loads(table.get_attribute("data-filters"))) == \
                ("EUR", {"region": "North"})
            eur_north = table_rows(page)
            assert_matches_sql(eur_north, sql_top_clients(reporting, custom, 5, "EUR", {"region": "North"}), "EUR")
            assert all(r["cells"][2].startswith("€") for r in eur_north)
            assert page.text_content("#sales-head") == "Sales (EUR)"
            page.click("#preset-year-to-date")
            assert_matches_sql(table_rows(page), sql_top_clients(reporting, ytd, 5, "EUR", {"region": "North"}), "EUR")
            page.select_option("#filter-region", label="All")
            assert_matches_sql(table_rows(page), sql_top_clients(reporting, ytd, 5, "EUR"), "EUR")
            page.screenshot(path=str(ARTIFACTS / "dashboard-eur.png"), full_page=True)
            # and the page's own function over more combinations, field by field
            for period, currency, filters in ((this_month, "EUR", {"region": "South"}),
                                              (quarter, "GBP", {"region": "South"}),
                                              (custom, "EUR", {}), (ytd, "GBP", {"region": "East"})):
                got = page.evaluate("([f, t, n, c, x]) => window.topClients(f, t, n, c, x).top.map(r => "
                                    "[r.rank, r.client_id, String(r.amount), r.orders, String(r.previous)])",
                                    [period.start.isoformat(), period.end.isoformat(), 20, currency, filters])
                scale = Decimal(10) ** page.evaluate("() => JSON.parse(document.getElementById('dashboard-data')"
                                                     ".textContent).scale")
                want = sql_top_clients(reporting, period, 20, currency, filters)
                assert [(r, c, Decimal(a) / scale, o, Decimal(p) / scale) for r, c, a, o, p in got] == \
                    [(r[0], r[1], r[3], r[5], r[6]) for r in want], (period, currency, filters)
        finally:
            browser.close()
    assert all(u.startswith(("file:", "data:")) for u in requests), requests  # nothing from the network


def test_on_aws_the_reports_log_in_with_the_reporting_secret_at_the_proxy(reporting, monkeypatch):
    """The playbook never sets logins on AWS: the reports stage reads the reporting role's secret (RDS's
    username/password form there) and connects where PLAYBOOK_DATABASE_URL points, the BI proxy."""
    import json
    from urllib.parse import urlsplit

    import boto3

    from playbook.stages import reporting_url as stage_reporting_url
    from playbook.targets import AwsTarget
    from playbook.warehouse import REPORTING_ROLE, SECRET_NAMES

    secrets = boto3.client("secretsmanager")
    name = SECRET_NAMES[REPORTING_ROLE]
    local_form = secrets.get_secret_value(SecretId=name)["SecretString"]
    password = urlsplit(reporting).password
    monkeypatch.setenv("PLAYBOOK_DATABASE_URL", "postgresql://playbook_owner:x@proxy.example:5433/playbook"
                                                "?sslmode=require")
    assert urlsplit(stage_reporting_url(AwsTarget()))[1:] == \
        (f"{REPORTING_ROLE}:{password}@proxy.example:5433", "/playbook", "sslmode=require", "")
    secrets.put_secret_value(SecretId=name, SecretString=json.dumps({"username": REPORTING_ROLE,
                                                                     "password": "from-rds-form"}))
    try:
        url = urlsplit(stage_reporting_url(AwsTarget()))
        assert (url.username, url.password, url.hostname, url.port) == \
            (REPORTING_ROLE, "from-rds-form", "proxy.example", 5433)
    finally:
        secrets.put_secret_value(SecretId=name, SecretString=local_form)


def test_on_aws_the_reports_stage_leaves_the_email_to_its_scheduled_function(config, tmp_path):
    from playbook.stages import send_expense_email
    from playbook.targets import AwsTarget

    assert send_expense_email(AwsTarget(), tmp_path, config)["status"] == "skipped"
    assert not list(tmp_path.iterdir())
