"""Core against the marts: every day, year, client and category total the reports show, in each currency, equals
a GROUP BY over core's live rows (those no snapshot deleted at source), exactly. Marts older than the newest
committed batch are refreshed first (or reported stale)."""

from __future__ import annotations

import json

from psycopg2 import sql

from pipeline.config import Accuracy
from playbook.accuracy.results import CheckResult, judge

# Every query reads core alone (the marts' own definitions are not reused, so a fault in them shows). A row a
# snapshot deleted at source (_deleted_by) is in no mart; a money row's currency is its own, or the company's
# for a row loaded before rows had one; tax is in the company's currency, interactions are counted on its rows.
# Currencies are keys, never added together: a mart that adds two of them differs from core in both.
COMPANY = "(select currency from meta.company)"
CURRENCY = f"coalesce(currency, {COMPANY})"
LIVE = "_deleted_by is null"

CORE_DAILY = f"""
    select day, currency, sum(sales_amount) as sales_amount, sum(orders) as orders, sum(order_lines) as order_lines,
           sum(active_clients) as active_clients, sum(operating_costs) as operating_costs,
           sum(payments_received) as payments_received, sum(tax) as tax, sum(interactions) as interactions,
           sum(payments_received) - sum(operating_costs) - sum(tax) as net_cash
    from (
        select order_date as day, {CURRENCY} as currency, sum(amount) as sales_amount,
               count(distinct order_id) as orders, count(*) as order_lines, count(distinct client_id) as active_clients,
               0 as operating_costs, 0 as payments_received, 0 as tax, 0 as interactions
        from core.sales where {LIVE} group by 1, 2
        union all select cost_date, {CURRENCY}, 0, 0, 0, 0, sum(amount), 0, 0, 0
        from core.operating_costs where {LIVE} group by 1, 2
        union all select payment_date, {CURRENCY}, 0, 0, 0, 0, 0, sum(amount), 0, 0
        from core.payments where {LIVE} group by 1, 2
        union all select date_trunc('month', period)::date, {COMPANY}, 0, 0, 0, 0, 0, 0, sum(amount), 0
        from core.tax where {LIVE} group by 1
        union all select (occurred_at at time zone (select timezone from meta.company))::date, {COMPANY},
               0, 0, 0, 0, 0, 0, 0, count(*)
        from core.interactions where {LIVE} group by 1
    ) parts group by day, currency
"""

# (mart, the core query, key columns, compared columns)
COMPARISONS: list[tuple[str, str, tuple[str, ...], tuple[str, ...]]] = [
    ("company_daily", CORE_DAILY, ("day", "currency"),
     ("sales_amount", "orders", "order_lines", "active_clients", "operating_costs", "payments_received", "tax",
      "interactions", "net_cash")),
    ("daily_activity", CORE_DAILY, ("day", "currency"),
     ("sales_amount", "orders", "active_clients", "operating_costs", "payments_received", "tax")),
    ("yearly_sales", f"select extract(year from order_date)::int as year, {CURRENCY} as currency, "
                     f"sum(amount) as sales_amount, count(distinct order_id) as orders from core.sales "
                     f"where {LIVE} group by 1, 2", ("year", "currency"),
     ("sales_amount", "orders")),
    # a sale's attributes over its client's (the live client row the marts name it by)
    ("client_day_sales", f"select order_date as day, client_id, {CURRENCY} as currency, "
                         f"coalesce((select k.attributes from core.clients k where k.client_id = core.sales.client_id "
                         f"and k._deleted_by is null order by k.name desc nulls last, k._key limit 1), '{{}}') "
                         f"|| coalesce(attributes, '{{}}'::jsonb) as attributes, sum(amount) as sales_amount, "
                         f"count(distinct order_id) as orders, count(*) as order_lines from core.sales "
                         f"where {LIVE} group by 1, 2, 3, 4",
     ("day", "client_id", "currency", "attributes"), ("sales_amount", "orders", "order_lines")),
    ("daily_costs_by_category", f"select cost_date as day, category, {CURRENCY} as currency, sum(amount) as amount, "
                                f"count(*) as entries from core.operating_costs where {LIVE} group by 1, 2, 3",
     ("day", "category", "currency"), ("amount", "entries")),
]
# The per-client totals a top-clients report ranks by, over the whole span, per currency.
CLIENT_TOTALS = ("select client_id, currency, sum(sales_amount) as sales_amount, sum(order_lines) as order_lines "
                 "from marts.client_day_sales group by 1, 2",
                 f"select client_id, {CURRENCY} as currency, sum(amount) as sales_amount, count(*) as order_lines "
                 f"from core.sales where {LIVE} group by 1, 2")


