"""Sales lines far from their neighbours (marts.sales_outliers, migration 020): what `validate` warns of and the
operations email shows when the data loaded since its period began holds any. The thresholds are the
`accuracy` section's (outlier_robust_z, outlier_ratio, outlier_min_rows)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pipeline.config import Accuracy

GROUPINGS = ("product", "client and product")
COLUMNS = ("grouped_by", "order_id", "line_no", "client_id", "product", "quantity", "median", "mad", "rows_in_group",
           "batch_id", "source_ref", "sheet", "source_row", "loaded_at")


def sales_outliers(cur, limits: Accuracy, loaded_since: datetime | None = None) -> list[dict[str, Any]]:
    """Every outlier line (by product first, then by client and product), of batches committed since
    `loaded_since` (None: of every batch)."""
    cur.execute(f"select {', '.join(COLUMNS)} from marts.sales_outliers(%s, %s, %s, %s)",  # noqa: S608 - fixed names
                (limits.outlier_robust_z, limits.outlier_ratio, limits.outlier_min_rows, loaded_since))
    return [dict(zip(COLUMNS, row, strict=True)) for row in cur.fetchall()]


def plain(value: Any) -> str:
    """A quantity, median or deviation as a person writes it: 20000, 2, 2.5 (no exponent, no trailing zeros)."""
    return format(Decimal(str(value)).normalize(), "f")
