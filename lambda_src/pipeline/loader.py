"""The one loader every source goes through: typing and validation, dedupe, merge, ledger.

One transaction per batch. The ledger row, the quarantine rows and the merged core rows commit
together or not at all, so a failure (bad input, a killed process, a lost connection, a time budget
running out) leaves nothing of the batch behind, and a rerun converges to the same totals.

A sheet's rows are typed by the handler (pipeline.typed_in_handler, for a CSV in a canonical layout) or
by the SQL lanes here (a raw COPY, then pipeline.typing_sql); rows a re-export brings again are found
without either (pipeline.re_exports).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import psycopg2
import psycopg2.extras
from psycopg2 import sql

from pipeline.attempts import Attempt
from pipeline.config import Company, SourceConfig
from pipeline.model import TABLES, Column, Table
from pipeline.money import EXACT
from pipeline.re_exports import ReExports
from pipeline.reading import Reading, SettledReading
from pipeline.sources import LoadError, RawSheet, Reader
from pipeline.typed_in_handler import TypedInHandler
from pipeline.typing_sql import (
    CURRENCY_DEFAULT,
    SQL_TYPE,
    FastLane,
    Mapped,
    fast_lane,
    identifiers,
    key_text,
    row_hash,
    typed_select,
)


class TimeBudgetExceeded(RuntimeError):
    """Not enough time left to commit safely: the batch was rolled back instead of being cut mid-commit."""


@dataclass
class Delivery:
    source: str
    config: SourceConfig
    kind: str
    ref: str  # s3://bucket/key?versionId=..., or the API URL and window
    display: str  # what a person calls it: the file name
    object_key: str | None = None
    etag: str | None = None
    version: str | None = None
    sha256: str | None = None
    window: tuple | None = None


def already_loaded(cur, source: str, object_key: str, sha256: str | None = None, etag: str | None = None):
    """The committed batch that already holds this object (same key and content), if any."""
    if sha256:
        cur.execute("select batch_id from meta.batches where status = 'committed' and source = %s "
                    "and object_key = %s and content_sha256 = %s", (source, object_key, sha256))
    else:
        cur.execute("select batch_id from meta.batches where status = 'committed' and source = %s "
                    "and object_key = %s and object_etag = %s", (source, object_key, etag))
    row = cur.fetchone()
    return row[0] if row else None


class BatchLoad(TypedInHandler, ReExports, SettledReading):
    """Loads one delivery for its attempt (pipeline.attempts), in one transaction; `run()` commits."""

    # a one-sheet delivery into an empty table goes straight in, its primary key built after (see _load_direct)
    straight_in = True

    def __init__(self, conn, delivery: Delivery, reader: Reader, company: Company, attempt: Attempt,
                 deadline: Callable[[], float] | None = None,
                 before_commit: Callable[[object, int], None] | None = None):
        self.conn, self.delivery, self.reader, self.attempt = conn, delivery, reader, attempt
        self.table: Table = TABLES[delivery.config.table]
        self.company = company
        self.remaining = deadline or (lambda: float("inf"))
        self.batch_id: int | None = None
        # e.g. an API source saving its incremental cursor: (cursor, batch_id), inside the batch's transaction
        self.before_commit = before_commit
        self.rejects = 0
        self.direct = False  # a one-sheet delivery into an empty table (decided in run)
        self._has_turn = False
        self.plan = attempt.plan  # what the batch decided about the delivery, kept in its ledger row
        if hasattr(reader, "plan"):
            reader.plan = self.plan  # the reader notes its own decisions (an encoding, how quotes read) there
        self._readings: dict[str | None, Reading] = {}  # each sheet's reading, once settled
        self._derived: dict[str | None, list[tuple[str, str, str]]] = {}  # each sheet's columns made in raw
        self._dayfirst = self._declared_date_order()

    # -- the batch ----------------------------------------------------------------------------------
    def run(self, commit_margin_s: float = 5.0) -> dict:
        d = self.delivery
        started = time.time()
        self.batch_id = self.attempt.batch_id
        try:
            if d.object_key:  # one attempt at a time per object and content: the second finds it loaded
                with self.conn.cursor() as cur:
                    cur.execute("select pg_advisory_lock(hashtextextended(%s, 0))", (self._lock,))
                    existing = already_loaded(cur, d.source, d.object_key, d.sha256)
                self.conn.commit()
                if existing:
                    self.attempt.discard()
                    return {"status": "already_loaded", "batch_id": existing, "source": d.source, "ref": d.ref}
            with self.conn.cursor() as cur:
                cur.execute("set local timezone = %s", (self.company.timezone,))
                # dates print as ISO whatever the server's default: the fast lane compares their text, the row
                # hash includes it
                cur.execute("set local datestyle = 'ISO'")
                # the typing pass's LATERAL steps never repeat a value: caching them is pure overhead; and
                # compiling its long expressions costs more than it saves
                cur.execute("set local enable_memoize = off; set local jit = off")
                # the key check and the merge hash a whole batch: in memory, not in spill files
                cur.execute("set local work_mem = '64MB'")
                # the currency of rows that name none: the source's, else the company's (column defaults read it)
                cur.execute("select set_config('pipeline.currency', %s, true)",
                            (d.config.currency or self.company.currency,))
                self._create_typed(cur)
                # a one-sheet delivery into an empty table: its rows go straight in (see _load_direct)
                self.direct = (self.straight_in and self.reader.one_sheet
                               and self._empty_target_held(cur))
                self.plan["into"] = ("an empty table: its rows straight in, the primary key built after" if self.direct
                                     else "merged: staged, repeats collapsed, new keys inserted, changed rows "
                                          "updated with their old versions in history")
                summary = None
                for sheet in self.reader.sheets():
                    summary = self._load_sheet(cur, sheet)
                    self._check_time(commit_margin_s)
                summary = summary or self._merge(cur)
                if d.config.load == "snapshot":
                    deleted, amount_deleted = self._deleted_at_source(cur, summary["rows_quarantined"])
                    summary = {**summary, "rows_deleted": deleted, "amount_deleted": amount_deleted}
                self._check_time(commit_margin_s)
                self.attempt.committed(cur, summary)
                if self.before_commit:
                    self.before_commit(cur, self.batch_id)
            self.conn.commit()
        finally:
            self._release()
        return {"status": "committed", "source": d.source, "ref": d.ref, "batch_id": self.batch_id,
                "seconds": round(time.time() - started, 3), **summary}

    @property
    def _lock(self) -> str:
        d = self.delivery
        return f"{d.source}|{d.object_key}|{d.sha256}"

    def _release(self) -> None:
        """The batch's transaction ended (committed, or rolled back on a failure) and the object's lock let go;
        on a lost connection the server lets go of both."""
        with contextlib.suppress(psycopg2.Error):
            self.conn.rollback()
            if self.delivery.object_key:
                with self.conn.cursor() as cur:
                    cur.execute("select pg_advisory_unlock(hashtextextended(%s, 0))", (self._lock,))
                self.conn.commit()

    def _check_time(self, margin: float) -> None:
        if self.remaining() < margin:
            raise TimeBudgetExceeded(f"{self.delivery.display}: less than {margin:.0f}s left before the function's "
                                     "timeout; rolled back so a retry can load it whole")

    # -- per sheet: raw COPY, typing, quarantine ----------------------------------------------------
    def _create_typed(self, cur) -> None:
        cols = sql.SQL(", ").join(sql.SQL("{} {}{}").format(
            sql.Identifier(c.name), sql.SQL(SQL_TYPE[c.type]),
            sql.SQL(" default " + CURRENCY_DEFAULT if c.name == "currency" else "")) for c in self.table.columns)
        # a COPY of rows typed in the handler leaves out what every row of its sheet shares
        cur.execute(sql.SQL("create temp table typed (_sheet text default nullif(current_setting('pipeline.sheet', "
                            "true), ''), _row bigint, {}, _reasons text[] default '{{}}', _skip boolean default false,"
                            " _row_hash text, _key text, attributes jsonb) on commit drop").format(cols))

    def _create_raw(self, cur, sheet: RawSheet) -> None:
        cur.execute("drop table if exists raw; drop sequence if exists raw_row")
        cur.execute("create temp sequence raw_row start with %s minvalue 0", (sheet.first_row,))
        cols = sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(f"c{i}")) for i in range(len(sheet.header)))
        cur.execute(sql.SQL("create temp table raw (_sheet text, _row bigint default nextval('raw_row'), {})"
                            " on commit drop").format(cols))

    def _copy(self, cur, sheet: RawSheet) -> RawSheet:
        self._create_raw(cur, sheet)
        if not sheet.raw_rows_copy:
            sheet.copy(cur, "raw")
            return sheet
        cur.execute("savepoint raw_copy")
        try:
            sheet.copy(cur, "raw")
            cur.execute("release savepoint raw_copy")
            return sheet
        except psycopg2.errors.BadCopyFileFormat:
            # ragged rows or a quote never closed: re-read it record by record to say which rows
            cur.execute("rollback to savepoint raw_copy")
            self.note(sheet, "PostgreSQL's COPY refused the file's shape (ragged records): read record by record")
        except (psycopg2.errors.CharacterNotInRepertoire, psycopg2.errors.UntranslatableCharacter) as exc:
            cur.execute("rollback to savepoint raw_copy")
            line = (exc.diag.context or "").rsplit("line ", 1)[-1].split(",")[0].strip()
            if line.isdigit():  # COPY counts the lines it reads; the file has the header and the rows above it too
                line = str(int(line) + sheet.first_row - 1)
            raise LoadError(f"{self.delivery.display}: line {line}: not {self.delivery.config.read.encoding} text "
                            f"({exc.diag.message_primary}); set read.encoding for this source") from None
        parsed = self.reader.parsed_sheet()  # type: ignore[attr-defined]
        self._create_raw(cur, parsed)
        parsed.copy(cur, "raw")
        return parsed

    def _mapped(self, sheet: RawSheet) -> list[Mapped]:
        """The table's columns the sheet gives, as the source reads them (see _as_read): mapped, and composed or
        taken from a debit and a credit (made in raw by _derive)."""
        table = self.table.column_names
        mapped = [self._as_read(c, f"c{pos}", sheet.header[pos]) for c, pos in sheet.mapping.items() if c in table]
        return mapped + [self._as_read(c, raw, header) for c, raw, header in self._derived.get(sheet.name, [])]

    def _as_read(self, name: str, raw: str, header: str) -> Mapped:
        """A column as this source reads it: required when it is part of the key, refused below zero when it
        carries the row's sign and the source's amounts are all positive, turned when they are inverted."""
        cfg = self.delivery.config
        column = self.table.column(name)
        column = replace(column, required=column.required or name in cfg.key,
                         non_negative=column.non_negative or (column.signed and cfg.amounts == "positive"))
        return Mapped(column, raw, header, negate=column.signed and cfg.amounts == "inverted")

    def _attributes(self, sheet: RawSheet) -> list[Mapped] | None:
        """The source's further columns the sheet has, each typed as it declares; None when it keeps none."""
        if not self.delivery.config.attributes:
            return None
        return [Mapped(Column(name, a.type, required=False), f"c{sheet.mapping[f'attribute {name}']}", a.column)
                for name, a in self.delivery.config.attribute_columns.items() if f"attribute {name}" in sheet.mapping]

    def _derive(self, cur, sheet: RawSheet) -> None:
        """Columns the source builds from others, made in raw beside them: a composed column ('{Country}-{Month}',
        empty when a part is), and with amounts: debit_credit the amount, the credit as it is and the debit with
        a minus (a row with both is no amount: 'debit 5,00 and credit 2,00' is refused as one)."""
        cfg = self.delivery.config

        def part(name: str) -> sql.Composable:
            return sql.SQL("nullif(btrim(r.{}), '')").format(sql.Identifier(f"c{sheet.mapping[name]}"))

        made = []
        for name, template in cfg.compose.items():
            pieces = [part(p) if p.startswith("{") and p.endswith("}") else sql.Literal(p)
                      for p in re.split(r"(\{[^{}]+\})", template) if p]
            parts = [p for p in pieces if not isinstance(p, sql.Literal)]
            made.append((name, template, sql.SQL("case when {} then null else concat({}) end").format(
                sql.SQL(" or ").join(sql.SQL("{} is null").format(p) for p in parts), sql.SQL(", ").join(pieces))))
        if cfg.amounts == "debit_credit":
            # a side written as zero (0,00) is an empty side, as banks export it
            zero = sql.Literal(f"^[-+]?0+({re.escape(cfg.read.decimal)}0+)?$")

            def side(name: str) -> sql.Composable:
                return sql.SQL("nullif(regexp_replace({}, {}, ''), '')").format(part(name), zero)

            made.append((self.table.amount, f"{cfg.columns['credit']} - {cfg.columns['debit']}", sql.SQL(
                "case when {d} is not null and {c} is not null then 'debit ' || {d} || ' and credit ' || {c} "
                "when {d} is not null then case when left({d}, 1) = '-' then 'debit ' || {d} else '-' || {d} end "
                "else {c} end").format(d=side("debit"), c=side("credit"))))
        if not made:
            self._derived[sheet.name] = []
            return
        # the derived columns made beside the raw ones, in one pass over the sheet's rows
        columns = [sql.Identifier(f"d{i}") for i in range(len(made))]
        cur.execute(sql.SQL("alter table raw {}").format(
            sql.SQL(", ").join(sql.SQL("add column {} text").format(c) for c in columns)))
        cur.execute(sql.SQL("update raw r set {}").format(
            sql.SQL(", ").join(sql.SQL("{} = {}").format(c, value) for c, (_, _, value) in zip(columns, made,
                                                                                                  strict=True))))
        self._derived[sheet.name] = [(name, f"d{i}", header) for i, (name, header, _) in enumerate(made)]

    def note(self, sheet: RawSheet | None, what: str) -> None:
        """A decision about the delivery (or one of its sheets), for its ledger row's plan."""
        if sheet is None or sheet.name is None:
            self.plan.setdefault("typing", []).append(what)
        else:
            self.plan.setdefault("sheets", {}).setdefault(sheet.name, []).append(what)

    def _load_sheet(self, cur, sheet: RawSheet) -> dict | None:
        """Typing and quarantine of one sheet; the batch's summary when that also loaded it."""
        if sheet.handler_typing is not None and self.type_in_handler:
            taken, summary = self._load_typed_in_handler(cur, sheet)
            if taken:
                return summary
        sheet = self._copy(cur, sheet)
        self._derive(cur, sheet)
        mapped = self._mapped(sheet)
        opts = self.delivery.config.read
        # a source that keeps attributes types every row the careful way, which types them too
        lane = None if self.delivery.config.attributes else fast_lane(self.table, mapped, opts, len(sheet.header))
        self.note(sheet, "typed in SQL: rows in their types' own spellings cast as they are, the rest the careful "
                         "way" if lane else "typed in SQL the careful way (the layout's spellings are rewritten)")
        if self.direct:  # staged all the same: straight in pays only for rows the handler types (bench paths)
            self.plan["into"] = ("an empty table: its rows typed in SQL, then inserted, the primary key built "
                                 "after")
        if lane is None:
            self._typed_rows(cur, sheet, mapped, self._careful(cur, sheet, mapped))
        else:  # rows already canonical: cast, no per-value tests; the rest the careful way
            self._fast_rows(cur, sheet, mapped, lane)
            self._type_the_rest(cur, sheet, mapped, cur.rowcount, self._taken(sheet))
        self._quarantine(cur, sheet, mapped)
        return None

    def _fast_rows(self, cur, sheet: RawSheet, mapped: list[Mapped], lane: FastLane) -> None:
        """The canonical rows of raw into typed; cur.rowcount says how many."""
        self._typed_rows(cur, sheet, mapped, sql.SQL(
            "select r._row, {}, {} as _h, '{{}}'::text[] as _reasons, false as _skip from raw r where {}"
        ).format(lane.typed, lane.row_hash, lane.guard), hashed=True)

    def _taken(self, sheet: RawSheet) -> sql.Composable:
        """The rows of the sheet already typed, by _row."""
        return sql.SQL("(select _row from typed where _sheet is not distinct from {})").format(sql.Literal(sheet.name))

    def _type_the_rest(self, cur, sheet: RawSheet, mapped: list[Mapped], fast: int, taken: sql.Composable) -> None:
        """The rows the fast lane did not admit (most often none: one count), into typed the careful way.

        taken: the relation `t` holding the rows the fast lane took, by `t._row` (and `t._sheet`). Finding
        the rest by what was taken (one anti-join) costs far less than testing every row again.
        """
        cur.execute("select count(*) from raw")
        if cur.fetchone()[0] > fast:
            rest = sql.SQL("not exists (select from {} t where t._row = r._row)").format(taken)
            self._typed_rows(cur, sheet, mapped, self._careful(cur, sheet, mapped, rest))

    def _careful(self, cur, sheet: RawSheet, mapped: list[Mapped], where: sql.Composable | None = None):
        """The careful lane's SELECT over the sheet's rows in raw (those `where` holds), attributes included."""
        return typed_select(self.table, mapped, self._reading(cur, sheet, mapped), len(sheet.header), where,
                            self._attributes(sheet))

    def _typed_rows(self, cur, sheet: RawSheet, mapped: list[Mapped], select: sql.Composable,
                    hashed: bool = False) -> None:
        """Rows of `select` into typed; an accepted row gets its content hash in the same pass (a null hash
        marks a rejected row). hashed: `select` brings it, as _h."""
        names = [m.column.name for m in mapped]
        attributes = bool(self.delivery.config.attributes) and not hashed
        kept = names + (["attributes"] if attributes else [])
        cur.execute(sql.SQL(
            "insert into typed (_sheet, _row, {cols}, _reasons, _skip, _row_hash, _key) "
            "select {sheet}, s._row, {scols}, s._reasons, s._skip, h._row_hash, "
            "case when h._row_hash is not null then {key} end "
            "from ({select}) s cross join lateral (select case when not s._skip and cardinality(s._reasons) = 0 "
            "then {hash} end as _row_hash) h").format(
            cols=identifiers(kept), sheet=sql.Literal(sheet.name), select=select,
            hash=sql.SQL("s._h") if hashed else row_hash(self.table, names, attributes),
            key=key_text(list(self.delivery.config.key), sheet.name, self.delivery.object_key or self.delivery.ref),
            scols=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(n)) for n in kept)))

    def _quarantine(self, cur, sheet: RawSheet, mapped: list[Mapped]) -> None:
        """The sheet's rejected rows, each with its raw values and reasons, and the rows its reader refused."""
        ref = self._ref(sheet.name)
        raw_json = sql.SQL(", ").join(
            sql.SQL("{}, r.{}").format(sql.Literal(m.header), sql.Identifier(m.raw)) for m in mapped)
        cur.execute(sql.SQL(
            "insert into meta.quarantine (batch_id, source, source_ref, source_row, raw, reason, reason_code) "
            "select %s, %s, %s, t._row, jsonb_build_object({raw}), "
            "'row ' || t._row || ': ' || array_to_string(t._reasons, '; '), 'invalid_value' "
            "from typed t join raw r on r._row = t._row "
            "where t._sheet is not distinct from %s and not t._skip and cardinality(t._reasons) > 0"
        ).format(raw=raw_json), (self.batch_id, self.delivery.source, ref, sheet.name))
        for row, raw, reason, code in sheet.rejects:
            cur.execute("insert into meta.quarantine (batch_id, source, source_ref, source_row, raw, reason,"
                        " reason_code) values (%s, %s, %s, %s, %s, %s, %s)",
                        (self.batch_id, self.delivery.source, ref, row, psycopg2.extras.Json(raw), reason, code))
        self.rejects += len(sheet.rejects)

    # -- a first load: straight into the empty table --------------------------------------------------
    def _empty_target_held(self, cur) -> bool:
        """The target is empty, and stays so for this batch: it holds the table's merge turn from here on.

        The table itself is read only once the turn is held. A batch that read it first would keep a lock on
        it while waiting for its turn, and the batch whose turn it is could not take the table for its key
        build: the two would deadlock. So the ledger answers first: has any batch put rows in this table?
        """
        if self._updating_batches(cur)[0]:
            return False
        self._merge_turn(cur)
        cur.execute(sql.SQL("select exists (select from {})").format(sql.Identifier("core", self.table.name)))
        return not cur.fetchone()[0]

    def _load_direct(self, cur, mapped: list[Mapped], fill: Callable[[], tuple[int, RawSheet]]) -> dict | None:
        """A one-sheet delivery straight into the empty table: no staging copy of its canonical rows.

        `fill` puts those rows in and types the rest the careful way into typed: it returns how many went
        straight in, and the sheet raw holds (whose rejected rows are quarantined with their reasons). The
        typed rows are inserted too, and the primary key is built once at the end. A key the batch repeats
        fails that build (or the insert, when a reader kept the key on): then all of it is rolled back and
        None returned, and the sheet takes the staged way, which collapses repeats.
        """
        t = self.table
        rejects = self.rejects
        cur.execute("savepoint direct")
        try:
            deferred = self._defer_primary_key(cur)
            fast, sheet = fill()
            # the table held nothing else: what it holds now is what went straight in
            amount_fast = None
            if t.amount:
                cur.execute(sql.SQL("select coalesce(sum({}), 0) from {}").format(
                    sql.Identifier(t.amount), sql.Identifier("core", t.name)))
                amount_fast = cur.fetchone()[0]
            self._quarantine(cur, sheet, mapped)
            counts = self._typed_counts(cur)
            inserted = self._insert_rows(cur, sql.SQL("typed"), sql.SQL("s._row_hash is not null"))
            if deferred:
                self._restore_primary_key(cur)
            cur.execute("release savepoint direct")
        except psycopg2.errors.UniqueViolation:
            cur.execute("rollback to savepoint direct")
            self.rejects = rejects
            self.plan["into"] = ("merged after all: a key repeats in the delivery, so its rows were staged and the "
                                 "repeats collapsed")
            return None
        skipped, read, quarantined, accepted, amount_in, amount_q, amount_loaded = counts
        if t.amount:
            amount_in, amount_loaded = EXACT.add(amount_fast, amount_in), EXACT.add(amount_fast, amount_loaded)
        return self._summary(read=fast + read, inserted=fast + inserted, updated=0, accepted=fast + accepted,
                             duplicates=0, quarantined=quarantined, skipped=skipped, amount_in=amount_in,
                             amount_loaded=amount_loaded, amount_q=amount_q, amount_dup=0)

    def _ref(self, sheet: str | None) -> str:
        return f"{self.delivery.ref}#{sheet}" if sheet else self.delivery.ref

    # -- dedupe and merge ---------------------------------------------------------------------------
    def _merge(self, cur) -> dict:
        t = self.table
        key = list(self.delivery.config.key)
        amount = sql.Identifier(t.amount) if t.amount else None
        skipped, read, quarantined, accepted, amount_in, amount_q, amount_loaded = self._typed_counts(cur)
        duplicates, amount_dup = 0, 0

        def collapse() -> None:
            nonlocal duplicates, amount_dup, quarantined, accepted, amount_q, amount_loaded
            duplicates, amount_dup, conflicts, amount_conflicts = self._collapse(cur, key, amount)
            quarantined += conflicts
            accepted -= duplicates + conflicts
            if amount:
                amount_q = EXACT.add(amount_q, amount_conflicts)
                amount_loaded = EXACT.subtract(amount_loaded, EXACT.add(amount_dup, amount_conflicts))

        self._merge_turn(cur)
        cur.execute(sql.SQL("select exists (select from {})").format(sql.Identifier("core", self.table.name)))
        empty = not cur.fetchone()[0]
        # A key twice in one batch would make the merge ambiguous: only then is the batch collapsed (exact copies
        # counted, a key repeated with other values keeps its last row). Into an empty table the primary key
        # finds a repeat as the rows go in, so a first load pays no search for one; otherwise a hash aggregate.
        if not empty and self._repeats_a_key(cur):
            collapse()
        cur.execute("savepoint merge")
        try:
            inserted, updated = self._merge_rows(cur, empty)
            cur.execute("release savepoint merge")
        except psycopg2.errors.UniqueViolation:
            if not empty:
                raise
            cur.execute("rollback to savepoint merge")
            collapse()
            inserted, updated = self._merge_rows(cur, empty)
        return self._summary(read=read, inserted=inserted, updated=updated, accepted=accepted,
                             duplicates=duplicates, quarantined=quarantined, skipped=skipped, amount_in=amount_in,
                             amount_loaded=amount_loaded, amount_q=amount_q, amount_dup=amount_dup)

    def _merge_turn(self, cur) -> None:
        """Merges into one table take turns (a transaction-scoped lock), so two batches never both find a key
        absent and both insert it."""
        if self._has_turn:  # held until the batch ends
            return
        self._has_turn = True
        cur.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"merge into core.{self.table.name}",))

    def _typed_counts(self, cur) -> tuple:
        """(skipped, read, quarantined, accepted, amount in, amount quarantined, amount accepted) of typed."""
        amount = sql.Identifier(self.table.amount) if self.table.amount else None

        def amt(where: str) -> sql.Composable:
            if not amount:
                return sql.SQL("null::numeric")
            return sql.SQL("coalesce(sum({}) filter (where {}), 0)").format(amount, sql.SQL(where))

        cur.execute(sql.SQL(
            "select count(*) filter (where _skip), count(*) filter (where not _skip),"
            " count(*) filter (where not _skip and _row_hash is null), count(*) filter (where _row_hash is not null),"
            " {}, {}, {} from typed").format(
            amt("not _skip"), amt("not _skip and _row_hash is null"), amt("_row_hash is not null")))
        return cur.fetchone()

    def _summary(self, *, read, inserted, updated, accepted, duplicates, quarantined, skipped, amount_in,
                 amount_loaded, amount_q, amount_dup) -> dict:
        """The ledger's counts; rows the reader refused (self.rejects) are read and quarantined."""
        money = self.table.amount is not None
        return {"rows_read": read + self.rejects, "rows_inserted": inserted, "rows_updated": updated,
                "rows_unchanged": accepted - inserted - updated, "rows_duplicate": duplicates,
                "rows_quarantined": quarantined + self.rejects, "rows_skipped": skipped,
                "amount_in": amount_in, "amount_loaded": amount_loaded,
                "amount_quarantined": amount_q if money else None,
                "amount_duplicate": amount_dup if money else None,
                "rows_deleted": 0, "amount_deleted": 0 if money else None}

    def _collapse(self, cur, key: list[str], amount) -> tuple[int, object, int, object]:
        """Exact copies within the batch count as duplicates; a key repeated with other values keeps its last row,
        the earlier ones quarantined, except in a distinct source (a dimension taken from fact rows: each key
        once, the last row wins), where every repeat is a duplicate."""
        amount_sum = sql.SQL("coalesce(sum({}), 0)").format(amount) if amount else sql.SQL("0")
        cur.execute(sql.SQL(
            "with gone as (delete from typed a using (select ctid, row_number() over (partition by _key, _row_hash "
            "order by _sheet, _row) as n from typed where _row_hash is not null) d "
            "where a.ctid = d.ctid and d.n > 1 returning a.*) "
            "select count(*), {s} from gone").format(s=amount_sum))
        duplicates, amount_dup = cur.fetchone()
        ranked = ("with ranked as (select ctid, first_value(_row) over w as kept_row, row_number() over w as n "
                  "from typed where _row_hash is not null window w as (partition by _key order by _sheet desc, "
                  "_row desc)), gone as (delete from typed a using ranked r where a.ctid = r.ctid and r.n > 1 "
                  "returning a.*, r.kept_row) ")
        if self.delivery.config.load == "distinct":
            cur.execute(sql.SQL(ranked + "select count(*), {s} from gone").format(s=amount_sum))
            repeats, amount_repeats = cur.fetchone()
            self.plan["distinct"] = f"each key once, the last row wins: {duplicates + repeats} earlier rows folded"
            return duplicates + repeats, EXACT.add(amount_dup, amount_repeats), 0, 0
        named = sql.SQL(" || ', ' || ").join(
            sql.SQL("{} || '=' || a.{}::text").format(sql.Literal(k), sql.Identifier(k)) for k in key)
        cur.execute(sql.SQL(
            ranked + ", q as (insert into meta.quarantine (batch_id, source, source_ref, source_row, raw, reason, "
            "reason_code) select %s, %s, %s || coalesce('#' || a._sheet, ''), a._row, "
            "to_jsonb(a) - '_row_hash' - 'kept_row' - '_reasons' - '_skip' - '_key', "
            "'row ' || a._row || ': ' || {kt} || ' appears again at row ' || a.kept_row || "
            "' with different values; the later row is loaded', 'conflicting_duplicate' from gone a returning 1) "
            "select count(*), {s} from gone").format(kt=named, s=amount_sum),
            (self.batch_id, self.delivery.source, self.delivery.ref))
        conflicts, amount_conflicts = cur.fetchone()
        return duplicates, amount_dup, conflicts, amount_conflicts

    def _repeats_a_key(self, cur) -> bool:
        cur.execute("select exists (select from typed where _row_hash is not null group by _key having count(*) > 1)")
        return cur.fetchone()[0]

    # what a core row keeps of where it came from: the rest is its batch's, in meta.batches (migration 013)
    _LINEAGE = ("_batch_id", "_sheet", "_source_row", "_row_hash", "_key")

    def _lineage(self) -> tuple[dict[str, sql.Composable], dict]:
        """Each lineage column's value for a row `s` (with _sheet, _row, _row_hash and _key), and its
        parameters."""
        values = {"_batch_id": sql.Placeholder("batch"), "_sheet": sql.SQL("s._sheet"),
                  "_source_row": sql.SQL("s._row"), "_row_hash": sql.SQL("s._row_hash"), "_key": sql.SQL("s._key")}
        return values, {"batch": self.batch_id}

    def _data_columns(self) -> dict[str, sql.Composable]:
        """Each of the table's columns (and its attributes) from a typed row `s`: a row that names no currency
        has its batch's."""
        values = {c: sql.SQL("s.{}").format(sql.Identifier(c)) for c in (*self.table.column_names, "attributes")}
        if "currency" in values:
            values["currency"] = sql.SQL("coalesce(s.currency, {})").format(sql.SQL(CURRENCY_DEFAULT))
        return values

    def _insert_rows(self, cur, rows: sql.Composable, where: sql.Composable = sql.SQL("true")) -> int:
        """Rows `s` of `rows` (typed's columns) inserted with their lineage."""
        data = self._data_columns()
        values, params = self._lineage()
        cur.execute(sql.SQL("insert into {target} ({cols}, {lineage}) select {data}, {values} from {rows} s "
                            "where {where}").format(
            target=sql.Identifier("core", self.table.name), cols=identifiers(data), lineage=identifiers(self._LINEAGE),
            data=sql.SQL(", ").join(data.values()), values=sql.SQL(", ").join(values[c] for c in self._LINEAGE),
            rows=rows, where=where), params)
        return cur.rowcount

    def _merge_rows(self, cur, empty: bool) -> tuple[int, int]:
        """Changed rows updated in place, new keys inserted: set-wise statements, exact counts.

        Keys are unique in `typed` by now (or, into an empty table, the primary key says they are not), so a
        join finds at most one row either way. One join first counts the batch's keys already there and how
        many of them changed: the update runs only when some did, and the insert only when some keys are
        new, so a re-export of rows already loaded costs one join. An update writes only rows whose content
        hash differs (the history trigger keeps the old version). Into an empty table every row is new: a
        plain insert (an anti-join's plan would scan the table it fills), the primary key built after it.
        """
        accepted = sql.SQL("s._row_hash is not null")
        if empty:
            deferred = self._defer_primary_key(cur)
            inserted = self._insert_rows(cur, sql.SQL("typed"), accepted)
            if deferred:  # a key repeated in the batch fails here, as a unique violation, like the insert would
                self._restore_primary_key(cur)
            return inserted, 0
        target = sql.Identifier("core", self.table.name)
        joined = sql.SQL("c._key = s._key")
        # a row a snapshot deleted at source and that is delivered again is back, whatever its content; a row
        # whose currency the source now says differently (its currency setting corrected) takes the new one
        differs = sql.SQL("(c._row_hash is distinct from s._row_hash or c._deleted_by is not null{})").format(
            sql.SQL(" or c.currency is distinct from {}").format(self._data_columns()["currency"])
            if "currency" in self.table.column_names else sql.SQL(""))
        cur.execute(sql.SQL(
            "select count(*), count(c._key), count(*) filter (where c._key is not null and {differs}) "
            "from typed s left join {target} c on {joined} where {accepted}").format(
            differs=differs, target=target, joined=joined, accepted=accepted))
        batch_keys, present_keys, changed = cur.fetchone()
        updated = inserted = 0
        if changed:
            values, params = self._lineage()
            sets = sql.SQL(", ").join(
                [sql.SQL("{} = {}").format(sql.Identifier(c), v) for c, v in self._data_columns().items()]
                + [sql.SQL("{} = {}").format(sql.Identifier(c), values[c]) for c in self._LINEAGE]
                + [sql.SQL("_deleted_by = null")])
            cur.execute(sql.SQL("update {target} c set {sets} from typed s where {joined} and {accepted}"
                                " and {differs}").format(
                target=target, sets=sets, joined=joined, accepted=accepted, differs=differs), params)
            updated = cur.rowcount
        if present_keys < batch_keys:
            inserted = self._insert_rows(cur, sql.SQL("typed"), sql.SQL(
                "{} and not exists (select from {} c where {})").format(accepted, target, joined))
        return inserted, updated

    def _deleted_at_source(self, cur, rejected: int) -> tuple[int, object]:
        """A snapshot delivery holds all of its source's rows for the dates it covers: the source's rows of those
        dates it no longer holds were deleted at source. They
        are kept, marked with this batch (_deleted_by), and left out of the marts; delivered again, they are
        back. A delivery with `rejected` (quarantined) rows marks none: a rejected row may be one still held.
        Returns how many were marked, and their money."""
        t = self.table
        target = sql.Identifier("core", t.name)
        if rejected:  # a rejected row may be one still held: nothing is marked deleted on its word
            self.plan["snapshot"] = (f"{rejected} rows were quarantined, any of which may be a row still held: "
                                     "no row is marked deleted at source by this delivery")
            return 0, 0 if t.amount else None
        cur.execute(sql.SQL("select min({d}), max({d}) from typed where _row_hash is not null").format(
            d=sql.Identifier(t.date)))  # every table has a business date (pipeline.model)
        first, last = cur.fetchone()
        if first is None:  # a snapshot of no rows covers no dates: nothing is known deleted
            return 0, 0 if t.amount else None
        span = sql.SQL("c.{d} between {f} and {l}").format(d=sql.Identifier(t.date), f=sql.Literal(first),
                                                          l=sql.Literal(last))
        self.plan["snapshot"] = (f"the delivery holds the source's rows from {first} to {last}: rows of those "
                                 "dates it no longer holds are marked deleted at source")
        amount = sql.SQL("coalesce(sum({}), 0)").format(sql.Identifier(t.amount)) if t.amount else sql.SQL("null")
        cur.execute(sql.SQL(
            "with gone as (update {target} c set _deleted_by = %(batch)s from meta.batches b "
            "where b.batch_id = c._batch_id and b.source = %(source)s and c._deleted_by is null and {span} "
            "and c._batch_id <> %(batch)s and not exists (select from typed s where s._key = c._key "
            "and s._row_hash is not null) returning c.*) select count(*), {amount} from gone").format(
            target=target, span=span, amount=amount), {"batch": self.batch_id, "source": self.delivery.source})
        return cur.fetchone()

    def _defer_primary_key(self, cur) -> bool:
        """Into an empty table: take its primary key off until the rows are in, then build it once, sorted.

        core.defer_primary_key holds the table exclusively until commit (it is empty: nobody has rows to
        read in it yet). A reader already in it makes us wait a few seconds at most, then the rows go in
        through the index as usual.
        """
        cur.execute("show lock_timeout")
        lock_timeout = cur.fetchone()[0]
        cur.execute("savepoint defer_key; set local lock_timeout = '5s'")
        try:
            cur.execute("select core.defer_primary_key(%s::regclass)", (f"core.{self.table.name}",))
            deferred = cur.fetchone()[0]
            cur.execute("release savepoint defer_key")
        except psycopg2.errors.LockNotAvailable:
            cur.execute("rollback to savepoint defer_key")
            deferred = False
        cur.execute("select set_config('lock_timeout', %s, true)", (lock_timeout,))
        return deferred

    def _restore_primary_key(self, cur) -> None:
        cur.execute("select core.restore_primary_key(%s::regclass)", (f"core.{self.table.name}",))
