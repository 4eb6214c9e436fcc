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

from typing import Any

from pipeline.config import Accuracy
from pipeline.outliers import GROUPINGS, plain, sales_outliers
from playbook.accuracy.results import CheckResult, judge, place


def outliers(cur, limits: Accuracy) -> list[CheckResult]:
    """One result per grouping (by product, by client and product), each line with its batch, file and row."""
    found = sales_outliers(cur, limits)
    return [_result(limits, grouping, [o for o in found if o["grouped_by"] == grouping]) for grouping in GROUPINGS]


def _result(limits: Accuracy, words: str, lines: list[dict[str, Any]]) -> CheckResult:
    findings: list[dict[str, Any]] = []
    for o in lines:
        keys = o["product"] if words == "product" else f"{o['client_id']} {o['product']}"
        where = place(o["source_ref"])
        where["sheet"] = o["sheet"] or where["sheet"]
        findings.append({"batch_id": o["batch_id"], **where, "row": o["source_row"],
                         "order_id": o["order_id"], "line_no": o["line_no"], words: keys,
                         "quantity": plain(o["quantity"]), "median": plain(o["median"]), "mad": plain(o["mad"]),
                         "rows_in_group": o["rows_in_group"]})
    summary = (f"{len(findings)} quantity values far from their {words}'s others: " + "; ".join(
        f"{f['order_id']}/{f['line_no']} quantity {f['quantity']} ({words} {f[words]}, median {f['median']}; "
        f"{f['file'] or 'no file'} row {f['row']})" for f in findings[:5]) + (" ..." if len(findings) > 5 else "")
        if findings else f"no quantity far from its {words}'s others")
    return judge("outliers", f"sales quantity by {words}", len(findings), limits.max_outliers, summary, findings,
                 warn_only=True)
