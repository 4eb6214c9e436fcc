"""The canonical model every source maps onto: tables, typed columns and natural keys.

Types are few on purpose: text (IDs keep their leading zeros), integer, number (an exact decimal: a quantity
of 1.5 kg), money (exact numeric), date and timestamp. Only what a table cannot exist without is required: its
date and amount, a client's id; a row's identity is its source's key (pipeline.config SourceConfig.key). The
SQL in sql/migrations creates the same tables; tests check that the two agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ColumnType = Literal["text", "integer", "number", "money", "date", "timestamp"]
# what a key may be made of: values whose text is their identity (an amount or a timestamp is not)
KEY_TYPES = ("text", "integer", "date")


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    required: bool = True
    # never below zero, whatever a source's sign convention (a unit price)
    non_negative: bool = False
    # carries the row's sign: refused below zero in a source whose amounts are all positive, negated in one
    # whose amounts are inverted (a refund's amount and quantity)
    signed: bool = False


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
                Column("name", "text", False),
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
                Column("order_id", "text", False),
                Column("line_no", "integer", False),
                Column("order_date", "date"),
                Column("client_id", "text", False),
                Column("product", "text", False),
                Column("quantity", "number", False, signed=True),
                Column("unit_price", "money", False, non_negative=True),
                Column("amount", "money", signed=True),
                Column("currency", "text", False),
            ),
            ("order_id", "line_no"),
            amount="amount",
            date="order_date",
        ),
        Table(
            "payments",
            (
                Column("payment_id", "text", False),
                Column("payment_date", "date"),
                Column("client_id", "text", False),
                Column("invoice_ref", "text", False),
                Column("method", "text", False),
                Column("amount", "money", signed=True),
                Column("currency", "text", False),
            ),
            ("payment_id",),
            amount="amount",
            date="payment_date",
        ),
        Table(
            "operating_costs",
            (
                Column("cost_id", "text", False),
                Column("cost_date", "date"),
                Column("category", "text", False),
                Column("vendor", "text", False),
                Column("amount", "money", signed=True),
                Column("currency", "text", False),
            ),
            ("cost_id",),
            amount="amount",
            date="cost_date",
        ),
        Table(
            "tax",
            (
                Column("period", "date"),
                Column("tax_type", "text", False),
                Column("amount", "money", signed=True),
                Column("due_date", "date", False),
            ),
            ("period", "tax_type"),
            amount="amount",
            date="period",
        ),
        Table(
            "interactions",
            (
                Column("interaction_id", "text", False),
                Column("occurred_at", "timestamp"),
                Column("client_id", "text", False),
                Column("channel", "text", False),
                Column("outcome", "text", False),
            ),
            ("interaction_id",),
            date="occurred_at",
        ),
    )
}

# what each core row keeps of where it came from; its batch's facts are in meta.batches (core.<table>_lineage)
METADATA_COLUMNS = ("_batch_id", "_source_row", "_row_hash", "_sheet", "_key", "_deleted_by", "attributes")
def normalise_header(value: object) -> str:
    """A header name as a column is matched by: white space collapsed, trimmed, case folded."""
    return re.sub(r"\s+", " ", str(value if value is not None else "")).strip().casefold()


# a row's identity: the values of its source's key columns (pipeline.config SourceConfig.key), joined by this
KEY_SEPARATOR = "\x1f"
ROW_KEY = "row"  # a key of a snapshot file by each row's place in it (its sheet and row number)
