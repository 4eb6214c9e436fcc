"""Every committed batch's delivered object (or an API window's pages, as the API sent them), read again
independently and held against the ledger.

Each object version is fetched from S3, its sha256 checked against the batch's, and read by
playbook.accuracy.independent, which shares no code with the loader. Its data rows and money must equal
the ledger's rows_read and amount_in (to the cent), and for a CSV its blank and footer rows rows_skipped.
The same reading shows which rows were footers (with their totals), which were exact copies, and which
natural keys the object holds, for the checks on skipped rows, duplicate rows and repeated deliveries.

Objects over `accuracy.reread_max_bytes`, or left when `accuracy.reread_budget_s` is spent, are not
re-read; the check says how many and which, and why.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import decimal
import hashlib
import os
import tempfile
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from psycopg2 import sql

from pipeline.config import Accuracy, PipelineConfig
from pipeline.model import TABLES
from playbook.accuracy.independent import EXACT, ReadError, Reading, read_api_pages, read_object
from playbook.accuracy.results import CheckResult, judge

CENT = Decimal("0.01")
CHUNK = 1024 * 1024
PREFETCH = 2  # objects downloading while one is read
PAGES_NOT_KEPT = "its pages were not kept (a window loaded before API pages were kept)"


@dataclass
class Reread:
    """One committed batch's object: its independent reading, or why there is none."""

    batch: dict[str, Any]
    reading: Reading | None = None
    refused: str | None = None  # the independent reader (or S3's content) says the object is not what was loaded
    not_read: str | None = None  # why it was not re-read (a limit, S3 unreachable)
    by_choice: bool = False  # not read by a setting's choice (a limit, no pages kept), not for a fault
    size: int | None = None
    seconds: float = 0.0

    @property
    def place(self) -> dict[str, Any]:
        b = self.batch
        return {"batch_id": b["batch_id"], "source": b["source"], "file": b["object_key"] or b["source_ref"],
                "version": b["object_version"]}


def needs_rows(batch: dict[str, Any]) -> bool:
    """Whether other checks need to know the batch's rows: some were skipped or collapsed, or all were seen."""
    all_seen = batch["rows_read"] > 0 and batch["rows_inserted"] == 0 and batch["rows_updated"] == 0
    return batch["rows_skipped"] > 0 or batch["rows_duplicate"] > 0 or all_seen


def reread_objects(config: PipelineConfig, batches: list[dict[str, Any]], limits: Accuracy,
                   s3=None) -> dict[int, Reread]:
    """Each committed object batch of a file source, read again; those other checks need go first, then the
    rest in batch order, until the time budget is spent. The next few objects download while one is read."""
    windows = {name for name, source in config.sources.items() if source.delivers != "files"}
    candidates = [b for b in batches if b["object_key"] or b.get("api_pages") or b["source"] in windows]
    order = sorted(candidates, key=lambda b: (not needs_rows(b), b["batch_id"]))
    deadline = time.monotonic() + limits.reread_budget_s
    out: dict[int, Reread] = {b["batch_id"]: Reread(b) for b in order}
    if s3 is None and order:
        import boto3

        s3 = boto3.client("s3")
    queue = iter(order)
    pending: deque[tuple[Reread, Any, concurrent.futures.Future]] = deque()
    with concurrent.futures.ThreadPoolExecutor(PREFETCH, thread_name_prefix="reread") as pool:
        def fetch_next() -> None:
            for b in queue:
                r = out[b["batch_id"]]
                source = config.sources.get(b["source"])
                if source is None:
                    r.not_read = "its source is not in the configuration"
                elif source.delivers != "files" and not b.get("api_pages"):
                    r.not_read, r.by_choice = PAGES_NOT_KEPT, True
                elif time.monotonic() > deadline:
                    r.not_read = f"the time budget ({limits.reread_budget_s:g} s, accuracy.reread_budget_s) was spent"
                    r.by_choice = True
                else:
                    pending.append((r, source, pool.submit(_fetch, r, s3, limits)))
                    return

        try:
            for _ in range(PREFETCH + 1):
                fetch_next()
            while pending:
                r, source, fetched = pending.popleft()
                got = fetched.result()
                fetch_next()
                if got is not None:
                    started = time.monotonic()
                    try:
                        _read(r, got, config, source)
                    finally:
                        if isinstance(got, Path):
                            got.unlink(missing_ok=True)
                    r.seconds += time.monotonic() - started
        finally:  # interrupted: the downloads already made are removed
            for _, _, fetched in pending:
                with contextlib.suppress(Exception):
                    if isinstance(path := fetched.result(), Path):
                        path.unlink(missing_ok=True)
    return out


