"""The handler's lane for a CSV export: records whose values are already in their types' own spellings are
checked column-wise with numpy, hashed as typing_sql.row_hash hashes a typed row, and streamed to COPY
with their row number and hash, so PostgreSQL's own input functions type them straight into their table.
The handler checks and hashes one piece while PostgreSQL stores the one before: two cores at work.

A record is admitted only when every value is exactly what the SQL fast lane would admit (typing_sql's
_canonical): integers and amounts without a plus sign, padding or leading zero (and no minus where the
column must not be negative), ISO dates that exist, text with nothing to trim. Anything else is handed on
as it is, with its record number, to the SQL lanes: a quoted delimiter or line break, a value to
normalise or refuse, a footer, a blank or ragged record, a very long value, a text the row hash would
have to escape. So both ways give the same rows, hashes and reasons.
"""

from __future__ import annotations

import queue
import re
import struct
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.config import ReadOptions
from pipeline.model import Table

try:  # CPython's own md5: for inputs of a row's size about twice as fast as OpenSSL's through hashlib
    from _md5 import md5 as _md5
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import md5 as _md5

# about 2,400 sales records: the arrays of a piece stay in the core's cache, and COPY reads one piece while
# the next is typed (128 KB measured fastest end to end here; 1 MB pieces made the COPY 30% slower)
PIECE_BYTES = 128 << 10
MAX_RECORD_BYTES = 4 << 20  # a record longer than this (a quote never closed?) is not the lane's to read
TEXT_CAP = 256  # longer text values are handed on: a slot per value must stay small
NUMBER_CAP = 40
ROW_DIGITS = 12  # record numbers are written zero-padded: bigint input reads them as they are
_PAD = bytes(TEXT_CAP + 1)  # so every slot window stays inside the buffer
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)
SPACE, DOT, MINUS, ZERO, NL, CR = 32, 46, 45, 48, 10, 13


class LaneAbandoned(RuntimeError):
    """The file is not one the lane can read (a record that never ends): the SQL lanes read all of it."""


@dataclass(frozen=True)
class LaneColumn:
    name: str
    kind: str  # text, integer, money or date
    position: int | None  # in the file; None when the source does not map it (null)
    required: bool
    non_negative: bool


@dataclass(frozen=True)
class CsvLane:
    columns: tuple[LaneColumn, ...]  # the table's, in its order
    width: int  # values in a record, as the header has
    delimiter: int
    quote: int
    footer: re.Pattern | None
    ascii_only: bool  # a file in another encoding than UTF-8: only its ASCII records are the lane's
    codec: str

    @property
    def whole_records(self) -> bool:
        """Every value of a record is loaded, once: COPY can take the record as the file spells it."""
        return sorted(c.position for c in self.columns if c.position is not None) == list(range(self.width))

    @property
    def table_order(self) -> bool:
        """The file's values are the table's columns, in its order: a record is nearly the row's text."""
        return [c.position for c in self.columns] == list(range(self.width))

    @property
    def copied(self) -> list[LaneColumn]:
        """The loaded columns in the order of a COPY row (before its row number and hash)."""
        loaded = [c for c in self.columns if c.position is not None]
        return sorted(loaded, key=lambda c: c.position) if self.whole_records else loaded


def lane_for(table: Table, mapping: dict[str, int], options: ReadOptions, width: int) -> CsvLane | None:
    """The lane for a file of this layout, or None where the SQL lanes must read it all: a layout whose
    spellings need rewriting (decimal comma, thousands, day-first dates), or a timestamp column (its text
    depends on the session's time zone)."""
    if options.decimal != "." or options.thousands or options.date_format or options.dayfirst:
        return None
    if any(c.type == "timestamp" for c in table.columns):
        return None
    if options.delimiter in ('"', "\n", "\r") or options.quotechar in ("\n", "\r"):
        return None
    if not (options.delimiter.isascii() and options.quotechar.isascii()) or options.delimiter == options.quotechar:
        return None
    columns = tuple(LaneColumn(c.name, c.type, mapping.get(c.name), c.required, c.non_negative)
                    for c in table.columns)
    utf8 = options.encoding in ("utf-8", "utf-8-sig")
    return CsvLane(columns, width, ord(options.delimiter), ord(options.quotechar),
                   re.compile(options.skip_rows_matching) if options.skip_rows_matching else None,
                   ascii_only=not utf8, codec="utf-8" if utf8 else "ascii")


