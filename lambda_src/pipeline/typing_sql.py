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
from pipeline.model import KEY_SEPARATOR, ROW_KEY, Column, Table
from pipeline.reading import DAY_MONTH_YEAR, Reading

_INTEGER = r"^[-+]?[0-9]{1,18}$"
# a row that names no currency has its batch's (the source's, else the company's): set once per batch
CURRENCY_DEFAULT = "nullif(current_setting('pipeline.currency', true), '')"
# white space a value is trimmed of: what Python's str.strip() trims (a no-break space too), in every lane
WHITE_SPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
_YEAR_FIRST = r"^([0-9]{4})[/.]([0-9]{1,2})[/.]([0-9]{1,2})"
_FORMAT_FIELDS = {"%d": r"([0-9]{1,2})", "%m": r"([0-9]{1,2})", "%Y": r"([0-9]{4})", "%y": r"([0-9]{2})",
                  "%H": r"([0-9]{1,2})", "%M": r"([0-9]{2})", "%S": r"([0-9]{2})"}
_CLOCK = r"\s+([0-9]{1,2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)"  # a time after a date: 0:00, 14:05:30
# currency signs, and three capitals (a currency code such as USD)
_CURRENCY = r"[$£€¥₹₩₪₽¢]|(^|[^A-Za-z])[A-Z]{3}([^A-Za-z]|$)"


def format_rewrite(fmt: str, kind: str = "date") -> tuple[str, str]:
    """The (regex, replacement) that rewrites a date written as read.date_format says to ISO text (a two-digit
    year stays two digits: the pivot comes after, see TWO_DIGIT_YEAR)."""
    regex, fields, i = "^", [], 0
    while i < len(fmt):
        token = fmt[i:i + 2]
        if token in _FORMAT_FIELDS:
            regex += _FORMAT_FIELDS[token]
            fields.append(token)
            i += 2
        else:
            regex += re.escape(fmt[i])
            i += 1
    group = {token: f"\\{n + 1}" for n, token in enumerate(fields)}
    year = group.get("%Y") or group["%y"]
    iso = f"{year}-{group['%m']}-{group['%d']}"
    if kind == "timestamp" and "%H" in group:
        iso += f" {group['%H']}:{group.get('%M', '00')}" + (f":{group['%S']}" if "%S" in group else "")
    return regex + (r"(\s.*)?$" if kind == "date" else "$"), iso


# a two-digit year after format_rewrite: 00-68 are 20xx, 69-99 19xx (as Python's strptime reads %y)
TWO_DIGIT_YEAR = ((r"^([0-6][0-9])-", r"20\1-"), (r"^([7-9][0-9])-", r"19\1-"))


def _date_rewrite(reading: Reading, kind: str) -> list[tuple[str, str]]:
    """(regex, replacement) pairs that rewrite the source's spellings of a date, or of a date and time, to
    ISO text: 24/02/2003 -> 2003-02-24 (a date column drops a time after it; a timestamp column keeps it)."""
    options = reading.options
    if options.date_format:
        return [format_rewrite(options.date_format, kind)]
    # a date column drops a time after the date; a timestamp column keeps it ('2003-02-24 14:05')
    tail, keep = (r"(\s.*)?$", "") if kind == "date" else (f"({_CLOCK})?$", r" \5")
    rewrites = []
    if reading.dayfirst is not None:
        rewrites.append((DAY_MONTH_YEAR + tail, (r"\3-\2-\1" if reading.dayfirst else r"\3-\1-\2") + keep))
    rewrites.append((_YEAR_FIRST + tail, r"\1-\2-\3" + keep))
    return rewrites


def trimmed(value: sql.Composable) -> sql.Composable:
    """The text without the white space around it."""
    return sql.SQL("btrim({}, {})").format(value, sql.Literal(WHITE_SPACE))


def identifiers(names) -> sql.Composed:
    """Quoted identifiers, comma-separated: a column list."""
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


@dataclass(frozen=True)
class Mapped:
    column: Column  # as this source reads it: a key column is required, a signed one may be refused below 0
    raw: str  # raw text column holding it
    header: str  # the header as the source spells it
    negate: bool = False  # the source writes this value with the opposite sign (amounts: inverted)


