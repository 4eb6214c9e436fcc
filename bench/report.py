"""bench/RESULTS.md from the JSON lines of `python -m bench all --json`: the machine, each benchmark's
table, and which targets are met.

    python -m bench all --json > results.jsonl && python -m bench report results.jsonl [--profile P.md]
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    from bench.stack import psql_binary

    postgres = Path(psql_binary()).with_name("postgres")
    pg = subprocess.run([str(postgres), "--version"], capture_output=True, text=True).stdout.strip()
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "memory": f"{mem_kb / 2**20:.1f} GiB", "postgresql": pg,
            "python": platform.python_version(), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "load average": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: list[dict]) -> str:
    out = ["| name | rows | K | wall s (median) | rows/s | peak RSS MB | ratio to raw COPY | note |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        out.append(f"| {r['name']} | {r['rows']} | {r['repeat']} | {_fmt(r['wall_s'])} | "
                   f"{_fmt(r.get('rows_per_s'))} | {_fmt(r['peak_rss_mb'], 1)} | {_fmt(r.get('ratio_to_copy'))} | "
                   f"{r.get('note', '')} |")
    return "\n".join(out)


def targets(by: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """(target, goal, measured, met)."""
    def get(name, *path):
        value = by.get(name)
        for p in path:
            value = (value or {}).get(p) if isinstance(value, dict) else None
        return value

    def row(target, goal, measured, ok):
        return (target, goal, measured, "not measured" if ok is None else ("met" if ok else "**not met**"))

    out = []
    r, floor = get("project", "ratio_to_copy"), get("copy_core", "ratio_to_copy")
    out.append(row("P1 first load 1M rows", "<= 2.5x raw COPY", f"{_fmt(r, 2)}x" + (
        f" (the least a first load of core.sales costs, its typed rows copied in and its key built: "
        f"{_fmt(floor, 2)}x)" if floor is not None else ""),
        None if r is None else r <= 2.5))
    r = get("project_same_object", "extra", "ratio_to_first_load")
    cold = get("project_same_object_cold", "extra", "ratio_to_first_load")
    out.append(row("P2 identical object again", "<= 0.05x first load",
                   f"{_fmt(r, 3)}x warm" + (f" ({_fmt(cold, 3)}x in a cold start)" if cold is not None else ""),
                   None if r is None else r <= 0.05))
    r = get("project_same_rows_new_key", "ratio_to_copy")
    out.append(row("P2 same rows, new object", "<= 2x raw COPY", f"{_fmt(r, 2)}x", None if r is None else r <= 2))
    s, c = get("project_excel", "extra", "speedup_over_openpyxl"), get("project_excel", "extra", "ratio_to_calamine")
    out.append(row("P3 Excel 100k rows", ">= 6x faster than openpyxl read (<= 1.5x calamine read)",
                   f"{_fmt(s, 2)}x faster; {_fmt(c, 2)}x calamine",
                   None if s is None else (s >= 6 and c <= 1.5)))
    mems = sorted((v for k, v in by.items() if k.startswith("project_") and v["bench"] == "memory"),
                  key=lambda v: v["rows"])
    if len(mems) >= 2:
        ratio, peak = mems[-1]["peak_rss_mb"] / mems[0]["peak_rss_mb"], mems[-1]["peak_rss_mb"]
        out.append(row("P4 memory 3M vs 1M rows", "<= 1.2x and <= 512 MB", f"{ratio:.2f}x, {peak:.0f} MB",
                       ratio <= 1.2 and peak <= 512))
    else:
        out.append(row("P4 memory 3M vs 1M rows", "<= 1.2x and <= 512 MB", "", None))
    m = get("top_clients", "extra", "median_ms")
    out.append(row("P5 top-10 clients, random periods", "median < 50 ms warm", f"{_fmt(m, 2)} ms",
                   None if m is None else m < 50))
    w = get("refresh", "wall_s")
    out.append(row("P5 CALL marts.refresh()", "< 5 s", f"{_fmt(w, 2)} s", None if w is None else w < 5))
    b = get("refresh_beside_reader", "extra")
    out.append(row("P5 refresh never blocks readers", "refresh ends while a reader holds the marts; queries go on",
                   (f"ended before the reader: {b['finished_before_reader']}; max top_clients during it "
                    f"{b['max_query_ms_during_refresh']} ms") if b else "",
                   None if not b else bool(b["finished_before_reader"])))
    d = by.get("playbook_demo")
    ok = None if not d or not d["repeat"] or not d["note"].endswith("ok") else d["wall_s"] <= 300
    out.append(row("P6 `playbook demo` after install", "<= 5 min", f"{_fmt(d and d['wall_s'], 1)} s"
                   if d and d["repeat"] else (d["note"] if d else "not measured"), ok))
    p = get("papermill_stage_overhead", "wall_s")
    out.append(row("P6 papermill overhead per stage", "<= 3 s", f"{_fmt(p, 2)} s", None if p is None else p <= 3))
    return out


def floor_note(by: dict[str, dict]) -> list[str]:
    """What the floor says of P1, from this run's figures."""
    floor, project = by.get("copy_core"), by.get("project")
    if not floor or not project or not floor.get("ratio_to_copy") or not project.get("ratio_to_copy"):
        return []
    f, r = floor["ratio_to_copy"], project["ratio_to_copy"]
    verdict = ("above P1's 2.5x before a byte of the file is read, checked or hashed: no loader of this table "
               "can meet P1 here while every row keeps its lineage and the table its primary key"
               if f > 2.5 else "below P1's 2.5x")
    return ["", f"`copy_core` is the least a first load of core.sales costs in this run: the rows already typed "
                f"and hashed, copied by psql into an empty copy of the table and its key built, {f:.2f}x raw COPY, "
                f"{verdict}. The ingest function's first load costs {r / f:.2f}x that floor, its cold start, "
                f"download, reading, checking and hashing included."]


