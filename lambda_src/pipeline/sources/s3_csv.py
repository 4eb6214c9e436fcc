"""CSV exports dropped in S3 (third-party systems, accounting packages).

The fast path hands the file itself to PostgreSQL's COPY (it parses CSV in C, converting the encoding);
only when COPY rejects the file's shape (ragged rows, a quote never closed) is it re-read here with the
csv module, so that each bad row is quarantined with its reason and the rest still loads.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from pathlib import Path

from psycopg2 import sql

from pipeline.config import ReadOptions
from pipeline.sources import LoadError, RawSheet, copy_csv, in_pieces, map_header

PG_ENCODING = {"utf-8": "UTF8", "utf-8-sig": "UTF8", "cp1252": "WIN1252", "latin-1": "LATIN1"}


def raw_columns(n: int) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(f"c{i}") for i in range(n))


class CsvReader:
    def __init__(self, path: Path, display: str, options: ReadOptions, columns: dict[str, str], required: set[str]):
        self.path, self.display, self.options = path, display, options
        self.columns, self.required = columns, required

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
        header, offset = self._read_header()
        mapping = map_header(header, self.columns, f"{self.display}, row {self.options.header_row + 1}",
                             self.required)

        def copy_file(cur, target: str) -> None:
            statement = sql.SQL(
                "copy {} ({}) from stdin with (format csv, delimiter {}, quote {}, encoding {})"
            ).format(sql.Identifier(target), raw_columns(len(header)), sql.Literal(self.options.delimiter),
                     sql.Literal(self.options.quotechar), sql.Literal(PG_ENCODING[self.options.encoding]))
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                cur.copy_expert(statement.as_string(cur), fh, size=1024 * 1024)

        yield RawSheet(None, header, mapping, self.options.header_row + 2, copy_file, raw_rows_copy=True)

    def parsed_sheet(self) -> RawSheet:
        """The slow, forgiving path: every record checked here; ragged ones become rejects."""
        header, _ = self._read_header()
        mapping = map_header(header, self.columns, self.display, self.required)
        width = len(header)
        sheet = RawSheet(None, header, mapping, self.options.header_row + 2, lambda cur, target: None)

        def copy_parsed(cur, target: str) -> None:
            statement = sql.SQL("copy {} (_row, {}) from stdin with (format csv)").format(
                sql.Identifier(target), raw_columns(width)).as_string(cur)
            copy_csv(cur, statement, in_pieces(records()))

        def records() -> Iterator[list]:
            for row_no, values in self._records():
                if not any(v.strip() for v in values):
                    continue
                while len(values) > width and not values[-1].strip():
                    values = values[:-1]
                if len(values) != width:
                    sheet.rejects.append((row_no, {"values": values},
                                          f"row {row_no}: {len(values)} values where the header has {width}",
                                          "ragged_row"))
                    continue
                yield [row_no, *values]

        sheet.copy = copy_parsed
        return sheet

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