# -- whole records, a piece at a time ----------------------------------------------------------------------
@dataclass
class Piece:
    first: int  # the record number of its first record
    data: bytes  # whole records, each ending in a newline
    ends: np.ndarray  # where each record's newline is
    line: int = 0  # the file's line number of its first record


def _record_ends(buf: np.ndarray, quote: int) -> np.ndarray:
    """The newlines that end a record: those outside quotes (an even number of quote characters before)."""
    newlines = np.flatnonzero(buf == NL)
    quotes = np.flatnonzero(buf == quote)
    if len(quotes):
        newlines = newlines[np.searchsorted(quotes, newlines) % 2 == 0]
    return newlines


def pieces(fh: BinaryIO, first: int, quote: int, line: int, size: int | None = None) -> Iterator[Piece]:
    """The file from its current position (record `first`, on line `line`), in pieces of whole records of
    about `size` bytes each."""
    size = size or PIECE_BYTES
    carry = b""
    while True:
        block = fh.read(size)
        data = carry + block
        if not block:
            if data:  # the last record, maybe without its newline, maybe a quote never closed
                if not data.endswith(b"\n") or len(_record_ends(np.frombuffer(data, np.uint8), quote)) == 0:
                    data += b"\n"
                yield Piece(first, data, np.array([len(data) - 1], np.int64), line)
            return
        ends = _record_ends(np.frombuffer(data, np.uint8), quote)
        if not len(ends):
            if len(data) > MAX_RECORD_BYTES:
                raise LaneAbandoned(f"no record ends within {MAX_RECORD_BYTES >> 20} MB")
            carry = data
            continue
        cut = int(ends[-1]) + 1
        yield Piece(first, data[:cut], ends, line)
        first += len(ends)
        line += data.count(b"\n", 0, cut)
        carry = data[cut:]


# -- one piece: checked, hashed, written for COPY -------------------------------------------------------------
@dataclass
class Typed:
    copy: bytes  # COPY rows (csv, the file's delimiter and quote): loaded columns, row, hash, then the suffix
    rows: np.ndarray  # record numbers of the rows admitted
    digests: bytes  # their md5 digests, 16 bytes each
    fingerprint: int  # the sum of their hashes' first 8 bytes, each read as a signed big-endian integer
    # (record number, its line in the file, the record as it is)
    rejected: list[tuple[int, int, bytes]] = field(default_factory=list)
    sample: list[dict[str, str]] = field(default_factory=list)  # a few admitted rows: their values and _row_hash


@dataclass
class _Checked:
    """One mapped column of a piece's records: where each value is, and how the row hash takes it."""

    column: LaneColumn
    start: np.ndarray  # each value's first byte
    length: np.ndarray  # its length (0: null)
    hashed: np.ndarray  # the length the row hash takes (money without its fraction's trailing zeros)
    quoted: np.ndarray  # whether the row's text quotes it


# Four counts a byte adds to, 16 bits each of one integer, so one running sum over a piece tells for every
# value at once how many of each it holds (values are far shorter than 65,536 bytes).
_NONDIGITS, _POINTS, _QUOTES, _ESCAPES = 0, 16, 32, 48
_COUNTS = np.zeros(256, np.uint64)
_COUNTS[:] = 1 << _NONDIGITS
_COUNTS[ZERO:ZERO + 10] = 0
_COUNTS[DOT] += 1 << _POINTS
for _byte in b"(), \t\v\f":  # PostgreSQL's record_out quotes a value holding one of these in a row's text
    _COUNTS[_byte] += 1 << _QUOTES
for _byte in b'"\\':  # ... and doubles these (such values are left to the SQL lanes)
    _COUNTS[_byte] += 1 << _ESCAPES
