"""The canonical model every source maps onto: tables, typed columns and natural keys.

Types are few on purpose: text (IDs keep their leading zeros), integer, money (exact numeric), date and
timestamp. The SQL in sql/migrations creates the same tables; tests check that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ColumnType = Literal["text", "integer", "money", "date", "timestamp"]


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    required: bool = True
    non_negative: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    natural_key: tuple[str, ...]
    # the column whose money sum the ledger reconciles, when the table has one
    amount: str | None = None
    # the business date of a row, used for freshness and marts
    date: str | None = None

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "clients",
            (
                Column("client_id", "text"),
                Column("name", "text"),
                Column("segment", "text", False),
                Column("country", "text", False),
                Column("created_on", "date", False),
            ),
            ("client_id",),
            date="created_on",
        ),
        Table(
            "sales",
            (
                Column("order_id", "text"),
                Column("line_no", "integer"),
                Column("order_date", "date"),
                Column("client_id", "text"),
                Column("product", "text", False),
                Column("quantity", "integer", non_negative=True),
                Column("unit_price", "money", non_negative=True),
                Column("amount", "money", non_negative=True),
                Column("currency", "text", False),
            ),
            ("order_id", "line_no"),
            amount="amount",
            date="order_date",
        ),
        Table(
            "payments",
            (
                Column("payment_id", "text"),
                Column("payment_date", "date"),
                Column("client_id", "text"),
                Column("invoice_ref", "text", False),
                Column("method", "text", False),
                Column("amount", "money", non_negative=True),
            ),
            ("payment_id",),
            amount="amount",
            date="payment_date",
        ),
        Table(
            "operating_costs",
            (
                Column("cost_id", "text"),
                Column("cost_date", "date"),
                Column("category", "text"),
                Column("vendor", "text", False),
                Column("amount", "money", non_negative=True),
            ),
            ("cost_id",),
            amount="amount",
            date="cost_date",
        ),
        Table(
            "tax",
            (
                Column("period", "date"),
                Column("tax_type", "text"),
                Column("amount", "money", non_negative=True),
                Column("due_date", "date", False),
            ),
            ("period", "tax_type"),
            amount="amount",
            date="period",
        ),
        Table(
            "interactions",
            (
                Column("interaction_id", "text"),
                Column("occurred_at", "timestamp"),
                Column("client_id", "text"),
                Column("channel", "text", False),
                Column("outcome", "text", False),
            ),
            ("interaction_id",),
            date="occurred_at",
        ),
    )
}

# what each core row keeps of where it came from; its batch's facts are in meta.batches (core.<table>_lineage)
METADATA_COLUMNS = ("_batch_id", "_source_row", "_row_hash", "_sheet")
