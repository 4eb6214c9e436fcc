"""Knowing a re-export: the rows of a delivery that core already holds exactly as they are, found without
typing or merging them.

A source system often sends rows again (a daily export of the month so far, the same export under another
name). Their outcome is known in advance: unchanged. Two ways find them, one per lane. The SQL lanes hash
each raw row of a sheet and look for that hash in core (_find_unchanged). A CSV typed in the handler is
compared whole with the loaded batch a sample of it names (_unchanged_from_handler). Either way, what
another batch changes meanwhile is seen under the merge turn, and the rows are then merged after all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from psycopg2 import sql

from pipeline.money import EXACT
from pipeline.sources import RawSheet
from pipeline.sources.lane import LaneStream
from pipeline.typing_sql import SQL_TYPE, FastLane, Mapped, canonical_value, identifiers

UNCHANGED_SAMPLE = 1_000  # rows of a delivery looked up in core to see whether most are loaded already
HANDLER_SAMPLE = 64  # rows of a CSV's first piece looked up in core to see whether it re-exports a batch


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


class ReExports:
    """BatchLoad's part that finds rows already loaded (mixed into pipeline.loader.BatchLoad)."""

    # a re-export's rows already in core, unchanged, are found by their content hash instead of being typed
    recognise_unchanged = True

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
        if not (self.recognise_unchanged and self.reader.one_sheet):
            return 0
        if any(m.column.type == "timestamp" for m in mapped):
            return 0
        updates = self._updating_batches(cur)
        if not updates[0]:
            return 0
        by_name = {m.column.name: m for m in mapped}
        t = self.table
        keys = [sql.SQL("{} as {}").format(canonical_value(by_name[k], sql.SQL("r.{}").format(
            sql.Identifier(by_name[k].raw)), self.delivery.config.read), sql.Identifier(k)) for k in t.natural_key]

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
        keys = identifiers(self.delivery.config.key)
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

    def _unchanged_from_handler(self, cur, sheet: RawSheet, stream: LaneStream) -> dict | None:
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
        # and any other file (a changed row, a row more or less) differs in its count or its sum. The rows the
        # SQL lanes would skip (blank rows, a Total footer) are set aside and counted as skipped.
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
                             skipped=whole.skipped, amount_in=amount, amount_loaded=amount, amount_q=0, amount_dup=0)

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
            sql.SQL(", ").join([row] * len(probes)), identifiers(f"k{i}" for i in range(len(keys))),
            sql.Identifier("core", t.name), found), [v for p in probes for v in p])
        best = cur.fetchone()
        return best[0] if best and 3 * best[1] >= 2 * len(sample) else None
