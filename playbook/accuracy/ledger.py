"""Checks read from the ledger and core: every batch reconciles, core holds what the ledger says it loaded,
no delivery repeats another, no row changed after its first load, and what the quarantine holds, by reason."""

from __future__ import annotations

import decimal
from collections import defaultdict
from decimal import Decimal
from typing import Any

from psycopg2 import sql

from pipeline.attempts import ABANDONED
from pipeline.config import Accuracy, PipelineConfig
from pipeline.model import KEY_SEPARATOR, TABLES
from pipeline.money import EXACT
from playbook.accuracy.results import CheckResult, judge, place, reason_kind

CENT = Decimal("0.01")
BATCH_COLUMNS = ("batch_id, source, target_table, source_ref, object_key, object_etag, object_version, content_sha256,"
                 " rows_read, rows_inserted, rows_updated, rows_unchanged, rows_duplicate, rows_quarantined,"
                 " rows_skipped, amount_in, amount_loaded, amount_quarantined, amount_duplicate,"
                 " plan -> 'api_pages' as api_pages")


def committed_batches(cur) -> list[dict[str, Any]]:
    cur.execute(f"select {BATCH_COLUMNS}, (select count(*) from meta.quarantine q where q.batch_id = b.batch_id)"
                " as quarantine_rows from meta.batches b where status = 'committed' order by batch_id")
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def batch_place(b: dict[str, Any]) -> dict[str, Any]:
    return {"batch_id": b["batch_id"], "source": b["source"], "file": b["object_key"] or b["source_ref"],
            "version": b["object_version"]}


def _money(value) -> Decimal:
    return Decimal(value or 0)


def reconcile_batches(batches: list[dict[str, Any]], config: PipelineConfig, limits: Accuracy) -> list[CheckResult]:
    """rows_read = inserted + updated + unchanged + duplicate + quarantined, amount_in = loaded + quarantined +
    duplicate to the cent, and the quarantine holds a row for every row the ledger says it quarantined."""
    by_source: dict[str, list[dict]] = defaultdict(list)
    for b in batches:
        problems = []
        rows_out = (b["rows_inserted"] + b["rows_updated"] + b["rows_unchanged"] + b["rows_duplicate"]
                    + b["rows_quarantined"])
        if b["rows_read"] != rows_out:
            problems.append(f"rows read {b['rows_read']} but {rows_out} accounted for (inserted {b['rows_inserted']},"
                            f" updated {b['rows_updated']}, unchanged {b['rows_unchanged']}, duplicate "
                            f"{b['rows_duplicate']}, quarantined {b['rows_quarantined']})")
        if b["amount_in"] is not None:
            with decimal.localcontext(EXACT):
                out = _money(b["amount_loaded"]) + _money(b["amount_quarantined"]) + _money(b["amount_duplicate"])
                off = (_money(b["amount_in"]) - out).quantize(CENT)
            if off != 0:
                problems.append(f"amount in {b['amount_in']} but {out} out (loaded {b['amount_loaded']}, quarantined "
                                f"{b['amount_quarantined']}, duplicate {b['amount_duplicate']})")
        if b["quarantine_rows"] != b["rows_quarantined"]:
            problems.append(f"the ledger counts {b['rows_quarantined']} quarantined rows, meta.quarantine holds "
                            f"{b['quarantine_rows']}")
        by_source[b["source"]]
        if problems:
            by_source[b["source"]].append({**batch_place(b), "problems": problems})
    results = []
    for source in sorted(set(config.sources) | set(by_source)):
        bad = by_source.get(source, [])
        n = sum(1 for b in batches if b["source"] == source)
        results.append(judge("batch_reconciliation", source, len(bad), limits.max_unreconciled_batches,
                             f"{len(bad)} of {n} committed batches do not reconcile" if bad
                             else f"all {n} committed batches reconcile: rows and money in equal out", bad))
    return results


def ledger_matches_core(cur, batches: list[dict[str, Any]], limits: Accuracy) -> list[CheckResult]:
    """Core rows are never deleted, so each table holds exactly the rows its batches say they inserted."""
    inserted: dict[str, int] = defaultdict(int)
    for b in batches:
        inserted[b["target_table"]] += b["rows_inserted"]
    results = []
    for name in TABLES:
        cur.execute(sql.SQL("select count(*) from {}").format(sql.Identifier("core", name)))
        rows = cur.fetchone()[0]
        diff = abs(rows - inserted[name])
        findings = [{"table": f"core.{name}", "rows": rows, "ledger_inserted": inserted[name]}] if diff else []
        results.append(judge("ledger_matches_core", f"core.{name}", diff, limits.max_unreconciled_batches,
                             f"core.{name} holds {rows} rows, the ledger inserted {inserted[name]}", findings))
    return results


