"""Yearly sales as bars, each labelled with its amount and its growth on the year before."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.freshness import freshness_note, read_freshness
from pipeline.money import format_compact
from pipeline.periods import Period
from playbook.errors import PlaybookError
from playbook.reports import figures


def read_yearly(conn) -> tuple[list[tuple], Period]:
    """marts.yearly_sales and the span of days it covers (its first and last year may be partial)."""
    with conn.cursor() as cur:
        cur.execute("select year, sales_amount, orders, growth_abs, growth_pct from marts.yearly_sales order by year")
        rows = cur.fetchall()
        cur.execute("select min(day), max(day) from marts.company_daily")
        first, last = cur.fetchone()
    if not rows or last is None:
        raise PlaybookError("marts.yearly_sales is empty: load some data and refresh the marts first")
    return rows, Period(first, last)


def _year_before(day: date) -> date:
    return day.replace(year=day.year - 1) if (day.month, day.day) != (2, 29) else date(day.year - 1, 2, 28)


def like_for_like_growth(conn, year: int, span) -> tuple[float | None, bool]:
    """Growth on the same days of the year before: (percent or None, whether the window is part of a year).

    A full year against a part year (the first month of data, say) is no growth figure, and a year to date
    is compared with the same dates a year earlier, not with a whole year."""
    first = max(span.start, date(year, 1, 1))
    last = min(span.end, date(year, 12, 31))
    before_first, before_last = _year_before(first), _year_before(last)
    if before_first < span.start:
        return None, False
    with conn.cursor() as cur:
        cur.execute("select coalesce(sum(sales_amount) filter (where day between %s and %s), 0),"
                    " coalesce(sum(sales_amount) filter (where day between %s and %s), 0) from marts.daily_activity",
                    (first, last, before_first, before_last))
        now, before = cur.fetchone()
    if not before:
        return None, False
    partial = (first, last) != (date(year, 1, 1), date(year, 12, 31))
    return float((now - before) / before * 100), partial


def growth_label(growth_pct) -> str:
    if growth_pct is None:
        return "first year"
    return f"{float(growth_pct):+.1f}%"


def tick_label(year: int, partial: tuple[date | None, date | None] | None) -> str:
    """'2024', or '2024' over 'to 20 May' / 'from 1 Dec' for a year the data covers only partly."""
    if not partial:
        return str(year)
    start, end = partial
    notes = []
    if start and start != date(year, 1, 1):
        notes.append(f"from {start.day} {start:%b}")
    if end and end != date(year, 12, 31):
        notes.append(f"to {end.day} {end:%b}")
    return f"{year}\n({', '.join(notes)})"


def yearly_sales_chart(conn, config: PipelineConfig, out_dir: Path) -> dict[str, Path]:
    rows, span = read_yearly(conn)
    currency = config.company.currency
    years = [r[0] for r in rows]
    amounts = [float(r[1]) for r in rows]
    partial = {y: (span.start if y == span.start.year else None, span.end if y == span.end.year else None)
               for y in years}
    partial = {y: p for y, p in partial.items()
               if (p[0] and p[0] != date(y, 1, 1)) or (p[1] and p[1] != date(y, 12, 31))}

    fig, ax = figures.new_figure(width=9, height=5.6)
    colors = [figures.SALES_LIGHT if y in partial else figures.SALES for y in years]
    bars = ax.bar([str(y) for y in years], amounts, color=colors, width=0.62,
                  edgecolor=figures.SALES, linewidth=1)
    top = max(amounts + [1.0])
    ax.set_ylim(0, top * 1.22)
    for bar, row in zip(bars, rows, strict=True):
        x = bar.get_x() + bar.get_width() / 2
        height = bar.get_height()
        ax.text(x, height + top * 0.015, format_compact(row[1], currency), ha="center", va="bottom",
                fontsize=11, fontweight="bold", color=figures.INK)
        growth, same_dates = like_for_like_growth(conn, row[0], span)
        label = growth_label(growth) + (" (same dates)" if same_dates else "")
        if growth is None and row[0] != years[0]:
            label = "no full year before"
        color = figures.MUTED if growth is None else ("#2ca02c" if growth >= 0 else figures.COSTS)
        ax.text(x, height + top * 0.075, label, ha="center", va="bottom", fontsize=10, color=color)
    figures.money_axis(ax, currency)
    ax.set_ylabel(f"Sales ({currency})")
    ax.set_xticks(range(len(years)), [tick_label(y, partial.get(y)) for y in years])
    subtitle = f"{span.describe()} · growth on the same days of the year before"
    if partial:
        subtitle += " · lighter bars: part of a year"
    figures.annotate(fig, f"{config.company.name}: sales by year", subtitle,
                     freshness_note(read_freshness(conn), config.company.timezone))
    return figures.save(fig, out_dir, "yearly_sales")
