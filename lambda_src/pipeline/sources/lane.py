"""The handler's lane: rows whose values are already in their types' own spellings are checked column-wise
with numpy, hashed as typing_sql.row_hash hashes a typed row, and written as COPY text with their row
number and hash, so PostgreSQL's own input functions type them straight into their table. The handler
types one piece of rows while PostgreSQL stores the piece before: two cores at work instead of one.

A row is admitted only when every value is exactly what the SQL fast lane would admit (typing_sql's
_canonical): integers and amounts without a plus sign, padding or leading zero (and no minus where the
column must not be negative), ISO dates that exist, text with nothing to trim. Anything else is handed on,
with its row number, to the SQL lanes: a value to normalise or refuse, a footer, a blank row, a very long
value, a text the row hash would have to escape. So both ways give the same rows, hashes and reasons.

This module holds what the front ends share: pipeline.sources.csv_lane finds the values in a CSV's
records, pipeline.sources.excel_lane in a workbook sheet's columns.
"""

from __future__ import annotations

import functools
import queue
import re
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.config import ReadOptions
from pipeline.model import KEY_SEPARATOR, Table

try:  # CPython's own md5: for inputs of a row's size about twice as fast as OpenSSL's through hashlib
    from _md5 import md5 as _md5
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import md5 as _md5

