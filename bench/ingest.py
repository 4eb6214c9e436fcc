"""P1/P2: a sales CSV loaded end to end by the project's ingest function, beside raw COPY and baselines.

Every repetition runs each contender in turn from an empty target (core.sales and the ledger for the
project, the bench.* table for a baseline), so each first load is a first load, and the medians compare
runs made under the same machine load.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import contenders
from bench.data import reordered_csv, sales_csv
from bench.measure import Result, Run, median_result, python_argv, run_process
from bench.stack import BenchStack, psql_binary

ALL = ("copy", "copy_core", "project", "pandas_copy", "pandas_upsert", "to_sql", "dlt")
TO_SQL_ROWS = 100_000
BASELINE_TIMEOUT_S = 900


def dlt_available() -> bool:
    try:
        import dlt  # noqa: F401
    except ImportError:
        return False
    return True


def _psql_copy(stack: BenchStack, table: str, columns, path: Path, header: bool) -> Run:
    """psql's \\copy of a file into `table`, measured as its own process; the rows it holds after."""
    options = f"format csv, header {'true' if header else 'false'}"
    got = run_process([psql_binary(), stack.database_url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c",
                       f"\\copy {table} ({', '.join(columns)}) from '{path}' with ({options})"])
    got.extra = {"rows": stack.execute(f"select count(*) from {table}")[0][0]}
    return got


def raw_copy(stack: BenchStack, path: Path) -> Run:
    """psql's \\copy of the file into a plain typed table (no key, no index): the floor to compare with."""
    return _psql_copy(stack, "bench.sales_copy", contenders.COLUMNS, path, header=True)


def lane_rows_csv(path: Path) -> Path:
    """The same rows as the ingest function's lane sends them to COPY: each row's values, its row number and
    a 32-digit md5 as its content hash is (the batch's lineage comes from the loading transaction's settings)."""
    import hashlib

    out = path.with_name(path.stem + "-lane.csv")
    if not out.exists():
        tmp = out.with_suffix(".part")
        with path.open(encoding="utf-8") as src, tmp.open("w", encoding="utf-8") as dst:
            next(src)
            for n, line in enumerate(src, start=2):
                line = line.rstrip("\n")
                digest = hashlib.md5(line.encode(), usedforsecurity=False).hexdigest()
                dst.write(f"{line},{n:012d},{digest}\n")
        tmp.rename(out)
    return out


FLOOR = """begin;
select set_config('pipeline.batch_id', '1', true);
alter table bench.sales_core drop constraint sales_core_pkey;
\\copy bench.sales_core ({columns}, _source_row, _row_hash) from '{path}' with (format csv)
alter table bench.sales_core add constraint sales_core_pkey primary key (order_id, line_no);
commit;
"""


def core_copy(stack: BenchStack, path: Path) -> Run:
    """What a first load into core.sales does at the least, by psql in one transaction: the rows already
    typed and hashed, copied into an empty table built like core.sales (its defaults and batch index) with
    its primary key taken off, their lineage from the transaction's settings, then the key built. No file
    is read, checked, hashed or merged."""
    script = stack.work_dir / "floor.sql"
    script.write_text(FLOOR.format(columns=", ".join(contenders.COLUMNS), path=path))
    got = run_process([psql_binary(), stack.database_url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script)])
    got.extra = {"rows": stack.execute("select count(*) from bench.sales_core")[0][0]}
    return got


class ProjectFunction:
    """The deployed ingest function, run by the local Lambda runtime from its deployed zip."""

    def __init__(self, stack: BenchStack, logical: str = "IngestSales"):
        from playbook import runtime

        self.runtime, self.stack = runtime, stack
        self.name = stack.function(logical)
        self.deployed = runtime.prepare(self.name)

    def invoke(self, key: str, expect: str = "committed", fresh: bool = True) -> Run:
        """fresh: a cold start in a new environment (the conservative figure); else a warm one if idle."""
        started = time.monotonic()
        result = self.runtime.invoke(self.name, {"bucket": self.stack.landing_bucket, "key": key},
                                     deployed=self.deployed, fresh=fresh)
        wall = time.monotonic() - started
        if not result.ok:
            raise RuntimeError(f"{self.name} on {key}: {result.status}: {result.error}")
        outcome = result.payload["results"][0]
        if outcome["status"] != expect:
            raise RuntimeError(f"{self.name} on {key}: expected {expect}, got {outcome}")
        extra = {"duration_s": round(result.duration_ms / 1000, 3), "init_s": round((result.init_ms or 0) / 1000, 3),
                 "status": outcome["status"]}
        extra.update({k: outcome[k] for k in ("rows_read", "rows_inserted", "rows_updated", "rows_unchanged",
                                              "seconds") if k in outcome})
        return Run(wall, result.max_rss_mb, extra)


def _ratios(results: list[Result], base: Result | None, field: str = "ratio_to_copy", label: str = "copy") -> None:
    """wall per row against the baseline's wall per row (the same as the wall ratio at equal rows)."""
    if not base or not base.rows_per_s:
        return
    for r in results:
        if r.rows_per_s:
            setattr(r, field, round(base.rows_per_s / r.rows_per_s, 3))
            r.ratio_to = label


