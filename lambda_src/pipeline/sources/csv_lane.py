"""The lane's front end for a CSV export (see pipeline.sources.lane): the file is read in pieces of whole
records, each record split into its values column-wise, and handed to the lane. A record the lane cannot
read as it is (a quoted delimiter or line break, an escaped quote, a ragged or blank record, bytes not in
the file's encoding) goes on to the SQL lanes as it is, with its record number and line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline.config import ReadOptions
from pipeline.model import Table
from pipeline.sources.lane import (
    CR,
    NL,
    PAD,
    SPECIAL,
    FirstCells,
    Lane,
    LaneAbandoned,
    LaneSource,
    LaneStream,
    Typed,
    Values,
    block,
    constant,
    key_positions,
    lane_columns,
    running_counts,
    spaced,
    type_rows,
)

# about 2,400 sales records: the arrays of a piece stay in the core's cache, and COPY reads one piece while
# the next is typed (128 KB measured fastest end to end here; 1 MB pieces made the COPY 30% slower)
PIECE_BYTES = 128 << 10
MAX_RECORD_BYTES = 4 << 20  # a record longer than this (a quote never closed?) is not the lane's to read


@dataclass(frozen=True)
class CsvLane:
    lane: Lane
    width: int  # values in a record, as the header has
    ascii_only: bool  # a file in another encoding than UTF-8: only its ASCII records are the lane's
    whole_records: bool  # every value of a record is loaded, once: COPY takes the record as the file spells it
    table_order: bool  # the file's values are the table's columns, in its order: a record is nearly the row's text


def lane_for(table: Table, mapping: dict[str, int], options: ReadOptions, width: int,
             source: LaneSource | None) -> CsvLane | None:
    """The lane for a file of this layout, or None where the SQL lanes must read it all (see lane_columns)."""
    if source is None:
        return None
    columns = lane_columns(table, mapping, options, source)
    if columns is None or options.delimiter in ('"', "\n", "\r") or options.quotechar in ("\n", "\r"):
        return None
    if not (options.delimiter.isascii() and options.quotechar.isascii()) or options.delimiter == options.quotechar:
        return None
    utf8 = options.encoding in ("utf-8", "utf-8-sig")
    loaded = [c for c in columns if c.position is not None]
    whole = sorted(c.position for c in loaded) == list(range(width))
    copied = tuple(c.name for c in (sorted(loaded, key=lambda c: c.position) if whole else loaded))
    lane = Lane(columns, re.compile(options.skip_rows_matching) if options.skip_rows_matching else None,
                "utf-8" if utf8 else "ascii", ord(options.delimiter), ord(options.quotechar), copied,
                key_positions(columns, source))
    return CsvLane(lane, width, ascii_only=not utf8, whole_records=whole,
                   table_order=[c.position for c in columns] == list(range(width)))


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
        chunk = fh.read(size)
        data = carry + chunk
        if not chunk:
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


# -- one piece -----------------------------------------------------------------------------------------------------
def type_piece(csv: CsvLane, piece: Piece, suffix: bytes = b"\n", sample: int = 0, copy: bool = True,
               check: bool = True) -> Typed:
    """The piece's records the lane admits, as COPY text (see lane.type_rows); the rest handed on."""
    lane = csv.lane
    data = piece.data
    buf = np.frombuffer(data + PAD, np.uint8)
    b = buf[:len(data)]
    ends = piece.ends
    starts = np.zeros(len(ends), np.int64)
    starts[1:] = ends[:-1] + 1
    stops = ends - ((ends > starts) & (buf[np.maximum(ends - 1, 0)] == CR))
    ok = stops > starts  # an empty record is blank: handed on
    ascii = data.isascii()
    quotes = np.flatnonzero(b == lane.quote)
    _reject_inner(b, starts, ends, stops, ok, csv, data, ascii, bool(len(quotes)))
    # exactly width - 1 delimiters in a record, or it is ragged
    delimiters = np.flatnonzero(b == lane.delimiter)
    first_delimiter = np.searchsorted(delimiters, starts)
    ok &= np.searchsorted(delimiters, stops) - first_delimiter == csv.width - 1
    rec = np.flatnonzero(ok)
    inner = delimiters[first_delimiter[rec][:, None] + np.arange(csv.width - 1)]
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
    filled = length > 0
    at = filled.argmax(axis=1)
    rows = np.arange(len(rec))
    first = FirstCells(~filled.any(axis=1), filled.any(axis=1) & ~spaced(buf, fs[rows, at], length[rows, at], False),
                       lambda rows: _cells(data, b, fs[rows, at[rows]], fe[rows, at[rows]], lane.codec, ascii))
    if check:
        counts = running_counts(b)
    else:  # hashing only: what a text value holds matters only where the piece has such bytes at all (a line
        # break or carriage return in a record the lane reads ends it; the delimiter is never in a value)
        special = len(quotes) or any(data.find(c) >= 0 for c in SPECIAL if c not in (lane.delimiter, NL, CR))
        counts = running_counts(b) if special else None
    values = [None if c.position is None else Values(buf, fs[:, c.position], length[:, c.position], counts)
              for c in lane.columns]
    lines = Values(buf, starts[rec], stops[rec] - starts[rec])
    # the record is the row's text but for money's trailing zeros: the table's columns in its order, no quotes
    as_is = lines if csv.table_order and lane.delimiter == ord(",") and not len(quotes) else None
    copy_values = None
    if csv.whole_records:
        def copy_values(sel) -> list[tuple]:
            return [block(buf, lines.start[sel], lines.length[sel]), constant(len(lines.start[sel]), bytes([
                lane.delimiter]))]
    typed, keep = type_rows(lane, values, good, piece.first + rec, first, copy_values, as_is, suffix, sample,
                            copy, check)
    typed.considered = len(ends)
    settled = np.zeros(len(ends), bool)  # admitted, or set aside as the SQL lanes would skip it
    settled[rec[keep]] = True
    settled[rec[typed.skipped]] = True
    if not check:  # an empty line is a blank record
        empty = np.flatnonzero(stops == starts)
        settled[empty] = True
        typed.skipped = np.concatenate([rec[typed.skipped], empty])
    handed_on = np.flatnonzero(~settled)
    if len(handed_on):
        at = piece.line + np.searchsorted(np.flatnonzero(b == NL), starts[handed_on])
        typed.rejected = [(piece.first + r, line, data[starts[r]:ends[r] + 1])
                          for r, line in zip(handed_on.tolist(), at.tolist(), strict=True)]
    return typed