def _escaped(text: str) -> str:
    """`text` as a literal inside a PostgreSQL regular expression."""
    return "".join(c if c.isalnum() or c == " " else "\\" + c for c in text)


def currency_marks(code: str | None) -> list[str]:
    """How an amount may name the company's currency: its code and its signs (GBP, £)."""
    if not code:
        return []
    from pipeline.money import SYMBOLS, currency_symbol

    marks = {code, currency_symbol(code).strip(), SYMBOLS.get(code, code).strip()}
    return sorted(marks, key=len, reverse=True)


def _separators(options: ReadOptions) -> tuple[str, str | None]:
    """The decimal separator and the class of thousands separators, as PostgreSQL regular expressions."""
    point = _escaped(options.decimal)
    if options.thousands is None:
        return point, None
    return point, "[ \u00a0\u202f]" if options.thousands == " " else _escaped(options.thousands)


def _number_shape(options: ReadOptions, whole: bool) -> str:
    """A number as this source writes it, signed with a leading '-' (see _normalised): digits with at most one
    decimal separator, grouped in thousands by the thousands separator or not grouped at all."""
    point, group = _separators(options)
    fraction = "" if whole else f"({point}[0-9]*)?"
    shapes = [f"[0-9]+{fraction}"] + ([] if whole else [f"{point}[0-9]+"])
    if group:
        shapes.append(f"[0-9]{{1,3}}({group}[0-9]{{3}})+{fraction}")
    return f"^-?({'|'.join(shapes)})$"


def _canonical_number(n: sql.Composable, options: ReadOptions) -> sql.Composable:
    """A number written as this source writes them (it passed _number_shape) in its canonical spelling:
    thousands separators dropped, a decimal comma made a point."""
    drop = "" if options.thousands is None else (" \u00a0\u202f" if options.thousands == " " else options.thousands)
    if options.decimal == "." and not drop:
        return n
    return sql.SQL("translate({}, {}, '.')").format(n, sql.Literal(options.decimal + drop))


