"""The operations team's morning email: operating costs by category for a period, sent once per run.

The message is HTML with a plain-text alternative and the chart inline (referenced by cid). It states the
period and how fresh the data is. Costs are reported per currency (the company's first, then any other the
costs were in), each with its own total and its own chart panel: amounts in two currencies are never added.
Before it is sent, the raw message is written to the reports bucket under a key derived from the run key
with a conditional put (If-None-Match: *): the write that wins sends, every other invocation of the same run
(an EventBridge retry, a second scheduler) finds the key taken and sends nothing. If sending fails the claim is
removed so that a retry can send; at most one email per run.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from zoneinfo import ZoneInfo

import boto3
from botocore.exceptions import ClientError

from pipeline.config import PipelineConfig
from pipeline.freshness import SourceFreshness, freshness_note, read_freshness
from pipeline.logs import get_logger, log
from pipeline.money import format_compact, format_money, minor_digits
from pipeline.outliers import plain, sales_outliers
from pipeline.periods import Period, format_day, trailing

ENV_REPORTS_BUCKET = "REPORTS_BUCKET"
EMAIL_PREFIX = "emails/expense/"
CHART_CID_DOMAIN = "playbook.reports"
logger = get_logger(__name__)
TREND_MIN_DAYS = 28
OUTLIERS_SHOWN = 10


class EmailRequestError(ValueError):
    """The event asks for something that cannot be reported (unknown period, bad dates, no data)."""


@dataclass(frozen=True)
class CategoryTotal:
    """One category's costs in the period, with what it cost in the two periods it is compared with: the
    previous period of the same length and the same days a year earlier (None: the marts hold no costs that
    far back, so there is nothing to compare with; 0: the category cost nothing then)."""
    category: str | None
    amount: Decimal
    entries: int
    currency: str | None = None  # None: the company's
    previous: Decimal | None = None
    year_before: Decimal | None = None

    @property
    def label(self) -> str:
        return self.category if self.category is not None else "(no category)"

    @property
    def change(self) -> Decimal | None:
        return None if self.previous is None else self.amount - self.previous


def _sum_known(values: list[Decimal | None]) -> Decimal | None:
    return None if any(v is None for v in values) else sum(values, Decimal(0))


@dataclass(frozen=True)
class CurrencyCosts:
    """One currency's categories, the biggest change against the previous period first, and their totals."""
    currency: str
    categories: list[CategoryTotal]

    @property
    def total(self) -> Decimal:
        return sum((c.amount for c in self.categories), Decimal(0))

    @property
    def entries(self) -> int:
        return sum(c.entries for c in self.categories)

    @property
    def previous(self) -> Decimal | None:
        return _sum_known([c.previous for c in self.categories])

    @property
    def year_before(self) -> Decimal | None:
        return _sum_known([c.year_before for c in self.categories])

    @property
    def current(self) -> list[CategoryTotal]:
        """The categories with costs in the period, largest first (what the chart draws)."""
        return sorted((c for c in self.categories if c.entries), key=lambda c: (-c.amount, c.label))


@dataclass(frozen=True)
class ExpenseReport:
    period: Period
    categories: list[CategoryTotal]
    freshness: list[SourceFreshness]
    trend: list[tuple[date, Decimal]] = field(default_factory=list)  # the company's currency, day by day
    outliers: list[dict] = field(default_factory=list)  # sales lines loaded since the period began (pipeline.outliers)
    data_end: date | None = None  # the last day with costs in the marts (None: as the period's end)
    outliers_error: str | None = None  # why the outlier lines could not be read, when they could not

    @property
    def compared(self) -> Period | None:
        """The part of the period the marts hold costs for: the days after their last day are missing, not free,
        so only this part is compared (None: the marts end before the period begins)."""
        if self.data_end is None or self.data_end >= self.period.end:
            return self.period
        return Period(self.period.start, self.data_end) if self.data_end >= self.period.start else None

    @property
    def previous_period(self) -> Period | None:
        return self.compared.comparable() if self.compared else None

    @property
    def year_before_period(self) -> Period | None:
        return self.compared.year_before() if self.compared else None

    def by_currency(self, company_currency: str) -> list[CurrencyCosts]:
        """The company's currency first (also when it had no costs), then every other currency with costs."""
        found: dict[str, list[CategoryTotal]] = {company_currency: []}
        for c in self.categories:
            found.setdefault(c.currency or company_currency, []).append(c)
        order = [company_currency] + sorted(k for k in found if k != company_currency)
        return [CurrencyCosts(k, sorted(found[k], key=_biggest_change_first)) for k in order]

    def totals(self, company_currency: str) -> dict[str, Decimal]:
        return {g.currency: g.total for g in self.by_currency(company_currency)}


