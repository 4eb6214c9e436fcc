"""The validation stage that proves the numbers: `validate()` (the validate notebook) and `playbook validate`.

From the ledger and the tables it checks that every batch reconciles (rows and money in equal out), that
each delivered object, read again by a reader that shares no code with the loader, holds the rows and money
the ledger says it read, that the marts equal core, that no failed load is left unloaded, that every row
names a known client, that no delivery or row repeats and no row changed after its first load, that every
scheduled delivery arrived, what the quarantine holds, and which sales lines lie far from their product's or
client's others. Each result goes to meta.accuracy_results and to
accuracy.md in the run folder; any breach of the limits in the configuration's `accuracy` section raises
AccuracyBreach, which stops the chain at this stage.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from playbook.accuracy.results import AccuracyBreach, CheckResult, ValidationReport, reason_kind

__all__ = ["AccuracyBreach", "CheckResult", "ValidationReport", "reason_kind", "register_commands", "validate"]


def validate(database_url: str | None = None, config=None, run_id: str | None = None,
             out_dir: str | os.PathLike | None = None, thresholds: dict[str, Any] | None = None,
             refresh: bool = True, target=None) -> ValidationReport:
    """Run every check, store the results under run_id and write accuracy.md; raise AccuracyBreach on a breach.

    `target` is where the pipeline runs (playbook.targets; default: the local one): its warehouse is read
    (unless `database_url` names another) and stale marts are refreshed first by its deployed refresh function,
    as the schedule refreshes them, unless `refresh` is False (then they are reported). `config` is a
    PipelineConfig or a path (default: the company configuration); `thresholds` override its `accuracy` limits.
    """
    from pipeline.config import PipelineConfig
    from playbook.accuracy import freshness, ledger, marts, outliers, rereads
    from playbook.accuracy.report import store_results, write_report
    from playbook.config import load_config
    from playbook.database import connect
    from playbook.reports import new_run_dir, new_run_id
    from playbook.targets import LocalTarget

    target = target or LocalTarget()
    started = time.monotonic()
    if not isinstance(config, PipelineConfig):
        config = load_config(config)
    limits = config.accuracy.model_copy(update=thresholds or {})
    run_id = run_id or new_run_id()
    conn = connect(database_url or target.database_url())
    try:
        with conn.cursor() as cur:
            batches = ledger.committed_batches(cur)
            stale = marts.stale_marts(cur)
        conn.rollback()
        if stale and refresh:
            target.refresh_marts()
            with conn.cursor() as cur:
                stale = marts.stale_marts(cur)
            conn.rollback()
        reading_started = time.monotonic()
        objects = rereads.reread_objects(config, batches, limits)
        reading_seconds = round(time.monotonic() - reading_started, 3)
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)  # one snapshot for every check
        with conn.cursor() as cur:
            holders = rereads.key_holders(cur, batches, objects, config)
            results: list[CheckResult] = []
            results += ledger.reconcile_batches(batches, config, limits)
            results += rereads.independent_reconciliation(batches, objects, config, limits, reading_seconds)
            results += ledger.ledger_matches_core(cur, batches, limits)
            results += ledger.failed_batches(cur, config, limits)
            results += marts.compare_marts(cur, limits, stale)
            results += ledger.orphans(cur, limits)
            results += rereads.duplicate_rows(batches, objects, config, limits)
            results += ledger.duplicate_deliveries(batches, holders, config, limits)
            results += ledger.changed_rows(cur, batches, limits)
            fresh, data_end = freshness.check_freshness(cur, config, limits)
            results += fresh
            results += ledger.quarantine_summary(cur, config, limits)
            results += rereads.skipped_rows(batches, objects, config, limits)
            results += outliers.outliers(cur, limits)
        conn.rollback()
        conn.set_session(isolation_level="DEFAULT", readonly=False)
        report = ValidationReport(run_id, results, str(data_end) if data_end else None)
        store_results(conn, report)
    finally:
        conn.close()
    out = Path(out_dir) if out_dir else new_run_dir(run_id=run_id)
    report.report_path = write_report(report, out, config.company.name)
    report.seconds = round(time.monotonic() - started, 3)
    if report.failures:
        names = ", ".join(f"{r.check} ({r.subject}: {r.observed} > {r.threshold})" for r in report.failures)
        raise AccuracyBreach(f"{len(report.failures)} accuracy checks failed: {names}; see {report.report_path}",
                             report)
    return report


# -- CLI --------------------------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    from playbook.targets import resolve_target

    target = resolve_target("local")
    try:
        report = validate(config=args.config, run_id=args.run_id, out_dir=args.out, refresh=not args.no_refresh,
                          target=target)
    except AccuracyBreach as exc:
        _print_summary(exc.report)
        print(f"accuracy breach: {exc}")
        return 1
    _print_summary(report)
    return 0


def _print_summary(report: ValidationReport) -> None:
    print(f"validation run {report.run_id}: {len(report.results)} checks, {len(report.failures)} failed, "
          f"{len(report.warnings)} warnings ({report.seconds:.1f}s)")
    for r in report.results:
        if r.status != "pass":
            print(f"  {r.status:<4} {r.check:<22} {r.subject:<28} {r.summary}")
    print(f"report: {report.report_path}")


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("validate", help="prove the numbers: ledger, objects read again, marts, clients, "
                              "duplicates, freshness, quarantine; exits 1 on any breach of the configured limits")
    p.add_argument("--run-id", help="the run's id (default: a UTC timestamp); results are kept under it")
    p.add_argument("--out", help="folder for accuracy.md (default: reports/runs/<run id>/)")
    p.add_argument("--config", help="configuration file (default: $PLAYBOOK_CONFIG or playbook.yaml)")
    p.add_argument("--no-refresh", action="store_true", help="report stale marts instead of refreshing them")
    p.set_defaults(func=cmd_validate)