_LANE = np.uint64(0xFFFF)
_SPECIAL = b'(), \t\v\f"\\'  # the bytes that make the row's text quote or escape a text value


def _running_counts(b: np.ndarray) -> np.ndarray:
    """The packed counts of b[:i] at i, for every i (the sums wrap: only differences are read)."""
    out = np.empty(len(b) + 1, np.uint64)
    out[0] = 0
    np.cumsum(_COUNTS[b], out=out[1:])
    return out


def _count(counts: np.ndarray, s: np.ndarray, e: np.ndarray, lane: int) -> np.ndarray:
    return ((counts[e] - counts[s]) >> np.uint64(lane)) & _LANE


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


def type_piece(lane: CsvLane, piece: Piece, suffix: bytes = b"\n", sample: int = 0, copy: bool = True,
               check: bool = True) -> Typed:
    """The piece's records the lane admits, as COPY rows ending in `suffix` (copy=False: hashed only); the
    rest handed on. sample: also this many admitted rows (spread over the piece) as text, with their hashes.

    check=False hashes every record of the right shape (a value per column, quotes only around values)
    without testing its values: a raw row then hashes like a loaded row only if it would type to exactly
    that row (see pipeline.re_exports), which is all a comparison of hashes needs."""
    data = piece.data
    buf = np.frombuffer(data + _PAD, np.uint8)
    b = buf[:len(data)]
    ends = piece.ends
    starts = np.zeros(len(ends), np.int64)
    starts[1:] = ends[:-1] + 1
    stops = ends - ((ends > starts) & (buf[np.maximum(ends - 1, 0)] == CR))
    ok = stops > starts  # an empty record is blank: handed on
    ascii = data.isascii()
    quotes = np.flatnonzero(b == lane.quote)
    _reject_inner(b, starts, ends, stops, ok, lane, data, ascii, bool(len(quotes)))
    # exactly width - 1 delimiters in a record, or it is ragged
    delimiters = np.flatnonzero(b == lane.delimiter)
    first_delimiter = np.searchsorted(delimiters, starts)
    ok &= np.searchsorted(delimiters, stops) - first_delimiter == lane.width - 1
    rec = np.flatnonzero(ok)
    inner = delimiters[first_delimiter[rec][:, None] + np.arange(lane.width - 1)]
    fs = np.concatenate([starts[rec][:, None], inner + 1], axis=1)
    fe = np.concatenate([inner, stops[rec][:, None]], axis=1)
    good = np.ones(len(rec), bool)
    # a quoted value: quotes around it and none inside; any other quote hands the record on
    if len(quotes):
        in_value = np.searchsorted(quotes, fe) - np.searchsorted(quotes, fs)
        quoted = ((in_value == 2) & (fe - fs >= 2) & (buf[fs] == lane.quote)
                  & (buf[np.maximum(fe - 1, 0)] == lane.quote))
        good &= ~((in_value != 0) & ~quoted).any(axis=1)
        fs, fe = fs + quoted, fe - quoted
    length = fe - fs
    # the row's first non-empty cell tells blank rows and footers: it must not start with a space (a cell of
    # spaces only is empty to the SQL lanes); the footer pattern is tried last, on admitted rows only
    if check:
        filled = length > 0
        first_cell = filled.argmax(axis=1)
        good &= filled.any(axis=1) & (buf[fs[np.arange(len(rec)), first_cell]] != SPACE)
        counts = _running_counts(b)
    else:  # hashing only: what a text value holds matters only where the piece has such bytes at all
        special = len(quotes) or any(data.find(c) >= 0 for c in _SPECIAL if c != lane.delimiter)
        counts = _running_counts(b) if special else None
    checked = [None if c.position is None else
               _check(buf, counts, fs[:, c.position], fe[:, c.position], c, good, check) for c in lane.columns]
    keep = np.flatnonzero(good)
    if check and lane.footer is not None and len(keep):
        cell = first_cell[keep]
        keep = keep[_not_footers(data, b, fs[keep, cell], fe[keep, cell], lane, ascii)]
    # every record kept (the usual case): views, not copies
    sel = slice(None) if len(keep) == len(rec) else keep
    rows = piece.first + rec[sel]
    lines = (starts[rec][sel], stops[rec][sel])
    # the record is the row's text but for money's trailing zeros: the table's columns in its order, no quotes
    as_is = lane.table_order and lane.delimiter == ord(",") and not len(quotes)
    digests = _hashes(buf, sel, len(keep), checked, lines if as_is else None)
    typed = Typed(_copy_rows(buf, sel, len(keep), checked, lane, lines, rows, digests, suffix) if copy else b"",
                  rows, digests, fingerprint(digests))
    admitted = np.zeros(len(ends), bool)
    admitted[rec[keep]] = True
    handed_on = np.flatnonzero(~admitted)
    if len(handed_on):
        at = piece.line + np.searchsorted(np.flatnonzero(b == NL), starts[handed_on])
        typed.rejected = [(piece.first + r, line, data[starts[r]:ends[r] + 1])
                          for r, line in zip(handed_on.tolist(), at.tolist(), strict=True)]
    if sample and len(keep):
        for i in np.linspace(0, len(keep) - 1, min(sample, len(keep))).astype(np.int64).tolist():
            r = keep[i]
            values = {c.column.name: data[fs[r, c.column.position]:fe[r, c.column.position]].decode(lane.codec)
                      for c in checked if c is not None}
            typed.sample.append({**values, "_row_hash": digests[16 * i:16 * i + 16].hex()})
    return typed


