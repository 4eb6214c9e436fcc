"""The one loader every source goes through: raw COPY, set-wise validation, dedupe, merge, ledger.

One transaction per batch. The ledger row, the quarantine rows and the merged core rows commit
together or not at all, so a failure (bad input, a killed process, a lost connection, a time budget
running out) leaves nothing of the batch behind, and a rerun converges to the same totals.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg2
import psycopg2.extras
from psycopg2 import sql

from pipeline.config import SourceConfig
from pipeline.model import TABLES, Table
from pipeline.money import EXACT
from pipeline.sources import LoadError, RawSheet, Reader, copy_pieces, csv_lane
from pipeline.typing_sql import (
    SQL_TYPE,
    FastLane,
    Mapped,
    canonical_value,
    fast_lane,
    row_hash,
    typed_select,
)

UNCHANGED_SAMPLE = 1_000  # rows of a delivery looked up in core to see whether most are loaded already
HANDLER_SAMPLE = 64  # rows of a CSV's first piece looked up in core to see whether it re-exports a batch


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


@contextlib.contextmanager
def _hashing_a_batch(cur) -> Iterator[None]:
    """A statement that hashes every row of a big batch against the table (some 100 bytes a row): with the
    memory to do it in one pass rather than in batches spilled to disk."""
    cur.execute("show work_mem")
    before = cur.fetchone()[0]
    cur.execute("set local work_mem = '256MB'")
    try:
        yield
    finally:
        cur.execute("select set_config('work_mem', %s, true)", (before,))


def _ident_list(names) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


class BatchLoad:
    """Loads one delivery inside the caller's open transaction; `run()` commits."""

    def __init__(self, conn, delivery: Delivery, reader: Reader, timezone: str,
                 deadline: Callable[[], float] | None = None, request_id: str | None = None,
                 before_commit: Callable[[object, int], None] | None = None):
        self.conn, self.delivery, self.reader = conn, delivery, reader
        self.table: Table = TABLES[delivery.config.table]
        self.timezone, self.request_id = timezone, request_id
        self.remaining = deadline or (lambda: float("inf"))
        self.batch_id: int | None = None
        # e.g. an API source saving its incremental cursor: (cursor, batch_id), inside the batch's transaction
        self.before_commit = before_commit
        self.rejects = 0
        self.direct = False  # a one-sheet delivery into an empty table (decided in run)
        self.unchanged = 0  # rows found already in core as they are (see _find_unchanged)
        self._updates_seen: tuple | None = None  # the ledger's updating batches when they were found
        self._sheet_found: tuple | None = None  # the sheet they are rows of: (sheet, mapped, lane)
        self._raw_rows = 0
        self._has_turn = False

    # a re-export's rows already in core, unchanged, are found by their content hash instead of being typed
    recognise_unchanged = True
    # a CSV's canonical rows are typed and hashed in the handler while PostgreSQL stores the rows before them
    # (pipeline.sources.csv_lane); the SQL lanes type the rest
    type_in_handler = True

    # -- the batch ----------------------------------------------------------------------------------
    def run(self, commit_margin_s: float = 5.0) -> dict:
        d = self.delivery
        started = time.time()
        with self.conn.cursor() as cur:
            cur.execute("set local timezone = %s", (self.timezone,))
            # dates print as ISO whatever the server's default: the fast lane compares their text, the row
            # hash includes it
            cur.execute("set local datestyle = 'ISO'")
            # the typing pass's LATERAL steps never repeat a value: caching them is pure overhead; and
            # compiling its long expressions costs more than it saves
            cur.execute("set local enable_memoize = off; set local jit = off")
            # the key check and the merge hash a whole batch: in memory, not in spill files
            cur.execute("set local work_mem = '64MB'")
            if d.object_key:
                cur.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))",
                            (f"{d.source}|{d.object_key}|{d.sha256}",))
                existing = already_loaded(cur, d.source, d.object_key, d.sha256)
                if existing:
                    self.conn.rollback()
                    return {"status": "already_loaded", "batch_id": existing, "source": d.source, "ref": d.ref}
            cur.execute(
                "insert into meta.batches (source, source_kind, target_table, source_ref, object_key, object_etag,"
                " object_version, content_sha256, status, request_id, window_from, window_to)"
                " values (%s, %s, %s, %s, %s, %s, %s, %s, 'running', %s, %s, %s) returning batch_id",
                (d.source, d.kind, self.table.name, d.ref, d.object_key, d.etag, d.version, d.sha256,
                 self.request_id, *(d.window or (None, None))))
            self.batch_id = cur.fetchone()[0]
            self._create_typed(cur)
            # a one-sheet delivery into an empty table: its rows go straight in (see _load_direct)
            self.direct = getattr(self.reader, "one_sheet", False) and self._empty_target_held(cur)
            summary = None
            for sheet in self.reader.sheets():
                summary = self._load_sheet(cur, sheet)
                self._check_time(commit_margin_s)
            summary = summary or self._merge(cur)
            self._check_time(commit_margin_s)
            cur.execute(
                "update meta.batches set status = 'committed', finished_at = clock_timestamp(),"
                " rows_read = %(rows_read)s, rows_inserted = %(rows_inserted)s, rows_updated = %(rows_updated)s,"
                " rows_unchanged = %(rows_unchanged)s, rows_duplicate = %(rows_duplicate)s,"
                " rows_quarantined = %(rows_quarantined)s, rows_skipped = %(rows_skipped)s,"
                " amount_in = %(amount_in)s, amount_loaded = %(amount_loaded)s,"
                " amount_quarantined = %(amount_quarantined)s, amount_duplicate = %(amount_duplicate)s"
                " where batch_id = %(batch_id)s", {**summary, "batch_id": self.batch_id})
            if self.before_commit:
                self.before_commit(cur, self.batch_id)
        self.conn.commit()
        return {"status": "committed", "source": d.source, "ref": d.ref, "batch_id": self.batch_id,
                "seconds": round(time.time() - started, 3), **summary}

    def _check_time(self, margin: float) -> None:
        if self.remaining() < margin:
            raise TimeBudgetExceeded(f"{self.delivery.display}: less than {margin:.0f}s left before the function's "
                                     "timeout; rolled back so a retry can load it whole")

    # -- per sheet: raw COPY, typing, quarantine ----------------------------------------------------
    def _create_typed(self, cur) -> None:
        cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(SQL_TYPE[c.type]))
                                  for c in self.table.columns)
        cur.execute(sql.SQL("create temp table typed (_sheet text, _row bigint, {}, _reasons text[] default '{{}}',"
                            " _skip boolean default false, _row_hash text) on commit drop").format(cols))

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
        return [Mapped(self.table.column(c), f"c{pos}", sheet.header[pos]) for c, pos in sheet.mapping.items()]

    def _load_sheet(self, cur, sheet: RawSheet) -> dict | None:
        """Typing and quarantine of one sheet; the batch's summary when that also loaded it."""
        if sheet.handler_typing is not None and self.type_in_handler:
            taken, summary = self._load_typed_in_handler(cur, sheet)
            if taken:
                return summary
        sheet = self._copy(cur, sheet)
        mapped = self._mapped(sheet)
        opts = self.delivery.config.read
        lane = fast_lane(self.table, mapped, opts, len(sheet.header))
        if lane is not None and self.direct:
            summary = self._load_direct(cur, mapped, lambda: self._fast_from_raw(cur, sheet, mapped, lane))
            if summary:
                return summary
        if lane is None:
            self._typed_rows(cur, sheet, mapped, typed_select(self.table, mapped, opts, len(sheet.header)))
        else:  # rows already canonical: cast, no per-value tests; the rest the careful way
            self.unchanged = self._find_unchanged(cur, sheet, mapped, lane)
            if not self.unchanged or self._raw_rows > self.unchanged:  # else: every row is as it was
                self._fast_rows(cur, sheet, mapped, lane, sql.SQL("unchanged") if self.unchanged else None)
                self._type_the_rest(cur, sheet, mapped, cur.rowcount + self.unchanged, self._taken(sheet))
        self._quarantine(cur, sheet, mapped)
        return None

    def _fast_rows(self, cur, sheet: RawSheet, mapped: list[Mapped], lane: FastLane,
                   skip: sql.Composable | None = None) -> None:
        """The canonical rows of raw into typed, but for those in `skip` (by _row); cur.rowcount says how many."""
        rows = sql.SQL("raw")
        if skip is not None:  # fenced, so the anti-join comes before any value is tested
            rows = sql.SQL("(select * from raw r where not exists (select from {} u where u._row = r._row) offset 0)"
                           ).format(skip)
        self._typed_rows(cur, sheet, mapped, sql.SQL(
            "select r._row, {}, {} as _h, '{{}}'::text[] as _reasons, false as _skip from {} r where {}"
        ).format(lane.typed, lane.row_hash, rows, lane.guard), hashed=True)

    def _taken(self, sheet: RawSheet) -> sql.Composable:
        """The rows of the sheet already typed (or found unchanged), by _row."""
        typed = sql.SQL("select _row from typed where _sheet is not distinct from {}").format(sql.Literal(sheet.name))
        if self.unchanged:
            typed = sql.SQL("{} union all select _row from unchanged").format(typed)
        return sql.SQL("({})").format(typed)

    # -- a re-export: rows already loaded, found without typing them -----------------------------------
    def _updating_batches(self, cur) -> tuple:
        """(batches that put rows in the table, batches that changed rows in it, the last of those)."""
        cur.execute("select count(*) filter (where rows_inserted > 0), count(*) filter (where rows_updated > 0),"
                    " max(batch_id) filter (where rows_updated > 0) from meta.batches"
                    " where target_table = %s and status = 'committed'", (self.table.name,))
        return cur.fetchone()

    def _find_unchanged(self, cur, sheet: RawSheet, mapped: list[Mapped], lane: FastLane) -> int:
        """Rows of raw that core already holds exactly as they are: kept in `unchanged` (row, key, amount), and
        neither typed nor merged. Their number.

        A row's content hash is md5 of its values' text. The fast lane's hash of a raw row (see typing_sql) is
        md5 of its raw text, trimmed as typing trims it: equal to the hash of a row in core only when that
        text is the row's own typed values (md5 aside), so the row would type to exactly that row. No value
        is tested or cast; the key, when canonical, finds the row in core (by its index for a small file).

        Only for one sheet (raw is still there at the merge) of a table that has rows, a layout whose
        spellings are canonical, and no timestamp column (its text depends on the time zone). _settle_unchanged
        checks what the merge would have seen differently, under the merge turn.
        """
        if not (self.recognise_unchanged and getattr(self.reader, "one_sheet", False)):
            return 0
        if any(m.column.type == "timestamp" for m in mapped):
            return 0
        updates = self._updating_batches(cur)
        if not updates[0]:
            return 0
        by_name = {m.column.name: m for m in mapped}
        t = self.table
        keys = [sql.SQL("{} as {}").format(canonical_value(by_name[k], sql.SQL("r.{}").format(
            sql.Identifier(by_name[k].raw))), sql.Identifier(k)) for k in t.natural_key]

        def hashed(condition: sql.Composable) -> sql.Composable:  # each row's key (when canonical) and hash
            return sql.SQL("select r._row, {}, {} as _h from raw r where {} and {}").format(
                sql.SQL(", ").join(keys), lane.row_hash, lane.data_row, condition)

        target = sql.Identifier("core", t.name)
        found = sql.SQL(" and ").join(sql.SQL("c.{k} = h.{k}").format(k=sql.Identifier(k)) for k in t.natural_key)
        # a sample first: finding rows costs about what typing two thirds of them would, so it is only worth it
        # for a file that is mostly rows already loaded (a new day's rows cost one sample, a few index probes)
        cur.execute("select count(*) from raw")
        self._raw_rows = cur.fetchone()[0]
        step = max(1, self._raw_rows // UNCHANGED_SAMPLE)
        sample = hashed(sql.SQL("r._row % {} = 0").format(sql.Literal(step)))
        cur.execute(sql.SQL(  # a lateral probe each, by the primary key: never a scan of the table
            "select count(c._row_hash), count(*) from ({}) h left join lateral "
            "(select c._row_hash from {} c where {} and c._row_hash = h._h limit 1) c on true").format(
            sample, target, found))
        matched, sampled = cur.fetchone()
        if not sampled or 3 * matched < 2 * sampled:
            return 0
        # then every row: their keys and hashes, one join (a few index probes for a small file, a hash join
        # for a big one: the planner sees which from the statistics)
        cur.execute(sql.SQL("create temp table hashed on commit drop as {}").format(hashed(sql.SQL("true"))))
        cur.execute("analyze hashed")
        chosen = sql.SQL(", ").join(sql.SQL("c.{}").format(sql.Identifier(k)) for k in self.delivery.config.key)
        amount = sql.SQL("c.{}").format(sql.Identifier(t.amount)) if t.amount else sql.SQL("null::numeric")
        with _hashing_a_batch(cur):
            cur.execute(sql.SQL(
                "create temp table unchanged on commit drop as select h._row, {chosen}, {amount} as _amount "
                "from hashed h join {target} c on {found} and c._row_hash = h._h").format(
                chosen=chosen, amount=amount, target=target, found=found))
            found_rows = cur.rowcount
        cur.execute("drop table hashed")
        self._updates_seen, self._sheet_found = updates[1:], (sheet, mapped, lane)
        return found_rows

    def _settle_unchanged(self, cur) -> None:
        """Under the merge turn: the rows found unchanged stay so, unless the merge would see them otherwise.

        That is when another batch has updated rows of the table since they were found, or when this batch
        repeats the key of one of them (an exact copy, or the same key with other values: the batch is
        collapsed then). In those cases they are typed after all, as every other row is, and merged with
        the rest.
        """
        if not self.unchanged:
            return
        keys = _ident_list(self.delivery.config.key)
        joined = sql.SQL(" and ").join(sql.SQL("t.{k} = u.{k}").format(k=sql.Identifier(k))
                                       for k in self.delivery.config.key)
        # new rows cannot change the ones found: only a batch that updated rows can
        stale = self._updating_batches(cur)[1:] != self._updates_seen
        if not stale:
            with _hashing_a_batch(cur):
                cur.execute(sql.SQL("select exists (select from unchanged group by {} having count(*) > 1) or exists "
                                    "(select from typed t join unchanged u on {} where t._row_hash is not null)"
                                    ).format(keys, joined))
                stale = cur.fetchone()[0]
        if not stale:
            return
        cur.execute("drop table unchanged")
        self.unchanged = 0
        sheet, mapped, lane = self._sheet_found
        taken = self._taken(sheet)  # the rows typed already: the rest of the sheet
        cur.execute(sql.SQL("select count(*) from {} t").format(taken))
        before = cur.fetchone()[0]
        self._fast_rows(cur, sheet, mapped, lane, taken)
        self._type_the_rest(cur, sheet, mapped, before + cur.rowcount, taken)

    def _type_the_rest(self, cur, sheet: RawSheet, mapped: list[Mapped], fast: int, taken: sql.Composable) -> None:
        """The rows the fast lane did not admit (most often none: one count), into typed the careful way.

        taken: the relation `t` holding the rows the fast lane took, by `t._row` (and `t._sheet`). Finding
        the rest by what was taken (one anti-join) costs far less than testing every row again.
        """
        cur.execute("select count(*) from raw")
        if cur.fetchone()[0] > fast:
            rest = sql.SQL("not exists (select from {} t where t._row = r._row)").format(taken)
            self._typed_rows(cur, sheet, mapped, typed_select(self.table, mapped, self.delivery.config.read,
                                                              len(sheet.header), rest))

    def _typed_rows(self, cur, sheet: RawSheet, mapped: list[Mapped], select: sql.Composable,
                    hashed: bool = False) -> None:
        """Rows of `select` into typed; an accepted row gets its content hash in the same pass (a null hash
        marks a rejected row). hashed: `select` brings it, as _h."""
        names = [m.column.name for m in mapped]
        cur.execute(sql.SQL(
            "insert into typed (_sheet, _row, {cols}, _reasons, _skip, _row_hash) "
            "select {sheet}, s._row, {scols}, s._reasons, s._skip, "
            "case when not s._skip and cardinality(s._reasons) = 0 then {hash} end "
            "from ({select}) s").format(
            cols=_ident_list(names), sheet=sql.Literal(sheet.name), select=select,
            hash=sql.SQL("s._h") if hashed else row_hash(self.table, names),
            scols=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(n)) for n in names)))

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
            return None
        skipped, read, quarantined, accepted, amount_in, amount_q, amount_loaded = counts
        if t.amount:
            amount_in, amount_loaded = EXACT.add(amount_fast, amount_in), EXACT.add(amount_fast, amount_loaded)
        return self._summary(read=fast + read, inserted=fast + inserted, updated=0, accepted=fast + accepted,
                             duplicates=0, quarantined=quarantined, skipped=skipped, amount_in=amount_in,
                             amount_loaded=amount_loaded, amount_q=amount_q, amount_dup=0)

    def _fast_from_raw(self, cur, sheet: RawSheet, mapped: list[Mapped], lane: FastLane) -> tuple[int, RawSheet]:
        """The fast lane's rows of raw straight into core; the rest into typed."""
        t = self.table
        names = [m.column.name for m in mapped]
        unmapped = [sql.SQL("null::{} as {}").format(sql.SQL(SQL_TYPE[c.type]), sql.Identifier(c.name))
                    for c in t.columns if c.name not in names]
        fast = self._insert_rows(cur, sql.SQL(
            "(select {sheet}::text as _sheet, r._row, {typed}, {hash} as _row_hash from raw r where {guard})"
        ).format(sheet=sql.Literal(sheet.name), typed=sql.SQL(", ").join([lane.typed, *unmapped]),
                 hash=lane.row_hash, guard=lane.guard))
        self._type_the_rest(cur, sheet, mapped, fast, sql.SQL("(select _source_row as _row from {})").format(
            sql.Identifier("core", t.name)))
        return fast, sheet

    # -- a CSV typed in the handler ----------------------------------------------------------------------
    def _load_typed_in_handler(self, cur, sheet: RawSheet) -> tuple[bool, dict | None]:
        """A CSV whose canonical rows the handler types (pipeline.sources.csv_lane), the rest going to the
        careful lane: (whether it took the sheet, the batch's summary when that also finished the batch).

        It steps aside, leaving nothing behind, for a file whose first piece is mostly records it would hand
        on anyway, or whose records it cannot find (a quote never closed, a line break that never comes).
        """
        handler = sheet.handler_typing
        mapped = self._mapped(sheet)
        rejects = self.rejects
        cur.execute("savepoint handler_lane")
        try:
            with handler.stream(sample=HANDLER_SAMPLE) as stream:
                if stream.records >= 1_000 and 2 * stream.rows < stream.records:
                    raise csv_lane.LaneAbandoned("most of the first piece is records for the SQL lanes")
                summary = None
                if self.direct:
                    summary = self._load_direct(
                        cur, mapped, lambda: self._fast_from_handler(cur, sheet, mapped, stream))
                elif self.recognise_unchanged and self._updating_batches(cur)[0]:
                    summary = self._unchanged_from_handler(cur, sheet, stream)
                else:
                    self._staged_from_handler(cur, sheet, mapped, stream)
                    cur.execute("release savepoint handler_lane")
                    return True, None
            if summary is None:  # a key repeated in a first load, or not a batch again: a fresh pass, staged
                with handler.stream() as stream:
                    self._staged_from_handler(cur, sheet, mapped, stream)
            cur.execute("release savepoint handler_lane")
            return True, summary
        except csv_lane.LaneAbandoned:
            cur.execute("rollback to savepoint handler_lane")
            self.rejects = rejects
            return False, None

    def _copy_from_handler(self, cur, target: sql.Composable, row_column: str, stream: csv_lane.LaneStream) -> None:
        """The handler's rows into `target`. A quoted empty value ("") is null, as the SQL lanes read it."""
        lane = stream.lane
        values = _ident_list(c.name for c in lane.copied)
        copy_pieces(cur, sql.SQL("copy {} ({}, {}, _row_hash) from stdin with (format csv, delimiter {}, quote {}, "
                                 "force_null ({}), encoding 'UTF8')").format(
            target, values, sql.Identifier(row_column), sql.Literal(chr(lane.delimiter)), sql.Literal(chr(lane.quote)),
            values).as_string(cur), iter(stream))

    def _handed_on(self, cur, sheet: RawSheet, mapped: list[Mapped], stream: csv_lane.LaneStream) -> RawSheet:
        """The records the handler handed on, into raw and typed the careful way: the sheet raw holds."""
        handed = sheet.handler_typing.handed_on(stream, sheet)
        self._create_raw(cur, handed)
        if stream.handed_on_count:
            handed.copy(cur, "raw")
            self._typed_rows(cur, handed, mapped, typed_select(self.table, mapped, self.delivery.config.read,
                                                               len(sheet.header)))
        return handed

    def _fast_from_handler(self, cur, sheet: RawSheet, mapped: list[Mapped],
                           stream: csv_lane.LaneStream) -> tuple[int, RawSheet]:
        """The handler's rows straight into core, their lineage from the batch (migration 011); the rest typed."""
        cur.execute("select set_config('pipeline.batch_id', %s, true), set_config('pipeline.source', %s, true),"
                    " set_config('pipeline.source_ref', %s, true)",
                    (str(self.batch_id), self.delivery.source, self._ref(sheet.name)))
        self._copy_from_handler(cur, sql.Identifier("core", self.table.name), "_source_row", stream)
        return stream.rows, self._handed_on(cur, sheet, mapped, stream)

    def _staged_from_handler(self, cur, sheet: RawSheet, mapped: list[Mapped], stream: csv_lane.LaneStream) -> None:
        """The handler's rows into typed, the rest typed the careful way, quarantined: ready for the merge."""
        self._copy_from_handler(cur, sql.Identifier("typed"), "_row", stream)
        self._quarantine(cur, self._handed_on(cur, sheet, mapped, stream), mapped)

    def _unchanged_from_handler(self, cur, sheet: RawSheet, stream: csv_lane.LaneStream) -> dict | None:
        """A re-export of a batch's rows, every one as core holds it: the batch's summary, with nothing to
        write but the ledger; None when the file is anything else.

        The first piece's sample names the batch that holds its rows (by key and content hash). Then the whole
        file is hashed, and its rows' fingerprint (their number and the sum of their hashes) compared with that
        of the rows core holds from that batch, under the merge turn, so no batch changes them before this one
        commits. Equal, the file is that batch's rows again, as they are: none to type, insert or update.
        """
        batch = self._sampled_batch(cur, stream.first.sample)
        if batch is None:
            return None
        t = self.table
        total = sql.SQL("sum({})").format(sql.Identifier(t.amount)) if t.amount else sql.SQL("null::numeric")
        # the file's rows hashed as they are, in a thread, while PostgreSQL sums the batch's (under the turn).
        # Values are not tested: a raw row hashes like a loaded row only when it would type to exactly that
        # row (an accepted row's text is its values' own spellings; a raw value that is not one, '007' or
        # ' a' or '2025-02-30', hashes like none of them), so equal fingerprints mean the batch's rows again,
        # and any other file (a footer, a blank or a changed row more) differs in its count or its sum.
        with sheet.handler_typing.stream(copy=False, check=False, keep_handed_on=False) as whole, \
                ThreadPoolExecutor(1) as pool:
            hashing = pool.submit(whole.drain)
            self._merge_turn(cur)
            cur.execute(sql.SQL("select count(*), coalesce(sum(('x' || left(_row_hash, 16))::bit(64)::bigint), 0),"
                                " {} from {} where _batch_id = %s").format(total, sql.Identifier("core", t.name)),
                        (batch,))
            count, fingerprint, amount = cur.fetchone()
            hashing.result()
        if whole.handed_on_count or (count, int(fingerprint)) != (whole.rows, whole.fingerprint):
            return None
        return self._summary(read=count, inserted=0, updated=0, accepted=count, duplicates=0, quarantined=0,
                             skipped=0, amount_in=amount, amount_loaded=amount, amount_q=0, amount_dup=0)

    def _sampled_batch(self, cur, sample: list[dict]) -> int | None:
        """The batch whose rows in core are, by key and content hash, most of these sampled rows; or None."""
        t = self.table
        keys = list(t.natural_key)
        probes = [[r[k] for k in keys] + [r["_row_hash"]] for r in sample if all(r.get(k) for k in keys)]
        if not probes:
            return None
        row = sql.SQL("({})").format(sql.SQL(", ").join([sql.Placeholder()] * (len(keys) + 1)))
        found = sql.SQL(" and ").join(
            sql.SQL("c.{} = h.{}::{}").format(sql.Identifier(k), sql.Identifier(f"k{i}"),
                                              sql.SQL(SQL_TYPE[t.column(k).type])) for i, k in enumerate(keys))
        cur.execute(sql.SQL("select c._batch_id, count(*) from (values {}) h({}, _h) join {} c on {} "
                            "and c._row_hash = h._h group by 1 order by 2 desc limit 1").format(
            sql.SQL(", ").join([row] * len(probes)), _ident_list(f"k{i}" for i in range(len(keys))),
            sql.Identifier("core", t.name), found), [v for p in probes for v in p])
        best = cur.fetchone()
        return best[0] if best and 3 * best[1] >= 2 * len(sample) else None

    def _ref(self, sheet: str | None) -> str:
        return f"{self.delivery.ref}#{sheet}" if sheet else self.delivery.ref

    # -- dedupe and merge ---------------------------------------------------------------------------
    def _merge(self, cur) -> dict:
        t = self.table
        cols = list(t.column_names)
        key = list(self.delivery.config.key)
        amount = sql.Identifier(t.amount) if t.amount else None
        if self.unchanged:  # under the turn: they may have to be typed after all
            self._merge_turn(cur)
            self._settle_unchanged(cur)
        skipped, read, quarantined, accepted, amount_in, amount_q, amount_loaded = self._with_unchanged(
            cur, self._typed_counts(cur))
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
        if not empty and self._repeats_a_key(cur, key):
            collapse()
        cur.execute("savepoint merge")
        try:
            inserted, updated = self._merge_rows(cur, cols, key, empty)
            cur.execute("release savepoint merge")
        except psycopg2.errors.UniqueViolation:
            if not empty:
                raise
            cur.execute("rollback to savepoint merge")
            collapse()
            inserted, updated = self._merge_rows(cur, cols, key, empty)
        return self._summary(read=read, inserted=inserted, updated=updated, accepted=accepted,
                             duplicates=duplicates, quarantined=quarantined, skipped=skipped, amount_in=amount_in,
                             amount_loaded=amount_loaded, amount_q=amount_q, amount_dup=amount_dup)

    def _with_unchanged(self, cur, counts: tuple) -> tuple:
        """typed's counts with the rows found unchanged: read and accepted, their amount in and loaded."""
        if not self.unchanged:
            return counts
        skipped, read, quarantined, accepted, amount_in, amount_q, amount_loaded = counts
        if self.table.amount:
            cur.execute("select coalesce(sum(_amount), 0) from unchanged")
            amount = cur.fetchone()[0]
            amount_in, amount_loaded = EXACT.add(amount_in, amount), EXACT.add(amount_loaded, amount)
        n = self.unchanged
        return skipped, read + n, quarantined, accepted + n, amount_in, amount_q, amount_loaded

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
                "amount_duplicate": amount_dup if money else None}

    def _collapse(self, cur, key: list[str], amount) -> tuple[int, object, int, object]:
        """Exact copies within the batch count as duplicates; a key repeated with other values keeps its last row."""
        amount_sum = sql.SQL("coalesce(sum({}), 0)").format(amount) if amount else sql.SQL("0")
        keys = _ident_list(key)
        cur.execute(sql.SQL(
            "with gone as (delete from typed a using (select ctid, row_number() over (partition by {k}, _row_hash "
            "order by _sheet, _row) as n from typed where _row_hash is not null) d "
            "where a.ctid = d.ctid and d.n > 1 returning a.*) "
            "select count(*), {s} from gone").format(k=keys, s=amount_sum))
        duplicates, amount_dup = cur.fetchone()
        key_text = sql.SQL(" || ', ' || ").join(
            sql.SQL("{} || '=' || a.{}::text").format(sql.Literal(k), sql.Identifier(k)) for k in key)
        cur.execute(sql.SQL(
            "with ranked as (select ctid, first_value(_row) over w as kept_row, row_number() over w as n "
            "from typed where _row_hash is not null window w as (partition by {k} order by _sheet desc, _row desc)), "
            "gone as (delete from typed a using ranked r where a.ctid = r.ctid and r.n > 1 "
            "returning a.*, r.kept_row), "
            "q as (insert into meta.quarantine (batch_id, source, source_ref, source_row, raw, reason, reason_code) "
            "select %s, %s, %s || coalesce('#' || a._sheet, ''), a._row, "
            "to_jsonb(a) - '_row_hash' - 'kept_row' - '_reasons' - '_skip', "
            "'row ' || a._row || ': ' || {kt} || ' appears again at row ' || a.kept_row || "
            "' with different values; the later row is loaded', 'conflicting_duplicate' from gone a returning 1) "
            "select count(*), {s} from gone").format(k=keys, kt=key_text, s=amount_sum),
            (self.batch_id, self.delivery.source, self.delivery.ref))
        conflicts, amount_conflicts = cur.fetchone()
        return duplicates, amount_dup, conflicts, amount_conflicts

    def _repeats_a_key(self, cur, key: list[str]) -> bool:
        cur.execute(sql.SQL("select exists (select from typed where _row_hash is not null group by {} "
                            "having count(*) > 1)").format(_ident_list(key)))
        return cur.fetchone()[0]

    _LINEAGE = ("_batch_id", "_source", "_source_ref", "_source_row", "_row_hash")

    def _lineage(self) -> tuple[dict[str, sql.Composable], dict]:
        """Each lineage column's value for a row `s` (with _sheet, _row and _row_hash), and its parameters."""
        values = {"_batch_id": sql.Placeholder("batch"), "_source": sql.Placeholder("source"),
                  "_source_ref": sql.SQL("%(ref)s || coalesce('#' || s._sheet, '')"), "_source_row": sql.SQL("s._row"),
                  "_row_hash": sql.SQL("s._row_hash")}
        return values, {"batch": self.batch_id, "source": self.delivery.source, "ref": self.delivery.ref}

    def _insert_rows(self, cur, rows: sql.Composable, where: sql.Composable = sql.SQL("true")) -> int:
        """Rows `s` of `rows` (the table's columns, _sheet, _row, _row_hash) inserted with their lineage."""
        cols = list(self.table.column_names)
        values, params = self._lineage()
        cur.execute(sql.SQL("insert into {target} ({cols}, {lineage}) select {scols}, {values} from {rows} s "
                            "where {where}").format(
            target=sql.Identifier("core", self.table.name), cols=_ident_list(cols), lineage=_ident_list(self._LINEAGE),
            scols=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in cols),
            values=sql.SQL(", ").join(values[c] for c in self._LINEAGE), rows=rows, where=where), params)
        return cur.rowcount

    def _merge_rows(self, cur, cols: list[str], key: list[str], empty: bool) -> tuple[int, int]:
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
        joined = sql.SQL(" and ").join(sql.SQL("c.{k} = s.{k}").format(k=sql.Identifier(k)) for k in key)
        present = sql.SQL("c.{}").format(sql.Identifier(key[0]))
        cur.execute(sql.SQL(
            "select count(*), count({present}), count(*) filter (where {present} is not null"
            " and c._row_hash is distinct from s._row_hash) "
            "from typed s left join {target} c on {joined} where {accepted}").format(
            present=present, target=target, joined=joined, accepted=accepted))
        batch_keys, present_keys, changed = cur.fetchone()
        updated = inserted = 0
        if changed:
            values, params = self._lineage()
            sets = sql.SQL(", ").join(
                [sql.SQL("{} = s.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in cols if c not in key]
                + [sql.SQL("{} = {}").format(sql.Identifier(c), values[c]) for c in self._LINEAGE]
                + [sql.SQL("_updated_at = now()")])
            cur.execute(sql.SQL("update {target} c set {sets} from typed s where {joined} and {accepted}"
                                " and c._row_hash is distinct from s._row_hash").format(
                target=target, sets=sets, joined=joined, accepted=accepted), params)
            updated = cur.rowcount
        if present_keys < batch_keys:
            inserted = self._insert_rows(cur, sql.SQL("typed"), sql.SQL(
                "{} and not exists (select from {} c where {})").format(accepted, target, joined))
        return inserted, updated

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


@contextlib.contextmanager
def failures_recorded(conn, delivery: Delivery, request_id: str | None = None) -> Iterator[None]:
    """Around a batch: on any error, roll back all of it and keep a failed ledger row with the reason."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.rollback()
        if isinstance(exc, Exception):
            with contextlib.suppress(Exception):
                record_failure(conn, delivery, f"{type(exc).__name__}: {exc}", request_id)
        raise


def record_failure(conn, delivery: Delivery, error: str, request_id: str | None = None) -> int:
    """After a rollback: a failed ledger row with the reason, in its own transaction (no data)."""
    with conn.cursor() as cur:
        cur.execute(
            "insert into meta.batches (source, source_kind, target_table, source_ref, object_key, object_etag,"
            " object_version, content_sha256, status, error, request_id, window_from, window_to, finished_at)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, 'failed', %s, %s, %s, %s, clock_timestamp()) returning batch_id",
            (delivery.source, delivery.kind, delivery.config.table, delivery.ref, delivery.object_key, delivery.etag,
             delivery.version, delivery.sha256, error[:4000], request_id, *(delivery.window or (None, None))))
        batch_id = cur.fetchone()[0]
    conn.commit()
    return batch_id
