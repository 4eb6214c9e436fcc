"""Knowing a re-export: a delivery that is a loaded batch's rows again, every one as core holds it, known
without typing or merging them.

A source system often sends rows again (the same export under another name, in another order). Their
outcome is known in advance: unchanged. A file (or one-sheet workbook) typed in the handler is compared
whole with the loaded batch a sample of it names (_unchanged_from_handler), under the merge turn, so no
other batch changes those rows meanwhile. Rows only the SQL lanes read are typed and merged: finding them in
core first saved little (`python -m bench paths`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from psycopg2 import sql

from pipeline.sources import RawSheet
from pipeline.sources.lane import LaneStream
from pipeline.typing_sql import CURRENCY_DEFAULT

HANDLER_SAMPLE = 64  # rows of a CSV's first piece looked up in core to see whether it re-exports a batch


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
            # a currency the file does not name is the source's setting, which its hash does not cover: the
            # batch's rows must have the one it says now
            other = (sql.SQL("count(*) filter (where currency is distinct from {})").format(sql.SQL(CURRENCY_DEFAULT))
                     if "currency" in t.column_names and "currency" not in self.delivery.config.columns
                     else sql.SQL("0"))
            cur.execute(sql.SQL("select count(*), coalesce(sum(('x' || left(_row_hash, 16))::bit(64)::bigint), 0),"
                                " {}, {} from {} where _batch_id = %s").format(total, other,
                                                                             sql.Identifier("core", t.name)),
                        (batch,))
            count, fingerprint, amount, other_currency = cur.fetchone()
            hashing.result()
        if whole.handed_on_count or other_currency or (count, int(fingerprint)) != (whole.rows, whole.fingerprint):
            return None
        return self._summary(read=count, inserted=0, updated=0, accepted=count, duplicates=0, quarantined=0,
                             skipped=whole.skipped, amount_in=amount, amount_loaded=amount, amount_q=0, amount_dup=0)

    def _sampled_batch(self, cur, sample: list[dict]) -> int | None:
        """The batch whose rows in core are, by key and content hash, most of these sampled rows; or None."""
        probes = [(r["_key"], r["_row_hash"]) for r in sample]
        if not probes:
            return None
        cur.execute(sql.SQL("select c._batch_id, count(*) from (values {}) h(_key, _h) join {} c on c._key = h._key "
                            "and c._row_hash = h._h group by 1 order by 2 desc limit 1").format(
            sql.SQL(", ").join([sql.SQL("(%s, %s)")] * len(probes)), sql.Identifier("core", self.table.name)),
            [v for p in probes for v in p])
        best = cur.fetchone()
        return best[0] if best and 3 * best[1] >= 2 * len(sample) else None