def _fetch(r: Reread, s3, limits: Accuracy) -> Path | list[bytes] | None:
    """The batch's object version in a temporary file, or an API window's pages, checked against what the batch
    recorded; None (and why) when they are not there or not the same."""
    started = time.monotonic()
    try:
        return _download_pages(r, s3, limits) if r.batch.get("api_pages") else _download(r, s3, limits)
    finally:
        r.seconds += time.monotonic() - started


def _download_pages(r: Reread, s3, limits: Accuracy) -> list[bytes] | None:
    kept = r.batch["api_pages"]
    try:
        listed = [o for page in s3.get_paginator("list_objects_v2").paginate(Bucket=kept["bucket"],
                                                                            Prefix=kept["prefix"])
                  for o in page.get("Contents", [])]
        r.size = sum(o["Size"] for o in listed)
        if r.size > limits.reread_max_bytes:
            r.not_read = f"{r.size} bytes of pages, over accuracy.reread_max_bytes ({limits.reread_max_bytes})"
            r.by_choice = True
            return None
        bodies = [s3.get_object(Bucket=kept["bucket"], Key=o["Key"])["Body"].read()
                  for o in sorted(listed, key=lambda o: o["Key"])]
    except Exception as exc:  # noqa: BLE001 - any S3 failure: the window is named as not re-read, and why
        r.not_read = f"S3 did not return its pages ({type(exc).__name__}: {exc})"
        return None
    digest = hashlib.sha256()
    for body in bodies:
        digest.update(hashlib.sha256(body).digest())
    if len(bodies) != kept["pages"] or digest.hexdigest() != kept["sha256"]:
        r.refused = (f"the pages kept under s3://{kept['bucket']}/{kept['prefix']} ({len(bodies)}) are not the "
                     f"{kept['pages']} the batch loaded (their digest differs)")
        return None
    return bodies