def _reject_inner(b: np.ndarray, starts: np.ndarray, ends: np.ndarray, stops: np.ndarray, ok: np.ndarray,
                  csv: CsvLane, data: bytes, ascii: bool, quotes: bool) -> None:
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
    if csv.ascii_only:
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


def _cells(data: bytes, b: np.ndarray, starts: np.ndarray, ends: np.ndarray, codec: str, ascii: bool) -> list[str]:
    """The cells at these places, trimmed as the SQL lanes trim them (their leading white space was refused)."""
    a, e = starts.tolist(), ends.tolist()
    if ascii:
        text = data.decode("ascii")
        cells = [text[i:j] for i, j in zip(a, e, strict=True)]
    else:
        cells = [data[i:j].decode(codec) for i, j in zip(a, e, strict=True)]
    return [cell.rstrip() for cell in cells]


# -- a pass over a file ------------------------------------------------------------------------------------------
def stream(csv: CsvLane, path: Path, offset: int, first: int, suffix: bytes = b"\n", **options) -> LaneStream:
    """A pass of the lane over the file's records from byte `offset` on, the first of them record (and line)
    `first` (see LaneStream for the options); close it when done."""
    fh = path.open("rb")
    fh.seek(offset)

    def typed(piece: Piece, **kwargs) -> Typed:
        return type_piece(csv, piece, suffix, **kwargs)

    return LaneStream(pieces(fh, first, csv.lane.quote, first), typed, close=fh.close, **options)
