"""P6: the README's main command, `playbook demo`, on a throwaway stack of its own (state, ports, reports
directory), its wall time and each stage's seconds from the run's manifest; and papermill's own cost per
stage: a notebook of one parameters cell and one empty cell, run on the same kernel."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.measure import Result
from bench.stack import free_port

NOTEBOOK = {"cells": [
    {"id": "parameters", "cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "run_id = None",
     "outputs": [], "execution_count": None},
    {"id": "empty", "cell_type": "code", "metadata": {}, "source": "pass", "outputs": [], "execution_count": None}],
    "metadata": {"kernelspec": {"name": "playbook", "display_name": "Python (playbook)", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5}


def papermill_overhead(repeat: int = 3) -> list[float]:
    import papermill

    from playbook.chain import ensure_kernel

    kernel = ensure_kernel()
    directory = Path(tempfile.mkdtemp(prefix="bench-papermill-"))
    source = directory / "empty.ipynb"
    source.write_text(json.dumps(NOTEBOOK))
    times = []
    try:
        for i in range(repeat):
            started = time.perf_counter()
            papermill.execute_notebook(str(source), str(directory / f"out-{i}.ipynb"), parameters={"run_id": str(i)},
                                       kernel_name=kernel, progress_bar=False, request_save_on_cell_execute=True)
            times.append(time.perf_counter() - started)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return times


def run(repeat: int = 1, progress=print) -> list[Result]:
    results = []
    overhead = papermill_overhead(max(repeat, 3))
    results.append(Result("demo", "papermill_stage_overhead", 0, len(overhead), round(statistics.median(overhead), 3),
                          0.0, note="papermill + kernel start on an empty parameterised notebook",
                          walls=[round(t, 3) for t in overhead]))
    progress(f"  demo: papermill overhead per stage {statistics.median(overhead):.2f}s")
    playbook = str(Path(sys.executable).with_name("playbook"))
    walls, stages, status, tail = [], {}, "ok", ""
    for rep in range(repeat):  # each a first run: its own state, ports and reports
        state = Path(tempfile.mkdtemp(prefix="bench-demo-state-"))
        reports = Path(tempfile.mkdtemp(prefix="bench-demo-reports-"))
        env = {**os.environ, "PLAYBOOK_STATE_DIR": str(state), "PLAYBOOK_MOTO_PORT": str(free_port()),
               "PLAYBOOK_PG_PORT": str(free_port()), "PLAYBOOK_REPORTS_DIR": str(reports)}
        for k in ("PLAYBOOK_DATABASE_URL", "AWS_ENDPOINT_URL", "PLAYBOOK_STACK_PREFIX"):
            env.pop(k, None)
        try:
            started = time.monotonic()
            done = subprocess.run([playbook, "demo"], env=env, capture_output=True, text=True, timeout=1800)
            walls.append(time.monotonic() - started)
            progress(f"  demo rep {rep + 1}/{repeat}: {walls[-1]:.1f}s, exit {done.returncode}")
            if done.returncode != 0:
                # the end of what it printed, without the kernels' routine warnings that would hide the error
                said = [s for s in (done.stdout + done.stderr).splitlines() if "[IPKernelApp] WARNING" not in s]
                status, tail = f"exit {done.returncode}", "\n".join(said)[-1500:]
                break
            manifest = json.loads((reports / "latest" / "manifest.json").read_text())
            stages = {name: s.get("seconds") for name, s in manifest.get("stages", {}).items()}
        finally:
            subprocess.run([playbook, "local", "down", "--delete-data"], env=env, capture_output=True, timeout=120)
            shutil.rmtree(state, ignore_errors=True)
            shutil.rmtree(reports, ignore_errors=True)
    results.append(Result("demo", "playbook_demo", 0, len(walls), round(statistics.median(walls), 1) if walls else 0.0,
                          0.0, note=f"first run on a fresh stack; {status}", walls=[round(w, 1) for w in walls],
                          extra={"stage_seconds": stages, **({"output_tail": tail} if tail else {})}))
    return results