def _biggest_change_first(c: CategoryTotal) -> tuple:
    change = c.change
    return (-abs(change) if change is not None else Decimal(0), -c.amount, c.label)


# -- what the run is about ------------------------------------------------------------------------------
def run_key_of(event: dict) -> str:
    """The key that makes a run send at most once: explicit, else the schedule's time, else the event id."""
    if event.get("run_key"):
        return str(event["run_key"])
    if event.get("time"):
        return f"scheduled-{event['time']}"
    if event.get("id"):
        return f"event-{event['id']}"
    return f"adhoc-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def email_object_key(run_key: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", run_key).strip("-")[:80]
    digest = hashlib.sha256(run_key.encode()).hexdigest()[:12]
    return f"{EMAIL_PREFIX}{slug}-{digest}.eml"


def _day(event: dict, field: str) -> date:
    try:
        return date.fromisoformat(str(event[field]))
    except KeyError:
        raise EmailRequestError(f"a custom period needs '{field}' (YYYY-MM-DD)") from None
    except ValueError:
        raise EmailRequestError(f"{field}: {event[field]!r} is not a date (YYYY-MM-DD)") from None


def resolve_period(event: dict, config: PipelineConfig, last_data_day: date | None) -> Period:
    """The event's period, or the configured one, ending the day before a scheduled run (in the company's
    time zone: an 08:00 run reports on complete days) or, for a run without a schedule, on the last day
    with data."""
    kind = event.get("period") or ("custom" if event.get("from") or event.get("to") else None)
    kind = kind or config.reports.email.period
    if kind == "custom":
        start, end = _day(event, "from"), _day(event, "to")
        if end < start:
            raise EmailRequestError(f"the period ends ({end}) before it starts ({start})")
        return Period(start, end)
    if kind not in ("day", "week", "month"):
        raise EmailRequestError(f"period: {kind!r} is not one of day, week, month, custom")
    if event.get("time"):
        try:
            scheduled = datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))
        except ValueError:
            raise EmailRequestError(f"time: {event['time']!r} is not an ISO 8601 timestamp") from None
        if scheduled.tzinfo is None:
            scheduled = scheduled.replace(tzinfo=UTC)
        end = scheduled.astimezone(ZoneInfo(config.company.timezone)).date() - timedelta(days=1)
    elif last_data_day is not None:
        end = last_data_day
    else:
        raise EmailRequestError("no operating costs have been loaded yet: there is no period to report on")
    return trailing(kind, end)


# -- reading the marts ----------------------------------------------------------------------------------
def last_cost_day(conn) -> date | None:
    with conn.cursor() as cur:
        cur.execute("select max(day) from marts.daily_costs_by_category")
        return cur.fetchone()[0]


