"""Rows typed in the handler: how a batch loads a sheet whose canonical rows the handler's lane types
(pipeline.sources.lane, for a CSV or a workbook sheet), and the SQL lanes the rest. Straight into an empty
table, or staged for the merge; a delivery that is a loaded batch's rows again is known without either
(pipeline.re_exports)."""

from __future__ import annotations

from psycopg2 import sql

from pipeline.re_exports import HANDLER_SAMPLE
from pipeline.sources import RawSheet, copy_pieces
from pipeline.sources.lane import LaneAbandoned, LaneStream
from pipeline.typing_sql import Mapped, identifiers


class TypedInHandler:
    """BatchLoad's part for sheets the handler types (mixed into pipeline.loader.BatchLoad)."""

    # canonical rows are typed and hashed in the handler while PostgreSQL stores the rows before them
    # (pipeline.sources.lane); the SQL lanes type the rest
    type_in_handler = True

    def _load_typed_in_handler(self, cur, sheet: RawSheet) -> tuple[bool, dict | None]:
        """A sheet whose canonical rows the handler types (pipeline.sources.lane), the rest going to the careful
        lane: (whether it took the sheet, the batch's summary when that also finished the batch).

        It steps aside, leaving nothing behind, for a file whose first piece is mostly records it would hand
        on anyway, or whose records it cannot find (a quote never closed, a line break that never comes).
        """
        handler = sheet.handler_typing
        mapped = self._mapped(sheet)
        rejects = self.rejects
        notes = list(self.plan.get("sheets", {}).get(sheet.name, []) if sheet.name else self.plan.get("typing", []))
        cur.execute("savepoint handler_lane")
        try:
            with handler.stream(sample=HANDLER_SAMPLE) as stream:
                if stream.considered >= 1_000 and 2 * stream.rows < stream.considered:
                    raise LaneAbandoned("most of the first piece is records for the SQL lanes")
                summary = None
                if self.direct:
                    summary = self._load_direct(
                        cur, mapped, lambda: self._fast_from_handler(cur, sheet, mapped, stream))
                elif (self.recognise_unchanged and self.reader.one_sheet and self.delivery.config.load != "snapshot"
                      and self._updating_batches(cur)[0]):
                    summary = self._unchanged_from_handler(cur, sheet, stream)
                else:
                    self.note(sheet, "typed in the handler: rows in their types' own spellings; the rest in SQL")
                    self._staged_from_handler(cur, sheet, mapped, stream)
                    cur.execute("release savepoint handler_lane")
                    return True, None
            if summary is not None and not self.direct:
                self.note(sheet, f"a loaded batch's rows again, every one as core holds it ({summary['rows_read']} "
                                 "rows): nothing typed, inserted or updated")
            else:
                self.note(sheet, "typed in the handler: rows in their types' own spellings; the rest in SQL")
            if summary is None:  # a key repeated in a first load, or not a batch again: a fresh pass, staged
                with handler.stream() as stream:
                    self._staged_from_handler(cur, sheet, mapped, stream)
            cur.execute("release savepoint handler_lane")
            return True, summary
        except LaneAbandoned as stepped_aside:
            cur.execute("rollback to savepoint handler_lane")
            self.rejects = rejects
            if sheet.name:
                self.plan.setdefault("sheets", {})[sheet.name] = notes
            else:
                self.plan["typing"] = notes
            self.note(sheet, f"the handler's lane stepped aside ({stepped_aside}): typed in SQL")
            return False, None

    def _copy_from_handler(self, cur, target: sql.Composable, row_column: str, sheet: RawSheet,
                           stream: LaneStream) -> None:
        """The handler's rows into `target`. A quoted empty value ("") is null, as the SQL lanes read it."""
        lane = sheet.handler_typing.copy_lane
        values = identifiers(lane.copy_columns)
        copy_pieces(cur, sql.SQL("copy {} ({}, _key, {}, _row_hash) from stdin with (format csv, delimiter {}, "
                                 "quote {}, force_null ({}), encoding 'UTF8')").format(
            target, values, sql.Identifier(row_column), sql.Literal(chr(lane.delimiter)), sql.Literal(chr(lane.quote)),
            values).as_string(cur), iter(stream))

    def _handed_on(self, cur, sheet: RawSheet, mapped: list[Mapped], stream: LaneStream) -> RawSheet:
        """The records the handler handed on, into raw and typed the careful way: the sheet raw holds."""
        handed = sheet.handler_typing.handed_on(stream, sheet)
        self._create_raw(cur, handed)
        if stream.handed_on_count:
            handed.copy(cur, "raw")
            self._typed_rows(cur, handed, mapped, self._careful(cur, handed, mapped))
        return handed

    def _fast_from_handler(self, cur, sheet: RawSheet, mapped: list[Mapped],
                           stream: LaneStream) -> tuple[int, RawSheet]:
        """The handler's rows straight into core, their batch and sheet from the transaction's settings
        (migrations 011, 013); the rest typed."""
        cur.execute("select set_config('pipeline.batch_id', %s, true), set_config('pipeline.sheet', %s, true)",
                    (str(self.batch_id), sheet.name or ""))
        self._copy_from_handler(cur, sql.Identifier("core", self.table.name), "_source_row", sheet, stream)
        return stream.rows, self._handed_on(cur, sheet, mapped, stream)

    def _staged_from_handler(self, cur, sheet: RawSheet, mapped: list[Mapped], stream: LaneStream) -> None:
        """The handler's rows into typed, the rest typed the careful way, quarantined: ready for the merge."""
        cur.execute("select set_config('pipeline.sheet', %s, true)", (sheet.name or "",))
        self._copy_from_handler(cur, sql.Identifier("typed"), "_row", sheet, stream)
        self._quarantine(cur, self._handed_on(cur, sheet, mapped, stream), mapped)
