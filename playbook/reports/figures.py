"""What every chart shares: the company's currency on the axis, a title that says what, a subtitle that says
which period, a footnote that says how fresh the data is, and both a PNG (for email and slides) and an SVG
(for print and the web)."""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator
from datetime import date
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter

from pipeline.money import format_compact

INK = "#222222"
MUTED = "#666666"
SALES = "#1f77b4"
SALES_LIGHT = "#a6c8e6"
COSTS = "#d62728"
GRID = "#dddddd"


# Chart text is plain text, never markup: "$733,947 ... $0" is two dollar amounts, not a mathtext formula
PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False}


@contextlib.contextmanager
def plain_text() -> Iterator[None]:
    """Every text artist made (or drawn) inside is plain text: matplotlib reads no `$...$` as mathtext and hands
    nothing to TeX. Tick labels are made when the figure is drawn, so `save` draws inside it too."""
    import matplotlib

    with matplotlib.rc_context(PLAIN_TEXT):
        yield


def no_markup(fig: Figure) -> None:
    """Mark every text artist of the figure as plain text (those made before `plain_text` was in force too)."""
    for artist in fig.findobj(Text):
        artist.set_parse_math(False)
        artist.set_usetex(False)


def text(fig_or_ax, x: float, y: float, s: str, **kwargs) -> Text:
    """fig.text / ax.text for chart text: never read as markup."""
    return fig_or_ax.text(x, y, s, parse_math=False, usetex=False, **kwargs)


def data_days(conn) -> tuple[date | None, date | None, date | None]:
    """(first day of the marts, last day with sales, last day with operating costs), any currency."""
    with conn.cursor() as cur:
        cur.execute("select min(day), max(day) filter (where orders > 0 or sales_amount <> 0),"
                    " max(day) filter (where operating_costs <> 0) from marts.daily_activity")
        return cur.fetchone()


def company_currency(conn, config) -> str:
    """The company's currency as the warehouse knows it (marts.company), else as the configuration says."""
    with conn.cursor() as cur:
        cur.execute("select currency from marts.company")
        row = cur.fetchone()
    return row[0] if row else config.company.currency


def new_figure(width: float = 11, height: float = 5.6) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)  # the Agg renderer, whatever backend pyplot may have elsewhere in the process
    ax = fig.add_subplot()
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(colors=INK, labelsize=10)
    return fig, ax


def money_axis(ax: Axes, currency: str, axis: str = "y") -> None:
    """Ticks such as £12.3k in the company's currency."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(FuncFormatter(lambda value, _pos: format_compact(value, currency)))


def annotate(fig: Figure, title: str, subtitle: str, footnote: str) -> None:
    """Title and subtitle above the plot, the data-freshness footnote below it, nothing overlapping."""
    text(fig, 0.01, 0.975, title, fontsize=15, fontweight="bold", color=INK, va="top")
    width = int(fig.get_figwidth() * 12)  # characters of 11pt text a line holds
    subtitle = "\n".join(textwrap.fill(line, width=width) for line in subtitle.split("\n"))
    text(fig, 0.01, 0.915, subtitle, fontsize=11, color=MUTED, va="top")
    wrapped = "\n".join(textwrap.wrap(footnote, width=int(fig.get_figwidth() * 15)))
    lines = wrapped.count("\n") + 1
    text(fig, 0.01, 0.015, wrapped, fontsize=8, color=MUTED, va="bottom")
    subtitle_lines = subtitle.count("\n") + 1
    top = 0.83 - 0.035 * max(0, subtitle_lines - 2)
    fig.subplots_adjust(left=0.9 / fig.get_figwidth(), right=0.98, top=top, bottom=0.12 + 0.03 * lines)


def save(fig: Figure, out_dir: Path, name: str) -> dict[str, Path]:
    """`<name>.png` and `<name>.svg` in out_dir; returns {'<name>_png': path, '<name>_svg': path}."""
    import matplotlib

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    # SVG text stays text (searchable, selectable, small) rather than glyph outlines
    with matplotlib.rc_context({"svg.fonttype": "none", **PLAIN_TEXT}):
        fig.canvas.draw()  # makes the tick labels, so they too can be marked plain
        no_markup(fig)
        for fmt in ("png", "svg"):
            path = out_dir / f"{name}.{fmt}"
            fig.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
            paths[f"{name}_{fmt}"] = path
    return paths