def read_report(conn, period: Period, config: PipelineConfig) -> ExpenseReport:
    """Each currency's categories in the period, in the period it is compared with (the month before for a
    month, else the same length before) and the same days a year earlier; the company's daily costs over the
    trend window; and the sales lines far from their neighbours among those loaded since the period began. A
    comparison period the marts do not reach back to in full is not compared (None), and days after the marts'
    last day of costs are missing, not free: only the part of the period with data is compared."""
    company_currency = config.company.currency
    with conn.cursor() as cur:
        cur.execute("select min(day), max(day) from marts.daily_costs_by_category")
        first, last = cur.fetchone()
    shell = ExpenseReport(period, [], [], data_end=last)
    compared, previous, year_before = shell.compared, shell.previous_period, shell.year_before_period
    reaches = {"previous": previous is not None and first is not None and first <= previous.start,
               "year_before": year_before is not None and first is not None and first <= year_before.start}
    never = date.min  # a comparison period that is not compared selects no day
    window = trend_window(Period(period.start, min(period.end, last)) if last and last >= period.start else period)
    with conn.cursor() as cur:
        cur.execute(
            "select category, currency,"
            " coalesce(sum(amount) filter (where day between %(start)s and %(end)s), 0),"
            " coalesce(sum(entries) filter (where day between %(start)s and %(end)s), 0)::bigint,"
            " coalesce(sum(amount) filter (where day between %(p_start)s and %(p_end)s), 0),"
            " coalesce(sum(amount) filter (where day between %(y_start)s and %(y_end)s), 0)"
            " from marts.daily_costs_by_category"
            " where day between %(start)s and %(end)s or day between %(p_start)s and %(p_end)s"
            " or day between %(y_start)s and %(y_end)s"
            " group by currency, category order by currency, category",
            {"start": period.start, "end": period.end,
             "p_start": previous.start if previous else never, "p_end": previous.end if previous else never,
             "y_start": year_before.start if year_before else never,
             "y_end": year_before.end if year_before else never},
        )
        rows = cur.fetchall()
        cur.execute("select day, sum(amount) from marts.daily_costs_by_category"
                    " where currency = %s and day between %s and %s group by day order by day",
                    (company_currency, window.start, window.end))
        by_day = dict(cur.fetchall())
    categories = [CategoryTotal(c, Decimal(a), int(n), k, Decimal(p) if reaches["previous"] else None,
                                Decimal(y) if reaches["year_before"] else None)
                  for c, k, a, n, p, y in rows
                  if n or (p and reaches["previous"]) or (y and reaches["year_before"])]
    trend = [(day, Decimal(by_day.get(day, 0))) for day in window.each_day()
             if first is not None and first <= day <= last] if compared else []
    outliers, error = read_outliers(conn, config, period)
    return ExpenseReport(period, categories, read_freshness(conn), trend, outliers, last, error)


def read_outliers(conn, config: PipelineConfig, period: Period) -> tuple[list[dict], str | None]:
    """The sales lines far from their neighbours in the batches committed since the period began (midnight in
    the company's time zone), each named once; a failure is reported in the email, not fatal to it."""
    began = datetime.combine(period.start, time(0), ZoneInfo(config.company.timezone))
    try:
        with conn.cursor() as cur:
            return _one_per_line(sales_outliers(cur, config.accuracy, began)), None
    except Exception as exc:  # the costs are the email's business; the lines to check are a courtesy
        log(logger, "outlier lines not read", error=str(exc).strip().splitlines()[0])
        if not conn.autocommit:
            conn.rollback()
        return [], str(exc).strip().splitlines()[0]


def _one_per_line(found: list[dict]) -> list[dict]:
    """A line far from its product's others is often far from its client's too: named once, by the first."""
    seen: set[tuple] = set()
    kept = []
    for o in found:
        if (o["order_id"], o["line_no"]) not in seen:
            seen.add((o["order_id"], o["line_no"]))
            kept.append(o)
    return kept


def trend_window(period: Period) -> Period:
    """The days the daily trend is drawn over, to the period's end: twice its length, at least four weeks."""
    days = max(TREND_MIN_DAYS, 2 * period.days)
    return Period(period.end - timedelta(days=days - 1), period.end)


# -- the message ----------------------------------------------------------------------------------------
def change_text(amount: Decimal, then: Decimal | None, currency: str) -> str:
    """'+£234.00 (+23.4%)', '-£12.00 (-5.0%)', '+£80.00 (new)', '£0.00 (0.0%)', or 'no data' when there is nothing
    to compare. The difference is rounded as it is shown before its sign is chosen, so no '+£0.00'."""
    if then is None:
        return "no data"
    diff = (amount - then).quantize(Decimal(1).scaleb(-minor_digits(currency)), rounding=ROUND_HALF_UP)
    sign = "+" if diff > 0 else ""
    if then:
        percent = (diff / abs(then) * 100).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP) + 0  # no -0.0
        return f"{sign}{format_money(diff, currency)} ({'+' if percent > 0 else ''}{percent}%)"
    return f"{sign}{format_money(diff, currency)}" + (" (new)" if amount else "")


