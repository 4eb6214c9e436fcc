"""Yearly sales as bars, each labelled with its amount and its growth on the year before.

The bars are the company's currency; every other currency's yearly totals are named under the title ("Also in
EUR (not drawn): 2023 €12,345 · 2024 €6,789"), for the reason the activity chart gives: one axis cannot hold
two currencies without adding them, and the company's own sales are what the growth story is about.

A long history stays readable: the last `MAX_BARS` years are drawn, and the years before them are summarised
in one line under the title ("2003–2012 not drawn (10 years): sales £1,234,567 in all"); the other
currencies are named for the drawn years, with their earlier years' total likewise. The figure widens with
the bars, and the labels above the bars get smaller when there are many, so no two labels overlap.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

from matplotlib.figure import Figure

from pipeline.config import PipelineConfig
from pipeline.freshness import freshness_note, read_freshness
from pipeline.money import format_compact, format_money
from pipeline.periods import Period, format_day
from playbook.errors import PlaybookError
from playbook.reports import figures

MAX_BARS = 12  # years drawn; earlier years are summarised in a note


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
    """yearly_sales.png and yearly_sales.svg in out_dir."""
    with figures.plain_text():
        return figures.save(yearly_sales_figure(conn, config), out_dir, "yearly_sales")


def years_span(years: list[int]) -> str:
    return str(years[0]) if len(years) == 1 else f"{years[0]}–{years[-1]}"


def yearly_sales_figure(conn, config: PipelineConfig, max_bars: int = MAX_BARS) -> Figure:
    currency = figures.company_currency(conn, config)
    all_rows, span = read_yearly(conn, currency)
    first_year = all_rows[0][0]
    earlier, rows = all_rows[:-max_bars], all_rows[-max_bars:]
    years = [r[0] for r in rows]
    amounts = [float(r[1]) for r in rows]
    partial = {year: (first, last) for year, _, _, first, last, is_partial, _ in rows if is_partial}
    many = len(rows) > 8

    fig, ax = figures.new_figure(width=max(9.0, 2.0 + 0.85 * len(rows)), height=5.6)
    colors = [figures.SALES_LIGHT if y in partial else figures.SALES for y in years]
    bars = ax.bar([str(y) for y in years], amounts, color=colors, width=0.62,
                  edgecolor=figures.SALES, linewidth=1)
    top = max(amounts + [1.0])
    ax.set_ylim(min(amounts + [0.0]) * 1.1, top * 1.22)
    for bar, row in zip(bars, rows, strict=True):
        x = bar.get_x() + bar.get_width() / 2
        height = max(bar.get_height(), 0)
        figures.text(ax, x, height + top * 0.015, format_compact(row[1], currency), ha="center", va="bottom",
                     fontsize=9 if many else 11, fontweight="bold", color=figures.INK)
        growth, same_dates = row[6], row[5]
        label = growth_label(growth) + (" (same dates)" if growth is not None and same_dates else "")
        if growth is None and row[0] != first_year:
            label = "no full year before"
        color = figures.MUTED if growth is None else ("#2ca02c" if growth >= 0 else figures.COSTS)
        figures.text(ax, x, height + top * 0.075, label, ha="center", va="bottom", fontsize=8 if many else 10,
                     color=color)
    figures.money_axis(ax, currency)
    ax.set_ylabel(f"Sales ({currency})")
    ax.set_xticks(range(len(years)), [tick_label(y, partial.get(y)) for y in years],
                  fontsize=9 if many else 10)
    subtitle = f"{span.describe()} · growth on the same days of the year before"
    if partial:
        subtitle += " · lighter bars: part of a year"
    last_sale = figures.data_days(conn)[1]  # the last day with sales (other sources may go on after it)
    if last_sale is not None and last_sale < span.end:
        subtitle += f" · sales data ends {format_day(last_sale)}"
    if earlier:
        total = sum((Decimal(r[1]) for r in earlier), Decimal(0))
        subtitle += (f"\n{years_span([r[0] for r in earlier])} not drawn ({len(earlier)} years): sales "
                     f"{format_money(total, currency, 0)} in all")
    for other, years_of in other_currencies(conn, currency).items():
        before = [(y, a) for y, a in years_of if y < years[0]]
        drawn = [(y, a) for y, a in years_of if y >= years[0]]
        parts = [f"{year} {format_money(amount, other, 0)}" for year, amount in drawn]
        if before:
            parts.insert(0, f"{years_span([y for y, _ in before])} {format_money(sum(a for _, a in before), other, 0)}")
        subtitle += f"\nAlso in {other} (not drawn): " + " · ".join(parts)
    figures.annotate(fig, f"{config.company.name}: sales by year", subtitle,
                     freshness_note(read_freshness(conn), config.company.timezone))
    figures.no_markup(fig)
    return fig
