"""The reports on a company as real data came: 22 years of history, in US dollars, amounts with 16 decimal places,
costs that go on after the last sale. Built from the real marts through the real reporting role; the dashboard
driven in headless Chromium, and a dashboard whose data is broken shows its error in the page."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import matplotlib.mathtext
import psycopg2
import pytest
from matplotlib.text import Text

from pipeline.money import format_money
from pipeline.periods import Period, format_day
from playbook.config import load_config
from playbook.settings import PROJECT_ROOT
from tests.playbook.test_reports import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    assert_matches_sql,
    psycopg2_rows,
    shown_period,
    sql_top_clients,
    svg_text,
    table_rows,
)
from tests.reporting_data import (
    FINE_FROM,
    HISTORY_FIRST_DAY,
    HISTORY_LAST_COST,
    HISTORY_LAST_SALE,
    history_company,
    reporting_url,
)

pytestmark = pytest.mark.stack

ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "reports-real-data"


@pytest.fixture(scope="module")
def config():
    return load_config()


@pytest.fixture(scope="module")
def company(stack, config):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with history_company(stack["database_url"], config.reports.activity_days) as made:
        yield made


@pytest.fixture(scope="module")
def reporting(stack) -> str:
    return reporting_url(stack["database_url"])


@pytest.fixture(scope="module")
def conn(company, reporting):
    from playbook.reports import connect_reporting

    c = connect_reporting(reporting)
    yield c
    c.close()


@pytest.fixture()
def mathtext_calls(monkeypatch) -> list[str]:
    """Every string matplotlib's mathtext parser is asked to parse while the test runs."""
    calls: list[str] = []
    original = matplotlib.mathtext.MathTextParser.parse

    def spy(self, s, *args, **kwargs):
        calls.append(s)
        return original(self, s, *args, **kwargs)

    monkeypatch.setattr(matplotlib.mathtext.MathTextParser, "parse", spy)
    return calls


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text)]


# -- charts --------------------------------------------------------------------------------------------------
def test_dollar_amounts_in_chart_text_stay_dollars(conn, config, tmp_path, mathtext_calls):
    """"sales $733,947, operating costs $0" has two dollar signs: matplotlib would read the text between them as
    a formula. Every text artist is plain text, the rendered SVG holds the literal amounts, no mathtext parsed."""
    from playbook.reports import figures
    from playbook.reports.activity import activity_figure

    assert figures.company_currency(conn, config) == "USD"
    with figures.plain_text():
        fig = activity_figure(conn, config)
        written = figures.save(fig, tmp_path, "activity")
    strings = texts(fig)
    assert any("sales $733,947, operating costs $" in s for s in strings), strings
    assert all(not t.get_parse_math() and not t.get_usetex() for t in fig.findobj(Text))
    assert any(s.startswith("$") for s in strings)  # the money axis' ticks, drawn and still plain
    assert mathtext_calls == []
    assert "$733,947" in svg_text(written["activity_svg"])