def _then(amount: Decimal | None, currency: str) -> str:
    return "no data" if amount is None else format_money(amount, currency)


def daily_average(amount: Decimal | None, period: Period | None) -> Decimal | None:
    return None if amount is None or period is None else amount / period.days


def trend_summary(report: ExpenseReport, currency: str) -> str:
    """The daily trend the chart draws, in words: the last 7 days' average against the window's first 7."""
    values = [amount for _day, amount in report.trend]
    if len(values) < 14:
        return ""
    first, last = sum(values[:7], Decimal(0)) / 7, sum(values[-7:], Decimal(0)) / 7
    return (f"Daily trend in {currency} over the last {len(values)} days: {format_money(last, currency)} a day in "
            f"the last 7 days against {format_money(first, currency)} in the first 7: "
            f"{change_text(last, first, currency)}.")


def outlier_lines(report: ExpenseReport) -> list[str]:
    """Each outlier line in words (the first OUTLIERS_SHOWN, then how many more): the order line, its quantity
    against its group's median, where it came from; or why they could not be read."""
    if report.outliers_error:
        return [f"The lines to check could not be read: {report.outliers_error}"]
    out = []
    for o in report.outliers[:OUTLIERS_SHOWN]:
        group = f"product {o['product']}" if o["grouped_by"] == "product" else \
            f"client {o['client_id']}'s {o['product']}"
        sheet = f", sheet {o['sheet']}" if o.get("sheet") else ""
        out.append(f"Order {o['order_id']} line {o['line_no']}: quantity {plain(o['quantity'])} where the median of "
                   f"{group} is {plain(o['median'])} ({o['rows_in_group']} lines); {_file(o['source_ref'])}{sheet}, "
                   f"row {o['source_row']}, batch {o['batch_id']}")
    if len(report.outliers) > OUTLIERS_SHOWN:
        out.append(f"and {len(report.outliers) - OUTLIERS_SHOWN} more: `playbook validate` lists them all")
    return out


def _outliers_heading(report: ExpenseReport) -> str:
    return (f"Sales lines to check: {len(report.outliers)} far from their neighbours in the data loaded since "
            f"{format_day(report.period.start)} (a real order, or a typo that reached the figures)")


def _file(source_ref: str | None) -> str:
    """s3://bucket/key?versionId=v#sheet -> 'key'; an API window's ref as it is."""
    if not source_ref:
        return "no file"
    ref = source_ref.split("#", 1)[0]
    if ref.startswith("s3://"):
        return ref.split("/", 3)[-1].split("?", 1)[0]
    return ref


def render_chart(report: ExpenseReport, config: PipelineConfig) -> bytes:
    """Horizontal bars, largest category on top, each labelled with its amount: one panel per currency, each on
    its own axis in its own currency; below them the company's daily costs over the trend window with their
    7-day mean, the period shaded; PNG bytes."""
    import matplotlib

    # chart text is plain text: a category such as "Fees $5 and $6" or two dollar amounts are never mathtext
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        return _chart_png(report, config)


