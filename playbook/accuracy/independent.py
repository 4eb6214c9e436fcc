"""A delivered object read again, independently of the loader: its data rows, skipped rows and money.

The loader (lambda_src/pipeline) reads CSV through PostgreSQL's COPY, the csv module and a lane of its own,
reads workbooks through python-calamine and fastexcel, and types values in SQL. This reader shares none of
that code: CSV records come from pyarrow's C++ parser, workbook cells from openpyxl, and values are read here
with regular expressions and decimal.Decimal. It follows the reading contract (records, blank and ragged
records, footers, header matching, sheet choice, numbers under the declared separators, the company's
currency), driven by the same source settings (pipeline.config.SourceConfig). The validation compares what
it finds with what the ledger recorded (meta.batches: rows_read, rows_skipped, amount_in): two readings
that share no code agree only when both read the file as the contract says.

Workbooks and trailing blank rows: the loader counts as skipped every blank row up to the end of the used
range calamine reports, which ends at the last cell holding a value (a string of spaces, or the empty string
xlsxwriter writes for write_string(r, c, ""), is a value; a cell with only a format is not). openpyxl's
`max_row` comes from the sheet's <dimension> element and its read-only rows run to the last <row> element,
so the two differ whenever trailing rows hold no value. For xlsxwriter files: cells written by write_blank
with a format, and rows given a height or a format by set_row. For openpyxl files: styled cells, cells set
to None or to "" (openpyxl keeps "" as a cell without a value), rows appended as None. Files whose last rows
hold values agree. Here the dimension is ignored and trailing rows without any value are dropped, which
gives calamine's count for all of these; still, a workbook's skipped rows are reported for information only,
and only its rows read and amount in are compared exactly.
"""

from __future__ import annotations

import codecs
import datetime as dt
import decimal
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.config import ReadOptions, SourceConfig
from pipeline.model import ROW_KEY, TABLES

# sums of money without rounding (Python's default context keeps 28 significant digits)
EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)

# symbols written for a currency besides its ISO code; only the company's own are stripped from a value
CURRENCY_SYMBOLS: dict[str, tuple[str, ...]] = {
    "GBP": ("£",), "EUR": ("€",), "USD": ("US$", "$"), "JPY": ("¥", "円"), "CNY": ("CN¥", "¥", "元"),
    "INR": ("₹",), "CAD": ("CA$", "C$", "$"), "AUD": ("AU$", "A$", "$"), "NZD": ("NZ$", "$"),
    "HKD": ("HK$", "$"), "SGD": ("S$", "$"), "CHF": ("Fr.",), "SEK": ("kr",), "NOK": ("kr",), "DKK": ("kr.", "kr"),
    "PLN": ("zł",), "CZK": ("Kč",), "ZAR": ("R",), "BRL": ("R$",), "MXN": ("MX$", "$"), "KRW": ("₩",),
    "ILS": ("₪",), "TRY": ("₺",),
}
# locales that write the month before the day (a/b/YYYY is b/a); every other locale writes the day first
MONTH_FIRST_LOCALES = {"en-us", "es-us", "en-ph", "en-as", "en-gu", "en-mh", "en-fm", "en-pw", "en-pr", "en-um",
                       "en-vi"}
MAX_COLUMNS = 16_384  # a sheet's widest row; CSV columns beyond this many are typed by pyarrow


class ReadError(ValueError):
    """The file cannot be read under the source's settings: the loader must have failed it too."""


@dataclass
class Footer:
    sheet: str | None
    row: int
    values: dict[str, str]  # the footer's non-empty mapped values, as written
    amount: Decimal | None  # its amount, when that is a number
    rows_sum: Decimal | None  # the sum of the sheet's valid amounts above it (None: the table has no amount)

    @property
    def agrees(self) -> bool:
        return self.amount is not None and self.amount == self.rows_sum


@dataclass
class Copy:
    """A data row whose mapped values all equal an earlier data row's: trimmed, and money as numbers."""

    sheet: str | None
    row: int
    copy_of_sheet: str | None
    copy_of_row: int
    key: dict[str, str]
    amount: Decimal | None