def render(lines: list[dict], profile: str | None = None) -> str:
    by = {r["name"]: r for r in lines}
    info = machine()
    parts = ["# Benchmark results", "",
             "Produced by `python -m bench all --json > results.jsonl` and `python -m bench report results.jsonl",
             "--profile profile.md` (the profiles from `python -m bench profile` and `python -m bench profile",
             "--again`: a first load, and its rows again in another order under a new key). Wall times and peak",
             "memory are medians of K runs (K in each table); the details listed under a table are those of its last",
             "run. In each repetition the first-load contenders run in turn, each from an empty target and after",
             "a checkpoint; the redeliveries (same object, same rows under a new key) run after them. Files are",
             "generated from fixed seeds (bench/data.py), the query benchmark's rows in SQL from a fixed seed, the",
             "demo from the demo company. Ratios are wall time per row against raw `psql \\copy` of the same file",
             "into a plain typed table. Peak RSS is the loader's own process tree (psql, the baseline's Python",
             "process, or the function's handler process as playbook.runtime measures it against its memory size),",
             "not the PostgreSQL server's. `all` runs the memory benchmark once per size (K=1). The machine is",
             "shared: the load average below was taken when the report was written; the `walls` of each row (in",
             "the JSON) show the spread.", "",
             "## Machine", "", "| | |", "| --- | --- |"]
    parts += [f"| {k} | {v} |" for k, v in info.items()]
    parts += ["", "## Targets", "", "| target | goal | measured | |", "| --- | --- | --- | --- |"]
    parts += [f"| {t} | {g} | {m} | {ok} |" for t, g, m, ok in targets(by)]
    parts += floor_note(by)
    titles = {"ingest": "P1/P2 ingest of a 9-column sales CSV", "excel": "P3 Excel workbook, 9 columns",
              "memory": "P4 peak memory of the ingest function", "query": "P5 queries and refresh",
              "demo": "P6 the main command"}
    for bench, title in titles.items():
        rows = [r for r in lines if r["bench"] == bench]
        if not rows:
            continue
        parts += ["", f"## {title}", "", table(rows)]
        extras = [(r["name"], {k: v for k, v in r.get("extra", {}).items() if k != "output_tail"}) for r in rows
                  if r.get("extra")]
        if extras:
            parts += [""] + [f"- `{name}`: {json.dumps(extra)}" for name, extra in extras]
    if profile:
        parts += ["", profile.strip()]
    return "\n".join(parts) + "\n"


def main(path: str, profile_path: str | None = None) -> str:
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.startswith("{")]
    return render(lines, Path(profile_path).read_text() if profile_path else None)
