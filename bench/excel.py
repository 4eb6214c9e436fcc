"""P3: a 100k-row, nine-column payments workbook: the bare openpyxl and calamine reads beside the whole
ingest (read, typing, validation, merge, ledger) by the deployed payments function."""

from __future__ import annotations

from bench.data import payments_xlsx
from bench.ingest import ProjectFunction
from bench.measure import Result, Run, median_result, python_argv, run_process
from bench.stack import BenchStack


def run(stack: BenchStack, rows: int = 100_000, repeat: int = 3, progress=print) -> list[Result]:
    path = payments_xlsx(stack.work_dir, rows)
    project = ProjectFunction(stack, "IngestPayments")
    key = stack.put(f"landing/payments/bench-{rows}.xlsx", path)
    runs: dict[str, list[Run]] = {"xlsx_openpyxl": [], "xlsx_calamine": [], "project_excel": []}
    for rep in range(repeat):
        for name in runs:
            if name == "project_excel":
                stack.reset_core()
                got = project.invoke(key)
            else:
                got = run_process(python_argv("bench.contenders", name, str(path), stack.database_url))
            runs[name].append(got)
            progress(f"  excel rep {rep + 1}/{repeat} {name:<14} {got.wall_s:8.2f}s  {got.peak_rss_mb:7.1f} MB")
    notes = {"xlsx_openpyxl": "pandas.read_excel(engine='openpyxl'): read only",
             "xlsx_calamine": "python-calamine to_python(): read only",
             "project_excel": f"deployed {project.name} through playbook.runtime: the whole ingest"}
    results = [median_result("excel", n, rows, r, notes[n]) for n, r in runs.items()]
    by = {r.name: r for r in results}
    for r in results:
        r.extra["ratio_to_openpyxl"] = round(r.wall_s / by["xlsx_openpyxl"].wall_s, 3)
        r.extra["ratio_to_calamine"] = round(r.wall_s / by["xlsx_calamine"].wall_s, 3)
    by["project_excel"].extra["speedup_over_openpyxl"] = round(by["xlsx_openpyxl"].wall_s / by["project_excel"].wall_s,
                                                               2)
    return results