def _normalised(m: Mapped, reading: Reading) -> sql.Composable:
    """The raw text as its type's value is read from it (still text: tested, then cast). A number keeps the
    source's separators (they are tested, then dropped, see _canonical_number), without the company's
    currency and with its sign in front; a date is rewritten to ISO.

    Built inline rather than as SQL functions so the planner never pays a function call per value.
    """
    options = reading.options
    raw = sql.SQL("nullif({}, '')").format(trimmed(sql.SQL("r.{}").format(sql.Identifier(m.raw))))
    if m.column.type in ("money", "number", "integer"):
        expr = raw
        marks = "|".join(_escaped(mark) for mark in currency_marks(reading.currency))
        if marks and m.column.type == "money":  # '£12.00', '-£12', '12,00 GBP', '(£12.00)'
            expr = sql.SQL(r"regexp_replace(regexp_replace({}, {}, '\1'), {}, '\2')").format(
                expr, sql.Literal(rf"^([-+(]?)\s*({marks})\s*"), sql.Literal(rf"\s*({marks})\s*([-)]?)$"))
        # '(12.00)' and '12.00-' are negative; '+12' is 12
        expr = sql.SQL(r"regexp_replace(regexp_replace(regexp_replace({}, '^\((.*)\)$', '-\1'), '^([^-].*)-$', "
                       r"'-\1'), '^\+', '')").format(expr)
        # most values already are plain ('1234.50', '12'): one test, and the rewriting only for the rest
        plain = r"^-?[0-9]+$" if options.decimal != "." or m.column.type == "integer" else r"^-?[0-9]+(\.[0-9]+)?$"
        return sql.SQL("case when {} ~ {} then {} else {} end").format(raw, sql.Literal(plain), raw, expr)
    if m.column.type in ("date", "timestamp"):
        expr = raw
        for regex, replacement in _date_rewrite(reading, m.column.type):
            expr = sql.SQL("regexp_replace({}, {}, {})").format(expr, sql.Literal(regex), sql.Literal(replacement))
        if options.date_format and "%y" in options.date_format:
            for regex, replacement in TWO_DIGIT_YEAR:
                expr = sql.SQL("regexp_replace({}, {}, {})").format(expr, sql.Literal(regex), sql.Literal(replacement))
        if m.column.type == "timestamp":
            return expr
        # ISO with a time part, as Excel dates arrive: keep the date.
        expr = sql.SQL("regexp_replace({}, {}, {})").format(
            expr, sql.Literal(r"^([0-9]{4}-[0-9]{1,2}-[0-9]{1,2})[T ][0-9:.]+$"), sql.Literal(r"\1"))
        return sql.SQL("case when {} ~ {} then {} else {} end").format(
            raw, sql.Literal(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"), raw, expr)
    return raw


_ISO_DATE = r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}$"
_TIMESTAMP = (r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}([T ][0-9]{1,2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?"
              r"\s*(Z|[+-][0-9]{2}(:?[0-9]{2})?)?$")


def _valid(m: Mapped, n: sql.Composable, options: ReadOptions) -> sql.Composable:
    """Never raises: a regular expression first (nothing left to DateStyle guessing), then pg_input_is_valid."""
    kind = m.column.type
    if kind in ("money", "number"):
        return sql.SQL("{} ~ {}").format(n, sql.Literal(_number_shape(options, whole=False)))
    if kind == "integer":  # at most 18 digits always fits a bigint
        return sql.SQL("({} ~ {} and {} ~ {})").format(n, sql.Literal(_number_shape(options, whole=True)),
                                                      _canonical_number(n, options), sql.Literal(_INTEGER))
    if kind == "date":
        return sql.SQL("({} ~ {} and pg_input_is_valid({}, 'date'))").format(n, sql.Literal(_ISO_DATE), n)
    if kind == "timestamp":
        return sql.SQL("({} ~ {} and pg_input_is_valid({}, 'timestamptz'))").format(n, sql.Literal(_TIMESTAMP), n)
    return sql.SQL("true")


_OFFSET = r"[0-9]:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?\s*(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"


def timestamptz(text: sql.Composable) -> sql.Composable:
    """A valid timestamp's text as an instant. One with an offset is that instant; one without is a wall time in
    the session's zone (the database's: the company's), and in the hour the autumn change repeats it is the first
    of the two instants, as a schedule fires (PostgreSQL alone takes the second); a time the spring change skips
    is read an hour on, as PostgreSQL reads it."""
    return sql.SQL("case when {t} ~ {offset} then {t}::timestamptz else least({t}::timestamptz, "
                   "({t}::timestamp - interval '1 hour')::timestamptz + interval '1 hour') end").format(
        t=text, offset=sql.Literal(_OFFSET))


def _value(m: Mapped, n: sql.Composable, options: ReadOptions) -> sql.Composable:
    """The typed value of text that passed _valid."""
    kind = m.column.type
    if kind == "timestamp":
        return timestamptz(n)
    text = _canonical_number(n, options) if kind in ("money", "number", "integer") else n
    if m.negate:
        return sql.SQL("(-({}::{}))").format(text, sql.SQL(SQL_TYPE[kind]))
    return sql.SQL("{}::{}").format(text, sql.SQL(SQL_TYPE[kind]))


# each column type as PostgreSQL holds it
SQL_TYPE = {"money": "numeric", "number": "numeric", "integer": "bigint", "date": "date", "timestamp": "timestamptz",
            "text": "text"}
_WHAT = {"money": "is not a number", "number": "is not a number", "integer": "is not a whole number",
         "date": "is not a valid date",
         "timestamp": "is not a valid timestamp", "text": ""}


def _why_not(m: Mapped, reading: Reading, label: sql.Composable, raw: sql.Composable,
             n: sql.Composable) -> sql.Composable:
    """Why a value of the column is refused (it is not null and did not pass _valid), in the user's words:
    `raw` as the source has it, `n` as _normalised read it."""
    options = reading.options
    what = sql.SQL("format('%s %L {}', {}, {})").format(sql.SQL(_WHAT[m.column.type]), label, raw)
    hints = []
    if m.column.type in ("money", "number", "integer"):
        if reading.currency and m.column.type == "money":
            hints.append((sql.SQL("{} ~ {}").format(n, sql.Literal(_CURRENCY)),
                          sql.SQL("format('%s %L is not in {}, the company''s currency', {}, {})").format(
                              sql.SQL(reading.currency), label, raw)))
        thousands = f"thousands '{options.thousands}'" if options.thousands else "no thousands separator"
        hints.append((sql.SQL("{} ~ {}").format(raw, sql.Literal(r"^[-+(]?[0-9]+([.,' ][0-9]+)+[)-]?$")),
                      sql.SQL("{} || {}").format(what, sql.Literal(
                          f" as this source writes numbers (decimal '{options.decimal}', {thousands}: "
                          "read.decimal, read.thousands)"))))
    elif m.column.type in ("date", "timestamp"):
        hints.append((sql.SQL("{} ~ {}").format(raw, sql.Literal(r"^\s*[0-9]{1,2}[/.-][0-9]{1,2}[/.-][0-9]{2}(\s|$)")),
                      sql.SQL("{} || {}").format(what, sql.Literal(
                          " (a two-digit year: set read.date_format, e.g. %d/%m/%y)"))))
    if not hints:
        return what
    return sql.SQL("case {} else {} end").format(
        sql.SQL(" ").join(sql.SQL("when {} then {}").format(test, words) for test, words in hints), what)


def _dated(m: Mapped, n: sql.Composable, options: ReadOptions) -> sql.Composable:
    """The day of a valid date or timestamp `n` (a timestamp's in the session's time zone: the company's)."""
    if m.column.type == "timestamp":
        return sql.SQL("({})::date").format(timestamptz(n))
    return sql.SQL("{}::date").format(n)


def first_cell(width: int) -> sql.Composable:
    """The row's first non-empty cell (trimmed), null for a blank row."""
    return sql.SQL("coalesce({})").format(sql.SQL(", ").join(
        sql.SQL("nullif({}, '')").format(trimmed(sql.SQL("r.{}").format(sql.Identifier(f"c{i}"))))
        for i in range(width)))


def typed_select(table: Table, mapped: list[Mapped], reading: Reading | ReadOptions, width: int,
                 where: sql.Composable | None = None, attributes: list[Mapped] | None = None) -> sql.Composed:
    """SELECT over `raw r` giving _row, each canonical column typed (null when invalid), _reasons, _skip, and
    with `attributes` (a source's further columns, each typed as it declares) `attributes` as a JSON object.

    Each value is normalised once and tested once: the two LATERAL steps are fenced with OFFSET 0 so the
    planner cannot fold them back into every place that reads them. Reasons are only spelled out for
    rows that have one.
    """
    if isinstance(reading, ReadOptions):
        reading = Reading.of(reading)
    options = reading.options
    earliest, latest = sql.Literal(options.earliest_date), sql.Literal(options.latest_date)
    norms, checks, typed, reasons, fine, kept = [], [], [], [], [], []
    for i, m in enumerate([*mapped, *(attributes or ())]):
        n, v = sql.SQL(f"n.n{i}"), sql.SQL(f"v.v{i}")
        norms.append(sql.SQL("{} as {}").format(_normalised(m, reading), sql.Identifier(f"n{i}")))
        checks.append(sql.SQL("{} as {}").format(_valid(m, n, options), sql.Identifier(f"v{i}")))
        value = _value(m, n, options)
        if i < len(mapped):
            typed.append(sql.SQL("case when {} then {} end as {}").format(v, value, sql.Identifier(m.column.name)))
        else:
            kept += [sql.Literal(m.column.name), sql.SQL("case when {} then {} end").format(v, value)]
        label = sql.Literal(m.column.name)
        raw_value = sql.SQL("r.{}").format(sql.Identifier(m.raw))
        if m.column.required:
            fine.append(sql.SQL("{} is not null").format(n))
            reasons.append(sql.SQL("case when {} is null then format('%s is empty', {}) end").format(n, label))
        if m.column.type != "text":
            fine.append(sql.SQL("({} is null or {})").format(n, v))
            reasons.append(sql.SQL("case when {} is not null and not {} then {} end").format(
                n, v, _why_not(m, reading, label, raw_value, n)))
        if m.column.non_negative:
            fine.append(sql.SQL("not coalesce(left({}, 1) = '-', false)").format(n))
            reasons.append(sql.SQL("case when {} then case when {} < 0 then format('%s %L is negative', {}, {}) end "
                                   "end").format(v, value, label, raw_value))
        if m.column.type in ("date", "timestamp"):
            day = _dated(m, n, options)
            fine.append(sql.SQL("case when {} then {} between {} and {} else true end").format(
                v, day, earliest, latest))
            reasons.append(sql.SQL(
                "case when {} then case when {} not between {} and {} then format('%s %L is outside this source''s "
                "dates, {} to {} (read.earliest_date, read.latest_date)', {}, {}) end end").format(
                v, day, earliest, latest, sql.SQL(str(options.earliest_date)), sql.SQL(str(options.latest_date)),
                label, raw_value))
    # the row's first non-empty cell, once: none means a blank row; a match of the footer pattern ("Total") a
    # footer. Both are skipped and counted, never loaded.
    norms.append(sql.SQL("{} as _first").format(first_cell(width)))
    skip = sql.SQL("n._first is null")
    if options.skip_rows_matching:
        skip = sql.SQL("(n._first is null or n._first ~ {})").format(sql.Literal(options.skip_rows_matching))
    why = (sql.SQL("case when {} then '{{}}'::text[] else array_remove(array[{}]::text[], null) end").format(
        sql.SQL(" and ").join(fine), sql.SQL(", ").join(reasons)) if reasons else sql.SQL("'{}'::text[]"))
    if attributes is not None:  # {} when the file has none of them
        typed.append(sql.SQL("jsonb_build_object({}) as attributes").format(sql.SQL(", ").join(kept)))
    return sql.SQL(
        "select r._row, {typed}, {why} as _reasons, {skip} as _skip "
        "from raw r cross join lateral (select {norms} offset 0) n cross join lateral (select {checks} offset 0) v "
        "where {where}"
    ).format(typed=sql.SQL(", ").join(typed), why=why, skip=skip, where=where or sql.SQL("true"),
             norms=sql.SQL(", ").join(norms), checks=sql.SQL(", ").join(checks))


def key_text(names: list[str], sheet: str | None, delivery: str = "") -> sql.Composable:
    """A typed row `s`'s _key: its key columns' values as text (the types' own spellings: ISO dates, plain
    integers), joined by KEY_SEPARATOR; a snapshot keyed by [row] is known by its place: the delivery (its
    object key), sheet and row number, so February's row 5 is not January's."""
    if list(names) == [ROW_KEY]:
        return sql.SQL("concat_ws({}, {}, {}, s._row::text)").format(
            sql.Literal(KEY_SEPARATOR), sql.Literal(delivery), sql.Literal(sheet or ""))
    return sql.SQL("concat_ws({}, {})").format(sql.Literal(KEY_SEPARATOR), sql.SQL(", ").join(
        sql.SQL("s.{}::text").format(sql.Identifier(n)) for n in names))


# -- the fast lane ------------------------------------------------------------------------------------------
_TIMESTAMP_SHAPE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2})?(Z|[+-][0-9]{2}:[0-9]{2})?$"
_PG_TYPE = {"integer": "int8", "money": "numeric", "number": "numeric", "date": "date"}


