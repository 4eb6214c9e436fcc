"""`playbook sources suggest FILE [--table T]`: read a sample of a real export and propose its source block.

The file is read as the loader will read it (a CSV's bytes, a workbook's cells through python-calamine) and
each setting of the block is a guess with a confidence and a reason: the encoding (a byte-order mark, else the
first of UTF-8 and Windows-1252 that decodes the sample), the delimiter (the one that splits the most lines
into the same number of fields), the header row (past titles, account numbers and balances: the first row of
mostly text whose following rows have its width), the sheets of a workbook (those of the same layout), the
footer rows, the decimal and thousands separators (from the numbers written as text), the order of day and
month (only when a date settles it: otherwise the block says it cannot tell and asks for read.dayfirst), the
mapping of headers onto the table's columns (by name and synonyms, checked against the values) and the
columns left over, offered as attributes. It prints YAML to paste under `sources:`; it never writes the
configuration.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import datetime as dt
import functools
import itertools
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.model import normalise_header  # the loader's own matching of header names
from playbook.errors import PlaybookError

SAMPLE_BYTES = 2 * 1024 * 1024  # of a text file
SAMPLE_ROWS = 5_000  # data rows profiled per sheet
HEADER_SEARCH = 40  # rows searched for the header
DELIMITERS = (",", ";", "\t", "|")
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_SPACES = " \u00a0\u202f"

# a date written as text: a/b/year (/, . or -), a time after it if any; ISO dates and times
_DATE_TEXT = re.compile(r"^(\d{1,2})([/.\-])(\d{1,2})\2(\d{4}|\d{2})(?:[ T]+(\d{1,2}):(\d{2})(:\d{2})?(?:\.\d+)?)?$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$")
# a number written as text: a sign, parentheses or a trailing minus, a currency sign or code, separators
_NUMBER_TEXT = re.compile(
    r"^(?P<lead>[-+(])?[ ]?(?P<cur1>[£$€¥]|[A-Z]{3})?[ ]?(?P<minus>-)?(?P<body>\d(?:[\d.,'\u00a0\u202f ]*\d)?)"
    r"[ ]?(?P<cur2>[£$€¥]|[A-Z]{3})?(?P<trail>[-)])?$")
_SIGNS = {"£": "GBP", "€": "EUR", "¥": "JPY"}  # $ names several currencies: it is not read as one
# the first cell of a row that is not data: totals, balances, sums
_FOOTER_WORDS = ("grand total", "grand totals", "sub total", "subtotal", "total", "totals", "closing balance",
                 "opening balance", "balance", "summe", "gesamt", "endsaldo", "schlusssaldo", "saldo", "sum")
_FOOTER = re.compile(r"(?i)^(" + "|".join(w.replace(" ", r"\s+") for w in _FOOTER_WORDS) + r")(\s|:|$)")


# -- the canonical columns' names as exports spell them ----------------------------------------------------
def _words(*phrases: str, weight: float = 1.0) -> list[tuple[str, float]]:
    return [(p, weight) for p in phrases]


DATE_WORDS = _words("date", "booking date", "transaction date", "posting date", "value date", "txn date",
                    "trans date", "datum", "buchungstag", "buchungsdatum", "valuta", "wertstellung", "date paid",
                    "paid on", "completed date", weight=0.9)
SYNONYMS: dict[str, list[tuple[str, float]]] = {
    "client_id": _words("customer id", "client id", "client code", "customer code", "customer no",
                        "customer number", "client no", "client number", "account", "account no", "account number",
                        "customer", "client", "counterparty", "from email address", "customer email", "debtor",
                        "payer", "kunde", "kundennummer", "cust id", "customer ref", "client ref")
    + _words("customer name", "client name", "name", "email", weight=0.6),
    "name": _words("name", "customer name", "client name", "company", "company name", "account name"),
    "segment": _words("segment", "customer segment", "customer type", "client type"),
    "country": _words("country", "country code", "land"),
    "created_on": _words("since", "created", "created on", "customer since", "client since", "date created",
                         "opened", "start date"),
    "order_id": _words("order id", "order no", "order number", "order", "invoice no", "invoice number",
                       "invoiceno", "invoice", "order ref", "document no", "sales order", "invoice id",
                       "bestellnummer", "rechnungsnummer"),
    "line_no": _words("line", "line no", "line number", "order line number", "order line", "item no", "position",
                      "pos", "line item"),
    "order_date": _words("order date", "invoice date", "sale date", "sales date", "orderdate"),
    "product": _words("product", "item", "product name", "sku", "article", "product code", "artikel")
    + _words("description", "product line", "productline", "item description", weight=0.7),
    "quantity": _words("quantity", "qty", "units", "units sold", "quantity ordered", "menge", "qty ordered"),
    "unit_price": _words("unit price", "price", "sale price", "price each", "unit cost", "einzelpreis"),
    "amount": _words("amount", "total", "line total", "line amount", "sales", "net", "gross", "value", "betrag",
                     "amount paid", "revenue", "net amount", "total amount", "transaction amount", "paid amount",
                     "sum", "umsatz"),
    "currency": _words("currency", "ccy", "curr", "currency code", "währung", "waehrung"),
    "payment_id": _words("payment id", "payment ref", "payment reference", "reference", "ref", "transaction id",
                         "transaction ref", "transaction reference", "txn id", "referenz", "receipt no"),
    "payment_date": _words("payment date", "date received", "received", "paid date", "receipt date"),
    "invoice_ref": _words("invoice", "invoice ref", "invoice no", "invoice number", "memo", "narrative",
                          "details", "purpose", "payment details", "verwendungszweck", "remittance")
    + _words("description", weight=0.8),
    "method": _words("method", "payment method", "type", "transaction type", "payment type")
    + _words("channel", weight=0.6),
    "cost_id": _words("expense id", "cost id", "expense no", "expense number", "voucher", "voucher no",
                      "receipt no", "beleg", "belegnummer") + _words("reference", "ref", "id", weight=0.8),
    "cost_date": _words("expense date", "cost date", "bill date"),
    "category": _words("category", "expense type", "cost category", "nominal", "kategorie")
    + _words("account", "type", weight=0.6),
    "vendor": _words("vendor", "supplier", "payee", "merchant", "lieferant"),
    "period": _words("period", "tax period", "month"),
    "tax_type": _words("tax type", "tax", "type"),
    "due_date": _words("due date", "due", "payment due"),
    "interaction_id": _words("interaction id", "ticket", "ticket id", "case id", "activity id", "id"),
    "occurred_at": _words("occurred at", "timestamp", "created at", "date time", "datetime", "time"),
    "channel": _words("channel", "medium", "source"),
    "outcome": _words("outcome", "result", "status", "disposition"),
    "debit": _words("debit", "debits", "withdrawal", "withdrawals", "paid out", "money out", "soll",
                    "debit amount", "outflow", "out"),
    "credit": _words("credit", "credits", "deposit", "deposits", "paid in", "money in", "haben",
                     "credit amount", "inflow", "in"),
}


def _compact(text: str) -> str:
    return re.sub(r"[^0-9a-zäöüß]", "", str(text).casefold())


def _tidy(header: object) -> str:
    """A header as the configuration names it: white space collapsed and trimmed (the loader matches it so)."""
    return " ".join(str(header if header is not None else "").split())


# -- what was found ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Guess:
    """One setting of the block: its value, how sure the guess is (0 to 1) and why."""

    setting: str  # its place in the block: read.delimiter, columns.client_id, table...
    value: Any
    confidence: float
    reason: str


@dataclass
class Suggestion:
    name: str
    file: str
    table: str
    block: dict[str, Any]  # the source block, as pipeline.config.SourceConfig reads it
    guesses: list[Guess] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)  # what the file does not settle: a person must say
    tables: dict[str, float] = field(default_factory=dict)  # each table's score, when none was named

    def guess(self, setting: str) -> Guess | None:
        return next((g for g in self.guesses if g.setting == setting), None)

    def yaml(self) -> str:
        return render(self)


@dataclass
class Sheet:
    """The rows of one sheet (or of a text file), as read for the sample."""

    name: str | None
    rows: list[list[Any]]
    lines: list[int] | None = None  # a text file's line of each record (0-based): header_row counts lines
    header: int | None = None  # index in rows
    reason: str = ""
    confidence: float = 0.0

    @property
    def header_row(self) -> int:
        return self.lines[self.header] if self.lines is not None else self.header


@dataclass
class Profile:
    """What one column's values are."""

    header: str
    position: int
    values: list[Any]
    blanks: int
    kind: str  # date, number, text or empty
    negatives: int = 0
    decimals: bool = False  # a number with a fractional part
    leading_zero: bool = False
    dates: list[tuple[int, int, str, int, bool, str]] = field(default_factory=list)  # a, b, sep, year digits,
    # time, text
    iso_dates: int = 0
    currency_marks: Counter = field(default_factory=Counter)