@dataclass
class Reading:
    """What one object holds, in the ledger's terms."""

    kind: str  # s3_csv or excel
    sheets: list[str | None] = field(default_factory=list)
    rows_read: int = 0  # data rows: every record that is neither blank nor a footer (ragged ones too)
    blank: int = 0
    ragged: int = 0
    amount_in: Decimal | None = None  # the sum of the data rows' valid amounts; None: the table has no amount
    footers: list[Footer] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    key_columns: tuple[str, ...] = ()
    keys: list[tuple[str, ...]] = field(default_factory=list)  # the data rows' natural keys, canonical text
    keys_left_out: int = 0  # data rows whose key could not be read unambiguously

    @property
    def rows_skipped(self) -> int:
        return self.blank + len(self.footers)

    @property
    def skipped_exact(self) -> bool:
        """Whether rows_skipped is compared exactly (CSV) or for information (workbooks: see the module)."""
        return self.kind != "excel"


def read_object(path: str | Path, source: SourceConfig, currency: str, locale: str | None = None) -> Reading:
    """Read a delivered object (a local file) as the source's settings say; ReadError when it cannot be."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ReadError("the file is empty (0 bytes)")
    tally = _Tally(source, currency, locale)
    if source.kind == "s3_csv":
        tally.sheet(None, *_csv_sheet(path, source.read), csv=True)
    elif source.kind == "excel":
        for name, header, rows in _workbook_sheets(path, source.read):
            tally.sheet(name, header, rows, csv=False)
    else:
        raise ReadError(f"a {source.kind} source delivers no files")
    return tally.finish()


def read_api_pages(bodies: list[bytes], source: SourceConfig, currency: str, locale: str | None = None) -> Reading:
    """An API window's pages as the API sent them, read with json and this module's rules: a row per record the
    source's `api.resource.records` path reaches, each column found by its JSON path (`^.` the record it sits
    in, `#` its place in its list), JSON numbers kept as their text."""
    tally = _Tally(source, currency, locale)
    header = list(dict.fromkeys(tally.layout.columns.values()))
    path = source.api.resource.records
    # a row whose declared date does not fit its format is read but holds no money: the loader quarantines it
    # before typing (its amount is in neither amount_in nor amount_quarantined)
    dated = [(header.index(source.columns[c]), f) for c, f in source.api.formats.items() if c in source.columns]
    money = [header.index(h) for c, h in tally.layout.columns.items() if c in ("amount", "debit", "credit")
             or c == tally.table.amount]

    def rows() -> Iterator[tuple[int, list[Any]]]:
        number = 0
        for page, body in enumerate(bodies, 1):
            try:  # a JSON number as the exact decimal it writes (1.5E+1 is 15)
                parsed = json.loads(body, parse_float=lambda t: format(Decimal(t), "f"), parse_int=str)
            except (ValueError, decimal.InvalidOperation) as exc:
                raise ReadError(f"page {page} is not JSON ({exc})") from None
            for record, parents, place in _api_records(parsed, path, page):
                number += 1
                values = [_api_value(record, parents, place, field) for field in header]
                if any(not _fits(values[i], fmt) for i, fmt in dated):
                    for i in money:
                        values[i] = None
                yield number, values

    tally.sheet(None, header, rows(), csv=False)
    return tally.finish()


_MS_DATE = re.compile(r"/Date\(-?[0-9]+([+-][0-9]{4})?\)/")
_ISO_MOMENT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
                         r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.][0-9]+)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?")


def _fits(value: Any, fmt: str) -> bool:
    """Whether a value is written the way api.formats declares (an empty one always fits)."""
    if value is None or (type(value) is str and not value.strip()):
        return True
    text = _text(value).strip()
    if fmt == "ms_json":
        return _MS_DATE.fullmatch(text) is not None
    if fmt in ("epoch_s", "epoch_ms"):
        try:
            return Decimal(text).is_finite()
        except decimal.InvalidOperation:
            return False
    if fmt == "iso":
        return _ISO_MOMENT.fullmatch(text) is not None
    try:
        dt.datetime.strptime(text, fmt)
    except ValueError:
        return False
    return True


_LIST_STEP = re.compile(r"\[\]\.?")
_ABSENT = object()


def _api_dig(node: Any, path: str) -> Any:
    if path == "":
        return node
    if isinstance(node, dict) and path in node:
        return node[path]
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _ABSENT
    return node


def _api_records(body: Any, path: str, page: int) -> Iterator[tuple[Any, tuple, int]]:
    """(record, the records it sits in nearest first, its place from 1) for every record the path reaches:
    `Invoices[].LineItems[]` is each line of each invoice, `data.items` each item."""
    steps = [step for step in _LIST_STEP.split(path or "") if step] or [""]

    def walk(node: Any, parents: tuple, depth: int) -> Iterator[tuple[Any, tuple, int]]:
        items = _api_dig(node, steps[depth])
        if items is _ABSENT or items is None:
            return
        if not isinstance(items, list):
            raise ReadError(f"page {page}: {steps[depth] or 'the body'} is not a list of records")
        for place, item in enumerate(items, 1):
            if depth + 1 == len(steps):
                yield item, parents, place
            else:
                yield from walk(item, (item, *parents), depth + 1)

    yield from walk(body, (), 0)


def _api_value(record: Any, parents: tuple, place: int, field: str) -> Any:
    if field == "#":
        return str(place)
    up = len(field) - len(field.lstrip("^"))
    if up and field[up:up + 1] == ".":
        value = _api_dig(parents[up - 1], field[up + 1:]) if up <= len(parents) else _ABSENT
    else:
        value = _api_dig(record, field)
    if value is _ABSENT or value is None:
        return None
    return json.dumps(value) if isinstance(value, dict | list) else value


# -- numbers ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _number_pattern(decimal_sep: str, thousands: str | None, currency: str, integer: bool) -> re.Pattern:
    if thousands:
        sep = "[ \u00a0\u202f]" if thousands == " " else re.escape(thousands)
        whole = rf"(?:[0-9]{{1,3}}(?:{sep}[0-9]{{3}})+|[0-9]+)"
    else:
        whole = "[0-9]+"
    point = re.escape(decimal_sep)
    number = whole if integer else rf"(?:{whole}(?:{point}[0-9]*)?|{point}[0-9]+)"
    marks = sorted({*CURRENCY_SYMBOLS.get(currency, ()), currency}, key=len, reverse=True)
    money = "|".join(re.escape(m) for m in marks)
    return re.compile(rf"(?P<open>\()?(?P<lead>[-+])?(?:(?P<cur1>{money})\s*)?(?P<lead2>[-+])?(?P<num>{number})"
                      rf"(?:\s*(?P<cur2>{money}))?(?P<trail>-)?(?P<close>\))?")


_PLAIN = re.compile(r"-?[0-9]+")
_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def parse_number(text: str, decimal_sep: str = ".", thousands: str | None = None, currency: str = "GBP",
                 integer: bool = False) -> Decimal | None:
    """A number written as text, exactly, or None when it is not one under these separators.

    The company currency's symbol or code may stand before or after it; the sign as -12, +12, (12.00) or
    12.00-; at most one decimal separator; thousands, when declared, only in groups of exactly three.
    Anything else (another currency, a separator not declared, two signs) is not a number.
    """
    text = text.strip()
    if (_PLAIN if integer else _PLAIN_DECIMAL).fullmatch(text) and (decimal_sep == "." or integer):
        return Decimal(text)  # most values: digits, a point, digits
    m = _number_pattern(decimal_sep, thousands, currency, integer).fullmatch(text)
    if m is None or bool(m["open"]) != bool(m["close"]) or (m["cur1"] and m["cur2"]):
        return None
    signs = [s for s in (m["lead"], m["lead2"], m["trail"]) if s] + (["-"] if m["open"] else [])
    if len(signs) > 1:
        return None
    digits = m["num"]
    if thousands:
        digits = re.sub("[ \u00a0\u202f]" if thousands == " " else re.escape(thousands), "", digits)
    if decimal_sep != ".":
        digits = digits.replace(decimal_sep, ".")
    value = Decimal(digits)
    return -value if signs == ["-"] else value


def cell_number(value: float | int) -> Decimal:
    """A numeric workbook cell: its double to 15 significant digits, Excel's own precision (261.95999999999998
    is 261.96)."""
    if isinstance(value, int):
        return Decimal(value)
    return Decimal(format(value, ".15g"))


# -- dates (natural keys only) ------------------------------------------------------------------------------
_YMD = re.compile(r"([0-9]{4})([-/.])([0-9]{1,2})\2([0-9]{1,2})(?:[T ].*)?")
_ABY = re.compile(r"([0-9]{1,2})([/.-])([0-9]{1,2})\2([0-9]{4})(?:\s.*)?")


def _date(y: int, m: int, d: int) -> str | None:
    try:
        return dt.date(y, m, d).isoformat()
    except ValueError:
        return None


class _Dates:
    """Dates written as text, read when their day/month order is known: from read.date_format, read.dayfirst,
    the company's locale, or the values themselves when one settles it (a first part over 12: day first;
    a second part over 12: month first). Otherwise a/b/YYYY stays unread."""

    def __init__(self, options: ReadOptions, locale: str | None, samples: Iterable[str]):
        self.format = options.date_format
        dayfirst = getattr(options, "dayfirst", None)
        if dayfirst is None and locale:
            dayfirst = locale.strip().replace("_", "-").lower() not in MONTH_FIRST_LOCALES
        if dayfirst is None and not self.format:
            day, month = False, False
            for text in samples:
                m = _ABY.fullmatch(text.strip())
                if m:
                    day |= int(m[1]) > 12
                    month |= int(m[3]) > 12
            dayfirst = True if day and not month else False if month and not day else None
        self.dayfirst = dayfirst

    def iso(self, text: str) -> str | None:
        text = text.strip()
        if self.format:
            try:
                return dt.datetime.strptime(text, self.format).date().isoformat()  # noqa: DTZ007 - a date
            except ValueError:
                pass
        if m := _YMD.fullmatch(text):
            return _date(int(m[1]), int(m[3]), int(m[4]))
        if (m := _ABY.fullmatch(text)) and self.dayfirst is not None and not self.format:
            a, b = int(m[1]), int(m[3])
            return _date(int(m[4]), b, a) if self.dayfirst else _date(int(m[4]), a, b)
        return None


def _serial_date(value: float) -> str | None:
    """Excel's 1900 date system (serial 60 is the 29 February 1900 that never was)."""
    days = int(value)
    if days <= 0 or days == 60 or days > 2_958_465:
        return None
    base = dt.date(1899, 12, 31) if days < 60 else dt.date(1899, 12, 30)
    return (base + dt.timedelta(days=days)).isoformat()


