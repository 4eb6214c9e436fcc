"""Sources: each turns a delivery (an S3 object, an API window) into raw text sheets the loader COPYs.

A reader never types or validates values; it only finds the header, maps it onto the canonical columns
and streams rows as text. PostgreSQL does the rest set-wise (see pipeline.typing_sql).
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg2.errors

from pipeline.model import normalise_header


class LoadError(ValueError):
    """Bad input, worded for the person who fixes the source: it names the file, sheet, row or column."""


@dataclass
class RawSheet:
    """One header and its rows, ready to COPY into the batch's raw table."""

    name: str | None  # sheet name, None for a CSV
    header: list[str]  # the source's header, as spelled there
    mapping: dict[str, int]  # canonical column -> index into header
    first_row: int  # spreadsheet row number of the first data row
    # copy(cursor, target) streams the rows into `target`: columns (_sheet, _row, c0..cN-1) or,
    # for a raw CSV stream, (c0..cN-1) with _row from a sequence
    copy: Callable[[object, str], None]
    raw_rows_copy: bool = False  # True: copy() sends the file itself (PostgreSQL parses the CSV)
    rejects: list[tuple[int, dict, str, str]] = field(default_factory=list)  # (row, raw, reason, code)
    # how the handler types the sheet's rows itself, when it can (pipeline.sources.lane), else None
    handler_typing: HandlerTyping | None = None


class HandlerTyping(Protocol):
    """A sheet's rows as the handler's lane reads them: s3_csv.CsvTyping, excel.WorkbookTyping."""

    @property
    def copy_lane(self) -> Any:
        """The lane (pipeline.sources.lane.Lane): how its COPY text is written."""

    def stream(self, **options) -> Any:
        """A pass of the lane over the rows (a pipeline.sources.lane.LaneStream); close it when done."""

    def handed_on(self, stream, sheet: RawSheet) -> RawSheet:
        """The rows the lane handed on, as a raw sheet for the SQL lanes."""


class _Pieces:
    """A file for COPY FROM STDIN whose text is written as COPY reads it. The driver turns an error in
    read() into a cancelled COPY: the error itself is kept, for copy_csv to raise."""

    def __init__(self, pieces: Iterator[str] | Iterator[bytes], end: str | bytes):
        self._pieces, self._end = pieces, end
        self.error: Exception | None = None

    def read(self, size: int = -1) -> str | bytes:
        try:
            return next(self._pieces, self._end)
        except Exception as exc:
            self.error = exc
            raise


PIECE_ROWS = 5_000  # rows written per piece: about what a socket buffers, so writing and parsing overlap


def in_pieces(rows: Iterable[Iterable]) -> Iterator[list]:
    """`rows` in pieces of PIECE_ROWS, for copy_csv."""
    it = iter(rows)
    while piece := list(itertools.islice(it, PIECE_ROWS)):
        yield piece


def copy_csv(cur, statement: str, pieces: Iterable[Iterable[Iterable]]) -> None:
    """One COPY (format csv) of the rows of `pieces`, each piece written only when COPY asks for it.

    PostgreSQL parses each piece while the next is being made, so the reader's work and the server's run
    side by side; memory holds one piece.
    """
    def texts() -> Iterator[str]:
        for piece in pieces:
            buffer = io.StringIO()
            csv.writer(buffer).writerows(piece)
            if text := buffer.getvalue():
                yield text

    copy_pieces(cur, statement, texts(), "")


def copy_pieces(cur, statement: str, pieces: Iterator[str] | Iterator[bytes], end: str | bytes = b"") -> None:
    """One COPY FROM STDIN of `pieces`, each made only when COPY asks for it; an error raised while making
    one cancels the COPY and is raised as itself."""
    source = _Pieces(pieces, end)
    try:
        cur.copy_expert(statement, source)
    except psycopg2.errors.QueryCanceled:
        if source.error is None:
            raise
        raise source.error from None


def reading_columns(source) -> tuple[dict[str, str], set[str]]:
    """What a reader finds in a source's header, and which of those must be there: the canonical columns it
    maps, and by the names the loader reads them under, the headers its compositions are built from
    ('{Country}') and its attributes' ('attribute region'); the table's required columns, the key's and the
    compositions' parts must be there (an optional column or an attribute a file lacks is empty).
    source: a pipeline.config.SourceConfig."""
    from pipeline.model import TABLES

    table = TABLES[source.table]
    columns = dict(source.columns)
    columns.update({f"attribute {name}": a.column for name, a in source.attribute_columns.items()})
    columns.update({f"{{{header}}}": header for header in composed_headers(source)})
    required = {c.name for c in table.columns if c.required and c.name in columns} | {
        name for name in columns if name.startswith("{")} | {k for k in source.key if k in columns}
    return columns, required


def reading_types(source) -> dict[str, str]:
    """The type of each column a reader reads that is not one of the table's: a statement's debit and credit
    (money), each attribute (as declared); a workbook's number cells in them are worded as their type says."""
    from pipeline.config import DEBIT_CREDIT

    types = {c: "money" for c in DEBIT_CREDIT if c in source.columns}
    types.update({f"attribute {name}": a.type for name, a in source.attribute_columns.items()})
    return types


def composed_headers(source) -> list[str]:
    """The source headers its compositions name, in order: '{Country}-{Month}' names Country and Month."""
    return list(dict.fromkeys(h for template in source.compose.values() for h in re.findall(r"\{([^{}]+)\}", template)))


class Reader(Protocol):
    """What the loader reads a delivery with: its sheets, and whether it is one sheet (a file, or a workbook of
    one chosen sheet), which a first load may put straight into its empty table."""

    one_sheet: bool

    def sheets(self) -> Iterator[RawSheet]: ...


def map_header(header: list[str], columns: dict[str, str], where: str, required: set[str]) -> dict[str, int]:
    """canonical -> position, matching header names after trimming spaces and case."""
    positions: dict[str, int] = {}
    for i, name in enumerate(header):
        positions.setdefault(normalise_header(name), i)
    mapping, missing = {}, []
    for canonical, source_name in columns.items():
        pos = positions.get(normalise_header(source_name))
        if pos is None:
            if canonical in required:
                missing.append(f"'{source_name}' (for {canonical})")
            continue
        mapping[canonical] = pos
    if missing:
        found = ", ".join(f"'{h}'" for h in header if str(h).strip()) or "nothing"
        raise LoadError(f"{where}: the header has no column {', '.join(missing)}; found {found}")
    return mapping
