"""Payment workbooks (.xlsx) read with python-calamine: fast, and formula cells give their cached values.

Sheets are chosen by name or pattern (hidden sheets only when named); the header row offset, footers
and the column mapping come from the configuration. Values become exact text: a numeric cell is a number
whatever the source's separators, read at Excel's own precision of 15 significant digits (the
22.368000000000002 a file stores is the 22.368 Excel shows) and worded with the source's decimal
separator, so the typing reads it back as exactly that number; dates as ISO, serial dates converted with
the 1900 leap-year quirk (serial 60, Excel's 29 February 1900, is worded as that day that never was, which
the typing refuses). A formula cell without a cached value is an error naming the cell.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import functools
import itertools
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path, PurePosixPath

import numpy as np
from psycopg2 import sql
from python_calamine import CalamineError, CalamineWorkbook

from pipeline.config import ReadOptions
from pipeline.model import Table
from pipeline.sources import PIECE_ROWS, LoadError, RawSheet, copy_csv, copy_pieces, excel_arrow, excel_lane, map_header
from pipeline.sources.s3_csv import raw_columns

_FORMULA_NO_VALUE = re.compile(
    rb'<c r="([A-Z]+)([0-9]+)"[^>]*>\s*<f[^>]*?(?:/>|>[^<]*</f>)\s*(?:<v\s*/>|<v>\s*</v>)?\s*</c>')
# a cell whose value is serial 60 (Excel's 29 February 1900 when it is formatted as a date)
_SERIAL_60 = re.compile(rb'<c r="([A-Z]+)([0-9]+)"[^>]*>\s*(?:<f[^>]*?(?:/>|>[^<]*</f>)\s*)?<v>60(?:\.[0-9]*)?</v>')
FICTITIOUS_DAY = "1900-02-29"  # Excel's serial 60: a day that never was, refused by the typing as not a date


def excel_serial_to_date(serial: float) -> dt.date:
    """Excel's 1900 date system, which counts a 29 February 1900 that never was (serial 60)."""
    days = int(serial)
    if days == 60:
        raise ValueError("serial 60 is 1900-02-29, a day that does not exist")
    base = dt.date(1899, 12, 31) if days < 60 else dt.date(1899, 12, 30)
    return base + dt.timedelta(days=days)


def excel_number(value: float, decimal: str = ".") -> str:
    """A numeric cell as Excel shows and computes it: 15 significant digits, no exponent, `decimal` as its
    decimal separator. The file may store 17 digits (22.368000000000002); the number is 22.368."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = format(value, ".15g")
    if "e" in text:
        text = format(Decimal(text), "f")
    return text if decimal == "." else text.replace(".", decimal)


def cell_text(value: object, kind: str | None, decimal: str = ".") -> str:
    """The text of a cell of a column of that type (None: not mapped); numbers with `decimal` as the source's
    decimal separator where they are money or integers, so that reading the text back gives the number."""
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if kind == "date" else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float):
        if kind == "date" and value > 0:
            try:
                return excel_serial_to_date(value).isoformat()
            except ValueError:
                return FICTITIOUS_DAY
            except OverflowError:
                return excel_number(value)
        return excel_number(value, decimal if kind in ("money", "number", "integer") else ".")
    if isinstance(value, dt.time | dt.timedelta):
        return str(value)
    return str(value)


def _as_date(value: object) -> str:
    kind = type(value)
    if kind is dt.date:
        return value.isoformat()
    if kind is dt.datetime:
        return value.date().isoformat()
    return cell_text(value, "date")


def _as_text(value: object) -> str:
    return value if type(value) is str else cell_text(value, None)


def converter(kind: str | None, decimal: str = ".") -> Callable[[object], str]:
    """The text of one cell of a column of that type (None: unmapped): both lanes word cells with it."""
    if kind in ("money", "number", "integer"):
        def as_number(value: object) -> str:
            if type(value) is float:
                return excel_number(value, decimal)
            return cell_text(value, kind, decimal)
        return as_number
    if kind == "date":
        return _as_date
    if kind == "timestamp":
        return functools.partial(cell_text, kind="timestamp")
    return _as_text


@dataclass
class WorkbookTyping:
    """A sheet's rows typed in the handler (pipeline.sources.excel_lane), from the columns fastexcel read."""

    sheet: excel_lane.SheetLane

    @property
    def copy_lane(self):
        """The lane (pipeline.sources.lane.Lane): how its COPY text is written."""
        return self.sheet.lane

    def stream(self, **options):
        """A pass of the lane over the sheet's rows (see LaneStream for the options); close it when done."""
        return excel_lane.stream(self.sheet, **options)

    def handed_on(self, stream, sheet: RawSheet) -> RawSheet:
        """The rows the lane handed on, as a raw sheet for the SQL lanes: their cells' text from the same
        columns, in one binary COPY."""
        first_row, columns = self.sheet.first_row, self.sheet.columns
        handed = RawSheet(sheet.name, sheet.header, sheet.mapping, first_row, lambda cur, target: None)
        rows = np.fromiter((row - first_row for row, _, _ in stream.handed_on()), np.int64)

        def copy(cur, target: str) -> None:
            statement = sql.SQL("copy {} (_sheet, _row, {}) from stdin with (format binary)").format(
                sql.Identifier(target), raw_columns(len(columns))).as_string(cur)
            copy_pieces(cur, statement, excel_arrow.copy_binary(sheet.name, first_row, columns, len(rows), rows))

        handed.copy = copy
        return handed