class FastLane(NamedTuple):
    guard: sql.Composable  # over `raw r`: true for a row already in canonical form
    typed: sql.Composable  # its typed columns, named as the table's
    row_hash: sql.Composable  # its content hash, as row_hash gives it


def _canonical(m: Mapped, raw: sql.Composable, options: ReadOptions) -> sql.Composable:
    """The value is exactly its type's own spelling of itself: it casts, and casting it back gives the same
    text. pg_input_is_valid comes first (a CASE keeps the order), so neither this test nor the cast of an
    admitted value ever raises; '007', '+5', ' 5', '1_000', '0x1F', '5.', '.5', '2024-1-5' and
    '2025-02-30' all fail, and take the careful lane.

    A few canonical spellings the careful lane refuses are refused here too, so both lanes accept exactly
    the same rows: integers of more than 18 digits, years of more than four, NaN and Infinity, and a
    negative value in a column that must not be negative (the careful lane says why).
    """
    kind = m.column.type
    earliest, latest = sql.Literal(options.earliest_date), sql.Literal(options.latest_date)
    if kind == "timestamp":  # its text depends on the session's time zone: valid, of one shape, its day in range
        return sql.SQL("case when pg_input_is_valid({}, 'timestamptz') then {} ~ {} and ({})::date "
                       "between {} and {} end").format(raw, raw, sql.Literal(_TIMESTAMP_SHAPE), timestamptz(raw),
                                                       earliest, latest)
    pg_type = sql.SQL(_PG_TYPE[kind])
    checks = [sql.SQL("{}::{}::text = {}").format(raw, pg_type, raw)]
    if kind == "integer":
        checks.append(sql.SQL("length({}) <= 18").format(raw))
    elif kind == "date":  # ISO text compares as the days do
        checks.append(sql.SQL("length({}) = 10 and {} between {} and {}").format(
            raw, raw, sql.Literal(str(options.earliest_date)), sql.Literal(str(options.latest_date))))
    else:
        checks.append(sql.SQL("right({}, 1) collate \"C\" between '0' and '9'").format(raw))
    if m.column.non_negative:
        checks.append(sql.SQL("left({}, 1) <> '-'").format(raw))
    return sql.SQL("case when pg_input_is_valid({}, {}) then {} end").format(
        raw, sql.Literal(_PG_TYPE[kind]), sql.SQL(" and ").join(checks))