def run(stack: BenchStack, rows: int, only: list[str] | None = None, repeat: int = 3,
        to_sql_rows: int = TO_SQL_ROWS, progress=print) -> list[Result]:
    chosen = [c for c in ALL if not only or c in only]
    notes: dict[str, str] = {"project": f"deployed function {stack.function('IngestSales')} through "
                                        "playbook.runtime (cold start in a new handler process, zip, 512 MB limit)"}
    if "dlt" in chosen and not dlt_available():
        chosen.remove("dlt")
        progress("dlt is not installed (pip install -e '.[bench]'): skipped")
    path = sales_csv(stack.work_dir, rows)
    if "copy_core" in chosen:
        lane_rows = lane_rows_csv(path)
        notes["copy_core"] = ("the same rows typed and hashed, by psql \\copy into an empty copy of core.sales "
                              "without its key, lineage from the batch, then the key built: the least a first "
                              "load of this table costs")
    contenders.setup(stack.database_url)
    project = ProjectFunction(stack) if "project" in chosen else None
    key = f"landing/sales/bench-{rows}.csv"
    if project:
        stack.put(key, path)
    runs: dict[str, list[Run]] = {c: [] for c in chosen}
    n_rows = {c: rows for c in chosen}
    if "to_sql" in chosen and to_sql_rows < rows:
        n_rows["to_sql"] = to_sql_rows
        notes["to_sql"] = f"first {to_sql_rows} rows only (row-by-row inserts); ratio per row"
    if "dlt" in chosen:
        import importlib.util

        notes["dlt"] = ("dlt merge, arrow frames, csv load files" if importlib.util.find_spec("pyarrow")
                        else "dlt merge, rows as dicts (pyarrow not installed)")
    for rep in range(repeat):
        for name in chosen:
            contenders.reset(stack.database_url)
            stack.reset_core()
            stack.checkpoint()
            if name == "copy":
                got = raw_copy(stack, path)
            elif name == "copy_core":
                got = core_copy(stack, lane_rows)
            elif name == "project":
                got = project.invoke(key)
            else:
                argv = python_argv("bench.contenders", name, str(path), stack.database_url)
                if n_rows[name] < rows:
                    argv += ["--rows", str(n_rows[name])]
                got = run_process(argv, timeout=BASELINE_TIMEOUT_S)
            runs[name].append(got)
            progress(f"  ingest rep {rep + 1}/{repeat} {name:<14} {got.wall_s:8.2f}s  {got.peak_rss_mb:7.1f} MB")
    results = [median_result("ingest", name, n_rows[name], runs[name], notes.get(name, "")) for name in chosen]
    if project:
        results += _redelivery(stack, project, path, rows, repeat, progress)
    base = next((r for r in results if r.name == "copy"), None)
    _ratios(results, base)
    first = next((r for r in results if r.name == "project"), None)
    for r in results:
        if r.name in ("project_same_object", "project_same_object_cold") and first:
            r.extra["ratio_to_first_load"] = round(r.wall_s / first.wall_s, 4)
    return results


def _redelivery(stack: BenchStack, project: ProjectFunction, path: Path, rows: int, repeat: int,
                progress) -> list[Result]:
    """P2: the identical object again (known by its ETag), then the same rows under a new key.

    A redelivery (an S3 event delivered twice, a retry) mostly reaches an environment the first delivery
    left warm, so the identical object is measured warm; the cold figure is reported beside it."""
    stack.reset_core()
    first_key = f"landing/sales/bench-{rows}.csv"
    project.invoke(first_key, fresh=False)  # leaves its environment warm
    same, cold = [], []
    for rep in range(repeat):
        same.append(project.invoke(first_key, expect="already_loaded", fresh=False))
        cold.append(project.invoke(first_key, expect="already_loaded"))
        progress(f"  ingest rep {rep + 1}/{repeat} same object    {same[-1].wall_s:8.2f}s warm "
                 f"{cold[-1].wall_s:8.2f}s cold")
    # a re-export: the same rows written again in another order (not the same bytes)
    again_key = stack.put(f"landing/sales/bench-{rows}-again.csv", reordered_csv(path))
    again = []
    for rep in range(repeat):
        stack.execute("delete from meta.quarantine where batch_id in (select batch_id from meta.batches "
                      "where object_key = %s); delete from meta.batches where object_key = %s",
                      (again_key, again_key))
        stack.checkpoint()
        again.append(project.invoke(again_key))
        if again[-1].extra.get("rows_inserted") or again[-1].extra.get("rows_updated"):
            raise RuntimeError(f"the same rows under a new key changed core: {again[-1].extra}")
        progress(f"  ingest rep {rep + 1}/{repeat} same rows, new key {again[-1].wall_s:8.2f}s")
    return [median_result("ingest", "project_same_object", rows, same,
                          "identical object delivered again, warm environment: skipped by key and ETag before "
                          "download"),
            median_result("ingest", "project_same_object_cold", rows, cold,
                          "the same, in a new handler process (cold start)"),
            median_result("ingest", "project_same_rows_new_key", rows, again,
                          "the same rows re-exported in another order under a new key: every key already "
                          "loaded, none changed")]
