"""Set-wise validation and typing of raw text rows, as one SQL statement per batch.

Raw rows arrive as text columns (PostgreSQL parsed the CSV, or a reader wrote text). Each mapped column
is normalised once, tested with a regular expression or pg_input_is_valid (which never raises), cast, and
every failure becomes a readable reason: "row 17: amount '12,3O' is not a number".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from psycopg2 import sql

from pipeline.config import ReadOptions
from pipeline.model import Column, Table

_NUMBER = r"^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$"
_INTEGER = r"^[-+]?[0-9]{1,18}$"
_STRFTIME = {"%d": r"([0-9]{1,2})", "%m": r"([0-9]{1,2})", "%Y": r"([0-9]{4})", "%H": r"[0-9]{1,2}",
             "%M": r"[0-9]{2}", "%S": r"[0-9]{2}"}


def date_pattern(options: ReadOptions) -> tuple[str, str] | None:
    """A (regex, replacement) that rewrites the source's date layout to ISO, or None for ISO only."""
    if options.date_format:
        fmt = options.date_format
        regex, order, i = "^", [], 0
        while i < len(fmt):
            token = fmt[i:i + 2]
            if token in _STRFTIME:
                regex += _STRFTIME[token]
                if token in ("%d", "%m", "%Y"):
                    order.append(token)
                i += 2
            else:
                regex += re.escape(fmt[i])
                i += 1
        if sorted(order) != ["%Y", "%d", "%m"]:
            raise ValueError(f"date_format {fmt!r} needs %d, %m and %Y")
        groups = {token: f"\\{n + 1}" for n, token in enumerate(order)}
        return regex + r"(\s.*)?$", f"{groups['%Y']}-{groups['%m']}-{groups['%d']}"
    if options.dayfirst:
        return r"^([0-9]{1,2})[/.-]([0-9]{1,2})[/.-]([0-9]{4})$", r"\3-\2-\1"
    return r"^([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})$", r"\3-\1-\2"


def identifiers(names) -> sql.Composed:
    """Quoted identifiers, comma-separated: a column list."""
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


@dataclass(frozen=True)
class Mapped:
    column: Column
    raw: str  # raw text column holding it
    header: str  # the header as the source spells it


