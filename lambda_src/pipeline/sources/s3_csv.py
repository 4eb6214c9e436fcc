"""CSV exports dropped in S3 (third-party systems, accounting packages).

Where the layout allows, the handler types the rows itself (pipeline.sources.csv_lane) while PostgreSQL
stores them; the records it hands on are read here with the csv module. Otherwise the file itself goes to
PostgreSQL's COPY (it parses CSV in C, converting the encoding), and only when COPY rejects the file's
shape (ragged rows, a quote never closed) is it re-read here, so that each bad row is quarantined with
its reason and the rest still loads.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from psycopg2 import sql

from pipeline.config import ReadOptions
from pipeline.model import Table
from pipeline.sources import LoadError, RawSheet, copy_csv, csv_lane, in_pieces, map_header, text_files

PG_ENCODING = {"utf-8": "UTF8", "utf-8-sig": "UTF8", "cp1252": "WIN1252", "latin-1": "LATIN1"}


def raw_columns(n: int) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(f"c{i}") for i in range(n))


def raw_record(row_no: int, values: list[str], width: int, sheet: RawSheet, display: str) -> list | None:
    """A record as a raw row (its number, then its values), or None for a ragged one, kept in sheet.rejects
    with its reason. A blank record (an empty line too) is a row of empty values, which the loader skips and
    counts; trailing empty values past the header's width are ignored. A ragged record holding a line break
    in a quoted value is no row at all: a quote that never closed took the lines after it, and the batch
    fails rather than lose them."""
    if not any(v.strip() for v in values):
        return [row_no, *[""] * width]
    while len(values) > width and not values[-1].strip():
        values = values[:-1]
    if len(values) != width:
        if any("\n" in v or "\r" in v for v in values):
            raise LoadError(f"{display}: row {row_no}: a quoted value runs over several lines and leaves the record "
                            f"with {len(values)} values where the header has {width}: a quote is probably never "
                            "closed; nothing was loaded")
        sheet.rejects.append((row_no, {"values": values}, f"row {row_no}: {len(values)} values where the header "
                              f"has {width}", "ragged_row"))
        return None
    return [row_no, *values]


@dataclass
class CsvTyping:
    """A file's rows typed in the handler (pipeline.sources.csv_lane): the lane, and where the records start."""

    lane: csv_lane.CsvLane
    reader: CsvReader
    offset: int  # the first data record's byte offset
    first_row: int  # its record number (and line: the header and the rows above it are a line each)

    @property
    def copy_lane(self):
        """The lane (pipeline.sources.lane.Lane): how its COPY text is written."""
        return self.lane.lane

    def stream(self, **options):
        """A pass of the lane over the file (see LaneStream for the options); close it when done."""
        return csv_lane.stream(self.lane, self.reader.path, self.offset, self.first_row, **options)

    def handed_on(self, stream, sheet: RawSheet) -> RawSheet:
        """The records the lane handed on, as a raw sheet for the SQL lanes: each parsed by the csv module
        (so a quoted line break, an escaped quote, a ragged row are read as the forgiving path reads them)."""
        width = len(sheet.header)

        def copy(cur, target: str) -> None:
            statement = sql.SQL("copy {} (_row, {}) from stdin with (format csv)").format(
                sql.Identifier(target), raw_columns(width)).as_string(cur)
            copy_csv(cur, statement, in_pieces(self.reader.parse_records(stream.handed_on(), handed)))

        handed = RawSheet(sheet.name, sheet.header, sheet.mapping, sheet.first_row, copy)
        return handed