def stale_marts(cur) -> list[dict]:
    """Marts whose last good refresh is older than the newest committed batch."""
    cur.execute("""
        with newest as (select max(finished_at) as at from meta.batches where status = 'committed'),
        refreshed as (select mart, max(finished_at) as at from meta.mart_refreshes where status = 'ok' group by mart)
        select v.matviewname::text, r.at, n.at from pg_matviews v cross join newest n
        left join refreshed r on r.mart = v.matviewname
        where v.schemaname = 'marts' and n.at is not null and (r.at is null or r.at < n.at) order by 1""")
    return [{"mart": m, "refreshed_at": r, "newest_batch_at": n} for m, r, n in cur.fetchall()]


def _differences(cur, mart_sql: sql.Composable, core_sql: str, key: tuple[str, ...], columns: tuple[str, ...],
                 limit: int = 50, company: str | None = None) -> tuple[int, list[dict]]:
    """Rows whose compared columns differ between the mart and core, matched on the key (a null key value, such
    as a sale without a client, matches a null); a row missing on one side counts as zeros there.

    A finding names its key; its currency only when it is not the company's (the summary says so), and its
    attributes only when it has some."""
    ident = sql.Identifier
    keys = sql.SQL(", ").join(ident(k) for k in key)
    shown_keys = sql.SQL(", ").join(sql.SQL("coalesce(m.{k}, c.{k})").format(k=ident(k)) for k in key)
    positions = sql.SQL(", ").join(sql.SQL(str(i + 1)) for i in range(len(key)))
    differs = sql.SQL(" or ").join(sql.SQL("coalesce(m.{c}, 0) <> coalesce(c.{c}, 0)").format(c=ident(c))
                                   for c in columns)
    picked = sql.SQL(", ").join(sql.SQL("m.{c}, c.{c}").format(c=ident(c)) for c in columns)
    cur.execute(sql.SQL("with m as (select *, row({keys})::text as _row_key from ({mart}) m0), "
                        "c as (select *, row({keys})::text as _row_key from ({core}) c0) "
                        "select {shown_keys}, {picked}, count(*) over () "
                        "from m full join c on m._row_key = c._row_key where {differs} order by {positions} limit %s"
                        ).format(mart=mart_sql, core=sql.SQL(core_sql), keys=keys, shown_keys=shown_keys,
                                 picked=picked, differs=differs, positions=positions), (limit,))
    rows = cur.fetchall()
    found = []
    for row in rows:
        values = row[len(key):-1]
        named = {}
        for k, v in zip(key, row, strict=False):
            if (k == "currency" and v == company) or (k == "attributes" and v == {}):
                continue
            named[k] = json.dumps(v, sort_keys=True) if k == "attributes" else str(v)
        found.append({**named,
                      **{c: {"mart": values[2 * i], "core": values[2 * i + 1]} for i, c in enumerate(columns)
                         if (values[2 * i] or 0) != (values[2 * i + 1] or 0)}})
    return (rows[0][-1] if rows else 0), found


def company_currency(cur) -> str | None:
    cur.execute(f"select {COMPANY}")
    return cur.fetchone()[0]


def mart_select(mart: str, columns: tuple[str, ...]) -> sql.Composable:
    return sql.SQL("select {} from {}").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                                                sql.Identifier("marts", mart))


def compare_marts(cur, limits: Accuracy, stale: list[dict]) -> list[CheckResult]:
    results = []
    stale_names = {s["mart"] for s in stale}
    company = company_currency(cur)
    in_company = f"; amounts in {company} unless a finding names its currency" if company else ""
    for mart, core_sql, key, columns in COMPARISONS:
        count, found = _differences(cur, mart_select(mart, key + columns), core_sql, key, columns, company=company)
        where = f"per {' and '.join(key)}"
        summary = (f"{count} {where} totals differ from core{in_company}" if count
                   else f"every {where} total equals core ({', '.join(columns)})")
        if mart in stale_names:
            summary += " (the mart is older than the newest batch)"
        results.append(judge("marts_match_core", f"marts.{mart}", count, limits.max_mart_differences, summary,
                             found, stale=mart in stale_names))
    count, found = _differences(cur, sql.SQL(CLIENT_TOTALS[0]), CLIENT_TOTALS[1], ("client_id", "currency"),
                                ("sales_amount", "order_lines"), company=company)
    results.append(judge("marts_match_core", "marts.client_day_sales per client", count, limits.max_mart_differences,
                         f"{count} client totals differ from core{in_company}" if count
                         else "every client's total sales in each currency equal core", found))
    for s in stale:
        results.append(judge("marts_fresh", f"marts.{s['mart']}", 1, 0,
                             f"last refreshed {s['refreshed_at'] or 'never'}, before the newest batch "
                             f"({s['newest_batch_at']})", [{k: str(v) for k, v in s.items()}]))
    if not stale:
        results.append(judge("marts_fresh", "marts", 0, 0, "every mart is newer than the newest committed batch"))
    return results