def _normalised(m: Mapped, options: ReadOptions) -> sql.Composable:
    """The raw text rewritten to the canonical text of its type (still text: tested, then cast).

    Built inline rather than as SQL functions so the planner never pays a function call per value.
    """
    raw = sql.SQL("nullif(btrim(r.{}), '')").format(sql.Identifier(m.raw))
    if m.column.type == "money":
        # '£1.234,50' (decimal ',', thousands '.') -> '1234.50'; '(12.00)' and '12.00-' -> '-12.00'
        expr = sql.SQL("regexp_replace({}, '[£$€¥[:space:]]', '', 'g')").format(raw)
        if options.thousands:
            expr = sql.SQL("replace({}, {}, '')").format(expr, sql.Literal(options.thousands))
        if options.decimal != ".":
            expr = sql.SQL("replace({}, {}, '.')").format(expr, sql.Literal(options.decimal))
        expr = sql.SQL(r"regexp_replace(regexp_replace({}, '^\((.*)\)$', '-\1'), '^([^-].*)-$', '-\1')").format(expr)
        # most values already are canonical ('1234.50'): one test, and the rewriting only for the rest
        plain = r"^-?[0-9]+(\.[0-9]+)?$" if options.decimal == "." else r"^-?[0-9]+$"
        return sql.SQL("case when {} ~ {} then {} else {} end").format(raw, sql.Literal(plain), raw, expr)
    if m.column.type == "date":
        pattern = date_pattern(options)
        expr = raw
        if pattern:
            expr = sql.SQL("regexp_replace({}, {}, {})").format(expr, sql.Literal(pattern[0]), sql.Literal(pattern[1]))
        # ISO with a time part, as Excel dates arrive: keep the date.
        expr = sql.SQL("regexp_replace({}, {}, {})").format(
            expr, sql.Literal(r"^([0-9]{4}-[0-9]{1,2}-[0-9]{1,2})[T ][0-9:.]+$"), sql.Literal(r"\1"))
        return sql.SQL("case when {} ~ {} then {} else {} end").format(
            raw, sql.Literal(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"), raw, expr)
    if m.column.type == "integer" and options.thousands:
        return sql.SQL("replace({}, {}, '')").format(raw, sql.Literal(options.thousands))
    return raw


_ISO_DATE = r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}$"
_TIMESTAMP = (r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}([T ][0-9]{1,2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?"
              r"\s*(Z|[+-][0-9]{2}(:?[0-9]{2})?)?$")


def _valid(m: Mapped, n: sql.Composable) -> sql.Composable:
    """Never raises: a regular expression first (nothing left to DateStyle guessing), then pg_input_is_valid."""
    kind = m.column.type
    if kind == "money":
        return sql.SQL("{} ~ {}").format(n, sql.Literal(_NUMBER))
    if kind == "integer":  # at most 18 digits always fits a bigint
        return sql.SQL("{} ~ {}").format(n, sql.Literal(_INTEGER))
    if kind == "date":
        return sql.SQL("({} ~ {} and pg_input_is_valid({}, 'date'))").format(n, sql.Literal(_ISO_DATE), n)
    if kind == "timestamp":
        return sql.SQL("({} ~ {} and pg_input_is_valid({}, 'timestamptz'))").format(n, sql.Literal(_TIMESTAMP), n)
    return sql.SQL("true")


# each column type as PostgreSQL holds it
SQL_TYPE = {"money": "numeric", "integer": "bigint", "date": "date", "timestamp": "timestamptz", "text": "text"}
_WHAT = {"money": "is not a number", "integer": "is not a whole number", "date": "is not a valid date",
         "timestamp": "is not a valid timestamp", "text": ""}


def first_cell(width: int) -> sql.Composable:
    """The row's first non-empty cell (trimmed), null for a blank row."""
    return sql.SQL("coalesce({})").format(sql.SQL(", ").join(
        sql.SQL("nullif(btrim(r.{}), '')").format(sql.Identifier(f"c{i}")) for i in range(width)))


def typed_select(table: Table, mapped: list[Mapped], options: ReadOptions, width: int,
                 where: sql.Composable | None = None) -> sql.Composed:
    """SELECT over `raw r` giving _row, each canonical column typed (null when invalid), _reasons, _skip.

    Each value is normalised once and tested once: the two LATERAL steps are fenced with OFFSET 0 so the
    planner cannot fold them back into every place that reads them. Reasons are only spelled out for
    rows that have one.
    """
    norms, checks, typed, reasons, fine = [], [], [], [], []
    for i, m in enumerate(mapped):
        n, v = sql.SQL(f"n.n{i}"), sql.SQL(f"v.v{i}")
        norms.append(sql.SQL("{} as {}").format(_normalised(m, options), sql.Identifier(f"n{i}")))
        checks.append(sql.SQL("{} as {}").format(_valid(m, n), sql.Identifier(f"v{i}")))
        cast = sql.SQL(SQL_TYPE[m.column.type])
        typed.append(sql.SQL("case when {} then {}::{} end as {}").format(v, n, cast, sql.Identifier(m.column.name)))
        label = sql.Literal(m.column.name)
        raw_value = sql.SQL("r.{}").format(sql.Identifier(m.raw))
        if m.column.required:
            fine.append(sql.SQL("{} is not null").format(n))
            reasons.append(sql.SQL("case when {} is null then format('%s is empty', {}) end").format(n, label))
        if m.column.type != "text":
            fine.append(sql.SQL("({} is null or {})").format(n, v))
            reasons.append(sql.SQL("case when {} is not null and not {} then format('%s %L {}', {}, {}) end").format(
                n, v, sql.SQL(_WHAT[m.column.type]), label, raw_value))
        if m.column.non_negative:
            fine.append(sql.SQL("not coalesce(left({}, 1) = '-', false)").format(n))
            reasons.append(sql.SQL("case when {} and {}::{} < 0 then format('%s %L is negative', {}, {}) end").format(
                v, n, cast, label, raw_value))
    # the row's first non-empty cell, once: none means a blank row; a match of the footer pattern ("Total") a
    # footer. Both are skipped and counted, never loaded.
    norms.append(sql.SQL("{} as _first").format(first_cell(width)))
    skip = sql.SQL("n._first is null")
    if options.skip_rows_matching:
        skip = sql.SQL("(n._first is null or n._first ~ {})").format(sql.Literal(options.skip_rows_matching))
    why = (sql.SQL("case when {} then '{{}}'::text[] else array_remove(array[{}]::text[], null) end").format(
        sql.SQL(" and ").join(fine), sql.SQL(", ").join(reasons)) if reasons else sql.SQL("'{}'::text[]"))
    return sql.SQL(
        "select r._row, {typed}, {why} as _reasons, {skip} as _skip "
        "from raw r cross join lateral (select {norms} offset 0) n cross join lateral (select {checks} offset 0) v "
        "where {where}"
    ).format(typed=sql.SQL(", ").join(typed), why=why, skip=skip, where=where or sql.SQL("true"),
             norms=sql.SQL(", ").join(norms), checks=sql.SQL(", ").join(checks))


# -- the fast lane ------------------------------------------------------------------------------------------
_TIMESTAMP_SHAPE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2})?(Z|[+-][0-9]{2}:[0-9]{2})?$"
_PG_TYPE = {"integer": "int8", "money": "numeric", "date": "date"}


