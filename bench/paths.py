"""What each of the loader's alternative paths saves against the path it stands in for, on the same rows.

The loader keeps a path only where it pays: typing canonical rows in the handler (against the SQL lanes),
loading a first delivery straight into its empty table (against staging and merging it), and knowing a
re-export without typing it (against typing and merging rows that change nothing). Each pair runs the
ingest function's code in this process on the same file, in turn, from the same starting state: a sales
CSV the handler types, and a CRM export (its timestamps read in the company's time zone) that only the SQL
lanes type, for which neither shortcut exists any more (both saved too little to keep: see RESULTS.md).
Ratios are the alternative's wall time over the path's.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from bench.data import reordered_csv, sales_csv
from bench.measure import Result
from bench.stack import BenchStack

RESET = ("truncate meta.quarantine, meta.source_state, core.sales, core.sales_history, core.interactions, "
         "core.interactions_history, meta.batches cascade")


def interactions_csv(directory: Path, rows: int) -> Path:
    """A CRM export: one interaction a row, timestamps with their offset."""
    path = directory / f"interactions-{rows}.csv"
    if not path.exists():
        rng = np.random.default_rng(20240602)
        seconds = np.sort(rng.integers(0, 3 * 365 * 86_400, rows))
        stamps = (np.datetime64("2022-01-01T00:00:00") + seconds.astype("timedelta64[s]")).astype(str)
        with path.open("w") as out:
            out.write("Activity Id,Timestamp,Account,Channel,Outcome\n")
            for i, (stamp, client) in enumerate(zip(stamps, rng.integers(1, 301, rows), strict=True)):
                out.write(f"A-{i},{stamp}Z,C{client},Email,Follow-up\n")
    return path


def _load(stack: BenchStack, source_key: str, path: Path, **switches) -> float:
    """Seconds the ingest of `path` under `source_key` takes with these BatchLoad switches."""
    from pipeline.db import connect
    from pipeline.handlers import ingest_object
    from pipeline.loader import BatchLoad
    from pipeline.runtime_config import pipeline_config
    from pipeline.sources.objects import ObjectRef

    saved = {k: getattr(BatchLoad, k) for k in switches}
    for k, v in switches.items():
        setattr(BatchLoad, k, v)
    conn = connect()
    try:
        key = stack.put(source_key, path)
        started = time.perf_counter()
        result = ingest_object.ingest(conn, pipeline_config(), ObjectRef(stack.landing_bucket, key),
                                      lambda: float("inf"))
        took = time.perf_counter() - started
    finally:
        conn.close()
        for k, v in saved.items():
            setattr(BatchLoad, k, v)
    if result["status"] != "committed":
        raise RuntimeError(f"{source_key}: {result}")
    return took


def run(stack: BenchStack, rows: int, repeat: int, progress) -> list[Result]:
    import os

    from playbook import runtime

    env = runtime.describe(stack.function("IngestSales")).environment
    os.environ.update({k: env[k] for k in ("PIPELINE_CONFIG_URI", "DB_SECRET_ARN") if k in env})
    files = {"sales": (sales_csv(stack.work_dir, rows), "landing/sales/"),
             "interactions": (interactions_csv(stack.work_dir, rows), "landing/crm/")}
    pairs = [  # (what, source, path switches, alternative switches, again: measure a re-export)
        ("typed in the handler", "sales", {"type_in_handler": True}, {"type_in_handler": False}, False),
        ("straight into an empty table", "sales", {"straight_in": True}, {"straight_in": False}, False),
        ("straight into an empty table", "interactions", {"straight_in": True}, {"straight_in": False}, False),
        ("a re-export known unchanged", "sales", {"recognise_unchanged": True}, {"recognise_unchanged": False}, True),
        ("a re-export known unchanged", "interactions", {"recognise_unchanged": True},
         {"recognise_unchanged": False}, True),
    ]
    results = []
    for what, source, path_switches, other_switches, again in pairs:
        walls: dict[str, list[float]] = {"path": [], "alternative": []}
        path, prefix = files[source]
        for rep in range(repeat):
            for label, switches in (("path", path_switches), ("alternative", other_switches)):
                stack.execute(RESET)
                stack.checkpoint()
                if again:
                    _load(stack, f"{prefix}first-{rep}-{label}.csv", path)
                    took = _load(stack, f"{prefix}again-{rep}-{label}.csv", reordered_csv(path), **switches)
                else:
                    took = _load(stack, f"{prefix}{rep}-{label}.csv", path, **switches)
                walls[label].append(took)
                progress(f"  paths {what} ({source}) rep {rep + 1}/{repeat} {label} {took:.2f}s")
        path_s, other_s = statistics.median(walls["path"]), statistics.median(walls["alternative"])
        results.append(Result(bench="paths", name=f"{source}: {what}"[:26], rows=rows, repeat=repeat,
                              wall_s=round(path_s, 3), peak_rss_mb=0.0, rows_per_s=int(rows / path_s),
                              note=f"{what}; the alternative took {other_s:.3f}s: {other_s / path_s:.2f}x",
                              walls=walls["path"], extra={"alternative_s": round(other_s, 3),
                                                          "ratio_alternative_to_path": round(other_s / path_s, 2)}))
    return results