def fast_lane(table: Table, mapped: list[Mapped], options: ReadOptions, width: int) -> FastLane | None:
    """The fast lane for rows already in canonical form, or None when the layout is not canonical.

    The guard admits a row only when every value is canonical for its type (see _canonical); the row is
    then simply cast, and types and hashes as the careful lane would make it. A guard that is null or false
    sends the row to the careful lane.
    """
    if options.decimal != "." or options.thousands or options.date_format or options.dayfirst:
        return None
    if any(m.negate for m in mapped):  # values whose sign is turned: the careful lane's
        return None
    conditions, typed = [], []
    for m in mapped:
        raw = sql.SQL("r.{}").format(sql.Identifier(m.raw))
        name = sql.Identifier(m.column.name)
        if m.column.type == "text":
            typed.append(sql.SQL("nullif({}, '') as {}").format(trimmed(raw), name))
            if m.column.required:
                conditions.append(sql.SQL("{} <> ''").format(trimmed(raw)))
            continue
        shape = _canonical(m, raw, options)
        conditions.append(shape if m.column.required else
                          sql.SQL("(coalesce({}, '') = '' or {})").format(raw, shape))
        typed.append(sql.SQL("{} as {}").format(timestamptz(sql.SQL("nullif({}, '')").format(raw)), name)
                     if m.column.type == "timestamp" else
                     sql.SQL("nullif({}, '')::{} as {}").format(raw, sql.SQL(SQL_TYPE[m.column.type]), name))
    if options.skip_rows_matching:  # a footer is never a fast row, whatever its values look like
        conditions.append(sql.SQL("{} !~ {}").format(first_cell(width), sql.Literal(options.skip_rows_matching)))
    guard = sql.SQL(" and ").join(conditions) if conditions else sql.SQL("true")
    return FastLane(guard, sql.SQL(", ").join(typed), _fast_row_hash(table, mapped))


