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
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from zoneinfo import ZoneInfo

import boto3
from botocore.exceptions import ClientError

from pipeline.config import PipelineConfig
from pipeline.freshness import SourceFreshness, freshness_note, read_freshness
from pipeline.money import format_compact, format_money
from pipeline.periods import Period, trailing

ENV_REPORTS_BUCKET = "REPORTS_BUCKET"
EMAIL_PREFIX = "emails/expense/"
CHART_CID_DOMAIN = "playbook.reports"


class EmailRequestError(ValueError):
    """The event asks for something that cannot be reported (unknown period, bad dates, no data)."""


@dataclass(frozen=True)
class CategoryTotal:
    category: str | None
    amount: Decimal
    entries: int
    currency: str | None = None  # None: the company's

    @property
    def label(self) -> str:
        return self.category if self.category is not None else "(no category)"


@dataclass(frozen=True)
class CurrencyCosts:
    """One currency's categories, largest first, and their total."""
    currency: str
    categories: list[CategoryTotal]

    @property
    def total(self) -> Decimal:
        return sum((c.amount for c in self.categories), Decimal(0))

    @property
    def entries(self) -> int:
        return sum(c.entries for c in self.categories)


@dataclass(frozen=True)
class ExpenseReport:
    period: Period
    categories: list[CategoryTotal]
    freshness: list[SourceFreshness]

    def by_currency(self, company_currency: str) -> list[CurrencyCosts]:
        """The company's currency first (also when it had no costs), then every other currency with costs."""
        found: dict[str, list[CategoryTotal]] = {company_currency: []}
        for c in self.categories:
            found.setdefault(c.currency or company_currency, []).append(c)
        order = [company_currency] + sorted(k for k in found if k != company_currency)
        return [CurrencyCosts(k, sorted(found[k], key=lambda c: (-c.amount, c.label))) for k in order]

    def totals(self, company_currency: str) -> dict[str, Decimal]:
        return {g.currency: g.total for g in self.by_currency(company_currency)}


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


def read_report(conn, period: Period) -> ExpenseReport:
    with conn.cursor() as cur:
        cur.execute(
            "select category, sum(amount), sum(entries)::bigint, currency from marts.daily_costs_by_category"
            " where day between %s and %s group by currency, category order by currency, 2 desc, 1",
            (period.start, period.end),
        )
        categories = [CategoryTotal(c, Decimal(a), int(n), k) for c, a, n, k in cur.fetchall()]
    return ExpenseReport(period, categories, read_freshness(conn))


# -- the message ----------------------------------------------------------------------------------------
def render_chart(report: ExpenseReport, config: PipelineConfig) -> bytes:
    """Horizontal bars, largest category on top, each labelled with its amount: one panel per currency, each on
    its own axis in its own currency; PNG bytes."""
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
        groups = [g for g in groups if g.categories]
    heights = [max(1.6, 0.45 * len(g.categories) + 1.0) for g in groups]
    fig = Figure(figsize=(7.5, max(2.6, sum(heights) + 0.6)), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, group in zip(axes, groups, strict=True):
        currency = group.currency
        cats = list(reversed(group.categories))
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
    fig.suptitle(f"Operating costs by category: {report.period.describe()}", x=0.02, ha="left", fontsize=11)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _groups(report: ExpenseReport, config: PipelineConfig) -> list[CurrencyCosts]:
    groups = report.by_currency(config.company.currency)
    return [g for g in groups if g.categories] or groups[:1]


def _plain_text(report: ExpenseReport, config: PipelineConfig, note: str) -> str:
    groups = _groups(report, config)
    width = max([len(c.label) for c in report.categories] + [len("Total GBP")])
    lines = [f"{config.company.name}: operating costs by category",
             f"Period: {report.period.describe()}"]
    for group in groups:
        currency = group.currency
        lines += ["", f"In {currency}"]
        for c in group.categories:
            lines.append(f"{c.label:<{width}}  {format_money(c.amount, currency):>14}  {c.entries:>5} entries")
        if not group.categories:
            lines.append("No operating costs were recorded in this period.")
        lines.append(f"{'Total ' + currency:<{width}}  {format_money(group.total, currency):>14}  "
                     f"{group.entries:>5} entries")
    if len(groups) > 1:
        lines += ["", "Each currency is totalled on its own: amounts in different currencies are not added."]
    lines += ["", note, ""]
    return "\n".join(lines)


def _html(report: ExpenseReport, config: PipelineConfig, note: str, chart_cid: str) -> str:
    cell = "padding:4px 10px;border-bottom:1px solid #ddd"
    head = "padding:4px 10px;text-align:left;border-bottom:2px solid #333"
    tables = []
    for group in _groups(report, config):
        currency = group.currency
        rows = []
        for c in group.categories:
            share = f"{c.amount / group.total * 100:.1f}%" if group.total else "-"
            rows.append(f"<tr><td style='{cell}'>{html.escape(c.label)}</td>"
                        f"<td style='{cell};text-align:right'>{format_money(c.amount, currency)}</td>"
                        f"<td style='{cell};text-align:right'>{share}</td>"
                        f"<td style='{cell};text-align:right'>{c.entries}</td></tr>")
        if not group.categories:
            rows.append(f"<tr><td colspan='4' style='{cell}'>No operating costs were recorded in this period."
                        "</td></tr>")
        tables.append(f"""<h3 style="margin:16px 0 4px">In {html.escape(currency)}</h3>
<table style="border-collapse:collapse">
<tr><th style="{head}">Category</th><th style="{head};text-align:right">Amount ({html.escape(currency)})</th>
<th style="{head};text-align:right">Share</th><th style="{head};text-align:right">Entries</th></tr>
{''.join(rows)}
<tr><td style="{cell};font-weight:bold">Total {html.escape(currency)}</td>
<td style="{cell};text-align:right;font-weight:bold">{format_money(group.total, currency)}</td>
<td style="{cell};text-align:right">{'100.0%' if group.total else '-'}</td>
<td style="{cell};text-align:right;font-weight:bold">{group.entries}</td></tr>
</table>""")
    apart = ("<p style='font-size:12px'>Each currency is totalled on its own: amounts in different currencies are "
             "not added.</p>" if len(tables) > 1 else "")
    return f"""<!DOCTYPE html>
<html><body style="font-family:Arial,Helvetica,sans-serif;color:#222;max-width:720px">
<h2 style="margin-bottom:4px">Operating costs by category</h2>
<p style="margin-top:0">{html.escape(config.company.name)} &middot; period:
<strong>{html.escape(report.period.describe())}</strong></p>
<img src="cid:{chart_cid[1:-1]}" alt="Operating costs by category" style="max-width:100%">
{''.join(tables)}
{apart}
<p style="color:#666;font-size:12px">{html.escape(note)}</p>
</body></html>
"""


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
    report = read_report(conn, period)
    message = build_message(report, config, run_key)
    email = config.reports.email
    outcome = send_once(message, bucket, run_key, email.sender, list(email.recipients))
    return {**outcome, "period": period.as_dict(), "recipients": list(email.recipients),
            "totals": {g.currency: str(g.total) for g in _groups(report, config)},
            "categories": {g.currency: {c.label: str(c.amount) for c in g.categories}
                           for g in _groups(report, config)}}