def _column_index(letters: str) -> int:
    index = 0
    for letter in letters:
        index = index * 26 + ord(letter) - 64
    return index - 1


def _column_letters(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def _sheet_xml(zf: zipfile.ZipFile, sheet_name: str) -> bytes:
    """The XML of the sheet of that name, b'' when the workbook does not say where it is."""
    workbook = zf.read("xl/workbook.xml").decode("utf-8")
    rels = zf.read("xl/_rels/workbook.xml.rels").decode("utf-8")
    rid = None
    for match in re.finditer(r"<sheet\b[^>]*>", workbook):
        tag = match.group(0)
        name = re.search(r'name="([^"]*)"', tag)
        if name and _xml_unescape(name.group(1)) == sheet_name:
            found = re.search(r'r:id="([^"]*)"', tag)
            rid = found.group(1) if found else None
    target = None
    for match in re.finditer(r"<Relationship\b[^>]*>", rels):
        tag = match.group(0)
        if rid and f'Id="{rid}"' in tag:
            target = re.search(r'Target="([^"]*)"', tag).group(1)
    if not target:
        return b""
    member = target.lstrip("/") if target.startswith("/") else str(PurePosixPath("xl") / target)
    return zf.read(member)


def _formulas(data: bytes) -> list[tuple[str, int]]:
    if b"<f" not in data:
        return []
    return [(m.group(1).decode(), int(m.group(2))) for m in _FORMULA_NO_VALUE.finditer(data)]


def formulas_without_value(path: Path, sheet_name: str) -> list[tuple[str, int]]:
    """(column letters, row) of formula cells that carry no cached value, read from the sheet's XML."""
    with zipfile.ZipFile(path) as zf:
        return _formulas(_sheet_xml(zf, sheet_name))


def serial_60_cells(path: Path, sheet_name: str) -> set[tuple[int, int]]:
    """(row, column index) of the sheet's cells holding 60: Excel's 29 February 1900 where they are dates.
    Read from its XML only when a date cell says 28 February 1900, the day calamine makes of them."""
    with zipfile.ZipFile(path) as zf:
        data = _sheet_xml(zf, sheet_name)
    return {(int(m.group(2)), _column_index(m.group(1).decode())) for m in _SERIAL_60.finditer(data)}


# strings fastexcel reads as empty in a column of numbers, dates or booleans (pandas' list, and more)
_NULL_LIKE = re.compile(rb"<t(?:\s[^>]*)?>\s*(?:#?N/?A(?:\s*N/?A)?|#NA|<NA>|&lt;NA&gt;|NULL|NONE|-?NAN"
                        rb"|-?1\.#(?:IND|QNAN))\s*</t>", re.IGNORECASE)


def _shared_strings_risky(path: Path) -> bool:
    """Whether the workbook shares a string such as 'N/A' that fastexcel reads as empty in a number
    column: asked before fastexcel parses a sheet, since the shared strings are a small part of it."""
    with zipfile.ZipFile(path) as zf:
        if "xl/sharedStrings.xml" not in zf.namelist():
            return False
        return _NULL_LIKE.search(zf.read("xl/sharedStrings.xml")) is not None


def _arrow_survey(path: Path, sheet_name: str) -> tuple[list[tuple[str, int]], bool]:
    """The formulas without a value, and whether fastexcel could read a cell of the sheet as empty that
    is not: an error cell, a formula's string, or an inline string such as 'N/A'."""
    with zipfile.ZipFile(path) as zf:
        data = _sheet_xml(zf, sheet_name)
    risky = not data or b't="e"' in data or b't="str"' in data
    if not risky and b't="inlineStr"' in data:  # strings written in the sheet itself (streaming writers)
        risky = _NULL_LIKE.search(data) is not None
    return _formulas(data), risky


# what a damaged workbook raises while it is read: zip, inflate and XML errors, calamine's own
_DAMAGED = (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, EOFError, zlib.error, CalamineError)


def _damage(exc: Exception) -> str:
    """What a damaged workbook's error means, in words for the person who sent it."""
    if isinstance(exc, KeyError):
        return "a part every workbook has is missing"
    if isinstance(exc, zlib.error | EOFError):
        return "its compressed data is cut short or corrupt"
    if isinstance(exc, CalamineError):
        return "its sheet data cannot be read"
    return "its zip structure is broken"


def _xml_unescape(text: str) -> str:
    return (text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&apos;", "'")
            .replace("&amp;", "&"))


class ExcelReader:
    def __init__(self, *, path: Path, display: str, options: ReadOptions, columns: dict[str, str], table: Table,
                 required: set[str], lane: excel_lane.LaneSource | None = None, types: dict[str, str] | None = None):
        self.path, self.display, self.options = path, display, options
        self.columns, self.table, self.required = columns, table, required
        self.types = types or {}  # the type of each read column that is not the table's (sources.reading_types)
        self.lane = lane  # what the handler's lane needs of the source; None: SQL types every row

    def _open(self) -> CalamineWorkbook:
        if self.path.stat().st_size == 0:
            raise LoadError(f"{self.display}: the file is empty (0 bytes)")
        with open(self.path, "rb") as fh:
            magic = fh.read(8)
        if magic.startswith(b"\xd0\xcf\x11\xe0"):
            raise LoadError(f"{self.display}: the workbook is password-protected or in the old .xls format; "
                            "save it as an unprotected .xlsx and deliver it again")
        if not magic.startswith(b"PK"):
            raise LoadError(f"{self.display}: not an .xlsx workbook (the file is not a zip archive, as every .xlsx "
                            "is); save it from Excel as .xlsx and deliver it again")
        self._refuse_size_bomb()
        try:
            return CalamineWorkbook.from_path(str(self.path))
        except Exception:  # noqa: BLE001 - calamine raises several types for unreadable files
            raise LoadError(f"{self.display}: not a readable .xlsx workbook (it is damaged, or another kind of file "
                            "with an .xlsx name); open it in Excel, save it as .xlsx and deliver it again") from None

    def _refuse_size_bomb(self) -> None:
        """Before any part is inflated: the sizes the archive declares, against the source's limits. An archive
        that lies about its sizes is not caught here (the function's memory limit is the last guard)."""
        try:
            with zipfile.ZipFile(self.path) as zf:
                parts = zf.infolist()
        except (zipfile.BadZipFile, OSError):
            return  # not a readable archive: the reader says so in its own words
        unpacked = sum(p.file_size for p in parts)
        if unpacked > self.options.max_unpacked_mb * 2**20:
            raise LoadError(f"{self.display}: the workbook unpacks to {unpacked / 2**20:,.0f} MB, more than "
                            f"read.max_unpacked_mb ({self.options.max_unpacked_mb} MB); it was not read. Deliver it "
                            "split into smaller workbooks, or raise the setting knowingly (the function's memory "
                            "must hold the sheet being read)")
        for part in parts:
            ratio = part.file_size / max(part.compress_size, 1)
            if ratio > self.options.max_compression_ratio and part.file_size > 2**20:
                raise LoadError(f"{self.display}: its part {part.filename} inflates {ratio:,.0f} times (from "
                                f"{part.compress_size / 2**10:,.0f} KB to {part.file_size / 2**20:,.0f} MB), more "
                                f"than read.max_compression_ratio ({self.options.max_compression_ratio}); it was "
                                "not read: exports compress far less, so this is not a workbook as Excel saves it")

    def _chosen(self, workbook: CalamineWorkbook) -> list[str]:
        metadata = {m.name: m for m in workbook.sheets_metadata}
        if self.options.sheets:
            missing = [s for s in self.options.sheets if s not in metadata]
            if missing:
                raise LoadError(f"{self.display}: no sheet named {', '.join(repr(m) for m in missing)}; "
                                f"sheets: {', '.join(repr(s) for s in workbook.sheet_names)}")
            return list(self.options.sheets)
        visible = [m.name for m in workbook.sheets_metadata if str(m.visible).endswith("Visible")]
        if not self.options.sheet_pattern:
            return visible[:1]
        chosen = [s for s in visible if re.search(self.options.sheet_pattern, s)]
        if not chosen:
            raise LoadError(f"{self.display}: no visible sheet matches {self.options.sheet_pattern!r}; "
                            f"sheets: {', '.join(repr(s) for s in workbook.sheet_names)}")
        return chosen

    @functools.cached_property
    def _workbook(self) -> CalamineWorkbook:
        return self._open()

    @functools.cached_property
    def _sheet_names(self) -> list[str]:
        return self._chosen(self._workbook)

    @property
    def one_sheet(self) -> bool:
        """One sheet chosen: the loader may load it straight into an empty table."""
        return len(self._sheet_names) == 1

    def sheets(self) -> Iterator[RawSheet]:
        try:
            for name in self._sheet_names:
                try:
                    sheet = self._sheet(self._workbook, name)
                except _DAMAGED as exc:
                    raise LoadError(f"{self.display}, sheet '{name}': the workbook is damaged ({_damage(exc)}); "
                                    "open it in Excel, save it as .xlsx and deliver it again") from None
                yield sheet
        finally:
            self._workbook.close()

    def _sheet(self, workbook: CalamineWorkbook, name: str) -> RawSheet:
        sheet, formulas = self._arrow_sheet(name)
        return sheet or self._calamine_sheet(workbook, name, formulas)

    @functools.cached_property
    def _shared_strings_risky(self) -> bool:
        return _shared_strings_risky(self.path)

    def _converter(self, kind: str | None) -> Callable[[object], str]:
        """How a cell of a column of that type is worded, numbers with the source's decimal separator."""
        return converter(kind, self.options.decimal)

    def _arrow_sheet(self, name: str) -> tuple[RawSheet | None, list[tuple[str, int]] | None]:
        """The sheet through fastexcel and a binary COPY, when that gives the same text as the cell-by-cell
        path (see pipeline.sources.excel_arrow), else None to send it there; and the sheet's formulas
        without a value if they were found while fastexcel parsed, so that path need not search again."""
        if self._shared_strings_risky:
            return None, None
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            surveyed = pool.submit(_arrow_survey, self.path, name)
            arrow = excel_arrow.read(self.path, name, self.options.header_row, self._converter,
                                     self.options.decimal)
            formulas, risky = surveyed.result()
        if formulas or risky or arrow is None:
            return None, formulas  # a formula without a value is explained, with its row, by the other path
        h = self.options.header_row
        try:
            mapping = map_header(arrow.header, self.columns, f"{self.display}, sheet '{name}', row {h + 1}",
                                 self.required)
        except LoadError:
            return None, formulas  # the other path words the error, from the header as calamine spells it
        columns = arrow.columns(self._kinds(mapping, len(arrow.header)))
        if columns is None:
            return None, formulas
        first_row = h + 2

        def copy_rows(cur, target: str) -> None:
            statement = sql.SQL("copy {} (_sheet, _row, {}) from stdin with (format binary)").format(
                sql.Identifier(target), raw_columns(len(columns))).as_string(cur)
            copy_pieces(cur, statement, excel_arrow.copy_binary(name, first_row, columns, arrow.height))

        sheet = RawSheet(name, arrow.header, mapping, first_row, copy_rows)
        lane = excel_lane.lane_for(self.table, mapping, self.options, self.lane)
        if lane is not None:
            sheet.handler_typing = WorkbookTyping(excel_lane.SheetLane(lane, first_row, arrow.height, columns))
        return sheet, formulas

    def _kinds(self, mapping: dict[str, int], width: int) -> list[str | None]:
        kinds: list[str | None] = [None] * width
        for canonical, pos in mapping.items():  # a composed column's part or an attribute: read as it is written
            if canonical in self.table.column_names:
                kinds[pos] = self.table.column(canonical).type
            else:
                kinds[pos] = self.types.get(canonical)
        return kinds

    def _calamine_sheet(self, workbook: CalamineWorkbook, name: str,
                        cells: list[tuple[str, int]] | None = None) -> RawSheet:
        """The sheet cell by cell; `cells`, the formulas without a value when they are known already."""
        if cells is not None:
            rows = workbook.get_sheet_by_name(name).to_python(skip_empty_area=False)
        else:
            # the sheet's XML is searched for formulas without a value while calamine parses it: both spend
            # most of their time in native code (inflating, parsing) that lets the other thread run
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                formulas = pool.submit(formulas_without_value, self.path, name)
                rows = workbook.get_sheet_by_name(name).to_python(skip_empty_area=False)
                cells = formulas.result()
        where = f"{self.display}, sheet '{name}'"
        h = self.options.header_row
        if len(rows) <= h:
            raise LoadError(f"{where}: no header on row {h + 1} (the sheet has {len(rows)} rows)")
        header = [cell_text(v, None) for v in rows[h]]
        mapping = map_header(header, self.columns, f"{where}, row {h + 1}", self.required)
        kinds = self._kinds(mapping, len(header))
        data = rows[h + 1:]
        first_row = h + 2
        self._check_formulas(cells, where, data, first_row, mapping)
        width = len(header)
        fictitious = self._fictitious_days(name, data, kinds)

        def copy_rows(cur, target: str) -> None:
            statement = sql.SQL("copy {} (_sheet, _row, {}) from stdin with (format csv)").format(
                sql.Identifier(target), raw_columns(width)).as_string(cur)
            copy_csv(cur, statement, (self._text_rows(name, data[start:start + PIECE_ROWS], first_row + start, kinds,
                                                      fictitious)
                                      for start in range(0, len(data), PIECE_ROWS)))

        return RawSheet(name, header, mapping, first_row, copy_rows)

    def _fictitious_days(self, name: str, data: list[list], kinds: list[str | None]) -> set[tuple[int, int]]:
        """(row, column) of the date cells holding serial 60, Excel's 29 February 1900, which calamine reads as
        the 28th: looked for in the sheet's XML only when a date column holds a 28 February 1900."""
        dated = [c for c, kind in enumerate(kinds) if kind in ("date", "timestamp")]
        day = dt.date(1900, 2, 28)
        if not any(isinstance(v, dt.date) and (v.date() if isinstance(v, dt.datetime) else v) == day
                   for row in data for c in dated if c < len(row) and (v := row[c]) is not None):
            return set()
        return {(row, col) for row, col in serial_60_cells(self.path, name) if col in dated}

    def _text_rows(self, name: str, chunk: list[list], first_row: int, kinds: list[str | None],
                   fictitious: set[tuple[int, int]]) -> Iterator[tuple]:
        """A piece for copy_csv: (sheet, row number, text of each cell) of a chunk of rows, converted column
        by column, each with the converter of its type: one cheap test per cell for the common case (a string
        in a text column, a float in a money column, a date in a date column), the general rules otherwise.
        `fictitious`: (row, column) of date cells holding Excel's 29 February 1900."""
        width = len(kinds)
        columns = list(itertools.zip_longest(*chunk, fillvalue=None))[:width]
        columns += [(None,) * len(chunk)] * (width - len(columns))
        texts = [list(map(self._converter(kinds[c]), column)) for c, column in enumerate(columns)]
        for row, col in fictitious:
            i = row - first_row
            if 0 <= i < len(chunk) and isinstance(columns[col][i], dt.date):
                texts[col][i] = FICTITIOUS_DAY
        return zip(itertools.repeat(name), range(first_row, first_row + len(chunk)), *texts)

    def _check_formulas(self, cells: list[tuple[str, int]], where: str, data: list, first_row: int,
                        mapping: dict[str, int]) -> None:
        if not cells:
            return
        mapped_letters = {_column_letters(pos) for pos in mapping.values()}
        skip = re.compile(self.options.skip_rows_matching) if self.options.skip_rows_matching else None
        for letters, row in cells:
            index = row - first_row
            if letters not in mapped_letters or not 0 <= index < len(data):
                continue
            first = next((cell_text(v, None) for v in data[index] if cell_text(v, None).strip()), "")
            if skip and skip.search(first.strip()):
                continue
            raise LoadError(f"{where}, cell {letters}{row}: the formula has no cached value; open and save the "
                            "workbook in Excel (or paste values) and deliver it again")