def _download(r: Reread, s3, limits: Accuracy) -> Path | None:
    b = r.batch
    bucket = urlsplit((b["source_ref"] or "").partition("#")[0]).netloc
    kwargs = {"Bucket": bucket, "Key": b["object_key"]}
    if b["object_version"]:
        kwargs["VersionId"] = b["object_version"]
    try:
        response = s3.get_object(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any S3 failure: the object is named as not re-read, and why
        r.not_read = f"S3 did not return it ({type(exc).__name__}: {exc})"
        return None
    body = response["Body"]
    r.size = response.get("ContentLength")
    if r.size is not None and r.size > limits.reread_max_bytes:
        body.close()
        r.not_read, r.by_choice = f"{r.size} bytes, over accuracy.reread_max_bytes ({limits.reread_max_bytes})", True
        return None
    digest = hashlib.sha256()
    fd, name = tempfile.mkstemp(prefix="reread-", suffix=Path(b["object_key"]).suffix[:10])
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: body.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
    except Exception as exc:  # noqa: BLE001 - a broken download: named as not re-read, and why
        path.unlink(missing_ok=True)
        r.not_read = f"S3 did not return it whole ({type(exc).__name__}: {exc})"
        return None
    sha = digest.hexdigest()
    if b["content_sha256"] and sha != b["content_sha256"]:
        path.unlink(missing_ok=True)
        why = f"its content (sha256 {sha[:12]}...) is not what the batch loaded ({b['content_sha256'][:12]}...)"
        if b["object_version"]:
            r.refused = f"object version {b['object_version']}: {why}"
        else:
            r.not_read = f"the key was overwritten since (no object version recorded): {why}"
        return None
    return path


def _read(r: Reread, got: Path | list[bytes], config: PipelineConfig, source) -> None:
    locale = getattr(config.company, "locale", None)
    try:
        r.reading = (read_api_pages(got, source, config.company.currency, locale) if isinstance(got, list)
                     else read_object(got, source, config.company.currency, locale))
    except ReadError as exc:
        r.refused = f"read independently, the file does not load: {exc}"
    except Exception as exc:  # noqa: BLE001 - the finding says what the independent reader met
        r.refused = f"the independent reader failed ({type(exc).__name__}: {exc})"


def _figures(b: dict[str, Any], reading: Reading | None, money: bool) -> tuple[dict, dict]:
    ledger = {"rows_read": b["rows_read"], "rows_skipped": b["rows_skipped"]}
    if money:
        ledger["amount_in"] = b["amount_in"]
    if reading is None:
        return ledger, {}
    independent = {"rows_read": reading.rows_read, "rows_skipped": reading.rows_skipped}
    if money:
        independent["amount_in"] = reading.amount_in
    return ledger, independent


def _money_differs(a, b) -> bool:
    with decimal.localcontext(EXACT):
        return (Decimal(a or 0) - Decimal(b or 0)).quantize(CENT) != 0


def compare(r: Reread, money: bool) -> tuple[list[str], list[str]]:
    """(problems, notes): what disagrees with the ledger, and what differs for information only."""
    b, reading = r.batch, r.reading
    if r.refused:
        return [r.refused], []
    if reading is None:
        return [], []
    problems, notes = [], []
    if reading.rows_read != b["rows_read"]:
        problems.append(f"rows read: ledger {b['rows_read']}, file {reading.rows_read}")
    if money and _money_differs(b["amount_in"], reading.amount_in):
        problems.append(f"amount in: ledger {b['amount_in']}, file {reading.amount_in}")
    if reading.rows_skipped != b["rows_skipped"]:
        text = (f"rows skipped: ledger {b['rows_skipped']}, file {reading.rows_skipped} "
                f"({reading.blank} blank, {len(reading.footers)} footers)")
        (problems if reading.skipped_exact else notes).append(text)
    return problems, notes


def independent_reconciliation(batches: list[dict[str, Any]], rereads: dict[int, Reread], config: PipelineConfig,
                               limits: Accuracy, seconds: float | None = None) -> list[CheckResult]:
    """Each committed object's record count and money, read again by a reader that shares no code with the
    loader, against the ledger: a difference is a breach naming the batch, the object and both figures.
    `seconds`: how long reading every object again took (downloads included)."""
    by_source: dict[str, list[Reread]] = defaultdict(list)
    for r in rereads.values():
        by_source[r.batch["source"]].append(r)
    results = []
    for source in sorted(set(config.sources) | set(by_source)):
        cfg = config.sources.get(source)
        items = sorted(by_source.get(source, []), key=lambda r: r.batch["batch_id"])
        money = cfg is not None and TABLES[cfg.table].amount is not None
        findings, info, unread = [], [], []
        read = [r for r in items if r.reading is not None or r.refused]
        for r in items:
            ledger, independent = _figures(r.batch, r.reading, money)
            problems, notes = compare(r, money)
            if problems:
                findings.append({**r.place, "problems": problems, "ledger": ledger, "independent": independent})
            if notes:
                info.append({**r.place, "notes": notes, "ledger": ledger, "independent": independent})
            if r.not_read:
                unread.append({**r.place, "size": r.size, "reason": r.not_read, "by_choice": r.by_choice})
        summary = _summary(len(items), len(read), findings, unread, info, money)
        result = judge("independent_reconciliation", source, len(findings), limits.max_reread_differences, summary,
                       findings, re_read=len(read), not_re_read=unread, information=info,
                       source_seconds=round(sum(r.seconds for r in items), 3), all_sources_seconds=seconds)
        if result.status == "pass" and any(not u["by_choice"] for u in unread):
            result.status = "warn"  # nothing disagrees, but some objects could not be fetched to be checked
        results.append(result)
    return results


def _summary(total: int, read: int, findings: list, unread: list, info: list, money: bool) -> str:
    what = "rows read and amount in" if money else "rows read"
    if not total:
        return "no committed object to re-read"
    if findings:
        first = "; ".join(f"batch {f['batch_id']} {f['file']}" + (f" (version {f['version']})" if f["version"] else "")
                          + ": " + ", ".join(f["problems"]) for f in findings[:3])
        text = f"{len(findings)} of {read} objects read again disagree with the ledger: {first}"
    else:
        text = (f"all {read} objects read again independently agree" if read != 1
                else "the object read again independently agrees") + f" with the ledger ({what})"
    if unread:
        reasons = defaultdict(int)
        for u in unread:
            reasons[u["reason"].split(" (")[0] if u["by_choice"] else u["reason"]] += 1
        text += f"; {len(unread)} not read again: " + "; ".join(f"{n} x {why}" for why, n in reasons.items())
    if info:
        text += f"; {len(info)} workbooks count blank rows differently (information only)"
    return text


def _why_no_rows(r: Reread | None) -> str:
    if r is None:
        return "not read again: not an object delivery"
    return r.refused or f"not read again: {r.not_read}"


def duplicate_rows(batches: list[dict[str, Any]], rereads: dict[int, Reread], config: PipelineConfig,
                   limits: Accuracy) -> list[CheckResult]:
    """Exact copies of a row inside one delivery: the loader keeps one and counts the rest as duplicates. The
    independent reading says which rows they are."""
    found: dict[str, list[dict]] = {}
    for b in batches:
        if not b["rows_duplicate"]:
            continue
        r = rereads.get(b["batch_id"])
        reading = r.reading if r else None
        base = {"batch_id": b["batch_id"], "file": b["object_key"] or b["source_ref"], "version": b["object_version"]}
        copies = [{**base, "sheet": c.sheet, "row": c.row, "copy_of_row": c.copy_of_row,
                   "copy_of_sheet": c.copy_of_sheet, "key": c.key, "amount": c.amount}
                  for c in (reading.copies if reading else [])]
        if not copies:
            note = _why_no_rows(r) if r is None or r.reading is None else "the rows could not be located"
            copies = [{**base, "sheet": None, "row": None, "rows": b["rows_duplicate"], "amount": b["amount_duplicate"],
                       "note": note}]
        elif len(copies) != b["rows_duplicate"]:
            for c in copies:
                c["note"] = (f"the ledger counts {b['rows_duplicate']} duplicates, the file holds {len(copies)} "
                             "exact copies (rows rejected for another reason are not collapsed)")
        found.setdefault(b["source"], []).extend(copies)
    results = []
    for source in sorted(set(config.sources) | set(found)):
        n = sum(b["rows_duplicate"] for b in batches if b["source"] == source)
        if n and config.sources.get(source) is not None and config.sources[source].load == "distinct":
            # a dimension taken from fact rows repeats its keys by design: folded, the last row winning
            results.append(judge("duplicate_rows", source, 0, limits.max_duplicate_rows,
                                 f"{n} repeats of a key folded (load: distinct, the last row wins)", []))
            continue
        results.append(judge("duplicate_rows", source, n, limits.max_duplicate_rows,
                             f"{n} rows are exact copies of another row of the same delivery" if n
                             else "no delivery repeats a row", found.get(source, [])))
    return results


def skipped_rows(batches: list[dict[str, Any]], rereads: dict[int, Reread], config: PipelineConfig,
                 limits: Accuracy) -> list[CheckResult]:
    """Rows the loader skipped as footers (e.g. a Total line). Expected in sources whose files end in one by
    design when the footer's total equals the rows above it; anywhere else each is listed as a warning."""
    results = []
    for source in sorted(config.sources):
        expected = source in limits.footer_sources
        unexpected, wrong_total, footers = [], [], 0
        for b in batches:
            if b["source"] != source or not b["rows_skipped"]:
                continue
            r = rereads.get(b["batch_id"])
            base = {"batch_id": b["batch_id"], "file": b["object_key"] or b["source_ref"],
                    "version": b["object_version"]}
            if r is None or r.reading is None:
                note = _why_no_rows(r)
                unexpected.append({**base, "row": None, "rows_skipped": b["rows_skipped"], "note": note})
                continue
            for f in r.reading.footers:
                footers += 1
                item = {**base, "sheet": f.sheet, "row": f.row, "values": f.values, "total": f.amount,
                        "rows_sum": f.rows_sum}
                if not f.agrees and f.amount is not None:
                    wrong_total.append({**item, "note": f"the footer's total {f.amount} differs from the sum of "
                                                        f"the rows above it ({f.rows_sum})"})
                elif not expected:
                    unexpected.append({**item, "note": "a totals row in a file that normally has none: "
                                                       "skipped, not counted as data"})
        if wrong_total:
            results.append(judge("footer_totals", source, len(wrong_total), 0,
                                 f"{len(wrong_total)} footers disagree with the rows they total", wrong_total))
        results.append(judge("skipped_rows", source, len(unexpected), 0,
                             f"{len(unexpected)} rows skipped as footers where none are expected" if unexpected
                             else (f"{footers} footers, each equal to the rows it totals" if footers and not wrong_total
                                   else f"{footers} footers, {len(wrong_total)} not equal to the rows they total "
                                        "(footer_totals)" if footers
                                   else "no row skipped"), unexpected, warn_only=True))
    return results


_KEY_CAST = {"text": "", "integer": "::bigint", "money": "::numeric", "date": "::date"}


def key_holders(cur, batches: list[dict[str, Any]], rereads: dict[int, Reread],
                config: PipelineConfig) -> dict[int, list[int]]:
    """For each delivery whose rows were all seen before: the batches whose core rows hold its natural keys."""
    holders: dict[int, list[int]] = {}
    for b in batches:
        all_seen = b["rows_read"] > 0 and b["rows_inserted"] == 0 and b["rows_updated"] == 0
        r = rereads.get(b["batch_id"])
        source = config.sources.get(b["source"])
        if not all_seen or r is None or r.reading is None or source is None or not r.reading.keys:
            continue
        table = TABLES[source.table]
        columns = r.reading.key_columns
        keys = [sql.Identifier(f"k{i}") for i in range(len(columns))]
        joined = sql.SQL(" and ").join(
            sql.SQL("c.{} = k.{}" + _KEY_CAST[table.column(c).type]).format(sql.Identifier(c), k)
            for c, k in zip(columns, keys, strict=True))
        cur.execute(sql.SQL("select distinct c._batch_id from {core} c join unnest({arrays}) as k({names}) on {joined}"
                            " order by 1").format(
            core=sql.Identifier("core", table.name), names=sql.SQL(", ").join(keys), joined=joined,
            arrays=sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in columns)),
            [list(part) for part in zip(*r.reading.keys, strict=True)])
        holders[b["batch_id"]] = [row[0] for row in cur.fetchall()]
    return holders
