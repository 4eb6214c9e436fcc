"""Re-read a delivered object exactly as the loader typed it, inside a transaction that is rolled back.

The ledger counts what the loader skipped (footers) and collapsed (exact copies) but keeps no row for
them; reading the same object version again with the loader's own typing finds which rows they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from psycopg2 import sql

from pipeline.config import PipelineConfig
from pipeline.model import TABLES


@dataclass
class Replay:
    batch_id: int
    footers: list[dict[str, Any]] = field(default_factory=list)  # skipped rows that are not blank
    copies: list[dict[str, Any]] = field(default_factory=list)  # exact copies of an earlier row
    holders: list[int] = field(default_factory=list)  # batches whose core rows have this object's keys
    error: str | None = None


def replay_batch(conn, config: PipelineConfig, batch: dict[str, Any]) -> Replay:
    """Type the batch's object again (same version) and read footers, copies and key holders from it."""
    from pipeline.handlers.ingest_object import reader_for
    from pipeline.loader import BatchLoad, Delivery
    from pipeline.sources import LoadError
    from pipeline.sources.objects import ObjectRef, download

    result = Replay(batch["batch_id"])
    source = config.sources.get(batch["source"])
    if source is None or not batch["object_key"]:
        result.error = "not an object delivery of a configured source"
        return result
    bucket = urlsplit(batch["source_ref"].partition("#")[0]).netloc
    delivery = Delivery(batch["source"], source, source.kind, batch["source_ref"], batch["object_key"],
                        object_key=batch["object_key"], etag=batch["object_etag"], version=batch["object_version"],
                        sha256=batch["content_sha256"])
    try:
        path, sha = download(ObjectRef(bucket, batch["object_key"], batch["object_version"]))
    except Exception as exc:  # noqa: BLE001 - any S3 failure: the finding says the object could not be re-read
        result.error = f"the object could not be read again ({type(exc).__name__}: {exc})"
        return result
    try:
        if batch["content_sha256"] and sha != batch["content_sha256"]:
            result.error = "the object's content differs from what was loaded"
            return result
        load = BatchLoad(conn, delivery, reader_for(delivery, path), config.company.timezone)
        load.batch_id = batch["batch_id"]
        load.recognise_unchanged = False  # every row typed, the ones core already holds too
        with conn.cursor() as cur:
            cur.execute("set local timezone = %s", (config.company.timezone,))
            load._create_typed(cur)
            for sheet in load.reader.sheets():
                load._load_sheet(cur, sheet)
            _read_back(cur, result, TABLES[source.table], list(source.key))
    except LoadError as exc:
        result.error = str(exc)
    finally:
        conn.rollback()
        path.unlink(missing_ok=True)
    return result


def _read_back(cur, result: Replay, table, key: list[str]) -> None:
    cols = [sql.Identifier(c) for c in table.column_names]
    amount = sql.Identifier(table.amount) if table.amount else sql.SQL("null::numeric")
    footer_amount = sql.SQL("f.{}").format(amount) if table.amount else amount
    rows_amount = sql.SQL("d.{}").format(amount) if table.amount else amount
    key_json = sql.SQL(", ").join(sql.SQL("{}, {}").format(sql.Literal(k), sql.Identifier(k)) for k in key)
    # a footer: skipped, yet not blank; its amount against the sum of the sheet's rows
    cur.execute(sql.SQL(
        "select f._sheet, f._row, {famt}, row_to_json(f)::jsonb - '_reasons' - '_skip', "
        "(select sum({damt}) from typed d where d._sheet is not distinct from f._sheet and not d._skip) "
        "from typed f where f._skip and num_nonnulls({cols}) > 0 order by f._sheet, f._row").format(
        famt=footer_amount, damt=rows_amount, cols=sql.SQL(", ").join(sql.SQL("f.{}").format(c) for c in cols)))
    for sheet, row, total, raw, rows_sum in cur.fetchall():
        values = {k: v for k, v in raw.items() if v is not None and not k.startswith("_")}
        result.footers.append({"sheet": sheet, "row": row, "values": values, "total": total,
                               "rows_sum": rows_sum, "total_agrees": total is not None and total == rows_sum})
    # exact copies: the same values as an earlier accepted row of the same object
    cur.execute(sql.SQL(
        "select _sheet, _row, first_row, jsonb_build_object({kj}), {amt} from ("
        "select *, row_number() over w as n, first_value(_row) over w as first_row from typed "
        "where not _skip and cardinality(_reasons) = 0 window w as (partition by {cols} order by _sheet, _row)) t "
        "where n > 1 order by _sheet, _row").format(kj=key_json, amt=amount, cols=sql.SQL(", ").join(cols)))
    result.copies = [{"sheet": s, "row": r, "copy_of_row": first, "key": k, "amount": a}
                     for s, r, first, k, a in cur.fetchall()]
    cur.execute(sql.SQL("select distinct c._batch_id from typed t join {core} c using ({key}) order by 1").format(
        core=sql.Identifier("core", table.name), key=sql.SQL(", ").join(sql.Identifier(k) for k in key)))
    result.holders = [r[0] for r in cur.fetchall()]


