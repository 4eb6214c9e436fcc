"""The handler's lane for a CSV export: records whose values are already in their types' own spellings are
checked column-wise with numpy, hashed as typing_sql.row_hash hashes a typed row, and streamed to COPY
with their row number and hash, so PostgreSQL's own input functions type them straight into their table.
The handler checks and hashes one piece while PostgreSQL stores the one before: two cores at work.

A record is admitted only when every value is exactly what the SQL fast lane would admit (typing_sql's
_canonical): integers and amounts without sign, padding or leading zero, ISO dates that exist, text with
nothing to trim. Anything else is handed on as it is, with its record number, to the SQL lanes: a quoted
delimiter or line break, a value to normalise or refuse, a footer, a blank or ragged record, a very long
value, a text the row hash would have to escape. So both ways give the same rows, hashes and reasons.
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

PIECE_BYTES = 1 << 20  # about 20k sales records: memory holds a piece or two, COPY overlaps the next
MAX_RECORD_BYTES = 4 << 20  # a record longer than this (a quote never closed?) is not the lane's to read
TEXT_CAP = 256  # longer text values are handed on: a slot per value must stay small
NUMBER_CAP = 40
ROW_DIGITS = 12  # record numbers are written zero-padded: bigint input reads them as they are
_PAD = bytes(TEXT_CAP + 1)  # so every slot window stays inside the buffer
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)
# what a byte is, as flags: PostgreSQL's record_out quotes a value holding (), a comma or white space in a
# row's text, and doubles '"' and '\\' there (the lane leaves such values to the SQL lanes)
_QUOTES, _ESCAPES = 1, 2
_CLASS = np.zeros(256, np.uint8)
_CLASS[[ord(c) for c in "(), \t\v\f"]] |= _QUOTES
_CLASS[[ord('"'), ord("\\")]] |= _ESCAPES
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


def pieces(fh: BinaryIO, first: int, quote: int, line: int, size: int = PIECE_BYTES) -> Iterator[Piece]:
    """The file from its current position (record `first`, on line `line`), in pieces of whole records of
    about `size` bytes each."""
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
    """One mapped column of a piece: its values in slots, and how the row hash and COPY take each."""

    column: LaneColumn
    slots: np.ndarray  # (records, width) bytes from each value's start
    length: np.ndarray  # each value's length (0: null)
    hashed: np.ndarray  # the length the row hash takes (money without its trailing zeros)
    quoted: np.ndarray  # whether the row's text quotes it


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


def type_piece(lane: CsvLane, piece: Piece, suffix: bytes = b"\n", sample: int = 0, copy: bool = True) -> Typed:
    """The piece's records the lane admits, as COPY rows ending in `suffix` (copy=False: hashed only); the
    rest handed on. sample: also this many admitted rows (spread over the piece) as text, with their hashes."""
    data = piece.data
    buf = np.frombuffer(data + _PAD, np.uint8)
    b = buf[:len(data)]
    ends = piece.ends
    starts = np.zeros(len(ends), np.int64)
    starts[1:] = ends[:-1] + 1
    stops = ends - ((ends > starts) & (buf[np.maximum(ends - 1, 0)] == CR))
    ok = stops > starts  # an empty record is blank: handed on
    ascii = data.isascii()
    _reject_inner(b, starts, ends, stops, ok, lane, data, ascii)
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
    quotes = np.flatnonzero(b == lane.quote)
    if len(quotes):
        in_value = np.searchsorted(quotes, fe) - np.searchsorted(quotes, fs)
        quoted = ((in_value == 2) & (fe - fs >= 2) & (buf[fs] == lane.quote)
                  & (buf[np.maximum(fe - 1, 0)] == lane.quote))
        good &= ~((in_value != 0) & ~quoted).any(axis=1)
        fs, fe = fs + quoted, fe - quoted
    length = fe - fs
    # the row's first non-empty cell tells blank rows and footers: it must not start with a space (a cell of
    # spaces only is empty to the SQL lanes); the footer pattern is tried last, on admitted rows only
    filled = length > 0
    first_cell = filled.argmax(axis=1)
    good &= filled.any(axis=1) & (buf[fs[np.arange(len(rec)), first_cell]] != SPACE)
    checked = [None if c.position is None else
               _check(buf, fs[:, c.position], length[:, c.position], c, lane, good) for c in lane.columns]
    keep = np.flatnonzero(good)
    if lane.footer is not None and len(keep):
        cell = first_cell[keep]
        keep = keep[_not_footers(data, b, fs[keep, cell], fe[keep, cell], lane, ascii)]
    # every record kept (the usual case): views, not copies
    sel = slice(None) if len(keep) == len(rec) else keep
    rows = piece.first + rec[sel]
    digests = _hashes(len(keep), sel, checked)
    if not copy:
        copied = None
    elif lane.whole_records:
        line = stops[rec] - starts[rec]
        copied = [_value(_slots(buf, starts[rec][sel], int(line[sel].max()) if len(keep) else 0), line[sel])]
    else:
        copied = [_value(checked[lane.columns.index(c)].slots[sel], checked[lane.columns.index(c)].length[sel])
                  for c in lane.copied]
    typed = Typed(_copy_rows(copied, rows, digests, lane, suffix) if copy else b"", rows, digests,
                  fingerprint(digests))
    admitted = np.zeros(len(ends), bool)
    admitted[rec[keep]] = True
    handed_on = np.flatnonzero(~admitted)
    if len(handed_on):
        lines = piece.line + np.searchsorted(np.flatnonzero(b == NL), starts[handed_on])
        typed.rejected = [(piece.first + r, line, data[starts[r]:ends[r] + 1])
                          for r, line in zip(handed_on.tolist(), lines.tolist(), strict=True)]
    if sample and len(keep):
        for i in np.linspace(0, len(keep) - 1, min(sample, len(keep))).astype(np.int64).tolist():
            r = keep[i]
            values = {c.column.name: data[fs[r, c.column.position]:fe[r, c.column.position]].decode(lane.codec)
                      for c in checked if c is not None}
            typed.sample.append({**values, "_row_hash": digests[16 * i:16 * i + 16].hex()})
    return typed


def _reject_inner(b: np.ndarray, starts: np.ndarray, ends: np.ndarray, stops: np.ndarray, ok: np.ndarray,
                  lane: CsvLane, data: bytes, ascii: bool) -> None:
    """Records holding a line break (inside quotes) or a carriage return other than their last, and records
    whose bytes the lane cannot vouch for (not ASCII in a file that is not UTF-8; not UTF-8 at all)."""
    last = len(ends) - 1
    breaks = np.flatnonzero(b == NL)
    if len(breaks) > len(ends):
        where = np.searchsorted(ends, breaks)
        ok[where[breaks != ends[where]]] = False
    returns = np.flatnonzero(b == CR)
    if len(returns):
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


def _check(buf: np.ndarray, s: np.ndarray, ln: np.ndarray, column: LaneColumn, lane: CsvLane,
           good: np.ndarray) -> _Checked:
    """Narrows `good` to the records whose value of `column` is the lane's, and returns the column's slots."""
    empty = ln == 0
    if column.required:
        good &= ~empty
    good &= ln <= (TEXT_CAP if column.kind == "text" else NUMBER_CAP)
    width = int(ln[good].max()) if good.any() else 0
    slots = _slots(buf, s, width)
    quoted = np.zeros(len(s), bool)
    hashed = ln
    if width:  # else every value left is null
        inside = np.arange(width)[None, :] < ln[:, None]
        if column.kind == "text":
            # nothing to trim, nothing the row's text would escape ('"', '\\'); it quotes (), spaces, tabs
            flags = np.bitwise_or.reduce(np.where(inside, _CLASS[slots], 0), axis=1)
            good &= empty | ((buf[s] != SPACE) & (buf[np.maximum(s + ln - 1, 0)] != SPACE) & (flags & _ESCAPES == 0))
            quoted = (flags & _QUOTES) != 0
        elif column.kind == "integer":
            good &= empty | _integer(slots, ln, inside, column.non_negative)
        elif column.kind == "money":
            fine, hashed = _money(slots, ln, inside, column.non_negative)
            good &= empty | fine
        else:  # date
            good &= empty | _date(slots, ln)
    return _Checked(column, slots, ln, np.where(empty, 0, hashed), quoted & ~empty)


def _digits(slots: np.ndarray) -> np.ndarray:
    return (slots - ZERO) < 10  # uint8 arithmetic: anything below '0' wraps past 9


def _sign_and_lead(slots: np.ndarray, non_negative: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a leading minus, whether the sign is allowed, the first digit after it)."""
    minus = slots[:, 0] == MINUS
    allowed = ~minus if non_negative else np.ones(len(slots), bool)
    lead = slots[np.arange(len(slots)), np.minimum(minus, slots.shape[1] - 1)]
    return minus, allowed, lead


