"""Values far from their neighbours: an order line of 20,000 where the product's other lines hold 2 loads and
reaches the reports without a word, so `validate` looks for them.

Robust statistics, so the outlier does not hide itself by moving the average: per product, and per client and
product (what a client usually takes of it), the median quantity and the median absolute deviation (MAD).
Quantities, not amounts: a client's line amounts span every product's price, so a large order of a dear
product is not an outlier, while 20,000 of what is always bought by the two is. A value is an outlier when
both hold:
- it is more than `accuracy.outlier_robust_z` robust deviations (1.4826 x MAD, the standard deviation's
  robust estimate) from the median, and
- it is at least `accuracy.outlier_ratio` (50) times the median, or at most its reciprocal (a quantity of 3 where
  every other line holds 2 has a MAD of 0, but it is no typo).
Groups of fewer than `accuracy.outlier_min_rows` rows are not judged. Each finding names its batch, file,
sheet and row; the check warns and never stops the run (an outlier may be a real order)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from psycopg2 import sql

from pipeline.config import Accuracy
from playbook.accuracy.results import CheckResult, judge, place

MAD_TO_SIGMA = Decimal("1.4826")
# (subject, the value, its group's columns, words for the group)
MEASURES = (("sales quantity by product", "quantity", ("product",), "product"),
            ("sales quantity by client and product", "quantity", ("client_id", "product"), "client and product"))


def outliers(cur, limits: Accuracy) -> list[CheckResult]:
    return [_measure(cur, limits, *m) for m in MEASURES]


def _measure(cur, limits: Accuracy, subject: str, value: str, group: tuple[str, ...], words: str) -> CheckResult:
    by = sql.SQL(", ").join(map(sql.Identifier, group))
    on = sql.SQL(" and ").join(sql.SQL("g.{0} is not distinct from l.{0}").format(sql.Identifier(c)) for c in group)
    cur.execute(sql.SQL("""
        with live as (select * from core.sales where _deleted_by is null and {v} is not null),
        centre as (select {by}, count(*) as n, percentile_cont(0.5) within group (order by {v}) as med
                   from live group by {by}),
        spread as (select {g_by}, percentile_cont(0.5) within group (order by abs(l.{v} - g.med)) as mad
                   from live l join centre g on {on} group by {g_by})
        select l.order_id, l.line_no, {l_by}, l.{v}, g.med, s.mad, g.n, l._batch_id, b.source_ref, l._source_row
        from live l join centre g on {on} join spread s on {s_on} join meta.batches b on b.batch_id = l._batch_id
        where g.n >= %(min_rows)s and g.med <> 0
          and abs(l.{v} - g.med) > %(z)s * %(sigma)s * s.mad
          and (abs(l.{v}) >= %(ratio)s * abs(g.med) or abs(l.{v}) * %(ratio)s <= abs(g.med))
        order by l._batch_id, l._source_row, l.order_id, l.line_no""").format(
        v=sql.Identifier(value), by=by, on=on,
        g_by=sql.SQL(", ").join(sql.SQL("g.{}").format(sql.Identifier(c)) for c in group),
        l_by=sql.SQL(", ").join(sql.SQL("l.{}").format(sql.Identifier(c)) for c in group),
        s_on=sql.SQL(" and ").join(sql.SQL("s.{0} is not distinct from g.{0}").format(sql.Identifier(c))
                                   for c in group)),
        {"min_rows": limits.outlier_min_rows, "z": limits.outlier_robust_z, "sigma": MAD_TO_SIGMA,
         "ratio": limits.outlier_ratio})
    findings: list[dict[str, Any]] = []
    for order_id, line_no, *rest in cur.fetchall():
        keys, (found, median, mad, n, batch_id, ref, row) = rest[:len(group)], rest[len(group):]
        findings.append({"batch_id": batch_id, **place(ref), "row": row, "order_id": order_id, "line_no": line_no,
                         words: " ".join(str(k) for k in keys), value: str(found), "median": _plain(median),
                         "mad": _plain(mad), "rows_in_group": n})
    summary = (f"{len(findings)} {value} values far from their {words}'s others: " + "; ".join(
        f"{f['order_id']}/{f['line_no']} {value} {f[value]} ({words} {f[words]}, median {f['median']}; "
        f"{f['file'] or 'no file'} row {f['row']})" for f in findings[:5]) + (" ..." if len(findings) > 5 else "")
        if findings else f"no {value} far from its {words}'s others")
    return judge("outliers", subject, len(findings), limits.max_outliers, summary, findings, warn_only=True)


def _plain(value: Any) -> str:
    return format(Decimal(str(value)).normalize(), "f")