def _reject_inner(b: np.ndarray, starts: np.ndarray, ends: np.ndarray, stops: np.ndarray, ok: np.ndarray,
                  lane: CsvLane, data: bytes, ascii: bool, quotes: bool) -> None:
    """Records holding a line break (inside quotes) or a carriage return other than their last, and records
    whose bytes the lane cannot vouch for (not ASCII in a file that is not UTF-8; not UTF-8 at all)."""
    last = len(ends) - 1
    if quotes:  # without quotes every line break ends a record
        breaks = np.flatnonzero(b == NL)
        if len(breaks) > len(ends):
            where = np.searchsorted(ends, breaks)
            ok[where[breaks != ends[where]]] = False
    if data.find(b"\r") >= 0:
        returns = np.flatnonzero(b == CR)
        where = np.minimum(np.searchsorted(ends, returns), last)
        ok[where[returns != stops[where]]] = False
    if ascii:
        return
    wide = np.unique(np.searchsorted(ends, np.flatnonzero(b >= 0x80)))
    if lane.ascii_only:
        ok[wide] = False
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        for r in wide.tolist():
            try:
                data[starts[r]:ends[r]].decode("utf-8")
            except UnicodeDecodeError:
                ok[r] = False


def _check(buf: np.ndarray, counts: np.ndarray | None, s: np.ndarray, e: np.ndarray, column: LaneColumn,
           good: np.ndarray, check: bool = True) -> _Checked:
    """Narrows `good` to the records whose value of `column` is the lane's (check=False: to those whose value
    fits a slot); where each value is and how the row hash takes it. counts None: no value holds a byte the
    row's text would quote or escape."""
    ln = e - s
    empty = ln == 0
    good &= ln <= (TEXT_CAP if column.kind == "text" else NUMBER_CAP)
    hashed, quoted = ln, np.zeros(len(s), bool)
    if column.kind == "text":
        # the row's text quotes a value holding (), a comma, spaces or tabs; the lane hands on what it escapes
        if counts is not None:
            quoted = ~empty & (_count(counts, s, e, _QUOTES) > 0)
            good &= empty | (_count(counts, s, e, _ESCAPES) == 0)
        if check:  # nothing to trim
            good &= empty | ((buf[s] != SPACE) & (buf[np.maximum(e - 1, 0)] != SPACE))
    elif column.kind == "money":
        hashed = _trimmed(buf, e, ln)
        if check:
            good &= empty | _money(buf, s, e, ln, _count(counts, s, e, _NONDIGITS), _count(counts, s, e, _POINTS),
                                   column.non_negative)
    elif check and column.kind == "integer":
        good &= empty | _integer(buf, s, ln, _count(counts, s, e, _NONDIGITS), column.non_negative)
    elif check:  # date
        good &= empty | _date(buf, s, ln, _count(counts, s, e, _NONDIGITS))
    if check and column.required:
        good &= ~empty
    return _Checked(column, s, ln, np.where(empty, 0, hashed), quoted)


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