def _chart_png(report: ExpenseReport, config: PipelineConfig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    groups = report.by_currency(config.company.currency)
    if len(groups) > 1:
        groups = [g for g in groups if g.current]
    heights = [max(1.6, 0.45 * len(g.current) + 1.0) for g in groups]
    trend = len(report.trend) >= 2
    if trend:
        heights.append(2.2)
    fig = Figure(figsize=(7.5, max(2.6, sum(heights) + 0.6)), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(heights), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, group in zip(axes, groups, strict=False):
        currency = group.currency
        cats = list(reversed(group.current))
        if cats:
            values = [float(c.amount) for c in cats]
            bars = ax.barh([c.label for c in cats], values, color="#c0504d")
            ax.bar_label(bars, labels=[format_money(c.amount, currency) for c in cats], padding=4, fontsize=9)
            ax.set_xlim(min(min(values), 0) * 1.25, max(max(values), 1) * 1.25)
        else:
            ax.text(0.5, 0.5, "No operating costs in this period", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos, currency=currency: format_compact(v, currency)))
        ax.set_xlabel(f"Amount ({currency})")
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"In {currency}", loc="left", fontsize=10)
    if trend:
        _trend_panel(axes[-1], report, config.company.currency)
    fig.suptitle(f"Operating costs by category: {report.period.describe()}", x=0.02, ha="left", fontsize=11)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _trend_panel(ax, report: ExpenseReport, currency: str) -> None:
    import matplotlib.dates as mdates
    from matplotlib.ticker import FuncFormatter

    days = [d for d, _ in report.trend]
    values = [float(v) for _, v in report.trend]
    mean = [sum(values[max(0, i - 6):i + 1]) / 7 if i >= 6 else None for i in range(len(values))]
    ax.axvspan(datetime.combine(report.period.start, time(0)) - timedelta(hours=12),
               datetime.combine(report.period.end, time(0)) + timedelta(hours=12),
               color="#eeeeee", label="This period")
    ax.plot(days, values, color="#c0504d", linewidth=0.8, alpha=0.6, label="Daily")
    ax.plot(days, mean, color="#c0504d", linewidth=2, label="7-day mean")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_compact(v, currency)))
    locator = mdates.AutoDateLocator(minticks=3, maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", frameon=False, fontsize=8, ncols=3)
    ax.set_title(f"Daily operating costs in {currency}, last {len(days)} days", loc="left", fontsize=10)


def _groups(report: ExpenseReport, config: PipelineConfig) -> list[CurrencyCosts]:
    groups = report.by_currency(config.company.currency)
    return [g for g in groups if g.categories] or groups[:1]


def _rows(report: ExpenseReport, group: CurrencyCosts) -> list[list[str]]:
    """The table of one currency as text cells: a row per category, the total, the daily average."""
    k = group.currency
    rows = [[c.label, format_money(c.amount, k), str(c.entries), _then(c.previous, k),
             change_text(c.amount, c.previous, k), _then(c.year_before, k), change_text(c.amount, c.year_before, k)]
            for c in group.categories]
    total = group.total
    previous = group.previous if report.previous_period else None  # a period not compared has nothing to add up
    year_before = group.year_before if report.year_before_period else None
    rows.append([f"Total {k}", format_money(total, k), str(group.entries), _then(previous, k),
                 change_text(total, previous, k), _then(year_before, k), change_text(total, year_before, k)])
    per_day = [daily_average(total, report.compared or report.period),
               daily_average(previous, report.previous_period),
               daily_average(year_before, report.year_before_period)]
    rows.append(["Daily average", format_money(per_day[0], k), "", _then(per_day[1], k),
                 change_text(per_day[0], per_day[1], k), _then(per_day[2], k),
                 change_text(per_day[0], per_day[2], k)])
    return rows


def _headers() -> list[str]:
    return ["Category", "This period", "Entries", "Previous period", "Change", "Year before", "Change"]


def _compared_with(report: ExpenseReport) -> str:
    compared = report.compared
    if compared is None:
        return (f"The costs loaded so far end on {format_day(report.data_end)}, before this period: it is not "
                "compared, and its days are missing, not free.")
    missing = "" if compared == report.period else (
        f"The costs loaded so far end on {format_day(compared.end)}: the days after are missing, not free, so "
        f"{compared.describe()} is what is compared. ")
    return (f"{missing}Compared with {report.previous_period.describe()} and the same days a year earlier "
            f"({report.year_before_period.describe()}); the biggest changes first.")


def _plain_text(report: ExpenseReport, config: PipelineConfig, note: str) -> str:
    """The same content as the HTML part, as aligned columns; the chart's trend in words."""
    groups = _groups(report, config)
    lines = [f"{config.company.name}: operating costs by category",
             f"Period: {report.period.describe()}",
             _compared_with(report)]
    for group in groups:
        table = [_headers()] + _rows(report, group)
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        lines += ["", f"In {group.currency}"]
        for row in table:
            cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths,
                                                                                               strict=True))]
            lines.append("  ".join(cells).rstrip())
        if not group.categories:
            lines.append("No operating costs were recorded in this period.")
    trend = trend_summary(report, config.company.currency)
    if trend:
        lines += ["", trend]
    if report.outliers or report.outliers_error:
        lines += ["", _outliers_heading(report) + ":"] + [f"- {line}" for line in outlier_lines(report)]
    if len(groups) > 1:
        lines += ["", "Each currency is totalled on its own: amounts in different currencies are not added."]
    lines += ["", note, ""]
    return "\n".join(lines)


