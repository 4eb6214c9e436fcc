"""The lane's front end for a workbook sheet (see pipeline.sources.lane): the sheet's columns as
pipeline.sources.excel_arrow words their cells (the text the cell-by-cell path gives), in pieces of rows.
A row the lane cannot vouch for goes on to the SQL lanes with its row number; its cells are copied into
the batch's raw table from the same columns.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.config import ReadOptions
from pipeline.model import Table
from pipeline.sources.excel_arrow import Column
from pipeline.sources.lane import (
    PAD,
    FirstCells,
    Lane,
    LaneSource,
    LaneStream,
    Typed,
    Values,
    key_positions,
    lane_columns,
    running_counts,
    spaced,
    type_rows,
)

PIECE_ROWS = 2_048  # rows typed at a time: about the CSV lane's piece


@dataclass
class SheetLane:
    lane: Lane
    first_row: int  # the row number of the sheet's first data row
    height: int  # its data rows
    columns: list[Column]  # every header position's text

    @functools.cached_property
    def _buffers(self) -> list[np.ndarray]:
        """Each column's bytes, padded for slot windows: made when the lane first types a row."""
        return [np.concatenate([c.data, np.frombuffer(PAD, np.uint8)]) for c in self.columns]

    def values(self, position: int, rows: slice, counts: bool) -> Values:
        """One column's values over these rows; with the running counts of the bytes they span."""
        column, buf = self.columns[position], self._buffers[position]
        start, length = column.starts[rows], np.maximum(column.lengths[rows], 0)
        if not counts or not len(start):
            return Values(buf, start, length)
        low, high = int(start.min()), int((start + length).max())  # a piece's values lie close together
        return Values(buf[low:], start - low, length, running_counts(buf[low:high]))


def lane_for(table: Table, mapping: dict[str, int], options: ReadOptions, source: LaneSource | None) -> Lane | None:
    """The lane for a sheet of this layout, or None where the SQL lanes must type it (see lane_columns)."""
    columns = None if source is None else lane_columns(table, mapping, options, source)
    if columns is None:
        return None
    return Lane(columns, re.compile(options.skip_rows_matching) if options.skip_rows_matching else None, "utf-8",
                key=key_positions(columns, source))


def type_piece(sheet: SheetLane, start: int, suffix: bytes = b"\n", sample: int = 0, copy: bool = True,
               check: bool = True) -> Typed:
    """The rows from `start` on (a piece's worth) the lane admits, as COPY text (see lane.type_rows); the rest
    handed on, by row number."""
    lane = sheet.lane
    rows = slice(start, min(start + PIECE_ROWS, sheet.height))
    n = rows.stop - rows.start
    good = np.ones(n, bool)
    values = [None if c.position is None else sheet.values(c.position, rows, True) for c in lane.columns]
    # the row's first non-empty cell, over every column of the sheet
    mapped = {c.position: v for c, v in zip(lane.columns, values, strict=True) if v is not None}
    every = [mapped.get(p) or sheet.values(p, rows, False) for p in range(len(sheet.columns))]
    filled = np.stack([v.length > 0 for v in every], axis=1)
    at = filled.argmax(axis=1)
    plain = filled.any(axis=1)
    for p, v in enumerate(every):
        on = np.flatnonzero(at == p)
        plain[on] &= ~spaced(v.buf, v.start[on], v.length[on], False)

    def cells(which: np.ndarray) -> list[str]:
        out = [""] * len(which)
        for p in np.unique(at[which]).tolist():
            v, these = every[p], np.flatnonzero(at[which] == p)
            for i, a, e in zip(these.tolist(), v.start[which[these]].tolist(), v.end[which[these]].tolist(),
                               strict=True):
                out[i] = v.buf[a:e].tobytes().decode("utf-8").rstrip()
        return out

    numbers = sheet.first_row + np.arange(rows.start, rows.stop, dtype=np.int64)
    typed, keep = type_rows(lane, values, good, numbers, FirstCells(~filled.any(axis=1), plain, cells), None, None,
                            suffix, sample, copy, check)
    handed_on = np.ones(n, bool)
    handed_on[keep] = False
    handed_on[typed.skipped] = False
    typed.rejected = [(row, row, b"") for row in numbers[handed_on].tolist()]
    return typed


def stream(sheet: SheetLane, **options) -> LaneStream:
    """A pass of the lane over the sheet's rows (see LaneStream for the options)."""
    def typed(start: int, **kwargs) -> Typed:
        return type_piece(sheet, start, **kwargs)

    pieces: Iterator[int] = iter(range(0, sheet.height, PIECE_ROWS))
    return LaneStream(pieces, typed, **options)