# -- cells --------------------------------------------------------------------------------------------------
def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any) -> str:
    """A cell as text (CSV values are text already)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return format(cell_number(value), "f")
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _normalise_header(value: Any) -> str:
    return re.sub(r"\s+", " ", _text(value)).strip().casefold()


def map_header(header: list[Any], columns: dict[str, str], required: set[str], where: str) -> dict[str, int]:
    """name -> position: names match after collapsing white space, trimming and casefolding; a name repeated
    maps its first column. A required name missing is a ReadError."""
    positions: dict[str, int] = {}
    for i, name in enumerate(header):
        positions.setdefault(_normalise_header(name), i)
    mapping, missing = {}, []
    for canonical, name in columns.items():
        pos = positions.get(_normalise_header(name))
        if pos is not None:
            mapping[canonical] = pos
        elif canonical in required:
            missing.append(f"'{name}' (for {canonical})")
    if missing:
        raise ReadError(f"{where}: the header has no column {', '.join(missing)}")
    return mapping


_PART = re.compile(r"\{([^{}]+)\}")


class _Layout:
    """What a source reads from each row, from its settings alone: every header it names (mapped columns, the
    debit and credit of a statement, the parts of composed columns, attributes), which of them must be in the
    header (all but the table's optional columns outside the key, and attributes), and how each compared value
    is written."""

    def __init__(self, source: SourceConfig):
        table = TABLES[source.table]
        self.columns = dict(source.columns)
        # a composed column's parts and an attribute are read under their header, marked so no column clashes
        self.parts = {template: _PART.findall(template) for template in source.compose.values()}
        for header in dict.fromkeys(h for parts in self.parts.values() for h in parts):
            self.columns[f"part:{header}"] = header
        for name, a in source.attributes.items():
            self.columns[f"attribute:{name}"] = a if isinstance(a, str) else a.column
        self.kinds = {c: "money" if c in ("debit", "credit") else
                      table.column(c).type if c in table.column_names else
                      "text" if isinstance(a := source.attributes.get(c.split(":", 1)[1]), str) or a is None
                      else a.type
                      for c in self.columns}
        self.required = ({c.name for c in table.columns if c.required} | set(source.key)
                         | {c for c in self.columns if c.startswith("part:")} | {"debit", "credit"})
        self.debit_credit = source.amounts == "debit_credit"
        self.negate = source.amounts == "inverted"
        self.compose = source.compose


# -- CSV ----------------------------------------------------------------------------------------------------
def _decode(data: bytes, encoding: str, header_row: int) -> str:
    """The file's text. A UTF-16 byte-order mark settles the encoding; a UTF-8 one is skipped."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise ReadError(f"not UTF-16 text ({exc.reason} at byte {exc.start})") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    encoding = encoding.lower()
    if encoding == "utf-16":
        raise ReadError("read.encoding utf-16 needs a byte-order mark; set read.encoding: utf-16le or utf-16be")
    if encoding not in ("utf-16le", "utf-16be"):
        end = 0
        for _ in range(header_row + 1):
            nl = data.find(b"\n", end)
            end = len(data) if nl < 0 else nl + 1
        if b"\x00" in data[:end]:
            raise ReadError("looks like UTF-16 text without a byte-order mark; set read.encoding: utf-16le")
    codec = "utf-8" if encoding == "utf-8-sig" else encoding  # its mark is skipped above
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise ReadError(f"not {encoding} text ({exc.reason} at byte {exc.start}); set read.encoding") from None
    except LookupError:
        raise ReadError(f"unknown read.encoding {encoding!r}") from None


@lru_cache(maxsize=8)
def _quote_pattern(delimiter: str, quote: str) -> re.Pattern:
    """A quoted value: a quote at the very start of a value, up to the quote that ends it (or the end)."""
    d, q = re.escape(delimiter), re.escape(quote)
    return re.compile(rf"(?<![^{d}\r\n]){q}(?:[^{q}]++|{q}{q})*+({q}|\Z)")


def _check_quotes(text: str, delimiter: str, quote: str, header_row: int) -> None:
    """A quoted value that never closes, or a closing quote followed by anything but the delimiter or a line
    end, fails the file (pyarrow would read on: the former to the end, the latter into the value)."""
    if quote not in text:
        return
    for m in _quote_pattern(delimiter, quote).finditer(text):
        line = header_row + text.count("\n", 0, m.start()) + 1
        if not m[1]:
            raise ReadError(f"line {line}: a quoted value opens and never closes")
        after = text[m.end():m.end() + 1]
        if after not in ("", delimiter, "\r", "\n"):
            raise ReadError(f"line {line}: {after!r} follows the quote that closes a value")


@lru_cache(maxsize=64)
def _convert_options(width: int | None) -> Any:
    """Every column read as text, as written (pyarrow would otherwise infer numbers and drop zeros)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(column_types={f"f{i}": pa.string() for i in range(width or MAX_COLUMNS)},
                                strings_can_be_null=False, quoted_strings_can_be_null=False, null_values=[],
                                auto_dict_encode=False)


def _width(first_line: str, options: ReadOptions) -> int | None:
    """The header's value count when its line holds no quote (so no quoted line break), else None."""
    if options.quotechar in first_line:
        return None
    return first_line.count(options.delimiter) + 1


def _pyarrow_records(data: bytes, options: ReadOptions, invalid, width: int | None = None) -> Any:
    import pyarrow.csv as pacsv

    return pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(use_threads=False, autogenerate_column_names=True, block_size=1 << 24),
        parse_options=pacsv.ParseOptions(delimiter=options.delimiter, quote_char=options.quotechar, double_quote=True,
                                         escape_char=False, newlines_in_values=True, ignore_empty_lines=False,
                                         invalid_row_handler=invalid),
        convert_options=_convert_options(width))


