"""The fast lane for a workbook sheet: fastexcel reads it into Arrow columns, and the raw rows go to
PostgreSQL as one binary COPY stream built column-wise with numpy.

It gives the same text as the cell-by-cell path in pipeline.sources.excel, or it gives nothing: a column
of mixed types, a time-only or 1900 date, a header that fastexcel names differently than the sheet spells
it, any Arrow type not handled here all send the sheet back to that path. Strings never pass through
Python objects; numbers are worded as there, column-wise where that is provably the same.

nanoarrow, not pyarrow, reads the Arrow buffers: a few MB in the Lambda layer instead of about 170.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import fastexcel
import nanoarrow as na
import numpy as np

_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_TRAILER = b"\xff\xff"
_MS_PER_DAY = 86_400_000
_FIRST_SAFE_MS = int((dt.datetime(1900, 3, 1) - dt.datetime(1970, 1, 1)).total_seconds() * 1000)
_RENAMED = re.compile(r"^(.*)_(\d+)$")
_NUMERIC = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
# fastexcel warns of each empty column it types as text: the empty column is found and reported elsewhere
logging.getLogger("fastexcel").setLevel(logging.ERROR)
CHUNK_ROWS = 20_000  # rows per piece of the COPY stream: memory holds one piece, the server parses the last


@dataclass
class Column:
    """n values as UTF-8 bytes: value i is data[starts[i]:starts[i] + lengths[i]], a length of -1 is NULL."""

    data: np.ndarray  # uint8
    starts: np.ndarray  # int64
    lengths: np.ndarray  # int64

    @classmethod
    def null(cls, n: int) -> Column:
        return cls(np.zeros(0, np.uint8), np.zeros(n, np.int64), np.full(n, -1, np.int64))


@dataclass
class ArrowSheet:
    header: list[str]  # as the sheet spells it, '' where a column has no name, from column A
    height: int  # data rows after the header
    # kinds by position -> each column's text, or None when a column needs the cell-by-cell path
    columns: Callable[[list[str | None]], list[Column] | None]


def _valid(buffers, n: int, offset: int) -> np.ndarray | None:
    """The validity bitmap as booleans, None when every value is valid."""
    bitmap = buffers[0]
    if len(bitmap) == 0:
        return None
    bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")
    return bits[offset:offset + n].astype(bool)


def _values(array, buffers) -> np.ndarray:
    n, off = array.length, array.offset
    return np.frombuffer(buffers[1], np.float64 if array.schema.format == "g" else np.int64)[off:off + n]


def _strings(array, buffers, valid: np.ndarray | None) -> Column:
    n, off = array.length, array.offset
    offsets = np.frombuffer(buffers[1], np.int32)[off:off + n + 1].astype(np.int64)
    starts, lengths = offsets[:-1], np.diff(offsets)
    if valid is not None:
        lengths = np.where(valid, lengths, 0)
    return Column(np.frombuffer(buffers[2], np.uint8), starts, np.where(lengths == 0, -1, lengths))


def _timestamps(array, buffers, valid: np.ndarray | None, kind: str | None) -> Column | None:
    """Dates as ISO text, when the cell-by-cell path would give exactly that: every value on or after
    1900-03-01 (no 1900 leap-year quirk, no time-only cell), and either a date column or no time of day.
    Each distinct day is formatted once: a sheet of 100k rows holds a few thousand days at most."""
    n, off = array.length, array.offset
    ms = np.frombuffer(buffers[1], np.int64)[off:off + n]
    present = ms if valid is None else ms[valid]
    if present.size and int(present.min()) < _FIRST_SAFE_MS:
        return None
    if kind != "date" and present.size and np.any(present % _MS_PER_DAY):
        return None
    days, where = np.unique(ms // _MS_PER_DAY, return_inverse=True)
    text = np.datetime_as_string(days.astype("datetime64[D]"), unit="D").astype("S10")
    if text.size and int(np.strings.str_len(text).min()) != 10:
        return None  # a year past 9999
    lengths = np.full(n, 10, np.int64)
    if valid is not None:
        lengths[~valid] = -1
    return Column(np.frombuffer(text.tobytes(), np.uint8), where.astype(np.int64) * 10, lengths)


def _booleans(array, buffers, valid: np.ndarray | None) -> Column:
    n, off = array.length, array.offset
    bits = np.unpackbits(np.frombuffer(buffers[1], np.uint8), bitorder="little")[off:off + n].astype(bool)
    lengths = np.where(bits, 4, 5).astype(np.int64)
    if valid is not None:
        lengths[~valid] = -1
    return Column(np.frombuffer(b"truefalse", np.uint8), np.where(bits, 0, 4).astype(np.int64), lengths)


def _numbers(values: np.ndarray, valid: np.ndarray | None, kind: str | None,
             convert: Callable[[object], str], point: bytes = b".") -> Column:
    """Numbers as the cell-by-cell converter words them. Where a float is exactly the nearest double to an
    amount in cents below 10^13, its 15 significant digits are that amount, so those are formatted
    column-wise from integer cents ('12.3', '-0.05', '1500'; `point` as the decimal separator, as `convert`
    words them); the rest (zero, other fractions, huge values, serial dates in a date column) go through
    `convert` one by one."""
    n = len(values)
    present = np.ones(n, bool) if valid is None else valid
    fast, cents = np.zeros(n, bool), np.zeros(n, np.int64)
    if values.dtype == np.float64 and kind not in ("date", "timestamp"):
        with np.errstate(invalid="ignore", over="ignore"):
            size = np.abs(values)
            rounded = np.rint(size * 100)
            fast = present & (values != 0) & (size < 1e13) & (rounded / 100 == size)
        cents = np.where(fast, rounded, 0).astype(np.int64)
    whole, frac = np.divmod(cents, 100)
    text = np.strings.add(np.where(values < 0, b"-", b""), whole.astype("S20"))
    tens, units = np.divmod(frac, 10)
    digits = np.array([str(d).encode() for d in range(10)])
    tail = np.where(frac == 0, b"", np.strings.add(np.strings.add(point, digits[tens]),
                                                       np.where(units == 0, b"", digits[units])))
    text = np.strings.add(text, tail)
    slow = np.flatnonzero(present & ~fast)
    if slow.size:
        texts = [convert(v).encode("utf-8") for v in values[slow].tolist()]
        width = max(text.dtype.itemsize, max(map(len, texts)))
        text = text.astype(f"S{width}")
        text[slow] = texts
    width = text.dtype.itemsize
    lengths = np.strings.str_len(text).astype(np.int64)
    lengths[(lengths == 0) | ~present] = -1
    return Column(np.frombuffer(text.tobytes(), np.uint8), np.arange(n, dtype=np.int64) * width, lengths)


def _header(columns) -> list[str] | None:
    names = {c.name for c in columns}
    width = max((c.absolute_index for c in columns), default=-1) + 1
    header = [""] * width
    for c in columns:
        name = c.name
        if c.column_name_from == "generated":
            name = ""
        elif (renamed := _RENAMED.match(name)) and renamed.group(1) in names:
            return None  # a duplicate header renamed by fastexcel: the sheet's spelling is not known
        elif _NUMERIC.match(name) or name != name.strip():
            return None  # a number, or spaces fastexcel may have trimmed: let calamine spell it
        header[c.absolute_index] = name
    return header


def read(path: Path, name: str, header_row: int, converter: Callable[[str | None], Callable[[object], str]],
         decimal: str = ".") -> ArrowSheet | None:
    """The sheet through fastexcel, or None when only the cell-by-cell path can give its exact text.

    `converter(kind)` is that path's wording of one cell of a column of that type, used for numbers (whose
    decimal separator, in money and integer columns, is `decimal`). The
    columns are built, or refused, before any row is sent."""
    try:
        sheet = fastexcel.read_excel(str(path)).load_sheet_by_name(
            name, header_row=header_row, schema_sample_rows=None, dtype_coercion="strict")
    except Exception:  # noqa: BLE001 - mixed columns, or anything the cell-by-cell path explains better
        return None
    columns = sheet.available_columns()
    header = _header(columns)
    if header is None:
        return None
    array = na.c_array(sheet)
    height = array.length
    children = [array.child(i) for i in range(array.n_children)]
    positions = [c.absolute_index for c in columns]
    formats = [child.schema.format for child in children]
    if any(f not in ("u", "g", "l", "b", "n", "tsm:") for f in formats):
        return None

    def columns(kinds: list[str | None]) -> list[Column] | None:
        built = [Column.null(height) for _ in header]
        for pos, child in zip(positions, children, strict=True):
            buffers, kind, fmt = list(child.view().buffers), kinds[pos], child.schema.format
            valid = _valid(buffers, child.length, child.offset) if fmt != "n" else None
            if fmt == "u":
                built[pos] = _strings(child, buffers, valid)
            elif fmt == "b":
                built[pos] = _booleans(child, buffers, valid)
            elif fmt == "tsm:":
                column = _timestamps(child, buffers, valid, kind)
                if column is None:
                    return None
                built[pos] = column
            elif fmt in ("g", "l"):
                point = decimal.encode() if kind in ("money", "number", "integer") else b"."
                built[pos] = _numbers(_values(child, buffers), valid, kind, converter(kind), point)
        return built

    return ArrowSheet(header, height, columns)


def copy_binary(sheet_name: str, first_row: int, columns: list[Column], n: int,
                rows: np.ndarray | None = None) -> Iterator[bytes]:
    """PostgreSQL's binary COPY of rows (_sheet text, _row bigint, c0 text, ...), in pieces of CHUNK_ROWS: the
    sheet's n data rows, or only those at these indices."""
    yield _HEADER
    name = sheet_name.encode()
    fields = 2 + len(columns)
    count = n if rows is None else len(rows)
    for start in range(0, count, CHUNK_ROWS):
        stop = min(count, start + CHUNK_ROWS)
        which = slice(start, stop) if rows is None else rows[start:stop]
        numbers = first_row + (np.arange(start, stop, dtype=np.int64) if rows is None else which)
        yield _piece(name, numbers, [Column(c.data, c.starts[which], c.lengths[which]) for c in columns], fields)
    yield _TRAILER


