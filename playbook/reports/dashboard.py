"""The sales team's dashboard: one self-contained HTML file (inline CSS and JS, data embedded as JSON) with a
period filter, a currency selector (when the sales are in more than one currency: amounts of two currencies are
never added), one filter per attribute the sales carry (marts.sales_attributes), and the top clients by sales,
computed in the page exactly as marts.top_clients(from, to, n, currency, filters) computes them.

Money is embedded as integers in units of 10^-scale, where scale is the largest scale of any amount in
marts.client_day_sales, written as decimal strings ("12345650" for 1234.565 at scale 4): the page reads them
as BigInt, adds them exactly whatever their size and scale (16 decimal places and more), and rounds once, like
PostgreSQL. If anything fails in the page (its data broken, a browser without BigInt), the page says so where
the table would be, instead of going blank.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from importlib.resources import files
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.freshness import freshness_note, read_freshness
from pipeline.money import currency_symbol, minor_digits
from playbook.errors import PlaybookError
from playbook.reports import figures

TEMPLATE = "dashboard.html"
DATA_TOKEN = "__DASHBOARD_DATA__"  # noqa: S105 - a placeholder in the template, not a secret


def units(amount: Decimal, scale: int) -> str:
    """An amount as a decimal string of whole units of 10^-scale, exactly (no float, no context rounding)."""
    sign, digits, exponent = Decimal(amount).as_tuple()
    shift = exponent + scale
    if shift < 0:
        raise PlaybookError(f"amount {amount} has more than {scale} decimal places")
    value = int("".join(map(str, digits)) or "0") * 10 ** shift
    return str(-value if sign else value)


def read_dashboard_data(conn, config: PipelineConfig) -> dict:
    """Everything the page needs, as plain JSON: client-day sales in columns (each row's currency and attribute
    set as an index into `currencies` and `attribute_sets`), clients in database order, the filters' values."""
    with conn.cursor() as cur:
        cur.execute("select min(day), max(day), coalesce(max(scale(sales_amount)), 0) from marts.client_day_sales")
        first, last, scale = cur.fetchone()
        if last is None:
            raise PlaybookError("marts.client_day_sales is empty: load some sales and refresh the marts first")
        company_currency = figures.company_currency(conn, config)
        # the clients in the database's own order of client_id: the page breaks ties by this position,
        # as marts.top_clients does with `order by ..., client_id`
        cur.execute("select client_id, max(client_name) from marts.client_day_sales group by client_id"
                    " order by client_id")
        clients = cur.fetchall()
        index = {client_id: i for i, (client_id, _name) in enumerate(clients)}
        cur.execute("select distinct currency from marts.client_day_sales order by 1")
        currencies = [c for (c,) in cur.fetchall()]
        cur.execute("select distinct attributes from marts.client_day_sales")
        attribute_sets = [a for (a,) in cur.fetchall()]
        cur.execute("select attribute, value, value_text from marts.sales_attributes order by attribute, value_text")
        filters: dict[str, list[dict]] = {}
        for attribute, value, text in cur.fetchall():
            filters.setdefault(attribute, []).append({"value": value, "label": text})
        cur.execute("select day, client_id, currency, attributes, sales_amount, orders from marts.client_day_sales"
                    " order by day, client_id")
        rows = cur.fetchall()
    sets = {json.dumps(a, sort_keys=True): i for i, a in enumerate(attribute_sets)}
    currency_index = {c: i for i, c in enumerate(currencies)}
    columns: dict[str, list] = {"day": [], "client": [], "currency": [], "attributes": [], "amount": [],
                                     "orders": []}
    for day, client_id, currency, attributes, amount, orders in rows:
        columns["day"].append((day - first).days)
        columns["client"].append(index[client_id])
        columns["currency"].append(currency_index[currency])
        columns["attributes"].append(sets[json.dumps(attributes, sort_keys=True)])
        columns["amount"].append(units(amount, scale))
        columns["orders"].append(int(orders))
    freshness = read_freshness(conn)
    return {
        "company": config.company.name,
        "currency": company_currency if company_currency in currencies else currencies[0],
        "currencies": [{"code": c, "symbol": currency_symbol(c), "minor_digits": minor_digits(c)}
                       for c in currencies],
        "attribute_sets": attribute_sets,
        "filters": filters,
        "scale": int(scale),
        "top_n": config.reports.top_n,
        "first_day": first.isoformat(),
        "today": last.isoformat(),
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "freshness": [f.as_dict() for f in freshness],
        "freshness_note": freshness_note(freshness, config.company.timezone),
        "clients": [[client_id, name] for client_id, name in clients],
        "rows": columns,
    }


def render_dashboard(data: dict) -> str:
    template = files("playbook.reports").joinpath(TEMPLATE).read_text(encoding="utf-8")
    # JSON inside <script>: "</" must not close the element, and U+2028/9 are fine in JSON but not in old JS
    payload = (json.dumps(data, ensure_ascii=False, separators=(",", ":"))
               .replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return template.replace(DATA_TOKEN, payload)


def dashboard(conn, config: PipelineConfig, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "dashboard.html"
    path.write_text(render_dashboard(read_dashboard_data(conn, config)), encoding="utf-8")
    return {"dashboard": path}
