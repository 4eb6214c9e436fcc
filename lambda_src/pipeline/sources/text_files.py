"""What a text export is before its records are read: its encoding, and how its quotes are meant.

Line ends: a file whose lines end in a carriage return alone is read with line feeds instead.

Encodings: a file that starts with a UTF-16 byte-order mark is UTF-16 whatever the source says (the mark
settles it); `utf-16le` and `utf-16be` are read without one. UTF-16 is turned into UTF-8 once, as the file
streams to a copy beside it, so every reader after (PostgreSQL's COPY included) reads UTF-8. A file holding
NUL bytes with no mark is refused with the setting to add, never read as garbage.

Quotes: a quote character opens a quoted value only at the start of a value; anywhere else it is a literal
character (`Pizza Base 12" x10`), as Python's csv module and pyarrow read it. PostgreSQL's CSV COPY and the
handler's lane find records by counting quotes instead, which reads the same only when every quote opens a
value, closes one or is doubled inside one. `survey_quotes` tells which kind of file this is, a piece at a
time, so that a file with a stray quote is read record by record instead of losing the rows after it.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import ReadOptions
from pipeline.sources import LoadError

CHUNK = 1 << 20
BOMS = ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
NL, CR = 10, 13


@dataclass
class TextFile:
    """A delivered text file ready to read: its path (a UTF-8 copy of a UTF-16 file), the source's options
    with the encoding it is read in, and what was decided about it (for the ledger's plan)."""

    path: Path
    options: ReadOptions
    plan: dict = field(default_factory=dict)
    made: Path | None = None  # the copy made here, to remove when done

    def close(self) -> None:
        if self.made is not None:
            self.made.unlink(missing_ok=True)


def prepare(path: Path, display: str, options: ReadOptions) -> TextFile:
    """The file as it is read: in UTF-8 when it is UTF-16, after its encoding is settled."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    declared = options.encoding
    codec = next((name for bom, name in BOMS if head.startswith(bom)), None)
    plan = {}
    if codec is not None:
        if not declared.startswith("utf-16"):
            plan["encoding"] = f"{codec.upper()} (the file's byte-order mark), not {declared} as declared"
        else:
            plan["encoding"] = f"{codec.upper()} (byte-order mark)"
    elif declared == "utf-16":
        raise LoadError(f"{display}: the file has no UTF-16 byte-order mark; set read.encoding to utf-16le or "
                        "utf-16be for this source")
    elif declared in ("utf-16le", "utf-16be"):
        codec = declared[:6] + "-" + declared[6:]
        plan["encoding"] = f"{codec.upper()} (read.encoding)"
    elif b"\x00" in head:
        raise LoadError(f"{display}: the file holds NUL bytes and no byte-order mark: it looks like UTF-16 text (as "
                        "Excel saves 'Unicode Text'); set read.encoding: utf-16le (or utf-16be) for this source")
    if codec is None:
        return _line_ends(TextFile(path, options, plan))
    copy = path.with_name(path.name + ".utf-8")
    decoder = codecs.getincrementaldecoder(codec)(errors="strict")
    done = 0
    try:
        with open(path, "rb") as src, open(copy, "wb") as out:
            if src.read(2) not in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
                src.seek(0)
            while chunk := src.read(CHUNK):
                out.write(decoder.decode(chunk).encode("utf-8"))
                done += len(chunk)
            out.write(decoder.decode(b"", final=True).encode("utf-8"))
    except UnicodeDecodeError as exc:
        copy.unlink(missing_ok=True)
        raise LoadError(f"{display}: not {codec.upper()} text near byte {done + exc.start} ({exc.reason}); set "
                        "read.encoding for this source") from None
    return _line_ends(TextFile(copy, options.model_copy(update={"encoding": "utf-8"}), plan, copy))


def _line_ends(text: TextFile) -> TextFile:
    """A file whose lines end in a carriage return alone (old Mac exports) with line feeds instead, as every
    reader after expects them."""
    with open(text.path, "rb") as fh:
        head = fh.read(1 << 16)
    if b"\r" not in head or b"\n" in head:
        return text
    copy = text.path.with_name(text.path.name + ".lf")
    with open(text.path, "rb") as src, open(copy, "wb") as out:
        while chunk := src.read(CHUNK):
            out.write(chunk.replace(b"\r", b"\n"))
    text.close()
    text.plan["line_ends"] = "a carriage return alone, read as line breaks"
    return TextFile(copy, text.options, text.plan, copy)


@dataclass(frozen=True)
class Quotes:
    """How a file's quotes read: 'none' (it has none), 'regular' (each opens a value, closes one or is doubled
    inside one: counting them finds the records), 'stray' (one sits inside a value: only a reader that knows
    where values start finds the records) or 'unclosed' (the last quoted value never closes). `line` and
    `row` say where the first stray quote is, or where the unclosed value opens."""

    kind: str
    line: int | None = None
    row: int | None = None


def survey_quotes(path: Path, offset: int, first_line: int, delimiter: str, quote: str) -> Quotes:
    """Whether reading the file from byte `offset` (line and record `first_line`) by counting quotes finds the
    records that a reader of values finds. Streams the file; looks closer only at the pieces with a quote.

    Counting, quote k opens a value when k is even and closes it when k is odd. That is what a reader of
    values does too when every opening quote starts a value (after the delimiter or a line end) and every
    closing one ends it (before the delimiter or a line end); a doubled quote inside a value is a closing
    quote followed by an opening one, each next to the other."""
    mark = quote.encode()
    edges = np.array([ord(delimiter), NL, CR, ord(quote)], np.uint8)
    seen = 0  # quotes before this piece: their parity says whether a piece starts inside a quoted value
    before = NL  # the byte before this piece (the data starts a record)
    line = row = first_line
    opened = (first_line, first_line)
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(CHUNK)
        while data:
            following = fh.read(CHUNK)
            if data.find(mark) < 0:
                breaks = data.count(b"\n")
                row += 0 if seen % 2 else breaks
            else:
                buf = np.frombuffer(data, np.uint8)
                at = np.flatnonzero(buf == edges[3])
                newlines = np.flatnonzero(buf == NL)
                breaks = len(newlines)
                ends = newlines[(seen + np.searchsorted(at, newlines)) % 2 == 0]  # line breaks that end a record

                opening = (seen + np.arange(len(at))) % 2 == 0
                prev = np.where(at > 0, buf[np.maximum(at - 1, 0)], before)
                after = np.where(at + 1 < len(buf), buf[np.minimum(at + 1, len(buf) - 1)],
                                 following[0] if following else NL)
                bad = np.flatnonzero(~np.isin(np.where(opening, prev, after), edges))
                if len(bad):
                    return Quotes("stray", *_place(int(at[bad[0]]), line, newlines, row, ends))
                seen += len(at)
                if seen % 2:  # the piece ends inside a quoted value: where it opened
                    opened = _place(int(at[-1]), line, newlines, row, ends)
                row += len(ends)
            line += breaks
            before = data[-1]
            data = following
    if seen % 2:
        return Quotes("unclosed", *opened)
    return Quotes("regular" if seen else "none")


def _place(pos: int, line: int, newlines: np.ndarray, row: int, ends: np.ndarray) -> tuple[int, int]:
    """The line and the record (row) of byte `pos` of a piece that starts on `line` and in record `row`."""
    return line + int(np.searchsorted(newlines, pos)), row + int(np.searchsorted(ends, pos))