def _ended(text: str) -> str:
    """The text with its last record ended: pyarrow reads a lone record without a line end as no record."""
    return text if text.endswith(("\n", "\r")) else text + "\n"


def _record_values(text: str, options: ReadOptions) -> list[str]:
    """The values of one record pyarrow set aside for its width, parsed by pyarrow on its own."""
    if not text.strip():
        return [text]
    table = _pyarrow_records(_ended(text).encode("utf-8"), options, None)
    return [table.column(i)[0].as_py() for i in range(table.num_columns)]


def _rows(table) -> Iterator[tuple[str, ...]]:
    """The table's rows as Python strings, a slice at a time (a large file is never all Python objects)."""
    for batch in table.to_batches(max_chunksize=65_536):
        yield from zip(*(column.to_pylist() for column in batch.columns), strict=True)


def _csv_sheet(path: Path, options: ReadOptions) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header and the records after it, each with its row number (header_row + 2 onwards)."""
    import pyarrow as pa

    text = _decode(path.read_bytes(), options.encoding, options.header_row)
    start = 0
    for _ in range(options.header_row):
        nl = text.find("\n", start)
        if nl < 0:
            raise ReadError(f"no header on row {options.header_row + 1} (the file has fewer lines)")
        start = nl + 1
    body = text[start:]
    first_line = body.split("\n", 1)[0]
    if not first_line.strip():
        raise ReadError(f"no header on row {options.header_row + 1}")
    _check_quotes(body, options.delimiter, options.quotechar, options.header_row)
    set_aside: dict[int, str] = {}

    def invalid(row) -> str:
        if row.number is None:
            raise ReadError("pyarrow did not number a record it set aside")
        set_aside[row.number] = row.text
        return "skip"

    try:
        table = _pyarrow_records(_ended(body).encode("utf-8"), options, invalid, _width(first_line, options))
    except pa.ArrowInvalid as exc:
        raise ReadError(f"not readable as CSV: {exc}") from None
    rows = _rows(table)
    header = list(next(rows))
    total = table.num_rows + len(set_aside)

    def records() -> Iterator[tuple[int, list[str]]]:
        # pyarrow numbers records from 1 (the header); a record is on row header_row + its number
        for number in range(2, total + 1):
            values = _record_values(set_aside[number], options) if number in set_aside else list(next(rows))
            yield options.header_row + number, values

    return header, records()


# -- workbooks ----------------------------------------------------------------------------------------------
def _workbook_sheets(path: Path, options: ReadOptions) -> Iterator[tuple[str, list[Any], Iterator]]:
    import openpyxl

    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic.startswith(b"\xd0\xcf\x11\xe0"):
        raise ReadError("password-protected or in the old .xls format")
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - openpyxl raises several types for unreadable files
        raise ReadError(f"not a readable .xlsx workbook ({type(exc).__name__}: {exc})") from None
    try:
        names = [ws.title for ws in wb.worksheets]
        if options.sheets:
            missing = [s for s in options.sheets if s not in names]
            if missing:
                raise ReadError(f"no sheet named {', '.join(repr(m) for m in missing)}")
            chosen = list(options.sheets)
        else:
            visible = [ws.title for ws in wb.worksheets if ws.sheet_state == "visible"]
            chosen = [s for s in visible if re.search(options.sheet_pattern, s)] if options.sheet_pattern \
                else visible[:1]
            if not chosen:
                raise ReadError(f"no visible sheet matches {options.sheet_pattern!r}" if options.sheet_pattern
                                else "no visible sheet")
        for name in chosen:
            ws = wb[name]
            ws.reset_dimensions()  # the cells themselves, whatever <dimension> says
            rows = [list(r) for r in ws.iter_rows(values_only=True)]
            while rows and all(v is None for v in rows[-1]):  # rows of formatting only, past the last value
                rows.pop()
            h = options.header_row
            if len(rows) <= h:
                raise ReadError(f"sheet '{name}': no header on row {h + 1} (the sheet has {len(rows)} rows)")
            yield name, rows[h], ((h + 2 + i, row) for i, row in enumerate(rows[h + 1:]))
    finally:
        wb.close()


# -- rows ---------------------------------------------------------------------------------------------------
class _Tally:
    """The reading rules every sheet shares: blank, ragged, footer, data row; money, copies, keys."""

    def __init__(self, source: SourceConfig, currency: str, locale: str | None):
        self.source, self.options, self.currency, self.locale = source, source.read, currency, locale
        self.table = TABLES[source.table]
        self.layout = _Layout(source)
        pattern = self.options.skip_rows_matching
        self.footer = re.compile(pattern) if pattern else None
        # a snapshot keyed by each row's place has no key to find elsewhere
        self.reading = Reading(source.kind, amount_in=Decimal(0) if self.table.amount else None,
                               key_columns=() if ROW_KEY in source.key else tuple(source.key))
        self.seen: dict[tuple, tuple[str | None, int]] = {}
        self.row_keys: list[list[Any]] = []

    def number(self, value: Any, integer: bool = False) -> Decimal | None:
        """A cell or value as a number: a numeric cell to 15 digits, text under the declared separators."""
        if type(value) is str:
            return parse_number(value, self.options.decimal, self.options.thousands, self.currency, integer)
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = cell_number(value)
            return None if integer and number != number.to_integral_value() else number
        return None

    def amount(self, values: list[Any], mapping: dict[str, int]) -> Decimal | None:
        """The row's amount as the source's sign convention says: inverted, or a statement's credit less its
        debit (one of the two, a debit written without a sign; a row with both holds no amount)."""
        layout = self.layout
        if not layout.debit_credit:
            at = mapping.get(self.table.amount)
            value = self.number(values[at]) if at is not None and at < len(values) else None
            return -value if value is not None and layout.negate else value
        debit, credit = (values[mapping[c]] if c in mapping and mapping[c] < len(values) else None
                         for c in ("debit", "credit"))
        debit, credit = (None if self.number(v) == 0 else v for v in (debit, credit))  # a zero side is empty
        if _empty(debit) == _empty(credit):
            return None
        if _empty(debit):
            return self.number(credit)
        value = self.number(debit)
        return None if value is None or value < 0 or _text(debit).strip().startswith(("-", "+")) else -value

    def key_value(self, values: list[Any], mapping: dict[str, int], column: str) -> Any:
        """A key column's value as the row holds it, or as its template builds it from its parts (None when a
        part is empty)."""
        template = self.layout.compose.get(column)
        if template is None:
            at = mapping.get(column)
            return values[at] if at is not None else None
        parts = {h: _text(values[mapping[f"part:{h}"]]).strip() for h in self.layout.parts[template]}
        if not all(parts.values()):
            return None
        return _PART.sub(lambda m: parts[m[1]], template)

    def _canonical(self, kind: str):
        """How the copy test compares a mapped value: money and numbers as numbers (10.5 is 10.50), the rest as
        text, trimmed (a workbook's date cell as its date)."""
        if kind in ("money", "number"):
            def number_or_text(value: Any) -> Any:
                number = self.number(value)
                return _text(value).strip() if number is None else number

            return number_or_text
        return lambda value: value.strip() if type(value) is str else _text(value).strip()

    def sheet(self, name: str | None, header: list[Any], records: Iterable[tuple[int, list[Any]]], csv: bool) -> None:
        r = self.reading
        r.sheets.append(name)
        where = f"sheet '{name}', row {self.options.header_row + 1}" if name else f"row {self.options.header_row + 1}"
        layout = self.layout
        mapping = map_header(header, layout.columns, layout.required, where)
        width = len(header)
        amount_at = mapping.get(self.table.amount) if self.table.amount else None
        # the compared values: the amount by the number already read, the others by their type's rule
        compared = [(i, self._canonical(layout.kinds[c])) for c, i in sorted(mapping.items()) if i != amount_at]
        footer = self.footer
        has_amount = self.table.amount is not None
        sheet_sum = Decimal(0)
        for row_no, values in records:
            if csv:
                if not "".join(values).strip():
                    r.blank += 1
                    continue
                while len(values) > width and not values[-1].strip():
                    values.pop()
                if len(values) != width:
                    r.rows_read += 1
                    r.ragged += 1
                    continue
            else:
                if all(_empty(v) for v in values):
                    r.blank += 1
                    continue
                if len(values) < width:
                    values = values + [None] * (width - len(values))
            # every mapped position is within the row from here on (a workbook row is padded to the header)
            amount = self.amount(values, mapping) if has_amount else None
            if footer is not None:
                first = values[0].strip() if type(values[0]) is str else ""
                if not first:
                    first = next(_text(v).strip() for v in values if not _empty(v))
                if footer.search(first):
                    shown = {c: _text(values[i]).strip() for c, i in mapping.items() if not _empty(values[i])}
                    r.footers.append(Footer(name, row_no, shown, amount, sheet_sum if has_amount else None))
                    continue
            r.rows_read += 1
            if amount is not None:
                sheet_sum = EXACT.add(sheet_sum, amount)
                r.amount_in = EXACT.add(r.amount_in, amount)
            signature = (amount if amount is not None else
                         _text(values[amount_at]).strip() if amount_at is not None else None,
                         *[canonical(values[i]) for i, canonical in compared])
            earlier = self.seen.setdefault(signature, (name, row_no))
            key = [self.key_value(values, mapping, k) for k in r.key_columns]
            if earlier != (name, row_no):
                r.copies.append(Copy(name, row_no, earlier[0], earlier[1],
                                     {k: _text(v).strip() for k, v in zip(r.key_columns, key, strict=True)
                                      if v is not None}, amount))
            self.row_keys.append(key)

    def finish(self) -> Reading:
        r = self.reading
        kinds = [self.table.column(k).type for k in r.key_columns]
        dates = None
        if "date" in kinds:
            samples = (v for row in self.row_keys for v, k in zip(row, kinds, strict=True)
                       if k == "date" and type(v) is str)
            dates = _Dates(self.options, self.locale, samples)
        readers = [self._key_reader(k, dates) for k in kinds]
        for row in self.row_keys:
            key = tuple(read(v) for read, v in zip(readers, row, strict=True))
            if None in key:
                r.keys_left_out += 1
            else:
                r.keys.append(key)
        self.row_keys = []
        return r

    def _key_reader(self, kind: str, dates: _Dates | None):
        """A key value as canonical text (integers as digits, dates as ISO), None when it cannot be read."""
        def text(value: Any) -> str | None:
            value = value.strip() if type(value) is str else _text(value).strip()
            return value or None

        def number(value: Any) -> str | None:
            if type(value) is str and kind == "integer" and (digits := value.strip()).isascii() and digits.isdigit():
                return str(int(digits))
            n = self.number(value, kind == "integer")
            return None if n is None else str(int(n)) if kind == "integer" else str(n)

        def date(value: Any) -> str | None:
            if type(value) is str:
                return dates.iso(value) if dates and value.strip() else None
            if isinstance(value, dt.datetime):
                return value.date().isoformat()
            if isinstance(value, dt.date):
                return value.isoformat()
            if isinstance(value, int | float) and not isinstance(value, bool):
                return _serial_date(float(value))
            return None

        if kind == "text":
            return text
        if kind in ("integer", "money"):
            return number
        if kind == "date":
            return date
        return lambda value: None  # a timestamp's key depends on its zone: left out