def _date(buf: np.ndarray, s: np.ndarray, ln: np.ndarray, nondigits: np.ndarray) -> np.ndarray:
    """date's own ISO spelling of a day that exists: YYYY-MM-DD, years 1 to 9999."""
    fine = (ln == 10) & (nondigits == 2) & (buf[s + 4] == MINUS) & (buf[s + 7] == MINUS)
    d = [buf[s + k].astype(np.int64) - ZERO for k in range(10)]
    year = d[0] * 1000 + d[1] * 100 + d[2] * 10 + d[3]
    month = d[5] * 10 + d[6]
    day = d[8] * 10 + d[9]
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    last = _DAYS[np.clip(month, 0, 12)] + ((month == 2) & leap)
    return fine & (year >= 1) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= last)


def _not_footers(data: bytes, b: np.ndarray, starts: np.ndarray, ends: np.ndarray, lane: CsvLane,
                 ascii: bool) -> np.ndarray:
    """Which of these first cells the footer pattern does not find (each trimmed as the SQL lanes trim it:
    its leading spaces were refused already)."""
    a, e = starts.tolist(), ends.tolist()
    if ascii:
        text = data.decode("ascii")
        cells = [text[i:j] for i, j in zip(a, e, strict=True)]
    else:
        cells = [data[i:j].decode(lane.codec) for i, j in zip(a, e, strict=True)]
    for i in np.flatnonzero(b[ends - 1] == SPACE).tolist():
        cells[i] = cells[i].rstrip(" ")
    search = lane.footer.search
    return np.array([search(c) is None for c in cells], bool)


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


def _constant(m: int, text: bytes) -> tuple[np.ndarray, None]:
    return np.broadcast_to(np.frombuffer(text, np.uint8), (m, len(text))), None