class FastLane(NamedTuple):
    guard: sql.Composable  # over `raw r`: true for a row already in canonical form
    typed: sql.Composable  # its typed columns, named as the table's
    row_hash: sql.Composable  # its content hash, as row_hash gives it
    data_row: sql.Composable  # over `raw r`: the row is not a footer (part of the guard)


def _canonical(m: Mapped, raw: sql.Composable) -> sql.Composable:
    """The value is exactly its type's own spelling of itself: it casts, and casting it back gives the same
    text. pg_input_is_valid comes first (a CASE keeps the order), so neither this test nor the cast of an
    admitted value ever raises; '007', '+5', ' 5', '1_000', '0x1F', '5.', '.5', '2024-1-5' and
    '2025-02-30' all fail, and take the careful lane.

    A few canonical spellings the careful lane refuses are refused here too, so both lanes accept exactly
    the same rows: integers of more than 18 digits, years of more than four, NaN and Infinity, and a
    negative value in a column that must not be negative (the careful lane says why).
    """
    kind = m.column.type
    if kind == "timestamp":  # its text depends on the session's time zone: valid, and of one shape
        return sql.SQL("case when pg_input_is_valid({}, 'timestamptz') then {} ~ {} end").format(
            raw, raw, sql.Literal(_TIMESTAMP_SHAPE))
    pg_type = sql.SQL(_PG_TYPE[kind])
    checks = [sql.SQL("{}::{}::text = {}").format(raw, pg_type, raw)]
    if kind == "integer":
        checks.append(sql.SQL("length({}) <= 18").format(raw))
    elif kind == "date":
        checks.append(sql.SQL("length({}) = 10").format(raw))
    else:
        checks.append(sql.SQL("right({}, 1) collate \"C\" between '0' and '9'").format(raw))
    if m.column.non_negative:
        checks.append(sql.SQL("left({}, 1) <> '-'").format(raw))
    return sql.SQL("case when pg_input_is_valid({}, {}) then {} end").format(
        raw, sql.Literal(_PG_TYPE[kind]), sql.SQL(" and ").join(checks))


