"""The validation's outputs: rows in meta.accuracy_results, and accuracy.md for the people who fix sources."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2.extras

from playbook.accuracy.results import CheckResult, ValidationReport

STATUS_MARK = {"pass": "pass", "warn": "WARN", "fail": "FAIL"}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def store_results(conn, report: ValidationReport) -> int:
    """Replace the run's rows in meta.accuracy_results (a rerun of the stage keeps one set)."""
    with conn.cursor() as cur:
        cur.execute("delete from meta.accuracy_results where run_id = %s", (report.run_id,))
        psycopg2.extras.execute_values(cur, "insert into meta.accuracy_results (run_id, check_name, subject, status,"
                                       " observed, threshold, details) values %s", [
            (report.run_id, r.check, r.subject, r.status, r.observed, r.threshold,
             psycopg2.extras.Json(r.details, dumps=lambda d: json.dumps(d, default=_plain)))
            for r in report.results])
    conn.commit()
    return len(report.results)


def _where(f: dict[str, Any]) -> str:
    parts = []
    if f.get("file"):
        parts.append(f"`{f['file']}`")
    if f.get("sheet"):
        parts.append(f"sheet '{f['sheet']}'")
    if f.get("row") is not None:
        parts.append(f"row {f['row']}")
    if f.get("batch_id") is not None:
        parts.append(f"batch {f['batch_id']}")
    return ", ".join(parts) or "-"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _finding_line(r: CheckResult, f: dict[str, Any]) -> str:
    c = r.check
    if c == "quarantine":
        return f"{_where(f)}: {f['reason']}"
    if c == "orphans":
        return (f"{_where(f)}: client {f['client_id']} is not in the client master "
                f"({_kv(f['key'])}, amount {f['amount']})")
    if c == "changed_rows":
        changes = "; ".join(f"{k} {v['was']} -> {v['now']}" for k, v in f["changes"].items())
        return (f"{_kv(f['key'])}: {changes}; first loaded from {_where(f['first_loaded'])}, changed by "
                f"{_where(f['changed_by'])}")
    if c == "duplicate_deliveries":
        earlier = ", ".join(_where(e) for e in f["earlier"]) or "earlier batches"
        return f"{_where(f)} ({f['rows']} rows): {f['reason']}; see {earlier}"
    if c == "duplicate_rows":
        if f.get("copy_of_row") is not None:
            return f"{_where(f)}: an exact copy of row {f['copy_of_row']} ({_kv(f['key'])}, amount {f['amount']})"
        return f"{_where(f)}: {f.get('rows')} duplicate rows ({f.get('note')})"
    if c == "freshness":  # one line per missed period, whatever its length: first day, last day, count
        after = f"; next data {f['next_after']['date']} in `{f['next_after']['file']}`" if f["next_after"] else ""
        if f["deliveries"] == 1:
            due = f"delivery due {f['due_from']} did not arrive"
        else:
            due = f"{f['deliveries']} deliveries due from {f['due_from']} to {f['due_to']} did not arrive"
        stopped = "; stopped delivering while the other sources go on" if f.get("stopped") else ""
        return (f"no data from {f['no_data_from']} to {f['no_data_to']} ({f['days_without_data']} days): {due}"
                f"{stopped} (last data {f['last_before']['date']} in `{f['last_before']['file']}`{after})")
    if c in ("skipped_rows", "footer_totals"):
        values = _kv(f.get("values") or {})
        return f"{_where(f)}: {values} - {f.get('note')}"
    if c == "outliers":
        group = "client and product" if "client and product" in f else "product"
        return (f"{_where(f)}: order {f['order_id']} line {f['line_no']}, quantity {f['quantity']} where the "
                f"{group} {f[group]}'s median is {f['median']} ({f['rows_in_group']} lines)")
    if c == "batch_reconciliation":
        return f"{_where(f)}: " + "; ".join(f["problems"])
    if c == "independent_reconciliation":
        version = f", version {f['version']}" if f.get("version") else ""
        return f"{_where(f)}{version}: " + "; ".join(f["problems"])
    return json.dumps(f, default=_plain)


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def render_markdown(report: ValidationReport, company: str) -> str:
    counts = {s: sum(1 for r in report.results if r.status == s) for s in ("pass", "warn", "fail")}
    verdict = "the numbers reconcile" if report.passed else "the numbers cannot be trusted yet"
    lines = [f"# Accuracy report - {company}", "",
             f"Run `{report.run_id}`; data up to {report.data_end or '-'}. "
             f"{counts['pass']} passed, {counts['warn']} warnings, {counts['fail']} failed: {verdict}.", "",
             "| check | subject | status | observed | limit | summary |", "| --- | --- | --- | ---: | ---: | --- |"]
    order = {"fail": 0, "warn": 1, "pass": 2}
    ranked = sorted(report.results, key=lambda r: (order[r.status], r.check, r.subject))
    for r in ranked:
        lines.append(f"| {r.check} | {_cell(r.subject)} | {STATUS_MARK[r.status]} | {r.observed} | "
                     f"{'' if r.threshold is None else r.threshold} | {_cell(r.summary)} |")
    with_findings = [r for r in ranked if r.findings and r.status != "pass"]
    if with_findings:
        lines += ["", "## Findings", ""]
    for r in with_findings:
        lines += [f"### {r.check}: {r.subject} ({STATUS_MARK[r.status]})", "", r.summary, ""]
        if r.check == "quarantine":
            for group in r.extra.get("by_reason", []):
                lines += [f"**{group['reason']}** ({group['rows']} rows)", ""]
                lines += [f"- {_finding_line(r, f)}" for f in r.findings if f["kind"] == group["reason"]]
                lines.append("")
        else:
            lines += [f"- {_finding_line(r, f)}" for f in r.findings]
            lines.append("")
    lines += _not_reread(report)
    return "\n".join(lines).rstrip() + "\n"


def _not_reread(report: ValidationReport) -> list[str]:
    """The objects the independent reading left out, and why; and what it saw differently for information."""
    rereads = report.by_check("independent_reconciliation")
    unread = [u for r in rereads for u in r.extra.get("not_re_read", [])]
    info = [i for r in rereads for i in r.extra.get("information", [])]
    lines = []
    if rereads:
        read = sum(r.extra.get("re_read", 0) for r in rereads)
        seconds = rereads[0].extra.get("all_sources_seconds")
        took = f" in {seconds:.1f}s" if seconds is not None else ""
        lines += ["", "## Objects read again", "",
                  f"{read} delivered objects were read again independently{took}, by a reader that shares no code "
                  f"with the loader; {len(unread)} were not{':' if unread or info else '.'}", ""]
    for u in unread:
        version = f", version {u['version']}" if u.get("version") else ""
        lines.append(f"- not read again: {_where(u)}{version}: {u['reason']}")
    for i in info:
        lines.append(f"- for information: {_where(i)}: " + "; ".join(i["notes"]))
    return lines


def write_report(report: ValidationReport, out_dir: Path, company: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "accuracy.md"
    path.write_text(render_markdown(report, company), encoding="utf-8")
    (out_dir / "accuracy.json").write_text(json.dumps(
        {"run_id": report.run_id, "passed": report.passed, "data_end": report.data_end,
         "results": [{"check": r.check, "subject": r.subject, "status": r.status, "observed": r.observed,
                      "threshold": r.threshold, **r.details} for r in report.results]},
        indent=2, default=_plain) + "\n", encoding="utf-8")
    return path
