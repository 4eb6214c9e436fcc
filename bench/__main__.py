"""python -m bench ingest|excel|memory|query|demo|paths|profile|all [--json]: see bench/RESULTS.md."""

from __future__ import annotations

import argparse
import sys

from bench.measure import Result

SHOWN = ("median_ms", "p95_ms", "max_query_ms_during_refresh", "finished_before_reader", "ratio_to_first_load",
         "alternative_s", "ratio_alternative_to_path",
         "ratio_to_openpyxl", "ratio_to_calamine", "speedup_over_openpyxl", "rss_ratio_to_smallest", "duration_s",
         "stage_seconds")


def _table(results: list[Result]) -> str:
    lines = [f"{'bench':<7} {'name':<26} {'rows':>9} {'K':>2} {'wall s':>9} {'rows/s':>10} {'peak MB':>8} "
             f"{'ratio':>7}  note"]
    for r in results:
        ratio = f"{r.ratio_to_copy:.3f}" if r.ratio_to_copy is not None else ""
        rps = f"{r.rows_per_s:,}" if r.rows_per_s else ""
        lines.append(f"{r.bench:<7} {r.name:<26} {r.rows:>9} {r.repeat:>2} {r.wall_s:>9.3f} {rps:>10} "
                     f"{r.peak_rss_mb:>8.1f} {ratio:>7}  {r.note}")
        shown = {k: r.extra[k] for k in SHOWN if k in r.extra}
        if shown:
            lines.append(f"{'':<37}{shown}")
    return "\n".join(lines)


def _emit(results: list[Result], as_json: bool) -> None:
    if as_json:
        for r in results:
            print(r.to_json(), flush=True)
    else:
        print(_table(results), flush=True)


def _progress(as_json: bool):
    return (lambda msg: print(msg, file=sys.stderr, flush=True)) if as_json else print


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    sub = p.add_subparsers(dest="bench", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repeat", type=int, default=3, help="repetitions; medians are reported")
    common.add_argument("--json", action="store_true", help="one JSON object a line")
    ing = sub.add_parser("ingest", parents=[common], help="P1/P2: CSV through the ingest function vs baselines")
    ing.add_argument("--rows", type=int, default=1_000_000)
    ing.add_argument("--only", help="comma-separated: copy,copy_core,project,pandas_copy,pandas_upsert,to_sql,dlt")
    ing.add_argument("--to-sql-rows", type=int, default=100_000, help="cap for DataFrame.to_sql (slow)")
    xl = sub.add_parser("excel", parents=[common], help="P3: a workbook: openpyxl, calamine, the ingest function")
    xl.add_argument("--rows", type=int, default=100_000)
    mem = sub.add_parser("memory", parents=[common], help="P4: the ingest function's peak RSS, 1M vs 3M rows")
    mem.add_argument("--rows", default="1000000,3000000")
    q = sub.add_parser("query", parents=[common], help="P5: marts.top_clients over random periods, refresh")
    q.add_argument("--periods", type=int, default=200)
    q.add_argument("--lines", type=int, default=0, help="synthetic sales lines instead of the demo company")
    sub.add_parser("demo", parents=[common], help="P6: playbook demo's wall time and papermill overhead")
    paths = sub.add_parser("paths", parents=[common], help="what each of the loader's paths saves against the "
                                                            "path it stands in for, on the same rows")
    paths.add_argument("--rows", type=int, default=300_000)
    prof = sub.add_parser("profile", help="the loader's statements, timed and EXPLAIN ANALYZEd, plus cProfile")
    prof.add_argument("--rows", type=int, default=1_000_000)
    prof.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE each statement (in a savepoint)")
    prof.add_argument("--excel", action="store_true", help="a payments workbook instead of a sales CSV")
    prof.add_argument("--again", action="store_true",
                      help="profile the same file delivered again under a new key (every row already loaded)")
    sub.add_parser("all", parents=[common], help="every benchmark at its default size")
    rep = sub.add_parser("report", help="bench/RESULTS.md from the JSON lines of `all --json`")
    rep.add_argument("results")
    rep.add_argument("--profile", help="a markdown file (the loader's profile) to append")
    args = p.parse_args(argv)
    progress = _progress(getattr(args, "json", False))

    if args.bench == "report":
        from bench import report

        print(report.main(args.results, args.profile), end="")
        return 0
    from bench.stack import bench_stack

    if args.bench == "profile":
        from bench import profile

        with bench_stack() as stack:
            print(profile.run(stack, args.rows, args.explain, excel=args.excel, again=args.again))
        return 0
    if args.bench == "paths":
        from bench import paths

        with bench_stack() as stack:
            _emit(paths.run(stack, args.rows, args.repeat, progress), args.json)
        return 0
    if args.bench == "demo":
        from bench import demo

        _emit(demo.run(args.repeat, progress), args.json)
        return 0
    results: list[Result] = []
    with bench_stack() as stack:
        if args.bench in ("ingest", "all"):
            from bench import ingest

            only = args.only.split(",") if getattr(args, "only", None) else None
            results += ingest.run(stack, getattr(args, "rows", 1_000_000), only, args.repeat,
                                  getattr(args, "to_sql_rows", ingest.TO_SQL_ROWS), progress)
            _emit(results, args.json) if args.bench == "ingest" else None
        if args.bench in ("excel", "all"):
            from bench import excel

            got = excel.run(stack, getattr(args, "rows", 100_000) if args.bench == "excel" else 100_000,
                            args.repeat, progress)
            results += got
            _emit(got, args.json) if args.bench == "excel" else None
        if args.bench in ("memory", "all"):
            from bench import memory

            sizes = [int(s) for s in (args.rows.split(",") if args.bench == "memory" else ["1000000", "3000000"])]
            got = memory.run(stack, sizes, 1 if args.bench == "all" else args.repeat, progress)
            results += got
            _emit(got, args.json) if args.bench == "memory" else None
        if args.bench in ("query", "all"):
            from bench import query

            got = query.run(stack, getattr(args, "periods", 200), getattr(args, "lines", 0), args.repeat, progress)
            results += got
            _emit(got, args.json) if args.bench == "query" else None
    if args.bench == "all":
        from bench import demo

        results += demo.run(1, progress)
        _emit(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