def _html(report: ExpenseReport, config: PipelineConfig, note: str, chart_cid: str) -> str:
    cell = "padding:4px 8px;border-bottom:1px solid #ddd"
    head = "padding:4px 8px;text-align:left;border-bottom:2px solid #333;font-size:12px"
    tables = []
    for group in _groups(report, config):
        rows = _rows(report, group)
        body = []
        for n, row in enumerate(rows):
            weight = ";font-weight:bold" if n >= len(rows) - 2 else ""
            cells = [f"<td style='{cell}{weight}'>{html.escape(row[0])}</td>"]
            for i, value in enumerate(row[1:], start=1):
                colour = ";color:#b00020" if i in (4, 6) and value.startswith("+") else (
                    ";color:#1b7f3b" if i in (4, 6) and value.startswith("-") else "")
                cells.append(f"<td style='{cell};text-align:right{weight}{colour}'>{html.escape(value)}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        if not group.categories:
            body.insert(0, f"<tr><td colspan='7' style='{cell}'>No operating costs were recorded in this period."
                           "</td></tr>")
        header = "".join(f"<th style='{head}{'' if i == 0 else ';text-align:right'}'>{html.escape(h)}</th>"
                         for i, h in enumerate(_headers()))
        tables.append(f"""<h3 style="margin:16px 0 4px">In {html.escape(group.currency)}</h3>
<table style="border-collapse:collapse;font-size:13px">
<tr>{header}</tr>
{''.join(body)}
</table>""")
    trend = trend_summary(report, config.company.currency)
    apart = ("<p style='font-size:12px'>Each currency is totalled on its own: amounts in different currencies are "
             "not added.</p>" if len(tables) > 1 else "")
    return f"""<!DOCTYPE html>
<html><body style="font-family:Arial,Helvetica,sans-serif;color:#222;max-width:900px">
<h2 style="margin-bottom:4px">Operating costs by category</h2>
<p style="margin-top:0">{html.escape(config.company.name)} &middot; period:
<strong>{html.escape(report.period.describe())}</strong></p>
<p style="font-size:13px">{html.escape(_compared_with(report))}</p>
<img src="cid:{chart_cid[1:-1]}" alt="Operating costs by category" style="max-width:100%">
{''.join(tables)}
{f'<p style="font-size:13px">{html.escape(trend)}</p>' if trend else ''}
{_outliers_html(report)}
{apart}
<p style="color:#666;font-size:12px">{html.escape(note)}</p>
</body></html>
"""


def _outliers_html(report: ExpenseReport) -> str:
    if not report.outliers and not report.outliers_error:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in outlier_lines(report))
    return (f'<div style="border-left:4px solid #e0a800;background:#fff8e1;padding:6px 12px;margin:12px 0">'
            f'<p style="margin:4px 0;font-weight:bold">{html.escape(_outliers_heading(report))}:</p>'
            f'<ul style="margin:4px 0;padding-left:20px;font-size:13px">{items}</ul></div>')