def _integer(slots: np.ndarray, ln: np.ndarray, inside: np.ndarray, non_negative: bool) -> np.ndarray:
    """int8's own spelling: '0', or an optional '-' and digits without a leading zero; 18 characters at most."""
    minus, fine, lead = _sign_and_lead(slots, non_negative)
    number = inside.copy()
    number[:, 0] &= ~minus
    count = ln - minus
    fine &= (_digits(slots) | ~number).all(axis=1) & (count >= 1) & (ln <= 18)
    return fine & (((count == 1) & ~minus) | (lead != ZERO))


def _money(slots: np.ndarray, ln: np.ndarray, inside: np.ndarray, non_negative: bool) -> tuple:
    """numeric's own spelling ('0.10', '21', '-3.5'; never '+1', '.5', '5.', '007' or '-0.00'), and each
    value's length as trim_scale prints it: the fraction's trailing zeros dropped, and its point when no
    digit is left ('10.50' -> '10.5', '3.00' -> '3')."""
    n, width = slots.shape
    rows = np.arange(n)
    minus, fine, lead = _sign_and_lead(slots, non_negative)
    dot = (slots == DOT) & inside
    dots = dot.sum(axis=1)
    number = inside & ~dot
    number[:, 0] &= ~minus
    fine &= (dots <= 1) & (_digits(slots) | ~number).all(axis=1)
    point = np.where(dots == 1, dot.argmax(axis=1), ln)  # where the integer part ends
    whole = point - minus
    fraction = np.where(dots == 1, ln - point - 1, 0)
    fine &= (whole >= 1) & ((whole == 1) | (lead != ZERO)) & ((dots == 0) | (fraction >= 1))
    if not non_negative:  # '-0.00' is zero, which prints without its sign
        fine &= ~minus | ((slots != ZERO) & number).any(axis=1)
    zeros = np.zeros(n, np.int64)
    trailing = dots == 1
    for k in range(1, min(int(fraction.max()), width) + 1):
        trailing &= (fraction >= k) & (slots[rows, np.clip(ln - k, 0, width - 1)] == ZERO)
        zeros += trailing
    return fine, ln - zeros - ((dots == 1) & (zeros == fraction))


