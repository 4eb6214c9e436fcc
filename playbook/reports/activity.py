"""The business-activity chart: daily sales with their 7-day rolling mean, operating costs alongside.

It draws the company's currency only, and names the period's totals of every other currency in its subtitle
("EUR (not drawn): sales €1,234, operating costs €56"). One axis cannot hold two currencies without adding
them, and panels per currency would give a handful of export sales the same weight on the page as the
business itself: the chart is about the daily trend of the company's own money, and the other currencies'
totals stay in view, in their own currency, without being drawn to a scale they do not share.

Its window is the sales' own: the last `reports.activity_days` days up to the last day with sales (the last
day with costs when there are no sales at all). Sources end on different days; costs that go on after the
last sale are not drawn, and costs that end before it end their line there, the subtitle saying so, rather
than drawing days without data as days without costs.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import matplotlib.dates as mdates
from matplotlib.figure import Figure

from pipeline.config import PipelineConfig
from pipeline.freshness import freshness_note, read_freshness
from pipeline.money import format_money
from pipeline.periods import Period, format_day
from playbook.errors import PlaybookError
from playbook.reports import figures
from playbook.reports.forecast import describe as describe_forecast

ROLLING_DAYS = 7


def default_period(conn, days: int, data: tuple | None = None) -> Period:
    """The last `days` days up to the last day with sales (fewer when the data is younger); up to the last day
    with costs when there are no sales. data: figures.data_days, when the caller has it."""
    first, last_sale, last_cost = data or figures.data_days(conn)
    last = last_sale or last_cost
    if last is None:
        raise PlaybookError("marts.daily_activity has no sales and no operating costs: load some data and "
                            "refresh the marts first")
    return Period(max(first, last - timedelta(days=days - 1)), last)


def read_activity(conn, period: Period, currency: str) -> list[tuple[date, Decimal, Decimal]]:
    """(day, sales, operating costs) in `currency` for every day of the period, plus the days the rolling mean
    needs."""
    with conn.cursor() as cur:
        cur.execute("select day, sales_amount, operating_costs from marts.daily_activity"
                    " where day between %s and %s and currency = %s order by day",
                    (period.start - timedelta(days=ROLLING_DAYS - 1), period.end, currency))
        return cur.fetchall()


def other_currencies(conn, period: Period, currency: str) -> list[tuple[str, Decimal, Decimal]]:
    """(currency, sales, operating costs) over the period for each currency other than `currency` that has any."""
    with conn.cursor() as cur:
        cur.execute("select currency, sum(sales_amount), sum(operating_costs) from marts.daily_activity"
                    " where day between %s and %s and currency <> %s group by currency"
                    " having sum(abs(sales_amount)) + sum(abs(operating_costs)) > 0 order by currency",
                    (period.start, period.end, currency))
        return cur.fetchall()


def _draw_forecast(ax, forecast: dict, period: Period, currency: str, recent: dict[str, list[float]]) -> list[date]:
    """Each drawn series' forecast after its last day (when that day is in the period), dashed, its interval
    shaded, drawn as its actuals are: sales day by day (beside their daily bars), operating costs as the 7-day
    rolling mean their line shows, continued from their last actual days (the band then averages the daily
    bounds, wider than the interval of a mean). recent: each series' daily actuals up to its last day.
    Returns the last forecast day of each series drawn."""
    if forecast.get("currency") != currency:
        return []
    colours = {"sales": figures.SALES, "operating_costs": figures.COSTS}
    words = {"sales": "Sales forecast", "operating_costs": f"Operating costs forecast, {ROLLING_DAYS}-day mean"}
    ends = []
    for name, s in forecast["series"].items():
        if not s["drawn"] or not (period.start <= date.fromisoformat(s["made_on"]) <= period.end):
            continue
        days = [date.fromisoformat(d["day"]) for d in s["days"]]
        mean, lower, upper = ([d[k] for d in s["days"]] for k in ("mean", "lower", "upper"))
        if name == "operating_costs":
            tail = recent[name][-(ROLLING_DAYS - 1):]
            mean, lower, upper = ([float("nan") if m is None else m
                                   for m in rolling_mean(tail + v, ROLLING_DAYS)[len(tail):]] for v in (mean, lower, upper))
        ax.fill_between(days, lower, upper, color=colours[name], alpha=0.12, linewidth=0)
        ax.plot(days, mean, color=colours[name], linewidth=1.4, linestyle="--",
                label=f"{words[name]} ({round(forecast['interval'] * 100)}% interval)")
        ends.append(days[-1])
    return ends


def rolling_mean(values: list[float], window: int) -> list[float | None]:
    """Trailing mean over `window` values; None until a full window is available."""
    out: list[float | None] = []
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / window if i >= window - 1 else None)
    return out


def activity_chart(conn, config: PipelineConfig, out_dir: Path, period: Period | None = None,
                   forecast: dict | None = None) -> dict[str, Path]:
    """activity.png and activity.svg in out_dir."""
    with figures.plain_text():
        return figures.save(activity_figure(conn, config, period, forecast), out_dir, "activity")


def activity_figure(conn, config: PipelineConfig, period: Period | None = None, forecast: dict | None = None) -> Figure:
    """The chart, every text of it plain text (amounts in dollars stay dollars). forecast: a forecast.json
    document (playbook.reports.forecast); each series it draws continues after that series' last day, in the
    period, as a dashed line in its interval, and the footnote states every series' backtest."""
    data = figures.data_days(conn)
    period = period or default_period(conn, config.reports.activity_days, data)
    currency = figures.company_currency(conn, config)
    rows = read_activity(conn, period, currency)
    days = [r[0] for r in rows]
    sales = [float(r[1]) for r in rows]
    costs = [float(r[2]) for r in rows]
    sales_mean = rolling_mean(sales, ROLLING_DAYS)
    costs_mean = rolling_mean(costs, ROLLING_DAYS)
    shown = [i for i, d in enumerate(days) if d >= period.start]
    _first, last_sale, last_cost = data
    # days after the last cost are days without cost data, not days without costs: the line stops there
    costs_shown = [i for i in shown if last_cost is not None and days[i] <= last_cost]

    fig, ax = figures.new_figure()
    x = [days[i] for i in shown]
    ax.bar(x, [sales[i] for i in shown], width=1.0, color=figures.SALES_LIGHT, label="Daily sales", linewidth=0)
    ax.plot(x, [sales_mean[i] for i in shown], color=figures.SALES, linewidth=2.2,
            label=f"Sales, {ROLLING_DAYS}-day rolling mean")
    ax.plot([days[i] for i in costs_shown], [costs_mean[i] for i in costs_shown], color=figures.COSTS,
            linewidth=1.8, label=f"Operating costs, {ROLLING_DAYS}-day rolling mean")
    recent = {"sales": [sales[i] for i in shown], "operating_costs": [costs[i] for i in costs_shown]}
    drawn = _draw_forecast(ax, forecast, period, currency, recent) if forecast else []
    figures.money_axis(ax, currency)
    ax.set_ylabel(f"Amount per day ({currency})")
    top = max(sales + costs + [1.0])
    ax.set_ylim(min(sales + costs + [0.0]) * 1.15, top * 1.15)  # headroom for the legend; refunds below zero
    if x:
        ax.set_xlim(x[0] - timedelta(days=1), max([x[-1], *drawn]) + timedelta(days=1))
    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.legend(loc="upper left", frameon=False, fontsize=9, ncols=3)

    total_sales = sum((Decimal(rows[i][1]) for i in shown), Decimal(0))
    total_costs = sum((Decimal(rows[i][2]) for i in shown), Decimal(0))
    subtitle = (f"{period.describe()} · in {currency}: sales {format_money(total_sales, currency, 0)}, "
                f"operating costs {format_money(total_costs, currency, 0)}")
    if last_sale is None:
        subtitle += " · no sales data"
    if last_cost is None or last_cost < period.end:
        subtitle += (" · no operating costs data" if last_cost is None or last_cost < period.start else
                     f" · operating costs data ends {format_day(last_cost)}")
    for other, other_sales, other_costs in other_currencies(conn, period, currency):
        subtitle += (f"\n{other} (not drawn): sales {format_money(other_sales, other, 0)}, "
                     f"operating costs {format_money(other_costs, other, 0)}")
    footnote = freshness_note(read_freshness(conn), config.company.timezone)
    if forecast and forecast.get("currency") == currency:
        footnote = " · ".join(describe_forecast(forecast, format_money)) + ". " + footnote
    figures.annotate(fig, f"{config.company.name}: business activity", subtitle, footnote)
    figures.no_markup(fig)
    return fig