TEXT_CAP = 256  # longer text values are handed on: a slot per value must stay small
NUMBER_CAP = 40
ROW_DIGITS = 12  # row numbers are written zero-padded: bigint input reads them as they are
PAD = bytes(TEXT_CAP + 1)  # after a buffer of values, so every slot window stays inside it
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)
SPACE, DOT, MINUS, ZERO, NL, CR = 32, 46, 45, 48, 10, 13
# white space as Python's str.strip() and the SQL lanes' trim know it: ASCII, and these UTF-8 sequences
_ASCII_SPACE = np.zeros(256, bool)
_ASCII_SPACE[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True
_WIDE_SPACES = [c.encode() for c in map(chr, range(128, 0x3001)) if c.isspace()]


class LaneAbandoned(RuntimeError):
    """The delivery is not one the lane can read (a record that never ends): the SQL lanes read all of it."""


@dataclass(frozen=True)
class LaneSource:
    """What the lane needs of its source beyond the file's layout: the columns a row is known by (its _key), and
    whether the columns that carry a row's sign may be negative (refunds, outflows)."""

    key: tuple[str, ...]
    negatives: bool = False
    required: tuple[str, ...] = ()  # columns a row needs beyond the table's own and its key (a currency it maps)


@dataclass(frozen=True)
class LaneColumn:
    name: str
    kind: str  # text, integer, number, money or date
    position: int | None  # in the source's header; None when the source does not map it (null)
    required: bool
    non_negative: bool
    days: tuple[int, int] = (0, 99991231)  # a date's first and last day allowed, as YYYYMMDD


@dataclass(frozen=True)
class Lane:
    columns: tuple[LaneColumn, ...]  # the table's, in its order
    footer: re.Pattern | None  # rows whose first non-empty cell it finds are footers, for the SQL lanes
    codec: str  # how the values' bytes decode
    delimiter: int = ord(",")  # of the COPY text
    quote: int = ord('"')
    copied: tuple[str, ...] = ()  # the columns of a COPY row before its key, number and hash; () the loaded ones
    key: tuple[int, ...] = ()  # the key's columns, as indices into `columns`

    @property
    def loaded(self) -> list[LaneColumn]:
        """The mapped columns, in the table's order."""
        return [c for c in self.columns if c.position is not None]

    @property
    def copy_columns(self) -> list[str]:
        return list(self.copied) or [c.name for c in self.loaded]


def lane_columns(table: Table, mapping: dict[str, int], options: ReadOptions,
                 source: LaneSource) -> tuple[LaneColumn, ...] | None:
    """The table's columns and where the source has each, or None where the SQL lanes must type everything:
    spellings to rewrite (a decimal comma, thousands, day-first or formatted dates), or a timestamp column
    (its text depends on the session's time zone). A key column is required: a row is known by it."""
    if options.decimal != "." or options.thousands or options.date_format or options.dayfirst:
        return None
    if any(c.type == "timestamp" for c in table.columns):
        return None
    days = tuple(int(d.strftime("%Y%m%d")) for d in (options.earliest_date, options.latest_date))
    return tuple(LaneColumn(c.name, c.type, mapping.get(c.name),
                            c.required or c.name in source.key or c.name in source.required,
                            c.non_negative or (c.signed and not source.negatives), days) for c in table.columns)


def key_positions(columns: tuple[LaneColumn, ...], source: LaneSource) -> tuple[int, ...]:
    names = [c.name for c in columns]
    return tuple(names.index(k) for k in source.key)


@dataclass
class Values:
    """One column's values over a piece's rows: value i is buf[start[i]:start[i] + length[i]] (0: null).
    buf ends in PAD; counts, when given, are buf's running counts (see running_counts)."""

    buf: np.ndarray
    start: np.ndarray
    length: np.ndarray
    counts: np.ndarray | None = None

    @functools.cached_property
    def end(self) -> np.ndarray:
        return self.start + self.length

    @functools.cached_property
    def held(self) -> np.ndarray:
        """The packed counts of each value's bytes (see running_counts)."""
        return self.counts[self.end] - self.counts[self.start]


@dataclass
class FirstCells:
    """Each row's first non-empty cell, over every column of the source (mapped or not): what tells blank rows
    and footers, which the SQL lanes skip."""

    blank: np.ndarray  # no cell holds anything
    plain: np.ndarray  # there is one, and it starts with no space (a cell of spaces only is empty to SQL)
    cells: Callable[[np.ndarray], list[str]]  # those rows' first cells (plain ones), trimmed as SQL trims them


@dataclass
class Typed:
    copy: bytes  # COPY text of the rows admitted: their values, row number and hash, each row ending in a suffix
    rows: np.ndarray  # the row numbers of the rows admitted
    digests: bytes  # their md5 digests, 16 bytes each
    fingerprint: int  # the sum of their hashes' first 8 bytes, each read as a signed big-endian integer
    considered: int = 0  # the rows the piece held
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # rows set aside (check=False)
    # (row number, its line in the file, the record as it is: empty where the front end keeps the rows)
    rejected: list[tuple[int, int, bytes]] = field(default_factory=list)
    sample: list[dict[str, str]] = field(default_factory=list)  # a few admitted rows: their values and _row_hash


@dataclass
class _Checked:
    """One mapped column of a piece's rows: its values, and how the row hash takes each."""

    column: LaneColumn
    values: Values
    hashed: np.ndarray  # the length the row hash takes (money without its fraction's trailing zeros)
    quoted: np.ndarray  # whether the row's text (and the COPY text) quotes it


# Four counts a byte adds to, 16 bits each of one integer, so one running sum over a buffer tells for every
# value at once how many of each it holds (values are far shorter than 65,536 bytes).
_NONDIGITS, _POINTS, _QUOTES, _ESCAPES = 0, 16, 32, 48
_COUNTS = np.zeros(256, np.uint64)
_COUNTS[:] = 1 << _NONDIGITS
_COUNTS[ZERO:ZERO + 10] = 0
_COUNTS[DOT] += 1 << _POINTS
for _byte in b"(), \t\n\v\f\r":  # PostgreSQL's record_out quotes a value holding one of these in a row's text
    _COUNTS[_byte] += 1 << _QUOTES
for _byte in b'"\\':  # ... and doubles these (such values are left to the SQL lanes)
    _COUNTS[_byte] += 1 << _ESCAPES
_LANE = np.uint64(0xFFFF)
SPECIAL = b'(), \t\n\v\f\r"\\'  # the bytes that make the row's text quote or escape a text value


def running_counts(b: np.ndarray) -> np.ndarray:
    """The packed counts of b[:i] at i, for every i (the sums wrap: only differences are read)."""
    out = np.empty(len(b) + 1, np.uint64)
    out[0] = 0
    np.cumsum(_COUNTS[b], out=out[1:])
    return out


def _count(v: Values, lane: int) -> np.ndarray:
    return (v.held >> np.uint64(lane)) & _LANE


def _slots(buf: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """width bytes from each start, one row each (bytes past a value's end are the next ones)."""
    if width == 0:
        return np.zeros((len(starts), 0), np.uint8)
    return sliding_window_view(buf, width)[starts]


def fingerprint(digests: bytes) -> int:
    """The exact sum of each digest's first 8 bytes as a signed big-endian integer: what SQL sums as
    ('x' || left(_row_hash, 16))::bit(64)::bigint over the same rows."""
    if not digests:
        return 0
    first = np.frombuffer(digests, ">i8")[::2].astype(np.int64)
    return int((first >> 32).sum()) * (1 << 32) + int((first & 0xFFFFFFFF).sum())


def type_rows(lane: Lane, values: list[Values | None], good: np.ndarray, rows: np.ndarray, first: FirstCells,
              copy_values: list[tuple] | None, as_is: Values | None = None, suffix: bytes = b"\n", sample: int = 0,
              copy: bool = True, check: bool = True) -> tuple[Typed, np.ndarray]:
    """The rows of a piece the lane admits, and which they are (indices into the piece's rows).

    values: each table column's values (None: not mapped); good: the rows the front end found whole (it is
    narrowed); rows: their row numbers; first: their first cells; copy_values: the blocks of a COPY row before
    its number, or None for the loaded values one by one; as_is: each row's own text when it is the row's text
    but for money's trailing zeros. Blank rows and footers are never admitted: they go on to the SQL lanes.

    check=False hashes every row of the right shape without testing its values: a raw row then hashes like a
    loaded row only if it would type to exactly that row (see pipeline.re_exports), which is all a
    comparison of hashes needs. The rows the SQL lanes would skip are set aside instead (Typed.skipped):
    blank rows, and footers among the rows missing a required value (a footer that has every value hashes
    like no loaded row, which a comparison of hashes notices anyway)."""
    skipped = np.zeros(len(good), bool)
    if check:
        good &= first.plain
    else:
        skipped |= first.blank
    checked = [None if v is None else _check(v, c, good, check) for c, v in zip(lane.columns, values, strict=True)]
    if lane.footer is not None:
        search = lane.footer.search
        if check:
            candidates = np.flatnonzero(good)
        else:
            missing = np.zeros(len(good), bool)
            for c in checked:
                if c is not None and c.column.required:
                    missing |= c.values.length == 0
            candidates = np.flatnonzero(missing & first.plain & good)
        if len(candidates):
            footer = candidates[np.array([search(c) is not None for c in first.cells(candidates)], bool)]
            good[footer] = False
            skipped[footer] = not check
    good &= ~skipped
    keep = np.flatnonzero(good)
    sel = slice(None) if len(keep) == len(good) else keep  # every row kept (the usual case): views, not copies
    digests = _hashes(sel, len(keep), checked, as_is)
    kept_rows = rows[sel]
    text = b""
    if copy and len(keep):
        blocks = copy_values(sel) if copy_values is not None else _loaded_blocks(lane, checked, sel, len(keep))
        blocks += [*_key_blocks(lane, checked, sel, len(keep)), constant(len(keep), bytes([lane.delimiter]))]
        text = _copy_rows(blocks, lane, kept_rows, digests, suffix)
    typed = Typed(text, kept_rows, digests, fingerprint(digests), considered=len(rows),
                  skipped=np.flatnonzero(skipped))
    if sample and len(keep):
        for i in np.linspace(0, len(keep) - 1, min(sample, len(keep))).astype(np.int64).tolist():
            r = keep[i]
            values = {c.column.name: c.values.buf[c.values.start[r]:c.values.end[r]].tobytes().decode(lane.codec)
                      for c in checked if c is not None}
            typed.sample.append({**values, "_row_hash": digests[16 * i:16 * i + 16].hex(),
                                 "_key": KEY_SEPARATOR.join(values[lane.columns[k].name] for k in lane.key)})
    return typed, keep


def _check(v: Values, column: LaneColumn, good: np.ndarray, check: bool = True) -> _Checked:
    """Narrows `good` to the rows whose value of `column` is the lane's (check=False: to those whose value fits
    a slot and that the row's text would not escape); how the row hash takes each value. Without counts no
    value holds a byte the row's text would quote or escape."""
    buf, s, e, ln = v.buf, v.start, v.end, v.length
    empty = ln == 0
    good &= ln <= (TEXT_CAP if column.kind == "text" else NUMBER_CAP)
    hashed, quoted = ln, np.zeros(len(s), bool)
    if column.kind == "text":
        # the row's text quotes a value holding (), a comma or white space; the lane hands on what it escapes
        if v.counts is not None:
            quoted = ~empty & (_count(v, _QUOTES) > 0)
            good &= empty | (_count(v, _ESCAPES) == 0)
        if check:  # nothing to trim
            good &= empty | ~padded(buf, s, e, ln)
    elif column.kind in ("money", "number"):  # an exact decimal, which the row hash takes by its value
        hashed = _trimmed(buf, e, ln)
        if check:
            good &= empty | _money(buf, s, e, ln, _count(v, _NONDIGITS), _count(v, _POINTS), column.non_negative)
    elif check and column.kind == "integer":
        good &= empty | _integer(buf, s, ln, _count(v, _NONDIGITS), column.non_negative)
    elif check:  # date
        good &= empty | _date(buf, s, ln, _count(v, _NONDIGITS), column.days)
    if check and column.required:
        good &= ~empty
    return _Checked(column, v, np.where(empty, 0, hashed), quoted)


def spaced(buf: np.ndarray, at: np.ndarray, ln: np.ndarray, end: bool) -> np.ndarray:
    """Whether each value (of `ln` bytes, starting at `at`, or ending there when `end`) starts (ends) with white
    space, which the SQL lanes trim."""
    edge = buf[np.maximum(at - 1, 0)] if end else buf[at]
    found = (ln > 0) & _ASCII_SPACE[edge]
    wide = np.flatnonzero((ln > 1) & (edge >= 0x80))
    for space in _WIDE_SPACES:
        if not len(wide):
            break
        n = len(space)
        fits = ln[wide] >= n
        first = at[wide] - n if end else at[wide]
        same = fits.copy()
        for k, byte in enumerate(space):
            same &= buf[np.maximum(first + k, 0)] == byte
        found[wide[same]] = True
    return found


def padded(buf: np.ndarray, s: np.ndarray, e: np.ndarray, ln: np.ndarray) -> np.ndarray:
    """Whether each value starts or ends with white space."""
    return spaced(buf, s, ln, False) | spaced(buf, e, ln, True)


def _integer(buf: np.ndarray, s: np.ndarray, ln: np.ndarray, nondigits: np.ndarray, non_negative: bool) -> np.ndarray:
    """int8's own spelling: '0', or an optional '-' and digits without a leading zero; 18 characters at most."""
    minus = buf[s] == MINUS
    digits = ln - minus
    fine = (nondigits == minus) & (digits >= 1) & (ln <= 18)
    if non_negative:
        fine &= ~minus
    return fine & (((digits == 1) & ~minus) | (buf[s + minus] != ZERO))


def _money(buf: np.ndarray, s: np.ndarray, e: np.ndarray, ln: np.ndarray, nondigits: np.ndarray,
           points: np.ndarray, non_negative: bool) -> np.ndarray:
    """numeric's own spelling: '0.10', '21', '-3.5'; never '+1', '.5', '5.', '007' or '-0.00'."""
    minus = buf[s] == MINUS
    lead = s + minus  # the integer part's first digit
    fine = (nondigits == minus + points) & (points <= 1) & (ln > minus) & (buf[lead] != DOT)
    fine &= (buf[np.maximum(e - 1, 0)] != DOT) & ((buf[lead] != ZERO) | (lead + 1 == e) | (buf[lead + 1] == DOT))
    if non_negative:
        fine &= ~minus
    elif minus.any():  # '-0.00' is zero, which prints without its sign
        signed = np.flatnonzero(minus & fine)
        fine[signed] = [data.strip(b"0.") != b"" for data in map(bytes, map(buf.__getitem__, map(
            slice, (s[signed] + 1).tolist(), e[signed].tolist())))]
    return fine


def _trimmed(buf: np.ndarray, e: np.ndarray, ln: np.ndarray) -> np.ndarray:
    """Each amount's length as trim_scale prints it: the fraction's trailing zeros dropped, and its point
    when no digit is left ('10.50' -> '10.5', '3.00' -> '3', '5.' -> '5'; '100' as it is). Read from each
    value's end: its trailing zeros, then digits, up to the first byte that is not a digit."""
    zeros = np.zeros(len(e), np.int64)
    point = np.zeros(len(e), np.int64)  # how far from the end the point is, when that first byte is one
    trailing = ln > 0
    scanning = ln > 0
    k = 1
    while scanning.any():
        c = buf[np.maximum(e - k, 0)]
        inside = k <= ln
        trailing &= inside & (c == ZERO)
        zeros += trailing
        scanning &= inside
        point[scanning & (c == DOT)] = k
        scanning &= (c - ZERO) < 10
        k += 1
    fraction = point - 1
    zeros = np.where(point > 0, np.minimum(zeros, fraction), 0)
    return ln - zeros - ((point > 0) & (zeros == fraction))


def _date(buf: np.ndarray, s: np.ndarray, ln: np.ndarray, nondigits: np.ndarray, days: tuple[int, int]) -> np.ndarray:
    """date's own ISO spelling of a day that exists, within `days` (YYYYMMDD, both included): YYYY-MM-DD."""
    fine = (ln == 10) & (nondigits == 2) & (buf[s + 4] == MINUS) & (buf[s + 7] == MINUS)
    d = [buf[s + k].astype(np.int64) - ZERO for k in range(10)]
    year = d[0] * 1000 + d[1] * 100 + d[2] * 10 + d[3]
    month = d[5] * 10 + d[6]
    day = d[8] * 10 + d[9]
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    last = _DAYS[np.clip(month, 0, 12)] + ((month == 2) & leap)
    ymd = year * 10_000 + month * 100 + day
    return fine & (month >= 1) & (month <= 12) & (day >= 1) & (day <= last) & (ymd >= days[0]) & (ymd <= days[1])


# -- rows of fixed-width blocks, the counted bytes of each joined ------------------------------------------------
def _assemble(blocks: list[tuple[np.ndarray, np.ndarray | None]]) -> bytes:
    """Rows made of fixed-width blocks (bytes, which of them count; None: all): the counted bytes, row after
    row."""
    m = len(blocks[0][0])
    width = sum(block.shape[1] for block, _ in blocks)
    out, used = np.empty((m, width), np.uint8), np.empty((m, width), bool)
    at = 0
    for block, counted in blocks:
        w = block.shape[1]
        out[:, at:at + w] = block
        used[:, at:at + w] = True if counted is None else counted
        at += w
    return out[used].tobytes()


def constant(m: int, text: bytes) -> tuple[np.ndarray, None]:
    return np.broadcast_to(np.frombuffer(text, np.uint8), (m, len(text))), None


def block(buf: np.ndarray, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A block of values: each its first `length` bytes."""
    width = int(length.max()) if len(length) else 0
    return _slots(buf, start, width), np.arange(width)[None, :] < length[:, None]


def _quoted_block(c: _Checked, sel, length: np.ndarray, quote: int) -> list[tuple]:
    """The column's values (their first `length` bytes), each in quotes where the row's text quotes it."""
    v, q = c.values, c.quoted[sel]
    value = block(v.buf, v.start[sel], length)
    if not q.any():
        return [value]
    mark = np.full((len(length), 1), quote, np.uint8)
    return [(mark, q[:, None]), value, (mark, q[:, None])]


def _hashes(sel, m: int, checked: list[_Checked | None], as_is: Values | None) -> bytes:
    """md5 of each row's text as PostgreSQL prints a row of its typed values, '(SO-1,1,2024-01-05,...)':
    exactly what typing_sql.row_hash hashes. as_is: each row's own text, where that is this text but for
    money's trailing zeros (the table's columns in its order, comma-separated, nothing quoted)."""
    if not m:
        return b""
    if as_is is not None and not any(c is not None and c.quoted[sel].any() for c in checked):
        start, length = as_is.start[sel], as_is.length[sel]
        value, counted = block(as_is.buf, start, length)
        rows = np.arange(m)
        lengths = length + 2
        for c in checked:
            if c is not None and c.column.kind in ("money", "number"):
                end = c.values.end[sel] - start  # where the value ends in the row's text
                drop = c.values.length[sel] - c.hashed[sel]
                lengths = lengths - drop
                for k in range(1, int(drop.max()) + 1):
                    on = drop >= k
                    counted[rows[on], end[on] - k] = False
        blocks = [constant(m, b"("), (value, counted), constant(m, b")")]
    else:
        blocks, lengths = [constant(m, b"(")], np.ones(m, np.int64)
        for i, c in enumerate(checked):
            if c is not None:
                blocks += _quoted_block(c, sel, c.hashed[sel], ord('"'))
                lengths += c.hashed[sel] + 2 * c.quoted[sel]
            blocks.append(constant(m, b")" if i == len(checked) - 1 else b","))
            lengths += 1
    text = memoryview(_assemble(blocks))
    ends = np.cumsum(lengths).tolist()
    # a content hash, not a secret: md5 is what the SQL lanes compute too
    return b"".join([_md5(text[a:e]).digest() for a, e in zip([0, *ends[:-1]], ends, strict=True)])  # noqa: S324


def _key_blocks(lane: Lane, checked: list[_Checked | None], sel, m: int) -> list[tuple]:
    """Each row's _key as COPY reads it: its key values (each its type's own spelling, never empty) joined by
    KEY_SEPARATOR, in quotes where the row's text quotes one of them."""
    parts = [checked[k] for k in lane.key]
    quoted = np.zeros(m, bool)
    for c in parts:
        quoted |= c.quoted[sel]
    mark = (np.full((m, 1), lane.quote, np.uint8), quoted[:, None])
    blocks: list[tuple] = [mark]
    for i, c in enumerate(parts):
        if i:
            blocks.append(constant(m, KEY_SEPARATOR.encode()))
        blocks.append(block(c.values.buf, c.values.start[sel], c.values.length[sel]))
    return [*blocks, mark]


def _loaded_blocks(lane: Lane, checked: list[_Checked | None], sel, m: int) -> list[tuple]:
    """The loaded values of each row as COPY reads them, in the table's order, quoted where the row's text
    quotes them (which covers the delimiter and line breaks)."""
    blocks = []
    delimiter = constant(m, bytes([lane.delimiter]))
    for c in checked:
        if c is not None:
            blocks += [*_quoted_block(c, sel, c.values.length[sel], lane.quote), delimiter]
    return blocks


_FOUR_DIGITS = np.frombuffer("".join(f"{i:04d}" for i in range(10_000)).encode(), np.uint8).reshape(10_000, 4)


def _copy_rows(blocks: list[tuple], lane: Lane, rows: np.ndarray, digests: bytes, suffix: bytes) -> bytes:
    """COPY text: each row's blocks (values and delimiters), then its row number and hash, then the suffix."""
    m = len(rows)
    number = _FOUR_DIGITS[np.stack([rows // 100_000_000 % 10_000, rows // 10_000 % 10_000, rows % 10_000], axis=1)]
    d = np.frombuffer(digests, np.uint8).reshape(m, 16)
    hexed = np.empty((m, 32), np.uint8)
    hexed[:, 0::2], hexed[:, 1::2] = _HEX[d >> 4], _HEX[d & 15]
    return _assemble([*blocks, (number.reshape(m, ROW_DIGITS), None), constant(m, bytes([lane.delimiter])),
                      (hexed, None), constant(m, suffix)])


# -- a pass over a delivery --------------------------------------------------------------------------------------
_SPILLED = struct.Struct("<qqi")  # row number, line, length


class LaneStream:
    """One pass of the lane over a delivery's pieces. Iterated, it gives the COPY text of the rows it admits,
    piece by piece: the pieces after the first are typed in a thread of its own, while PostgreSQL reads the
    last one. The rows it hands on wait in a spooled file (`handed_on()`), for the SQL lanes; `rows`,
    `considered`, `skipped` and `fingerprint` count what it saw, admitted and set aside once it is done."""

    QUEUED = 8  # pieces typed ahead: memory holds a few pieces, whatever the delivery's size

    def __init__(self, pieces: Iterator, type_piece: Callable[..., Typed], sample: int = 0, copy: bool = True,
                 check: bool = True, keep_handed_on: bool = True, close: Callable[[], None] | None = None):
        """type_piece(piece, sample=, copy=, check=) types one piece; sample: rows of the first piece kept as
        text (Typed.sample); copy=False: count and hash only; check=False: values not tested (see type_rows);
        keep_handed_on=False: the rows handed on are counted, not kept; close: what else closing releases."""
        self.copy, self.check, self.keep_handed_on, self._close = copy, check, keep_handed_on, close
        self._type = type_piece
        self.rows = self.considered = self.fingerprint = self.handed_on_count = self.skipped = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._spill = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115 - close() closes it
        self._pieces = pieces
        try:
            piece = next(self._pieces, None)
            self.first = self._typed(piece, sample) if piece is not None else Typed(b"", np.zeros(0, np.int64), b"", 0)
        except BaseException:
            self.close()
            raise

    def _typed(self, piece, sample: int = 0) -> Typed:
        typed = self._type(piece, sample=sample, copy=self.copy, check=self.check)
        self.rows += len(typed.rows)
        self.considered += typed.considered
        self.skipped += len(typed.skipped)
        self.fingerprint += typed.fingerprint
        self.handed_on_count += len(typed.rejected)
        if self.keep_handed_on:
            for row, line, record in typed.rejected:
                self._spill.write(_SPILLED.pack(row, line, len(record)))
                self._spill.write(record)
        return typed

    def __iter__(self) -> Iterator[bytes]:
        if self.first.copy:
            yield self.first.copy
        ready: queue.Queue = queue.Queue(self.QUEUED)
        self._thread = threading.Thread(target=self._type_ahead, args=(ready,), daemon=True)
        self._thread.start()
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            if item:
                yield item

    def _type_ahead(self, ready: queue.Queue) -> None:
        def put(item) -> bool:
            while not self._stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for piece in self._pieces:
                if not put(self._typed(piece).copy):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread, which raises it
            put(exc)
            return
        put(None)

    def drain(self) -> None:
        """The whole pass in this thread, for its counts alone (copy=False). (Typing its pieces on two threads
        was slower here: the threads pass the interpreter lock back and forth at every piece.)"""
        for piece in self._pieces:
            self._typed(piece)

    def handed_on(self) -> Iterator[tuple[int, int, bytes]]:
        """(row number, line, the record as the file has it) of every row the lane handed on."""
        self._spill.seek(0)
        while header := self._spill.read(_SPILLED.size):
            row, line, size = _SPILLED.unpack(header)
            yield row, line, self._spill.read(size)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._spill.close()
        if self._close is not None:
            self._close()

    def __enter__(self) -> LaneStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
