"""Core against the marts: every day, year, client and category total the reports show equals a GROUP BY
over core, exactly. Marts older than the newest committed batch are refreshed first (or reported stale)."""

from __future__ import annotations

from psycopg2 import sql

from pipeline.config import Accuracy
from playbook.accuracy.results import CheckResult, judge

# Per day, from core alone (the marts' own definitions are not reused, so a fault in them shows).
CORE_DAILY = """
    select day, sum(sales_amount) as sales_amount, sum(orders) as orders, sum(order_lines) as order_lines,
           sum(active_clients) as active_clients, sum(operating_costs) as operating_costs,
           sum(payments_received) as payments_received, sum(tax) as tax, sum(interactions) as interactions,
           sum(payments_received) - sum(operating_costs) - sum(tax) as net_cash
    from (
        select order_date as day, sum(amount) as sales_amount, count(distinct order_id) as orders,
               count(*) as order_lines, count(distinct client_id) as active_clients, 0 as operating_costs,
               0 as payments_received, 0 as tax, 0 as interactions from core.sales group by order_date
        union all select cost_date, 0, 0, 0, 0, sum(amount), 0, 0, 0 from core.operating_costs group by cost_date
        union all select payment_date, 0, 0, 0, 0, 0, sum(amount), 0, 0 from core.payments group by payment_date
        union all select date_trunc('month', period)::date, 0, 0, 0, 0, 0, 0, sum(amount), 0 from core.tax group by 1
        union all select occurred_at::date, 0, 0, 0, 0, 0, 0, 0, count(*) from core.interactions group by 1
    ) parts group by day
"""

# (mart, the core query, key columns, compared columns)
COMPARISONS: list[tuple[str, str, tuple[str, ...], tuple[str, ...]]] = [
    ("company_daily", CORE_DAILY, ("day",),
     ("sales_amount", "orders", "order_lines", "active_clients", "operating_costs", "payments_received", "tax",
      "interactions", "net_cash")),
    ("daily_activity", CORE_DAILY, ("day",),
     ("sales_amount", "orders", "active_clients", "operating_costs", "payments_received", "tax")),
    ("yearly_sales", "select extract(year from order_date)::int as year, sum(amount) as sales_amount, "
                     "count(distinct order_id) as orders from core.sales group by 1", ("year",),
     ("sales_amount", "orders")),
    ("client_day_sales", "select order_date as day, client_id, sum(amount) as sales_amount, "
                         "count(distinct order_id) as orders, count(*) as order_lines from core.sales group by 1, 2",
     ("day", "client_id"), ("sales_amount", "orders", "order_lines")),
    ("daily_costs_by_category", "select cost_date as day, category, sum(amount) as amount, count(*) as entries "
                                "from core.operating_costs group by 1, 2", ("day", "category"), ("amount", "entries")),
]
# The per-client totals a top-clients report ranks by, over the whole span.
CLIENT_TOTALS = ("select client_id, sum(sales_amount) as sales_amount, sum(order_lines) as order_lines "
                 "from marts.client_day_sales group by 1",
                 "select client_id, sum(amount) as sales_amount, count(*) as order_lines from core.sales group by 1")


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
                 limit: int = 50) -> tuple[int, list[dict]]:
    ident = sql.Identifier
    keys = sql.SQL(", ").join(ident(k) for k in key)
    differs = sql.SQL(" or ").join(sql.SQL("coalesce(m.{c}, 0) <> coalesce(c.{c}, 0)").format(c=ident(c))
                                   for c in columns)
    picked = sql.SQL(", ").join(sql.SQL("m.{c}, c.{c}").format(c=ident(c)) for c in columns)
    cur.execute(sql.SQL("with m as ({mart}), c as ({core}) select {keys}, {picked}, count(*) over () "
                        "from m full join c using ({keys}) where {differs} order by {keys} limit %s").format(
        mart=mart_sql, core=sql.SQL(core_sql), keys=keys, picked=picked, differs=differs), (limit,))
    rows = cur.fetchall()
    found = []
    for row in rows:
        values = row[len(key):-1]
        found.append({**{k: str(v) for k, v in zip(key, row, strict=False)},
                      **{c: {"mart": values[2 * i], "core": values[2 * i + 1]} for i, c in enumerate(columns)
                         if (values[2 * i] or 0) != (values[2 * i + 1] or 0)}})
    return (rows[0][-1] if rows else 0), found


def mart_select(mart: str, columns: tuple[str, ...]) -> sql.Composable:
    return sql.SQL("select {} from {}").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                                                sql.Identifier("marts", mart))


def compare_marts(cur, limits: Accuracy, stale: list[dict]) -> list[CheckResult]:
    results = []
    stale_names = {s["mart"] for s in stale}
    for mart, core_sql, key, columns in COMPARISONS:
        count, found = _differences(cur, mart_select(mart, key + columns), core_sql, key, columns)
        where = f"per {' and '.join(key)}"
        summary = (f"{count} {where} totals differ from core" if count
                   else f"every {where} total equals core ({', '.join(columns)})")
        if mart in stale_names:
            summary += " (the mart is older than the newest batch)"
        results.append(judge("marts_match_core", f"marts.{mart}", count, limits.max_mart_differences, summary,
                             found, stale=mart in stale_names))
    count, found = _differences(cur, sql.SQL(CLIENT_TOTALS[0]), CLIENT_TOTALS[1], ("client_id",),
                                ("sales_amount", "order_lines"))
    results.append(judge("marts_match_core", "marts.client_day_sales per client", count, limits.max_mart_differences,
                         f"{count} client totals differ from core" if count
                         else "every client's total sales equal core", found))
    for s in stale:
        results.append(judge("marts_fresh", f"marts.{s['mart']}", 1, 0,
                             f"last refreshed {s['refreshed_at'] or 'never'}, before the newest batch "
                             f"({s['newest_batch_at']})", [{k: str(v) for k, v in s.items()}]))
    if not stale:
        results.append(judge("marts_fresh", "marts", 0, 0, "every mart is newer than the newest committed batch"))
    return results
