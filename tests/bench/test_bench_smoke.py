"""The ingest benchmark runs end to end on a tiny file and prints its JSON rows (shape only, no timings)."""

from __future__ import annotations

import json
import subprocess
import sys

from playbook.settings import PROJECT_ROOT

FIELDS = {"name": str, "wall_s": float, "peak_rss_mb": float, "rows": int, "repeat": int}


def test_bench_ingest_prints_one_json_object_per_contender():
    done = subprocess.run([sys.executable, "-m", "bench", "ingest", "--rows", "2000", "--repeat", "1",
                           "--only", "copy,project", "--json"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    by_name = {r["name"]: r for r in rows}
    assert {"copy", "project", "project_same_object", "project_same_rows_new_key"} <= set(by_name)
    for row in rows:
        for field, kind in FIELDS.items():
            assert isinstance(row[field], kind), (field, row)
        assert row["rows"] == 2000 and row["repeat"] == 1
        assert isinstance(row["ratio_to_copy"], float)
    assert by_name["copy"]["ratio_to_copy"] == 1.0
    assert by_name["project"]["extra"]["status"] == "committed"
    assert by_name["project_same_object"]["extra"]["status"] == "already_loaded"