def _date(slots: np.ndarray, ln: np.ndarray) -> np.ndarray:
    """date's own ISO spelling of a day that exists: YYYY-MM-DD, years 1 to 9999."""
    if slots.shape[1] < 10:
        return np.zeros(len(ln), bool)
    s = slots[:, :10]
    fine = (ln == 10) & (s[:, 4] == MINUS) & (s[:, 7] == MINUS) & _digits(s)[:, [0, 1, 2, 3, 5, 6, 8, 9]].all(axis=1)
    d = s.astype(np.int64) - ZERO
    year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    month = d[:, 5] * 10 + d[:, 6]
    day = d[:, 8] * 10 + d[:, 9]
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    last = _DAYS[np.clip(month, 0, 12)] + ((month == 2) & leap)
    return fine & (year >= 1) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= last)


def _not_footers(data: bytes, b: np.ndarray, starts: np.ndarray, ends: np.ndarray, lane: CsvLane,
                 ascii: bool) -> np.ndarray:
    """Which of these first cells the footer pattern does not find (each trimmed as the SQL lanes trim it:
    its leading spaces were refused already)."""
    if ascii:
        text = data.decode("ascii")
        cells = [text[a:e] for a, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    else:
        cells = [data[a:e].decode(lane.codec) for a, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    for i in np.flatnonzero(b[ends - 1] == SPACE).tolist():
        cells[i] = cells[i].rstrip(" ")
    search = lane.footer.search
    return np.array([search(c) is None for c in cells], bool)


# -- rows of fixed-width blocks, the counted bytes of each joined ------------------------------------------------
def _assemble(blocks: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """Rows made of fixed-width blocks (bytes, which of them count): the counted bytes, row after row."""
    m = len(blocks[0][0])
    width = sum(block.shape[1] for block, _ in blocks)
    out, used = np.empty((m, width), np.uint8), np.empty((m, width), bool)
    at = 0
    for block, counted in blocks:
        w = block.shape[1]
        out[:, at:at + w] = block
        used[:, at:at + w] = counted
        at += w
    return out[used].tobytes()


def _constant(m: int, text: bytes) -> tuple[np.ndarray, np.ndarray]:
    return np.broadcast_to(np.frombuffer(text, np.uint8), (m, len(text))), np.ones((m, len(text)), bool)


def _value(slots: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A block of values: each its first `length` bytes."""
    return slots, np.arange(slots.shape[1])[None, :] < length[:, None]


def _hashes(m: int, sel, checked: list[_Checked | None]) -> bytes:
    """md5 of each row's text as PostgreSQL prints a row of its typed values, '(SO-1,1,2024-01-05,...)':
    exactly what typing_sql.row_hash hashes."""
    if not m:
        return b""
    quote = np.full((m, 1), 34, np.uint8)
    blocks, lengths = [_constant(m, b"(")], np.ones(m, np.int64)
    for i, c in enumerate(checked):
        if c is not None:
            value = _value(c.slots[sel], c.hashed[sel])
            q = c.quoted[sel]
            if q.any():
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


def _copy_rows(copied: list[tuple[np.ndarray, np.ndarray]], rows: np.ndarray, digests: bytes, lane: CsvLane,
               suffix: bytes) -> bytes:
    """The COPY text of the admitted rows: the loaded values as the file spells them, row number and hash."""
    m = len(rows)
    if not m:
        return b""
    delimiter = _constant(m, bytes([lane.delimiter]))
    blocks = []
    for value in copied:
        blocks += [value, delimiter]
    power = 10 ** np.arange(ROW_DIGITS - 1, -1, -1, dtype=np.int64)
    number = ((rows[:, None] // power) % 10 + ZERO).astype(np.uint8)
    d = np.frombuffer(digests, np.uint8).reshape(m, 16)
    hexed = np.empty((m, 32), np.uint8)
    hexed[:, 0::2], hexed[:, 1::2] = _HEX[d >> 4], _HEX[d & 15]
    every = np.ones((m, 32), bool)
    blocks += [(number, every[:, :ROW_DIGITS]), delimiter, (hexed, every), _constant(m, suffix)]
    return _assemble(blocks)


# -- a pass over a file ------------------------------------------------------------------------------------------
_SPILLED = struct.Struct("<qqi")  # record number, line, length


class LaneStream:
    """One pass of the lane over a file. Iterated, it gives the COPY text of the rows it admits, piece by
    piece: the pieces after the first are typed in a thread of its own, while PostgreSQL reads the last one.
    The records it hands on wait in a spooled file (`handed_on()`), for the SQL lanes; `rows`, `records`
    and `fingerprint` count what it admitted once it is done."""

    QUEUED = 2  # pieces typed ahead: memory holds a few pieces, whatever the file's size

    def __init__(self, lane: CsvLane, path: Path, offset: int, first: int, suffix: bytes = b"\n",
                 sample: int = 0, copy: bool = True, keep_handed_on: bool = True):
        """The file's records from byte `offset` on, the first of them record (and line) `first`. suffix ends
        each COPY row; sample: rows of the first piece kept as text (Typed.sample); copy=False: count and hash
        only; keep_handed_on=False: the records handed on are counted, not kept."""
        self.lane, self.suffix, self.copy, self.keep_handed_on = lane, suffix, copy, keep_handed_on
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
        typed = type_piece(self.lane, piece, self.suffix, sample, self.copy)
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
        """The whole pass, for its counts alone (copy=False)."""
        for _ in self:
            pass

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