def canonical_value(m: Mapped, raw: sql.Composable) -> sql.Composable:
    """The typed value of raw text already in its type's own spelling (see _canonical), else null; never
    raises. Text is trimmed, as typing trims it."""
    if m.column.type == "text":
        return sql.SQL("nullif(btrim({}), '')").format(raw)
    return sql.SQL("case when {} then {}::{} end").format(_canonical(m, raw), raw, sql.SQL(SQL_TYPE[m.column.type]))


def fast_lane(table: Table, mapped: list[Mapped], options: ReadOptions, width: int) -> FastLane | None:
    """The fast lane for rows already in canonical form, or None when the layout is not canonical.

    The guard admits a row only when every value is canonical for its type (see _canonical); the row is
    then simply cast, and types and hashes as the careful lane would make it. A guard that is null or false
    sends the row to the careful lane.
    """
    if options.decimal != "." or options.thousands or options.date_format or options.dayfirst:
        return None
    conditions, typed = [], []
    for m in mapped:
        raw = sql.SQL("r.{}").format(sql.Identifier(m.raw))
        name = sql.Identifier(m.column.name)
        if m.column.type == "text":
            typed.append(sql.SQL("nullif(btrim({}), '') as {}").format(raw, name))
            if m.column.required:
                conditions.append(sql.SQL("btrim({}) <> ''").format(raw))
            continue
        shape = _canonical(m, raw)
        conditions.append(shape if m.column.required else
                          sql.SQL("(coalesce({}, '') = '' or {})").format(raw, shape))
        typed.append(sql.SQL("nullif({}, '')::{} as {}").format(raw, sql.SQL(SQL_TYPE[m.column.type]), name))
    data_row = sql.SQL("true")
    if options.skip_rows_matching:  # a footer is never a fast row, whatever its values look like
        data_row = sql.SQL("{} !~ {}").format(first_cell(width), sql.Literal(options.skip_rows_matching))
        conditions.append(data_row)
    guard = sql.SQL(" and ").join(conditions) if conditions else sql.SQL("true")
    return FastLane(guard, sql.SQL(", ").join(typed), _fast_row_hash(table, mapped), data_row)


def _md5_row(table: Table, value) -> sql.Composable:
    """md5 of the row's text: `value(column)` for each of the table's columns, in the table's order."""
    return sql.SQL("md5(row({})::text)").format(sql.SQL(", ").join(value(c) for c in table.column_names))


def row_hash(table: Table, names: list[str]) -> sql.Composable:
    """The content hash of a typed row `s`: money by value, not by how many decimals the source wrote
    (10.5 and 10.50 are one amount). Columns the source does not map hash as null."""
    def value(c: str) -> sql.Composable:
        if c not in names:
            return sql.SQL("null")
        ref = sql.SQL("s.{}").format(sql.Identifier(c))
        return sql.SQL("trim_scale({})").format(ref) if table.column(c).type == "money" else ref

    return _md5_row(table, value)


def _fast_row_hash(table: Table, mapped: list[Mapped]) -> sql.Composable:
    """row_hash of a row the fast lane admitted, from its raw text (over `raw r`), without casting it.

    The guard made every integer, date and money value its type's own spelling, so that text is what the
    typed value prints as; money drops its trailing zeros as trim_scale does ('10.50' -> '10.5', '3.00'
    -> '3'). A timestamp prints in the session's time zone, so it is cast.
    """
    by_name = {m.column.name: m for m in mapped}

    def value(c: str) -> sql.Composable:
        m = by_name.get(c)
        if m is None:
            return sql.SQL("null")
        raw = sql.SQL("r.{}").format(sql.Identifier(m.raw))
        kind = m.column.type
        if kind == "text":
            return sql.SQL("nullif(btrim({}), '')").format(raw)
        if kind == "timestamp":
            return sql.SQL("nullif({}, '')::timestamptz").format(raw)
        if kind == "money":
            return sql.SQL("case when strpos({r}, '.') > 0 then rtrim(rtrim({r}, '0'), '.') else nullif({r}, '') end"
                           ).format(r=raw)
        return sql.SQL("nullif({}, '')").format(raw)

    return _md5_row(table, value)