def _value(buf: np.ndarray, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A block of values: each its first `length` bytes."""
    width = int(length.max()) if len(length) else 0
    return _slots(buf, start, width), np.arange(width)[None, :] < length[:, None]


def _hashes(buf: np.ndarray, sel, m: int, checked: list[_Checked | None],
            lines: tuple[np.ndarray, np.ndarray] | None) -> bytes:
    """md5 of each row's text as PostgreSQL prints a row of its typed values, '(SO-1,1,2024-01-05,...)':
    exactly what typing_sql.row_hash hashes. lines: the records themselves, where they are that text but
    for money's trailing zeros (the table's columns in its order, no quotes)."""
    if not m:
        return b""
    quote = np.full((m, 1), 34, np.uint8)
    text_quoted = {c.column.name for c in checked if c is not None and c.column.kind == "text" and c.quoted[sel].any()}
    if lines is not None and not text_quoted:
        start, stop = lines
        block, counted = _value(buf, start, stop - start)
        rows = np.arange(m)
        for c in checked:
            if c is not None and c.column.kind == "money":
                end = c.start[sel] + c.length[sel] - start  # where the value ends in the record
                drop = c.length[sel] - c.hashed[sel]
                for k in range(1, int(drop.max()) + 1):
                    on = drop >= k
                    counted[rows[on], end[on] - k] = False
        blocks = [_constant(m, b"("), (block, counted), _constant(m, b")")]
        lengths = stop - start + 2
        for c in checked:
            if c is not None and c.column.kind == "money":
                lengths = lengths - (c.length[sel] - c.hashed[sel])
    else:
        blocks, lengths = [_constant(m, b"(")], np.ones(m, np.int64)
        for i, c in enumerate(checked):
            if c is not None:
                value = _value(buf, c.start[sel], c.hashed[sel])
                if c.column.name in text_quoted:
                    q = c.quoted[sel]
                    blocks += [(quote, q[:, None]), value, (quote, q[:, None])]
                    lengths += 2 * q
                else:
                    blocks.append(value)
                lengths += c.hashed[sel]
            blocks.append(_constant(m, b")" if i == len(checked) - 1 else b","))
            lengths += 1
    text = memoryview(_assemble(blocks))
    ends = np.cumsum(lengths).tolist()
    # a content hash, not a secret: md5 is what the SQL lanes compute too
    return b"".join([_md5(text[a:e]).digest() for a, e in zip([0, *ends[:-1]], ends, strict=True)])  # noqa: S324


_FOUR_DIGITS = np.frombuffer("".join(f"{i:04d}" for i in range(10_000)).encode(), np.uint8).reshape(10_000, 4)


def _copy_rows(buf: np.ndarray, sel, m: int, checked: list[_Checked | None], lane: CsvLane,
               lines: tuple[np.ndarray, np.ndarray], rows: np.ndarray, digests: bytes, suffix: bytes) -> bytes:
    """The COPY text of the admitted rows: the loaded values as the file spells them, row number and hash."""
    if not m:
        return b""
    delimiter = _constant(m, bytes([lane.delimiter]))
    if lane.whole_records:
        start, stop = lines
        blocks = [_value(buf, start, stop - start), delimiter]
    else:
        blocks = []
        for c in lane.copied:
            value = checked[lane.columns.index(c)]
            blocks += [_value(buf, value.start[sel], value.length[sel]), delimiter]
    number = _FOUR_DIGITS[np.stack([rows // 100_000_000 % 10_000, rows // 10_000 % 10_000, rows % 10_000], axis=1)]
    d = np.frombuffer(digests, np.uint8).reshape(m, 16)
    hexed = np.empty((m, 32), np.uint8)
    hexed[:, 0::2], hexed[:, 1::2] = _HEX[d >> 4], _HEX[d & 15]
    blocks += [(number.reshape(m, ROW_DIGITS), None), delimiter, (hexed, None), _constant(m, suffix)]
    return _assemble(blocks)


# -- a pass over a file ------------------------------------------------------------------------------------------
_SPILLED = struct.Struct("<qqi")  # record number, line, length


class LaneStream:
    """One pass of the lane over a file. Iterated, it gives the COPY text of the rows it admits, piece by
    piece: the pieces after the first are typed in a thread of its own, while PostgreSQL reads the last one.
    The records it hands on wait in a spooled file (`handed_on()`), for the SQL lanes; `rows`, `records`
    and `fingerprint` count what it admitted once it is done."""

    QUEUED = 8  # pieces typed ahead: memory holds a few pieces, whatever the file's size

    def __init__(self, lane: CsvLane, path: Path, offset: int, first: int, suffix: bytes = b"\n",
                 sample: int = 0, copy: bool = True, check: bool = True, keep_handed_on: bool = True):
        """The file's records from byte `offset` on, the first of them record (and line) `first`. suffix ends
        each COPY row; sample: rows of the first piece kept as text (Typed.sample); copy=False: count and hash
        only; check=False: values not tested (see type_piece); keep_handed_on=False: the records handed on
        are counted, not kept."""
        self.lane, self.suffix, self.copy, self.keep_handed_on = lane, suffix, copy, keep_handed_on
        self.check = check
        self.rows = self.records = self.fingerprint = self.handed_on_count = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._spill = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115 - close() closes it
        self._file = path.open("rb")
        self._file.seek(offset)
        self._pieces = pieces(self._file, first, lane.quote, first)
        piece = next(self._pieces, None)
        self.first = self._typed(piece, sample) if piece else Typed(b"", np.zeros(0, np.int64), b"", 0)

    def _typed(self, piece: Piece, sample: int = 0) -> Typed:
        typed = type_piece(self.lane, piece, self.suffix, sample, self.copy, self.check)
        self.rows += len(typed.rows)
        self.records += len(piece.ends)
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
        """(record number, line, the record as the file has it) of every record the lane handed on."""
        self._spill.seek(0)
        while header := self._spill.read(_SPILLED.size):
            row, line, size = _SPILLED.unpack(header)
            yield row, line, self._spill.read(size)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._spill.close()
        self._file.close()

    def __enter__(self) -> LaneStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