def _key_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


@functools.cache
def _currency_codes() -> frozenset[str]:
    from babel.numbers import list_currencies

    return frozenset(list_currencies())


def _number_text(value: str) -> re.Match | None:
    """A number written as text (with a currency sign or ISO code, if any), else None: 'INV 123' is no number."""
    text = value.strip()
    m = _NUMBER_TEXT.match(text) if text and any(c.isdigit() for c in text) else None
    if m and any(c and len(c) == 3 and c not in _currency_codes() for c in (m["cur1"], m["cur2"])):
        return None
    return m


def _date_value(value: Any) -> bool:
    if isinstance(value, (dt.date, dt.datetime)):
        return True
    if isinstance(value, str):
        text = value.strip()
        return bool(_DATE_TEXT.match(text) or _ISO_DATE.match(text))
    return False


def _number_value(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and not _date_value(value) and _number_text(value) is not None


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and not _date_value(value) and not _number_value(value)


# -- reading the sample ------------------------------------------------------------------------------------
def _encoding(sample: bytes) -> Guess:
    if sample.startswith(codecs.BOM_UTF8):
        return Guess("read.encoding", "utf-8-sig", 1.0, "the file starts with UTF-8's byte-order mark")
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return Guess("read.encoding", "utf-16", 1.0, "the file starts with a UTF-16 byte-order mark (Excel's "
                                                     "Unicode text)")
    if b"\x00" in sample[:4096]:
        head = sample[:4096]
        odd, even = head[1::2].count(0), head[0::2].count(0)
        encoding = "utf-16le" if odd > even else "utf-16be"
        return Guess("read.encoding", encoding, 0.8, f"every other byte is NUL, without a byte-order mark: "
                                                     f"{encoding}")
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(sample, final=len(sample) < SAMPLE_BYTES)
    except UnicodeDecodeError as exc:
        undefined = {0x81, 0x8D, 0x8F, 0x90, 0x9D} & set(sample)
        if undefined:
            return Guess("read.encoding", "latin-1", 0.7, f"not UTF-8 (byte 0x{sample[exc.start]:02X} at offset "
                                                          f"{exc.start}), and bytes Windows-1252 leaves undefined")
        return Guess("read.encoding", "cp1252", 0.85, f"not UTF-8 (byte 0x{sample[exc.start]:02X} at offset "
                                                      f"{exc.start}); Windows-1252 decodes every byte")
    if max(sample, default=0) < 0x80:
        return Guess("read.encoding", "utf-8", 0.9, "plain ASCII: UTF-8 reads it")
    return Guess("read.encoding", "utf-8", 0.95, "decodes as UTF-8, with characters beyond ASCII")


def _records(text: str, delimiter: str) -> tuple[list[list[str]], list[int]]:
    """The records of the text and the line each starts on (0-based)."""
    lines = text.splitlines(keepends=True)
    reader = csv.reader(lines, delimiter=delimiter, quotechar='"', strict=False)
    rows, starts, previous = [], [], 0
    try:
        for row in reader:
            rows.append(row)
            starts.append(previous)
            previous = reader.line_num
    except csv.Error:
        pass  # a sample cut inside a quoted value: what was read is enough
    return rows, starts


def _delimiter(text: str) -> Guess:
    lines = [line for line in text.splitlines()[:400] if line.strip()]
    scores = {}
    for delimiter in DELIMITERS:
        rows, _ = _records("\n".join(lines), delimiter)
        widths = Counter(len(r) for r in rows if len(r) > 1)
        if widths:
            width, count = max(widths.items(), key=lambda kv: (kv[1], kv[0]))
            scores[delimiter] = (count, width)
    if not scores:
        return Guess("read.delimiter", ",", 0.3, "no delimiter splits the lines: one column, or not a delimited "
                                                 "text file")
    best = max(scores, key=lambda d: scores[d])
    count, width = scores[best]
    runner = max((s for d, s in scores.items() if d != best), default=(0, 0))
    confidence = 0.95 if runner[0] < count else 0.8 if runner[1] < width else 0.6
    try:
        sniffed = csv.Sniffer().sniff("\n".join(lines[-50:]), delimiters="".join(DELIMITERS)).delimiter
    except csv.Error:
        sniffed = None
    agrees = "; csv.Sniffer agrees" if sniffed == best else ""
    return Guess("read.delimiter", best, confidence,
                 f"{_DELIMITER_NAMES[best]}: {count} of {len(lines)} lines split into the same {width} fields{agrees}")


def _text_sheet(path: Path) -> tuple[Sheet, list[Guess]]:
    with open(path, "rb") as fh:
        sample = fh.read(SAMPLE_BYTES)
    if not sample.strip():
        raise PlaybookError(f"{path}: the file is empty")
    encoding = _encoding(sample)
    codec = {"utf-16": "utf-16", "utf-8-sig": "utf-8-sig"}.get(encoding.value, encoding.value)
    text = sample.decode(codec, errors="replace")
    if len(sample) == SAMPLE_BYTES:
        text = text[:text.rfind("\n") + 1] or text  # a line cut by the sample's end is left out
    delimiter = _delimiter(text)
    rows, starts = _records(text, delimiter.value)
    return Sheet(None, rows, starts), [encoding, delimiter]


def _workbook_sheets(path: Path) -> tuple[list[Sheet], list[str]]:
    from python_calamine import CalamineError, CalamineWorkbook

    try:
        workbook = CalamineWorkbook.from_path(str(path))
    except (CalamineError, ValueError, OSError) as exc:
        raise PlaybookError(f"{path}: not a workbook that can be read ({exc})") from None
    sheets, hidden = [], []
    for meta in workbook.sheets_metadata:
        if not str(meta.visible).endswith("Visible"):
            hidden.append(meta.name)
            continue
        try:
            rows = workbook.get_sheet_by_name(meta.name).to_python(skip_empty_area=False)
        except CalamineError:
            continue  # a chart sheet, or one calamine cannot read: not data
        sheets.append(Sheet(meta.name, [list(r) for r in rows[:HEADER_SEARCH + SAMPLE_ROWS]]))
    return sheets, hidden


# -- the layout: header, data rows, footers ----------------------------------------------------------------
def _extent(row: list[Any]) -> int:
    return max((i + 1 for i, v in enumerate(row) if not _blank(v)), default=0)


def _filled(row: list[Any]) -> int:
    return sum(1 for v in row if not _blank(v))


def _first_cell(row: list[Any]) -> Any:
    return next((v for v in row if not _blank(v)), None)


def _is_footer(row: list[Any]) -> bool:
    first = _first_cell(row)
    return isinstance(first, str) and bool(_FOOTER.match(first.strip()))


def _find_header(sheet: Sheet) -> None:
    """The first row whose cells are mostly text and whose following rows have its width."""
    text_file = sheet.lines is not None
    for i, row in enumerate(sheet.rows[:HEADER_SEARCH]):
        filled = _filled(row)
        if filled < 2 or sum(_is_text(v) for v in row) < 0.75 * filled:
            continue
        width = len(row) if text_file else _extent(row)
        if filled < 0.6 * width:
            continue
        following = [r for r in sheet.rows[i + 1:i + 12] if _filled(r) and not _is_footer(r)][:10]
        if not following:
            continue
        fits = [r for r in following if (len(r) == width if text_file else _extent(r) <= width)
                and _filled(r) >= max(2, filled // 2)]
        if len(fits) < 0.8 * len(following) or not any(_date_value(v) or _number_value(v) for r in fits for v in r):
            continue
        sheet.header = i
        above = [str(_first_cell(r)).strip() for r in sheet.rows[:i] if _filled(r)]
        where = f"row {sheet.header_row + 1} of the {'file' if text_file else 'sheet'}"
        skipped = (f"; above it: {', '.join(repr(a[:40]) for a in above[:4])}" + (", ..." if len(above) > 4 else "")
                   if above else "")
        sheet.reason = (f"{where} is the first of mostly text ({filled} names) whose next {len(following)} rows "
                        f"have its width{skipped}")
        sheet.confidence = 0.95 if len(fits) == len(following) else 0.75
        return


def _data_rows(sheet: Sheet) -> tuple[list[list[Any]], list[tuple[int, Any]], list[int]]:
    """The sheet's data rows (blank rows left out), its footers (row number, label): rows labelled as totals or
    balances that fill fewer cells than the header, and the rows that repeat the header (row numbers)."""
    rows, footers, repeats = [], [], []
    header = sheet.rows[sheet.header]
    names = [normalise_header(v) for v in header]
    for i, row in enumerate(sheet.rows[sheet.header + 1:], start=sheet.header + 1):
        number = (sheet.lines[i] if sheet.lines else i) + 1
        if not _filled(row):
            continue
        if _is_footer(row) and _filled(row) < _filled(header):
            footers.append((number, str(_first_cell(row)).strip()))
        elif [normalise_header(v) for v in row] == names:
            repeats.append(number)
        else:
            rows.append(row)
    return rows[:SAMPLE_ROWS], footers, repeats


def _profile(header: list[Any], rows: list[list[Any]]) -> list[Profile]:
    profiles, seen = [], set()
    for j, name in enumerate(header):
        tidy = _tidy(name)
        if not tidy or tidy.casefold() in seen:  # the loader maps the first of repeated names
            continue
        seen.add(tidy.casefold())
        cells = [r[j] if j < len(r) else None for r in rows]
        values = [v.strip() if isinstance(v, str) else v for v in cells if not _blank(v)]
        p = Profile(tidy, j, values, len(cells) - len(values), "empty")
        if values:
            dates = sum(_date_value(v) for v in values)
            numbers = sum(_number_value(v) for v in values)
            p.kind = ("date" if dates >= 0.9 * len(values) else "number" if numbers >= 0.9 * len(values)
                      else "text")
        for v in values:
            if isinstance(v, str):
                m = _DATE_TEXT.match(v)
                if m:
                    p.dates.append((int(m[1]), int(m[3]), m[2], len(m[4]), m[5] is not None, v))
                elif _ISO_DATE.match(v):
                    p.iso_dates += 1
                elif (n := _number_text(v)) is not None:
                    p.negatives += bool(n["lead"] in ("-", "(") or n["minus"] or n["trail"])
                    p.decimals |= bool(re.search(r"[.,]", n["body"]))
                    p.leading_zero |= len(n["body"]) > 1 and n["body"][0] == "0" and n["body"][1].isdigit()
                    for mark in (n["cur1"], n["cur2"]):
                        if mark:
                            p.currency_marks[_SIGNS.get(mark, mark)] += 1
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                p.negatives += v < 0
                p.decimals |= isinstance(v, float) and not v.is_integer()
        profiles.append(p)
    return profiles


# -- separators and dates ----------------------------------------------------------------------------------
def _separator_votes(body: str) -> tuple[str | None, str | None, bool]:
    """(decimal, thousands, ambiguous) as one number written as text tells them."""
    body = re.sub(f"[{_SPACES}]", " ", body)
    seps = [c for c in body if not c.isdigit()]
    if not seps:
        return None, None, False
    kinds = list(dict.fromkeys(seps))
    if len(kinds) >= 2:
        decimal = seps[-1]
        thousands = next(c for c in kinds if c != decimal)
        return (decimal if decimal in ".," else None), thousands, False
    c = kinds[0]
    if c in " '":
        return None, c, False
    if len(seps) > 1:
        return None, c, False  # 1.234.567: grouping
    after = len(body) - body.index(c) - 1
    if after == 3:
        return None, None, True  # 1,234 or 1.234: a thousands separator, or three decimals
    return c, None, False


def _separators(profiles: list[Profile]) -> list[Guess]:
    decimal, thousands, ambiguous = Counter(), Counter(), []
    examples: dict[tuple[str, str], str] = {}
    for p in profiles:
        if p.kind != "number":
            continue
        for v in p.values:
            if isinstance(v, str) and (n := _number_text(v)) is not None:
                d, t, unsure = _separator_votes(n["body"])
                if d:
                    decimal[d] += 1
                    examples.setdefault(("d", d), f"{v!r} in {p.header!r}")
                if t:
                    thousands[t] += 1
                    examples.setdefault(("t", t), f"{v!r} in {p.header!r}")
                if unsure:
                    ambiguous.append(f"{v!r} in {p.header!r}")
    guesses = []
    if decimal or thousands:
        # the decimal separator the numbers show, else the one their thousands separator leaves
        point = decimal.most_common(1)[0][0] if decimal else "," if thousands.most_common(1)[0][0] == "." else "."
        others = {d: n for d, n in decimal.items() if d != point}
        confidence = 0.95 if not others else 0.6
        reason = (f"numbers written as text such as {examples[('d', point)]}" if ("d", point) in examples
                  else f"{examples[('t', next(iter(thousands)))]} groups thousands with the other separator")
        if others:
            reason += (f"; but {sum(others.values())} value(s) such as {examples[('d', next(iter(others)))]} use "
                       "the other: those rows will be quarantined")
        guesses.append(Guess("read.decimal", point, confidence, reason))
        group = [t for t, _ in thousands.most_common() if t != point]
        if group:
            guesses.append(Guess("read.thousands", group[0], 0.95 if len(group) == 1 else 0.6,
                                 f"digits grouped in thousands, e.g. {examples[('t', group[0])]}"))
        elif ambiguous and point == ",":
            guesses.append(Guess("read.thousands", ".", 0.5, f"{ambiguous[0]} reads as thousands with a decimal "
                                                            "comma"))
        elif ambiguous:
            guesses.append(Guess("read.thousands", ",", 0.5, f"{ambiguous[0]} reads as thousands with a decimal "
                                                            "point"))
    elif ambiguous:
        guesses.append(Guess("read.thousands", ",", 0.4, f"cannot tell: {ambiguous[0]} is 1234 with a thousands "
                                                        "comma, or three decimals; check read.decimal and "
                                                        "read.thousands"))
    return guesses


def _date_guesses(dated: list[Profile], target_types: dict[str, str]) -> tuple[list[Guess], list[str]]:
    """read.dayfirst and read.date_format from the text dates of the mapped date columns, or the question."""
    shapes = [(d, p.header) for p in dated for d in p.dates]
    if not shapes:
        return [], []
    day = next(((h, d[5]) for d, h in shapes if d[0] > 12 and d[1] <= 12), None)
    month = next(((h, d[5]) for d, h in shapes if d[1] > 12 and d[0] <= 12), None)
    either = next(((h, d[5], d[0], d[1]) for d, h in shapes if d[0] != d[1] and d[0] <= 12 and d[1] <= 12), None)
    two_digit = next((d[5] for d, _ in shapes if d[3] == 2), None)
    guesses, questions = [], []
    if day and month:
        questions.append(f"read.dayfirst: dates are written in both orders ({day[1]!r} in {day[0]!r} has the day "
                         f"first, {month[1]!r} in {month[0]!r} the month first): correct the file, or set "
                         "read.dayfirst: true (day first) or false (month first)")
        return guesses, questions
    if not day and not month:
        if either is None:
            return guesses, questions  # 12/12/2024 reads the same either way
        _, _, a, b = either
        questions.append(f"read.dayfirst: cannot tell: every date, e.g. {either[1]!r} in {either[0]!r}, reads as "
                         f"day {a} month {b} or day {b} month {a}; add dayfirst: true (day "
                         "first) or false (month first); left out, company.locale decides, and without one the "
                         "load stops and asks" + ("; two-digit years need read.date_format as well, e.g. "
                                                  "'%d/%m/%y'" if two_digit else ""))
        return guesses, questions
    dayfirst = day is not None
    header, value = day or month
    guesses.append(Guess("read.dayfirst", dayfirst, 0.95,
                         f"{value!r} in {header!r} can only be {'day' if dayfirst else 'month'} first"))
    seps = {d[2] for d, _ in shapes}
    years = {d[3] for d, _ in shapes}
    if len(seps) == 1 and len(years) == 1 and (years == {2} or seps == {"."}):
        sep, = seps
        fmt = sep.join(("%d", "%m") if dayfirst else ("%m", "%d")) + sep + ("%y" if years == {2} else "%Y")
        times = {d[4] for d, _ in shapes}
        timestamps = {target_types.get(p.header) for p in dated if p.dates} == {"timestamp"}
        if times == {True} and timestamps:
            fmt += " %H:%M" + (":%S" if all(re.search(r":\d{2}:\d{2}", d[5]) for d, _ in shapes) else "")
        why = "two-digit years are read only with a format" if years == {2} else f"dates written as {value!r}"
        guesses.append(Guess("read.date_format", fmt, 0.9, why))
    return guesses, questions


# -- the mapping -------------------------------------------------------------------------------------------
def _name_score(header: str, synonyms: list[tuple[str, float]]) -> tuple[float, str]:
    compact = _compact(header)
    words = set(re.findall(r"[0-9a-zäöüß]+", header.casefold()))
    best, why = 0.0, ""
    for phrase, weight in synonyms:
        if compact == _compact(phrase):
            score = weight
        elif set(phrase.split()) <= words and len(phrase) >= 4:
            score = 0.7 * weight  # 'Amount (EUR)' holds amount
        else:
            continue
        if score > best:
            best, why = score, phrase
    return best, why


def _fits(column_type: str, p: Profile) -> float:
    """How well the values fit the column's type (1: they do; lower: a name matched values of another kind)."""
    if p.kind == "empty":
        return 0.5
    if column_type in ("money", "number"):
        return 1.0 if p.kind == "number" else 0.2
    if column_type == "integer":
        return 1.0 if p.kind == "number" and not p.decimals else 0.3
    if column_type in ("date", "timestamp"):
        return 1.0 if p.kind == "date" else 0.2
    return 0.4 if p.kind == "date" else 1.0


@dataclass
class Mapping:
    table: str
    columns: dict[str, Profile]
    scores: dict[str, tuple[float, str]]
    amounts: str | None
    score: float


def _map(table_name: str, profiles: list[Profile]) -> Mapping:
    from pipeline.config import DEBIT_CREDIT
    from pipeline.model import TABLES

    table = TABLES[table_name]
    types = {c.name: c.type for c in table.columns}
    if table.amount:
        types.update({name: "money" for name in DEBIT_CREDIT})
    pairs = []
    for canonical in types:
        synonyms = SYNONYMS.get(canonical, []) + (DATE_WORDS if canonical == table.date else [])
        for p in profiles:
            name, phrase = _name_score(p.header, synonyms)
            if name:
                fit = _fits(types[canonical], p)
                pairs.append((name * fit, canonical, p, f"{p.header!r} is {phrase!r}" + (
                    "" if fit == 1.0 else f", but its values are {p.kind}")))
    pairs.sort(key=lambda t: -t[0])
    columns: dict[str, Profile] = {}
    scores: dict[str, tuple[float, str]] = {}
    used: set[int] = set()
    for score, canonical, p, why in pairs:
        if score < 0.45 or canonical in columns or p.position in used:
            continue
        columns[canonical], scores[canonical] = p, (round(score, 2), why)
        used.add(p.position)
    left = [p for p in profiles if p.position not in used]
    if table.date and table.date not in columns:
        dates = [p for p in left if p.kind == "date"]
        if dates:
            columns[table.date] = dates[0]
            scores[table.date] = (0.6 if len(dates) == 1 else 0.4,
                                  f"{dates[0].header!r} holds dates" + ("" if len(dates) == 1 else
                                                                        f", the first of {len(dates)} such columns"))
            used.add(dates[0].position)
    amounts = None
    if table.amount and {"debit", "credit"} <= set(columns) and table.amount not in columns:
        amounts = "debit_credit"
    else:
        for name in ("debit", "credit"):
            columns.pop(name, None)
            scores.pop(name, None)
    mapped = set(columns) | ({table.amount} if amounts else set())
    missing = [c.name for c in table.columns if c.required and c.name not in mapped]
    score = sum(s for s, _ in scores.values()) + (2.0 if not missing else -3.0 * len(missing))
    return Mapping(table_name, columns, scores, amounts, score)


def _attribute_name(header: str, taken: set[str]) -> str:
    name = re.sub(r"[^a-z0-9]+", "_", header.casefold()).strip("_")[:36] or "column"
    if not name[0].isalpha():
        name = f"c_{name}"[:36]
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _natural_key(table_name: str, mapping: Mapping) -> tuple[list[str] | None, Guess | None, str | None]:
    """The key the block declares (None: the table's own is mapped), its guess, and load: snapshot when no
    mapped columns tell the rows apart."""
    from pipeline.model import KEY_TYPES, TABLES

    table = TABLES[table_name]
    if set(table.natural_key) <= set(mapping.columns):
        own = [mapping.columns[k] for k in table.natural_key]
        rows = list(zip(*(p.values for p in own), strict=False))
        repeats = len(rows) - len(set(map(tuple, ([_key_text(v) for v in r] for r in rows))))
        if not repeats and not any(p.blanks for p in own):
            return None, None, None
    candidates = [c for c, p in mapping.columns.items() if table.column(c).type in KEY_TYPES and not p.blanks
                  and c not in ("currency",)]
    candidates.sort(key=lambda c: (not c.endswith("_id"), not c.endswith(("_no", "_ref")), c))
    for size in (1, 2, 3):
        for combo in itertools.combinations(candidates, size):
            values = list(zip(*(mapping.columns[c].values for c in combo), strict=False))
            keys = {tuple(_key_text(v) for v in r) for r in values}
            # dates alone never make a key: a second sale on a day would replace the first
            dated_only = all(table.column(c).type == "date" for c in combo)
            if values and len(keys) == len(values) and not dated_only:
                headers = ", ".join(repr(mapping.columns[c].header) for c in combo)
                return list(combo), Guess("natural_key", list(combo), 0.7 if size == 1 else 0.5,
                                          f"{headers} tell{'s' if size == 1 else ''} the {len(values)} sampled rows "
                                          "apart"), None
    return ["row"], Guess("natural_key", ["row"], 0.4, "no mapped column or pair of columns tells the rows apart: "
                                                       "each row is known by its place, and each file is the "
                                                       "source's whole truth for the dates it covers (load: "
                                                       "snapshot)"), "snapshot"


# -- the suggestion ----------------------------------------------------------------------------------------
def _source_name(path: Path) -> str:
    name = re.sub(r"[^a-z0-9]+", "_", path.stem.casefold()).strip("_") or "source"
    return (name if name[0].isalpha() else f"s_{name}")[:40]


def _choose_sheets(sheets: list[Sheet], hidden: list[str], path: Path) -> tuple[list[Sheet], Guess]:
    data = [s for s in sheets if s.header is not None]
    if not data:
        names = ", ".join(repr(s.name) for s in sheets) or "none"
        raise PlaybookError(f"{path}: no sheet has a header row followed by rows of data (visible sheets: {names})")

    def layout(s: Sheet) -> tuple:
        return s.header, tuple(normalise_header(v) for v in s.rows[s.header] if _tidy(v))

    groups: dict[tuple, list[Sheet]] = {}
    for s in data:
        groups.setdefault(layout(s), []).append(s)
    chosen = max(groups.values(), key=lambda g: (len(g), sum(len(s.rows) for s in g)))
    names = [s.name for s in chosen]
    others = [s.name for s in sheets if s.name not in names]
    left = (f"; not read: {', '.join(repr(o) for o in others)} (another layout)" if others else "") + (
        f"; hidden: {', '.join(repr(h) for h in hidden)}" if hidden else "")
    if len(names) > 1:
        stem = os.path.commonprefix(names)
        pattern = "^" + re.sub(r"([.^$*+?{}\[\]\\|()])", r"\\\1", stem) if len(stem.strip()) >= 3 else None
        if pattern and all(re.search(pattern, n) for n in names) and not any(re.search(pattern, o) for o in others):
            return chosen, Guess("read.sheet_pattern", pattern, 0.9,
                                 f"{len(names)} sheets of the same layout: {', '.join(repr(n) for n in names)}{left}")
        return chosen, Guess("read.sheets", names, 0.85,
                             f"{len(names)} sheets of the same layout{left}")
    return chosen, Guess("read.sheets", names, 0.9 if not others else 0.85,
                         f"the sheet with a header and rows of data{left}")


def _footer_pattern(labels: list[str]) -> str:
    words = []
    for label in labels:
        m = _FOOTER.match(label)
        word = m[1] if m else label
        spelled = r"[ \t]+".join(re.escape(w) for w in word.split())
        if spelled.casefold() not in (w.casefold() for w in words):
            words.append(spelled)
    return "(?i)^(" + "|".join(words) + r")([ \t]|:|$)"


def suggest(path: str | Path, table: str | None = None, name: str | None = None) -> Suggestion:
    """The source block a file suggests (see the module's docstring)."""

    from pipeline.config import ReadOptions
    from pipeline.model import TABLES

    file = Path(path)
    if name is not None and not re.match(r"^[a-z][a-z0-9_]{0,39}$", name):
        raise PlaybookError(f"source name {name!r} must be lower-case letters, digits and _ (max 40)")
    if not file.is_file():
        raise PlaybookError(f"{file}: no such file")
    if table is not None and table not in TABLES:
        raise PlaybookError(f"unknown table {table!r}; choose one of {', '.join(TABLES)}")
    with open(file, "rb") as fh:
        magic = fh.read(8)
    guesses: list[Guess] = []
    if magic.startswith(b"PK\x03\x04") or magic.startswith(b"\xd0\xcf\x11\xe0"):
        kind = Guess("kind", "excel", 1.0, "a workbook")
        sheets, hidden = _workbook_sheets(file)
        for s in sheets:
            _find_header(s)
        chosen, sheet_guess = _choose_sheets(sheets, hidden, file)
        guesses.append(sheet_guess)
    else:
        kind = Guess("kind", "s3_csv", 0.95, "delimited text")
        sheet, read_guesses = _text_sheet(file)
        _find_header(sheet)
        if sheet.header is None:
            raise PlaybookError(f"{file}: no row looks like a header (a row of names followed by rows of data of "
                                "its width) in the first lines")
        chosen = [sheet]
        guesses += read_guesses
    guesses.insert(0, kind)
    first = chosen[0]
    guesses.append(Guess("read.header_row", first.header_row, first.confidence, first.reason))
    header = first.rows[first.header]
    rows, footers, questions = [], [], []
    for s in chosen:
        data, feet, repeats = _data_rows(s)
        rows += data
        footers += [(s.name, r, label) for r, label in feet]
        if repeats:
            where = f" of sheet {s.name!r}" if s.name else ""
            questions.append(f"the header is repeated on row {', '.join(map(str, repeats[:5]))}{where} (two exports "
                             "joined?): such a row is not data and is quarantined; remove it from the file")
    if not rows:
        raise PlaybookError(f"{file}: no data rows below the header")
    if footers:
        labels = [label for _, _, label in footers]
        default = ReadOptions().skip_rows_matching
        example = ", ".join(f"{label!r} (row {r}{f', sheet {n!r}' if n else ''})" for n, r, label in footers[:3])
        pattern = _footer_pattern(labels)
        if all(re.match(default, label) for label in labels):
            pattern = default
        guesses.append(Guess("read.skip_rows_matching", pattern, 0.9, f"footer rows, not data: {example}"))
    profiles = _profile(header, rows)

    mappings = {t: _map(t, profiles) for t in ([table] if table else TABLES)}
    if table is None:
        ranked = sorted(mappings.values(), key=lambda m: -m.score)
        best, second = ranked[0], ranked[1]
        margin = best.score - second.score
        guesses.append(Guess("table", best.table, 0.9 if margin >= 2 else 0.6 if margin >= 0.5 else 0.4,
                             f"its headers fit {best.table} best (score {best.score:.1f}; next {second.table}, "
                             f"{second.score:.1f}); name another with --table"))
        mapping = best
    else:
        mapping = mappings[table]
        guesses.append(Guess("table", table, 1.0, "named with --table"))
    t = TABLES[mapping.table]

    block: dict[str, Any] = {"kind": kind.value, "table": mapping.table}
    source_name = name or _source_name(file)
    block["prefix"] = f"landing/{source_name.replace('_', '-')}/"
    block["schedule"] = "cron(0 6 * * ? *)"
    guesses.append(Guess("prefix", block["prefix"], 1.0, "where its files will land: change at will"))
    guesses.append(Guess("schedule", block["schedule"], 0.3, "daily at 06:00 UTC: set when its files arrive"))

    amount = mapping.columns.get(t.amount) if t.amount else None
    if mapping.amounts == "debit_credit":
        block["amounts"] = "debit_credit"
        guesses.append(Guess("amounts", "debit_credit", 0.9, f"separate {mapping.columns['debit'].header!r} and "
                                                             f"{mapping.columns['credit'].header!r} columns: amount "
                                                             "= credit - debit"))
        signed = [p for p in (mapping.columns["debit"], mapping.columns["credit"]) if p.negatives]
        if signed:
            questions.append(f"amounts: {signed[0].header!r} holds {signed[0].negatives} negative value(s): a debit "
                             "or credit written with a sign is quarantined")
    elif amount is not None and amount.negatives:
        block["amounts"] = "signed"
        guesses.append(Guess("amounts", "signed", 0.8, f"{amount.negatives} negative value(s) in {amount.header!r}: "
                                                       "refunds or outflows (use inverted if the source writes "
                                                       "money in as negative)"))
    elif amount is not None:
        guesses.append(Guess("amounts", "positive", 0.7, f"no negative value in {amount.header!r} (the default)"))

    if "currency" not in mapping.columns and "currency" in t.column_names:
        money = [p for c, p in mapping.columns.items() if c in ("amount", "debit", "credit", "unit_price")]
        marks = Counter()
        for p in money:
            marks.update(p.currency_marks)
            m = re.search(r"\(([A-Z]{3})\)|\b([A-Z]{3})$", p.header)
            if m:
                marks[m[1] or m[2]] += len(p.values)
        if len(marks) == 1:
            code = next(iter(marks))
            block["currency"] = code
            guesses.append(Guess("currency", code, 0.8, f"amounts are written in {code}"))
        elif len(marks) > 1:
            questions.append(f"currency: amounts name several currencies ({', '.join(sorted(marks))}) and no column "
                             "holds the currency: map columns.currency, or split the file")
        else:
            guesses.append(Guess("currency", None, 0.5, "the file does not name its currency: rows take the "
                                                        "company's (set currency: EUR, say, for another)"))

    key, key_guess, load = _natural_key(mapping.table, mapping)
    if load:
        block["load"] = load
    if key is not None:
        block["natural_key"] = key
        guesses.append(key_guess)

    order = list(t.column_names) + ["debit", "credit"]
    block["columns"] = {c: mapping.columns[c].header for c in sorted(mapping.columns, key=order.index)}
    for c, (score, why) in mapping.scores.items():
        guesses.append(Guess(f"columns.{c}", mapping.columns[c].header, score, why))

    used = {p.position for p in mapping.columns.values()}
    attributes: dict[str, Any] = {}
    taken = set(t.column_names) | {"attributes"}
    dated = [p for c, p in mapping.columns.items() if c in t.column_names and t.column(c).type in ("date",
                                                                                                  "timestamp")]
    for p in profiles:
        if p.position in used or p.kind == "empty":
            continue
        attr = _attribute_name(p.header, taken)
        if p.kind == "number" and not p.leading_zero and not p.currency_marks:
            kind_name = "number" if p.decimals else "integer"
            attributes[attr] = {"column": p.header, "type": kind_name}
            reason = f"{p.header!r}: not a column of {mapping.table}; its values are {kind_name}s"
        elif p.kind == "date" and not p.dates:
            attributes[attr] = {"column": p.header, "type": "date"}
            dated.append(p)
            reason = f"{p.header!r}: not a column of {mapping.table}; its values are dates"
        else:
            attributes[attr] = p.header
            reason = f"{p.header!r}: not a column of {mapping.table}; kept as text"
        guesses.append(Guess(f"attributes.{attr}", attributes[attr], 0.5, reason + " (drop it if it is not wanted)"))
    if attributes:
        block["attributes"] = attributes

    guesses += _separators(profiles)
    date_guesses, date_questions = _date_guesses(dated, {p.header: t.column(c).type for c, p in
                                                         mapping.columns.items() if c in t.column_names})
    guesses += date_guesses
    questions += date_questions

    mapped = set(mapping.columns) | ({t.amount} if mapping.amounts else set())
    missing = [c.name for c in t.columns if c.required and c.name not in mapped]
    if missing:
        questions.append(f"columns: no header was recognised for {', '.join(missing)} (required in "
                         f"{mapping.table}): map {'it' if len(missing) == 1 else 'them'} by hand; headers: "
                         f"{', '.join(repr(p.header) for p in profiles)}")

    read: dict[str, Any] = {}
    defaults = ReadOptions()
    for g in guesses:
        if g.setting.startswith("read."):
            option = g.setting.removeprefix("read.")
            if g.value != getattr(defaults, option, None) or option == "skip_rows_matching":
                read[option] = g.value
    if read:
        block["read"] = read
    return Suggestion(source_name, str(file), mapping.table, block, guesses, questions,
                      {m.table: round(m.score, 2) for m in mappings.values()} if table is None else {})


# -- YAML, with the reasons as comments --------------------------------------------------------------------
def _scalar(value: Any) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1_000_000, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def render(s: Suggestion) -> str:
    notes = {g.setting: g for g in s.guesses}

    def comment(setting: str) -> str:
        g = notes.get(setting)
        if g is None:
            return ""
        sure = "" if g.confidence >= 0.9 else " (check)" if g.confidence >= 0.6 else " (unsure: check)"
        return f"  # {g.reason}{sure} [confidence {g.confidence:.2f}]"

    lines = [f"# suggested by `playbook sources suggest` from {Path(s.file).name}: paste under `sources:` in "
             "playbook.yaml,",
             "# then run `playbook config check`. Each comment gives the reason and confidence of its line."]
    if s.tables:
        lines.append("# table scores: " + ", ".join(f"{t} {v:.1f}" for t, v in
                                                   sorted(s.tables.items(), key=lambda kv: -kv[1])))
    lines.append(f"  {s.name}:")
    for key, value in s.block.items():
        if isinstance(value, dict):
            lines.append(f"    {key}:")
            for sub, inner in value.items():
                lines.append(f"      {sub}: {_scalar(inner)}{comment(f'{key}.{sub}')}")
            if key == "read":
                lines += [f"      # ASK {q}" for q in s.questions if q.startswith("read.")]
        else:
            lines.append(f"    {key}: {_scalar(value)}{comment(key)}")
    if "read" not in s.block and any(q.startswith("read.") for q in s.questions):
        lines.append("    # read:")
        lines += [f"      # ASK {q}" for q in s.questions if q.startswith("read.")]
    if "currency" not in s.block and notes.get("currency") is not None:
        lines.append(f"    # currency: not set{comment('currency')}")
    lines += [f"    # ASK {q}" for q in s.questions if not q.startswith("read.")]
    return "\n".join(lines) + "\n"


# -- the command -------------------------------------------------------------------------------------------
def cmd_sources_suggest(args: argparse.Namespace) -> int:
    suggestion = suggest(args.file, table=args.table, name=args.name)
    sys.stdout.write(suggestion.yaml())
    if suggestion.questions:
        print(f"playbook: {len(suggestion.questions)} thing(s) the file does not settle: see the lines marked ASK",
              file=sys.stderr)
    return 0


def register_commands(subparsers) -> None:
    sources = subparsers.add_parser("sources", help="sources of the configuration")
    sources_sub = sources.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sources_sub.add_parser("suggest", help="read a sample of an export and print a source block to paste into "
                                               "playbook.yaml (it writes nothing)")
    p.add_argument("file", help="a CSV or other delimited text export, or a workbook (.xlsx)")
    p.add_argument("--table", help="the canonical table it feeds (default: the table its headers fit best)")
    p.add_argument("--name", help="the source's name (default: from the file's name)")
    p.set_defaults(func=cmd_sources_suggest)