def _piece(name: bytes, numbers: np.ndarray, columns: list[Column], fields: int) -> bytes:
    rows = len(numbers)
    lengths = np.empty((rows, fields), np.int64)
    lengths[:, 0] = len(name)
    lengths[:, 1] = 8
    for i, column in enumerate(columns):
        lengths[:, 2 + i] = column.lengths
    sizes = 4 + np.maximum(lengths, 0)
    row_sizes = 2 + sizes.sum(axis=1)
    row_starts = np.zeros(rows, np.int64)
    np.cumsum(row_sizes[:-1], out=row_starts[1:])
    field_starts = np.empty_like(sizes)
    field_starts[:, 0] = 0
    np.cumsum(sizes[:, :-1], axis=1, out=field_starts[:, 1:])
    field_starts += row_starts[:, None] + 2
    out = np.zeros(int(row_sizes.sum()), np.uint8)
    count = np.array([fields], ">i2").view(np.uint8)
    out[row_starts] = count[0]
    out[row_starts + 1] = count[1]
    be = lengths.astype(">i4").view(np.uint8).reshape(rows, fields, 4)
    for k in range(4):
        out[field_starts + k] = be[:, :, k]
    payload = field_starts + 4
    out[payload[:, 0, None] + np.arange(len(name))] = np.frombuffer(name, np.uint8)
    row_numbers = numbers.astype(">i8").view(np.uint8).reshape(rows, 8)
    out[payload[:, 1, None] + np.arange(8)] = row_numbers
    for i, column in enumerate(columns):
        _scatter(out, payload[:, 2 + i], column)
    return out.tobytes()


def _scatter(out: np.ndarray, destinations: np.ndarray, column: Column) -> None:
    """Copy each value's bytes to its place in `out`, all values of the column in one fancy-index."""
    lengths = np.maximum(column.lengths, 0)
    total = int(lengths.sum())
    if not total:
        return
    ends = np.cumsum(lengths)
    within = np.arange(total, dtype=np.int64) - np.repeat(ends - lengths, lengths)
    out[np.repeat(destinations, lengths) + within] = column.data[np.repeat(column.starts, lengths) + within]