class CsvReader:
    def __init__(self, *, path: Path, display: str, options: ReadOptions, columns: dict[str, str], table: Table,
                 required: set[str], lane: csv_lane.LaneSource | None = None, types: dict[str, str] | None = None):
        # types: a CSV's values are text already, worded as the file has them (a workbook's need sources.reading_types)
        self.path, self.display, self.options = path, display, options
        self.columns, self.required, self.table = columns, required, table
        self.lane = lane  # what the handler's lane needs of the source; None: SQL types every row
        self.plan: dict = {}  # what was decided about the file (its encoding, its quotes), for the ledger
        self._text: text_files.TextFile | None = None

    def close(self) -> None:
        """Removes what reading made (a UTF-8 copy of a UTF-16 file)."""
        if self._text is not None:
            self._text.close()

    def _prepared(self) -> None:
        """The file as it is read: its encoding settled (UTF-16 turned into UTF-8), once."""
        if self._text is None:
            self._text = text_files.prepare(self.path, self.display, self.options)
            self.path, self.options = self._text.path, self._text.options
            self.plan.update(self._text.plan)

    def _decoder_encoding(self) -> str:
        return "utf-8-sig" if self.options.encoding in ("utf-8", "utf-8-sig") else self.options.encoding

    def _read_header(self) -> tuple[list[str], int]:
        """The header record and the byte offset where data starts."""
        if self.path.stat().st_size == 0:
            raise LoadError(f"{self.display}: the file is empty (0 bytes)")
        with open(self.path, "rb") as fh:
            first = fh.read(3)
            if first != codecs.BOM_UTF8:
                fh.seek(0)
            for _ in range(self.options.header_row):
                fh.readline()
            line = fh.readline()
            offset = fh.tell()
        if not line.strip():
            raise LoadError(f"{self.display}: no header on row {self.options.header_row + 1}")
        try:
            text = line.decode(self._decoder_encoding())
        except UnicodeDecodeError as exc:
            raise LoadError(f"{self.display}: the header is not {self.options.encoding} text ({exc.reason}); "
                            "set read.encoding for this source") from None
        header = next(csv.reader([text], delimiter=self.options.delimiter, quotechar=self.options.quotechar))
        return header, offset

    one_sheet = True  # a file is one sheet: the loader may load it straight into an empty table

    def sheets(self) -> Iterator[RawSheet]:
        self._prepared()
        header, offset = self._read_header()
        mapping = map_header(header, self.columns, f"{self.display}, row {self.options.header_row + 1}",
                             self.required)
        first_row = self.options.header_row + 2
        quotes = text_files.survey_quotes(self.path, offset, first_row, self.options.delimiter, self.options.quotechar)
        if quotes.kind == "unclosed":
            raise LoadError(f"{self.display}: row {quotes.row} (line {quotes.line}): a quoted value opens there and "
                            "never closes; nothing was loaded (close the quote, or double a quote meant inside a "
                            "value)")
        if quotes.kind == "stray":  # only a reader of values finds its records: record by record
            self.plan["quotes"] = (f"a quote inside a value (first on row {quotes.row}, line {quotes.line}) is a "
                                   "literal character; records read one by one")
            yield self.parsed_sheet()
            return
        lane = csv_lane.lane_for(self.table, mapping, self.options, len(header), self.lane)

        def copy_file(cur, target: str) -> None:
            statement = sql.SQL(
                "copy {} ({}) from stdin with (format csv, delimiter {}, quote {}, encoding {})"
            ).format(sql.Identifier(target), raw_columns(len(header)), sql.Literal(self.options.delimiter),
                     sql.Literal(self.options.quotechar), sql.Literal(PG_ENCODING[self.options.encoding]))
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                cur.copy_expert(statement.as_string(cur), fh, size=1024 * 1024)

        sheet = RawSheet(None, header, mapping, first_row, copy_file, raw_rows_copy=True)
        if lane is not None:
            sheet.handler_typing = CsvTyping(lane, self, offset, first_row)
        yield sheet

    def parsed_sheet(self) -> RawSheet:
        """The slow, forgiving path: every record checked here; ragged ones become rejects."""
        self._prepared()
        header, _ = self._read_header()
        mapping = map_header(header, self.columns, self.display, self.required)
        width = len(header)

        def copy_parsed(cur, target: str) -> None:
            statement = sql.SQL("copy {} (_row, {}) from stdin with (format csv)").format(
                sql.Identifier(target), raw_columns(width)).as_string(cur)
            copy_csv(cur, statement, in_pieces(records()))

        def records() -> Iterator[list]:
            for row_no, values in self._records():
                if (row := raw_record(row_no, values, width, sheet, self.display)) is not None:
                    yield row

        sheet = RawSheet(None, header, mapping, self.options.header_row + 2, copy_parsed)
        return sheet

    def parse_records(self, records: Iterable[tuple[int, int, bytes]], sheet: RawSheet) -> Iterator[list]:
        """Raw rows of these records (number, line, the record as the file has it), parsed one by one."""
        width = len(sheet.header)
        encoding = self._decoder_encoding()
        for row_no, line, record in records:
            try:
                text = record.decode(encoding)
            except UnicodeDecodeError as exc:
                raise LoadError(f"{self.display}: row {row_no} (line {line}): not {self.options.encoding} text "
                                f"({exc.reason}); set read.encoding for this source") from None
            try:
                parsed = csv.reader(io.StringIO(text, newline=""), delimiter=self.options.delimiter,
                                    quotechar=self.options.quotechar, strict=True)
                values = next(parsed, [])
                more = next(parsed, None)
            except csv.Error as exc:
                raise LoadError(f"{self.display}: row {row_no} (line {line}): {exc}; "
                                "a quoted field is probably never closed") from None
            if more is not None:  # the records were cut where the csv module reads no record end
                bare_cr = re.search("\r(?!\n)", text.rstrip("\r\n"))  # a carriage return not part of CR LF
                why = ("a carriage return outside quotes ends a record there: quote that value or take the carriage "
                       "return out" if bare_cr else "its quotes are not where values start and end")
                raise LoadError(f"{self.display}: row {row_no} (line {line}) reads as more than one record; {why}")
            if (row := raw_record(row_no, values, width, sheet, self.display)) is not None:
                yield row

    def _records(self) -> Iterator[tuple[int, list[str]]]:
        with open(self.path, encoding=self._decoder_encoding(), newline="") as fh:
            reader = csv.reader(fh, delimiter=self.options.delimiter, quotechar=self.options.quotechar, strict=True)
            record = 0
            start_line = 1
            try:
                for values in reader:
                    record += 1
                    if record > self.options.header_row + 1:
                        yield record, values
                    start_line = reader.line_num + 1
            except csv.Error as exc:
                raise LoadError(f"{self.display}: row {record + 1} (line {start_line}): {exc}; "
                                "a quoted field is probably never closed") from None
            except UnicodeDecodeError as exc:
                raise LoadError(f"{self.display}: not {self.options.encoding} text near row {record + 1} "
                                f"({exc.reason}); set read.encoding for this source") from None