def _md5_row(table: Table, value) -> sql.Composable:
    """md5 of the row's text: `value(column)` for each of the table's columns, in the table's order."""
    return sql.SQL("md5(row({})::text)").format(sql.SQL(", ").join(value(c) for c in table.column_names))


def row_hash(table: Table, names: list[str], attributes: bool = False) -> sql.Composable:
    """The content hash of a typed row `s`: money by value, not by how many decimals the source wrote
    (10.5 and 10.50 are one amount). Columns the source does not map hash as null; its attributes, when it
    keeps some, follow the row's text (a row without them hashes as it always has)."""
    def value(c: str) -> sql.Composable:
        if c not in names:
            return sql.SQL("null")
        ref = sql.SQL("s.{}").format(sql.Identifier(c))
        return sql.SQL("trim_scale({})").format(ref) if table.column(c).type in ("money", "number") else ref

    if attributes:
        return sql.SQL("md5(row({})::text || s.attributes::text)").format(
            sql.SQL(", ").join(value(c) for c in table.column_names))
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
            return sql.SQL("nullif({}, '')").format(trimmed(raw))
        if kind == "timestamp":
            return timestamptz(sql.SQL("nullif({}, '')").format(raw))
        if kind in ("money", "number"):
            return sql.SQL("case when strpos({r}, '.') > 0 then rtrim(rtrim({r}, '0'), '.') else nullif({r}, '') end"
                           ).format(r=raw)
        return sql.SQL("nullif({}, '')").format(raw)

    return _md5_row(table, value)
