"""P4: the ingest function's peak resident memory (its handler process tree, as the runtime measures it
for Lambda's limit) for 1M and 3M rows: the file is streamed to COPY, so memory should not grow with rows."""

from __future__ import annotations

from bench.data import sales_csv
from bench.ingest import ProjectFunction
from bench.measure import Result, median_result
from bench.stack import BenchStack


def run(stack: BenchStack, sizes: list[int], repeat: int = 1, progress=print) -> list[Result]:
    project = ProjectFunction(stack)
    results = []
    for rows in sizes:
        path = sales_csv(stack.work_dir, rows)
        key = stack.put(f"landing/sales/memory-{rows}.csv", path)
        runs = []
        for rep in range(repeat):
            stack.reset_core()
            runs.append(project.invoke(key))
            progress(f"  memory rep {rep + 1}/{repeat} {rows:>9} rows {runs[-1].wall_s:8.2f}s "
                     f"{runs[-1].peak_rss_mb:7.1f} MB")
        path.unlink()
        results.append(median_result("memory", f"project_{rows // 1000}k", rows, runs,
                                     f"peak RSS of the handler process, limit {project.deployed.memory_mb} MB"))
    smallest = results[0]
    for r in results:
        r.extra["rss_ratio_to_smallest"] = round(r.peak_rss_mb / smallest.peak_rss_mb, 3)
    return results