def duplicate_deliveries(batches: list[dict[str, Any]], holders: dict[int, list[int]], config: PipelineConfig,
                         limits: Accuracy) -> list[CheckResult]:
    """A delivery that repeats one already loaded: the same bytes as an earlier batch (under another key, or a
    new version with nothing changed), or rows that were all loaded before. Empty files are not counted, nor API
    windows: an API is read by windows, and a window read again (a backfill's rerun, a scheduled run's overlap)
    finds its rows already loaded by design; rows repeated within a window are the duplicate_rows check's."""
    first_by_sha: dict[str, dict] = {}
    found: dict[str, list[dict]] = defaultdict(list)
    by_id = {b["batch_id"]: b for b in batches}
    windows = {name for name, source in config.sources.items() if source.delivers != "files"}
    for b in batches:
        if b["source"] in windows:
            continue
        sha = b["content_sha256"]
        earlier = first_by_sha.get(sha) if sha else None
        if sha and earlier is None:
            first_by_sha[sha] = b
        if b["rows_read"] == 0:
            continue
        all_seen = b["rows_inserted"] == 0 and b["rows_updated"] == 0 and b["rows_unchanged"] > 0
        if earlier is None and not all_seen:
            continue
        involved = [earlier["batch_id"]] if earlier else [h for h in holders.get(b["batch_id"], [])
                                                          if h != b["batch_id"]]
        why = (f"the same content (sha256 {sha[:12]}...) as batch {earlier['batch_id']}, {earlier['object_key']}"
               if earlier else f"all {b['rows_unchanged']} rows were already loaded")
        found[b["source"]].append({
            **batch_place(b), "rows": b["rows_read"], "reason": why,
            "earlier": [batch_place(by_id[i]) for i in involved if i in by_id]})
    results = []
    for source in sorted(set(config.sources) | set(found)):
        items = found.get(source, [])
        results.append(judge("duplicate_deliveries", source, len(items), limits.max_duplicate_batches,
                             f"{len(items)} deliveries repeat content already loaded" if items
                             else "an API's windows may be read again: their rows already loaded are expected"
                             if source in windows else "no delivery repeats one already loaded", items))
    return results


def changed_rows(cur, batches: list[dict[str, Any]], limits: Accuracy) -> list[CheckResult]:
    """Rows whose values changed after their first load (core.<table>_history keeps each replaced version)."""
    by_id = {b["batch_id"]: b for b in batches}
    results = []
    for name, table in TABLES.items():
        # each replaced version and the one after it (the next replaced version, else the row as it is now),
        # each with where its batch read it (its ref, and the sheet); a row is known by its _key, whatever
        # columns its source keys it by
        cur.execute(sql.SQL(
            "select to_jsonb(h) || jsonb_build_object('_source_ref', hb.source_ref || coalesce('#' || h._sheet, '')),"
            " coalesce(lead(to_jsonb(h) || jsonb_build_object('_source_ref', hb.source_ref"
            " || coalesce('#' || h._sheet, ''))) over w, to_jsonb(c)) "
            "from {hist} h left join meta.batches hb on hb.batch_id = h._batch_id left join {lineage} c using (_key) "
            "window w as (partition by h._key order by h._replaced_at, h._batch_id) "
            "order by h._key, h._replaced_at").format(
            hist=sql.Identifier("core", f"{name}_history"), lineage=sql.Identifier("core", f"{name}_lineage")))
        findings = []
        for old, new in cur.fetchall():
            new = new or {}
            changes = {c: {"was": old.get(c), "now": new.get(c)} for c in table.column_names
                       if old.get(c) != new.get(c)}
            findings.append({
                "key": row_key(old), "changes": changes,
                "first_loaded": {**_row_place(old), "batch_id": old["_batch_id"]},
                "changed_by": {**_row_place(new), "batch_id": new.get("_batch_id")},
                "batches": [old["_batch_id"], new.get("_batch_id")],
                "files": [by_id.get(old["_batch_id"], {}).get("object_key"),
                          by_id.get(new.get("_batch_id"), {}).get("object_key")]})
        results.append(judge("changed_rows", f"core.{name}", len(findings), limits.max_changed_rows,
                             f"{len(findings)} rows changed after their first load" if findings
                             else "no row changed after its first load", findings))
    return results


def row_key(row: dict[str, Any]) -> dict[str, Any]:
    """What a row is known by, as a reader says it: its key's values in order (the _key joins them)."""
    return {"key": " | ".join(str(row["_key"]).split(KEY_SEPARATOR))}


def _row_place(row: dict[str, Any]) -> dict[str, Any]:
    return {**place(row.get("_source_ref")), "row": row.get("_source_row")}