def build_message(report: ExpenseReport, config: PipelineConfig, run_key: str) -> EmailMessage:
    email = config.reports.email
    note = freshness_note(report.freshness, config.company.timezone)
    totals = " and ".join(format_money(g.total, g.currency) for g in _groups(report, config))
    chart_cid = f"<costs-chart.{uuid.uuid4().hex[:16]}@{CHART_CID_DOMAIN}>"
    msg = EmailMessage()
    msg["Subject"] = f"{config.company.name}: operating costs {report.period.describe()}, {totals}"
    msg["From"] = formataddr((f"{config.company.name} reports", email.sender))
    msg["To"] = ", ".join(email.recipients)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid("expense-email", domain=email.sender.split("@", 1)[1])
    msg["X-Playbook-Run-Key"] = run_key
    msg["X-Playbook-Period"] = f"{report.period.start.isoformat()}/{report.period.end.isoformat()}"
    msg.set_content(_plain_text(report, config, note))
    msg.add_alternative(_html(report, config, note, chart_cid), subtype="html")
    html_part = msg.get_payload()[1]
    html_part.add_related(render_chart(report, config), maintype="image", subtype="png", cid=chart_cid,
                          disposition="inline", filename="operating_costs.png")
    return msg


# -- sending once ---------------------------------------------------------------------------------------
def _taken(error: ClientError) -> bool:
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict") \
        or status in (409, 412)


def send_once(message: EmailMessage, bucket: str, run_key: str, sender: str, recipients: list[str]) -> dict:
    """Claim the run's key by writing the raw message with If-None-Match: *, then send it with SES."""
    s3 = boto3.client("s3")
    key = email_object_key(run_key)
    result = {"run_key": run_key, "bucket": bucket, "key": key}
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return {**result, "status": "skipped", "reason": "an email was already sent for this run"}
    except ClientError as exc:
        # a missing key is 404, or 403 for a function without s3:ListBucket on the bucket (its role has none):
        # either way the conditional put below decides
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound", "403", "Forbidden",
                                                             "AccessDenied"):
            raise
    raw = message.as_bytes()
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=raw, IfNoneMatch="*", ContentType="message/rfc822")
    except ClientError as exc:
        if _taken(exc):
            return {**result, "status": "skipped", "reason": "another invocation of this run claimed it"}
        raise
    try:
        sent = boto3.client("ses").send_raw_email(Source=sender, Destinations=recipients, RawMessage={"Data": raw})
    except Exception:
        s3.delete_object(Bucket=bucket, Key=key)  # release the claim: a retry of the run may send
        raise
    receipt = {"message_id": sent["MessageId"], "sent_at": datetime.now(UTC).isoformat(), "run_key": run_key}
    # put as the claim is (If-None-Match): the function's role writes nothing it could overwrite
    s3.put_object(Bucket=bucket, Key=key.removesuffix(".eml") + ".sent.json", ContentType="application/json",
                  Body=json.dumps(receipt).encode(), IfNoneMatch="*")
    return {**result, "status": "sent", "message_id": sent["MessageId"]}


def send_expense_email(event: dict, config: PipelineConfig, conn, bucket: str | None = None) -> dict:
    """The whole run on an open (reporting) connection: period, figures, message, send at most once."""
    bucket = bucket or os.environ.get(ENV_REPORTS_BUCKET)
    if not bucket:
        raise RuntimeError(f"{ENV_REPORTS_BUCKET} is not set: the function does not know where to keep emails")
    run_key = run_key_of(event)
    period = resolve_period(event, config, last_cost_day(conn))
    report = read_report(conn, period, config)
    message = build_message(report, config, run_key)
    email = config.reports.email
    outcome = send_once(message, bucket, run_key, email.sender, list(email.recipients))
    return {**outcome, "period": period.as_dict(), "recipients": list(email.recipients),
            "totals": {g.currency: str(g.total) for g in _groups(report, config)},
            "categories": {g.currency: {c.label: str(c.amount) for c in g.categories if c.entries}
                           for g in _groups(report, config)},
            "outliers": [{"order_id": o["order_id"], "line_no": o["line_no"], "quantity": str(o["quantity"]),
                          "batch_id": o["batch_id"], "row": o["source_row"]} for o in report.outliers],
            "compared": {g.currency: {c.label: {"amount": str(c.amount), "previous": _str(c.previous),
                                                "year_before": _str(c.year_before)} for c in g.categories}
                         for g in _groups(report, config)}}


def _str(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