def test_mathtext_spy_sees_markup_when_text_is_not_plain(mathtext_calls):
    """The check above can fail: the same string in a text artist that parses math is handed to mathtext."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    fig.text(0.1, 0.5, "sales $733,947, operating costs $0", parse_math=True)
    fig.canvas.draw()
    assert mathtext_calls


def test_activity_window_is_the_sales_own(conn, config, reporting):
    """The costs go on two months after the last sale: the window still ends on the last day with sales, so the
    chart shows sales, and its totals are the sales of that window in the mart."""
    from playbook.reports import figures
    from playbook.reports.activity import activity_chart, default_period

    last_cost = psycopg2_rows(reporting, "select max(day) from marts.daily_activity where operating_costs <> 0")[0][0]
    assert last_cost == HISTORY_LAST_COST > HISTORY_LAST_SALE
    period = default_period(conn, config.reports.activity_days)
    assert period == Period(HISTORY_LAST_SALE - timedelta(days=config.reports.activity_days - 1), HISTORY_LAST_SALE)
    ((sales, costs),) = psycopg2_rows(reporting, "select sum(sales_amount), sum(operating_costs) from "
                                      "marts.daily_activity where day between %s and %s and currency = 'USD'",
                                      (period.start, period.end))
    assert sales == Decimal(733947)
    with figures.plain_text():
        written = activity_chart(conn, config, ARTIFACTS)
    text = svg_text(written["activity_svg"])
    assert period.describe() in text
    assert f"sales $733,947, operating costs {format_money(costs, 'USD', 0)}" in text


def test_activity_says_when_costs_end_before_the_sales(conn, config):
    """A window that reaches past the last cost: the subtitle says where the cost data ends and the cost line
    stops there (days without data are not days without costs)."""
    from playbook.reports import figures
    from playbook.reports.activity import activity_figure

    period = Period(HISTORY_LAST_COST - timedelta(days=59), HISTORY_LAST_COST + timedelta(days=30))
    with figures.plain_text():
        fig = activity_figure(conn, config, period)
    assert any(f"operating costs data ends {format_day(HISTORY_LAST_COST)}" in s for s in texts(fig)), texts(fig)
    ax = fig.axes[0]
    [cost_line] = [line for line in ax.get_lines() if line.get_label().startswith("Operating costs")]
    assert max(cost_line.get_xdata()) == HISTORY_LAST_COST


def test_a_long_history_stays_readable(conn, config, reporting):
    """23 years of sales: the last MAX_BARS are drawn, the earlier ones named in one note with their total; no
    two labels overlap."""
    from playbook.reports import figures
    from playbook.reports.yearly_sales import MAX_BARS, yearly_sales_figure

    years = psycopg2_rows(reporting, "select year, sales_amount from marts.yearly_sales where currency = 'USD' "
                                     "order by year")
    assert len(years) >= 20 and years[0][0] == HISTORY_FIRST_DAY.year
    with figures.plain_text():
        fig = yearly_sales_figure(conn, config)
        written = figures.save(fig, ARTIFACTS, "yearly_sales")
    ax = fig.axes[0]
    assert len(ax.patches) == MAX_BARS <= 12
    drawn = [int(t.get_text().split("\n")[0]) for t in ax.get_xticklabels()]
    assert drawn == [y for y, _ in years[-MAX_BARS:]]
    earlier = years[:-MAX_BARS]
    total = sum((a for _, a in earlier), Decimal(0))
    note = (f"{earlier[0][0]}–{earlier[-1][0]} not drawn ({len(earlier)} years): sales "
            f"{format_money(total, 'USD', 0)} in all")
    assert any(note in s.replace("\n", " ") for s in texts(fig)), texts(fig)
    assert note in svg_text(written["yearly_sales_svg"]).replace("\n", " ")
    assert f"sales data ends {format_day(HISTORY_LAST_SALE)}" in svg_text(written["yearly_sales_svg"])
    # the labels above the bars and under them do not overlap one another
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts + ax.get_xticklabels() if t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in labels]
    overlapping = [(labels[i].get_text(), labels[j].get_text()) for i in range(len(boxes))
                   for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    assert overlapping == []


# -- the dashboard -------------------------------------------------------------------------------------------
def open_page(p, profile: str, path: Path):
    browser = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_FLAGS, viewport={"width": 1200, "height": 900})
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    return browser, page, errors


def test_dashboard_adds_amounts_with_16_decimal_places_exactly(conn, config, reporting):
    """Sums of amounts with 16 decimal places pass 2^53 units: the page adds them as BigInt, and shows the same
    totals as marts.top_clients, to the last of the 16 places."""
    from playwright.sync_api import sync_playwright

    from playbook.reports.dashboard import dashboard

    path = dashboard(conn, config, ARTIFACTS)["dashboard"]
    n = config.reports.top_n
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        browser, page, errors = open_page(p, profile, path)
        try:
            page.wait_for_selector("#top-clients tbody tr.client")
            assert errors == [] and page.inner_text("#error") == ""
            month = shown_period(page)
            assert month == Period(HISTORY_LAST_SALE.replace(day=1), HISTORY_LAST_SALE)
            rows = table_rows(page)
            assert any(len(r["amount"].split(".")[1].rstrip("0")) > 10 for r in rows)  # 16 places, exact
            assert_matches_sql(rows, sql_top_clients(reporting, month, n), "USD")
            ((total,),) = psycopg2_rows(reporting, "select sum(sales_amount) from marts.client_day_sales where day "
                                                   "between %s and %s and currency = 'USD'", (month.start, month.end))
            assert total * 10 ** 16 > 2 ** 53  # beyond what a Number adds exactly
            assert page.inner_text("#total") == format_money(total, "USD")
            page.click("#preset-year-to-date")
            ytd = shown_period(page)
            assert ytd.start <= FINE_FROM
            assert_matches_sql(table_rows(page), sql_top_clients(reporting, ytd, n), "USD")
            page.fill("#from", "2003-01-01")
            page.fill("#to", str(HISTORY_LAST_SALE))
            page.click("#apply")
            everything = shown_period(page)
            assert_matches_sql(table_rows(page), sql_top_clients(reporting, everything, n), "USD")
            got = page.evaluate("([f, t]) => window.topClients(f, t, 50).top.map(r => [r.client_id, String(r.amount),"
                                " String(r.previous)])", [str(ytd.start), str(ytd.end)])
            want = sql_top_clients(reporting, ytd, 50)
            scale = Decimal(10) ** 16
            assert [(c, Decimal(a) / scale, Decimal(b) / scale) for c, a, b in got] == \
                [(r[1], r[3], r[6]) for r in want]
            page.screenshot(path=str(ARTIFACTS / "dashboard-16-places.png"), full_page=True)
        finally:
            browser.close()


@pytest.mark.parametrize("breakage", ["amount_not_a_number", "json_cut_short"])
def test_a_dashboard_whose_data_is_broken_says_so_in_the_page(conn, config, tmp_path, breakage):
    """Not a blank page: the error, in words, where the table would be."""
    from playwright.sync_api import sync_playwright

    from playbook.reports.dashboard import DATA_TOKEN, TEMPLATE, read_dashboard_data, render_dashboard

    data = read_dashboard_data(conn, config)
    if breakage == "amount_not_a_number":
        data["rows"]["amount"][3] = "12x5"
        html = render_dashboard(data)
    else:
        from importlib.resources import files

        template = files("playbook.reports").joinpath(TEMPLATE).read_text(encoding="utf-8")
        html = template.replace(DATA_TOKEN, '{"company": "Cut sho')
    path = tmp_path / "dashboard.html"
    path.write_text(html, encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        browser, page, _errors = open_page(p, profile, path)
        try:
            page.wait_for_selector("#error:not(:empty)")
            assert page.is_visible("#error")
            message = page.inner_text("#error")
            assert message.startswith("The dashboard could not be shown: ")
            assert "playbook report" in message
            if breakage == "amount_not_a_number":
                assert '"12x5"' in message
            assert page.locator("#top-clients tbody tr.client").count() == 0
            page.screenshot(path=str(tmp_path / f"{breakage}.png"))
        finally:
            browser.close()


def test_every_client_row_of_the_history_is_in_the_mart(reporting, company):
    """The data the tests above read is what was made: every sale in dollars, 22 years and more."""
    conn = psycopg2.connect(reporting)
    try:
        with conn.cursor() as cur:
            # the history's own clients (other tests may have loaded sales of their own into the shared stack)
            cur.execute("select min(day), max(day), array_agg(distinct currency) from marts.client_day_sales "
                        "where client_id like 'T-H%'")
            first, last, currencies = cur.fetchone()
    finally:
        conn.close()
    assert (first, last, currencies) == (HISTORY_FIRST_DAY, HISTORY_LAST_SALE, ["USD"])
    assert company["rows"]["sales"] > 5000


def test_the_expense_email_chart_reads_no_markup_in_categories_or_amounts(config, mathtext_calls):
    """A category named with dollar signs, amounts in dollars: the email's chart draws them as they are."""
    from datetime import date

    from pipeline.expense_email import CategoryTotal, ExpenseReport, render_chart

    report = ExpenseReport(Period(date(2024, 5, 1), date(2024, 5, 31)), [
        CategoryTotal("Fees $5 and $6 a month", Decimal("733947.00"), 3, "USD"),
        CategoryTotal("Rent", Decimal("1200.00"), 1, "USD")], [])
    png = render_chart(report, config)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert mathtext_calls == []