def duplicate_rows(batches: list[dict[str, Any]], replays: dict[int, Replay], config: PipelineConfig,
                   limits) -> list:
    """Exact copies of a row inside one delivery: the loader keeps one and counts the rest as duplicates."""
    from playbook.accuracy.results import judge

    found: dict[str, list[dict]] = {}
    for b in batches:
        if not b["rows_duplicate"]:
            continue
        r = replays.get(b["batch_id"])
        copies = r.copies if r and not r.error else []
        base = {"batch_id": b["batch_id"], "file": b["object_key"] or b["source_ref"], "version": b["object_version"]}
        items = [{**base, **c} for c in copies] or [
            {**base, "sheet": None, "row": None, "rows": b["rows_duplicate"], "amount": b["amount_duplicate"],
             "note": (r.error if r and r.error else "the rows could not be located") }]
        found.setdefault(b["source"], []).extend(items)
    results = []
    for source in sorted(set(config.sources) | set(found)):
        n = sum(b["rows_duplicate"] for b in batches if b["source"] == source)
        results.append(judge("duplicate_rows", source, n, limits.max_duplicate_rows,
                             f"{n} rows are exact copies of another row of the same delivery" if n
                             else "no delivery repeats a row", found.get(source, [])))
    return results


def skipped_rows(batches: list[dict[str, Any]], replays: dict[int, Replay], config: PipelineConfig, limits) -> list:
    """Rows the loader skipped as footers (e.g. a Total line). Expected in sources whose files end in one by
    design when the footer's total equals the rows above it; anywhere else each is listed as a warning."""
    from playbook.accuracy.results import judge

    results = []
    for source in sorted(config.sources):
        expected = source in limits.footer_sources
        unexpected, wrong_total, footers = [], [], 0
        for b in batches:
            if b["source"] != source or not b["rows_skipped"]:
                continue
            r = replays.get(b["batch_id"])
            base = {"batch_id": b["batch_id"], "file": b["object_key"] or b["source_ref"],
                    "version": b["object_version"]}
            if r is None or r.error:
                unexpected.append({**base, "row": None, "rows_skipped": b["rows_skipped"],
                                   "note": r.error if r else "not re-read"})
                continue
            for f in r.footers:
                footers += 1
                item = {**base, "sheet": f["sheet"], "row": f["row"], "values": f["values"], "total": f["total"],
                        "rows_sum": f["rows_sum"]}
                if not f["total_agrees"] and f["total"] is not None:
                    wrong_total.append({**item, "note": f"the footer's total {f['total']} differs from the sum of "
                                                        f"the rows above it ({f['rows_sum']})"})
                elif not expected:
                    unexpected.append({**item, "note": "a totals row in a file that normally has none: "
                                                       "skipped, not counted as data"})
        if wrong_total:
            results.append(judge("footer_totals", source, len(wrong_total), 0,
                                 f"{len(wrong_total)} footers disagree with the rows they total", wrong_total))
        results.append(judge("skipped_rows", source, len(unexpected), 0,
                             f"{len(unexpected)} rows skipped as footers where none are expected" if unexpected
                             else (f"{footers} footers, each equal to the rows it totals" if footers
                                   else "no row skipped"), unexpected, warn_only=True))
    return results