def quarantine_summary(cur, config: PipelineConfig, limits: Accuracy) -> list[CheckResult]:
    """Rejected rows per source, grouped by what is wrong with them, each with its file, sheet and row."""
    cur.execute("select q.source, q.batch_id, q.source_ref, q.source_row, q.reason, q.reason_code, q.raw "
                "from meta.quarantine q join meta.batches b using (batch_id) where b.status = 'committed' "
                "order by q.source, q.batch_id, q.source_row nulls last, q.quarantine_id")
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for source, batch_id, ref, row, reason, code, raw in cur.fetchall():
        groups[source][reason_kind(reason)].append({"batch_id": batch_id, **place(ref), "row": row,
                                                    "reason": reason, "reason_code": code, "raw": raw})
    results = []
    for source in sorted(set(config.sources) | set(groups)):
        kinds = groups.get(source, {})
        findings = [entry | {"kind": kind} for kind, entries in sorted(kinds.items()) for entry in entries]
        by_reason = [{"reason": kind, "rows": len(entries)} for kind, entries in
                     sorted(kinds.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
        results.append(judge("quarantine", source, len(findings), limits.max_quarantined_rows,
                             f"{len(findings)} rows rejected: " + "; ".join(f"{g['rows']} x {g['reason']}"
                                                                              for g in by_reason)
                             if findings else "no row rejected", findings, by_reason=by_reason))
    return results


def orphans(cur, limits: Accuracy) -> list[CheckResult]:
    """Rows naming a client that core.clients does not know."""
    results = []
    for name, table in TABLES.items():
        if name == "clients" or "client_id" not in table.column_names:
            continue
        key = list(table.natural_key)
        amount = sql.SQL("t.{}").format(sql.Identifier(table.amount)) if table.amount else sql.SQL("null")
        cur.execute(sql.SQL(
            "select t._batch_id, t._source_ref, t._source_row, t.client_id, jsonb_build_object({kj}), {amt} "
            "from {lineage} t where not exists (select 1 from core.clients c where c.client_id = t.client_id) "
            "order by t._batch_id, t._source_row").format(
            kj=sql.SQL(", ").join(sql.SQL("{}, t.{}").format(sql.Literal(k), sql.Identifier(k)) for k in key),
            amt=amount, lineage=sql.Identifier("core", f"{name}_lineage")))
        findings = [{"batch_id": b, **place(ref), "row": row, "client_id": client, "key": k, "amount": a}
                    for b, ref, row, client, k, a in cur.fetchall()]
        results.append(judge("orphans", f"core.{name}", len(findings), limits.max_orphans,
                             f"{len(findings)} rows name a client not in core.clients" if findings
                             else "every row names a known client", findings))
    return results


def failed_batches(cur, config: PipelineConfig, limits: Accuracy) -> list[CheckResult]:
    """A delivery (file) or API window whose load failed or was abandoned (the attempt died), rolled back whole,
    and that no later batch loaded: its data is missing from core. Each is listed with where it came from and
    the loader's own words."""
    # one finding per delivery, however often it failed (Lambda retries a failed S3 event twice): its latest
    # attempt. A file counts as loaded again once a later batch commits the same key; an API window once a
    # later batch covers its whole window (a retry of it, or a wider catch-up).
    # an attempt that died (killed, out of memory, its connection lost) is abandoned once its expiry passes,
    # whether or not a later attempt has marked it so yet
    cur.execute(
        "select * from (select distinct on (f.source, coalesce(f.object_key, f.source_ref))"
        "  f.batch_id, f.source, f.source_ref, f.object_key, f.object_version, coalesce(f.error, %s),"
        "  coalesce(f.finished_at, f.expires_at)"
        "  from meta.batches f where (f.status in ('failed', 'abandoned')"
        "   or (f.status = 'started' and f.expires_at < clock_timestamp())) and not exists ("
        "   select 1 from meta.batches c where c.status = 'committed' and c.source = f.source"
        "   and c.batch_id > f.batch_id and case"
        "    when f.object_key is not null then c.object_key = f.object_key"
        "    when f.window_from is not null then c.window_from <= f.window_from and c.window_to >= f.window_to"
        "    else c.source_ref = f.source_ref end)"
        "  order by f.source, coalesce(f.object_key, f.source_ref), f.batch_id desc) latest order by batch_id",
        (ABANDONED,))
    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for batch_id, source, ref, key, version, error, finished in cur.fetchall():
        b = {"batch_id": batch_id, "source": source, "source_ref": ref, "object_key": key, "object_version": version}
        by_source[source].append({**batch_place(b), "failed_at": str(finished), "error": error})
    results = []
    for source in sorted(set(config.sources) | set(by_source)):
        failed = by_source.get(source, [])
        results.append(judge("failed_batches", source, len(failed), limits.max_failed_batches,
                             f"{len(failed)} failed loads not loaded since: " + "; ".join(
                                 f"{f['file']}: {f['error']}" for f in failed[:3]) if failed
                             else "no failed load is waiting to be delivered again", failed))
    return results
