"""Yearly sales as bars, each labelled with its amount and its growth on the year before.

The bars are the company's currency; every other currency's yearly totals are named under the title ("Also in
EUR (not drawn): 2023 €12,345 · 2024 €6,789"), for the reason the activity chart gives: one axis cannot hold
two currencies without adding them, and the company's own sales are what the growth story is about.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.freshness import freshness_note, read_freshness
from pipeline.money import format_compact, format_money
from pipeline.periods import Period
from playbook.errors import PlaybookError
from playbook.reports import figures


def read_yearly(conn, currency: str) -> tuple[list[tuple], Period]:
    """marts.yearly_sales in `currency` (year, sales, orders, first and last day covered, part of a year, growth
    in percent on the same dates a year earlier) and the span of days it covers."""
    with conn.cursor() as cur:
        cur.execute("select year, sales_amount, orders, first_day, last_day, partial_year, growth_pct "
                    "from marts.yearly_sales where currency = %s order by year", (currency,))
        rows = cur.fetchall()
    if not rows:
        raise PlaybookError("marts.yearly_sales is empty: load some data and refresh the marts first")
    return rows, Period(rows[0][3], rows[-1][4])


def other_currencies(conn, currency: str) -> dict[str, list[tuple[int, object]]]:
    """{currency: [(year, sales), ...]} for every other currency with sales, the years it has any."""
    with conn.cursor() as cur:
        cur.execute("select currency, year, sales_amount from marts.yearly_sales where currency <> %s"
                    " and sales_amount <> 0 order by currency, year", (currency,))
        found: dict[str, list[tuple[int, object]]] = {}
        for code, year, amount in cur.fetchall():
            found.setdefault(code, []).append((year, amount))
    return found


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
    currency = figures.company_currency(conn, config)
    rows, span = read_yearly(conn, currency)
    years = [r[0] for r in rows]
    amounts = [float(r[1]) for r in rows]
    partial = {year: (first, last) for year, _, _, first, last, is_partial, _ in rows if is_partial}

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
        growth, same_dates = row[6], row[5]
        label = growth_label(growth) + (" (same dates)" if growth is not None and same_dates else "")
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
    for other, years_of in other_currencies(conn, currency).items():
        subtitle += f"\nAlso in {other} (not drawn): " + " · ".join(
            f"{year} {format_money(amount, other, 0)}" for year, amount in years_of)
    figures.annotate(fig, f"{config.company.name}: sales by year", subtitle,
                     freshness_note(read_freshness(conn), config.company.timezone))
    return figures.save(fig, out_dir, "yearly_sales")
