"""Wall time and peak resident memory of one contender, medians over repetitions, ratios to a baseline."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

import psutil

from playbook.runtime import high_water_mark


@dataclass
class Run:
    wall_s: float
    peak_rss_mb: float
    extra: dict = field(default_factory=dict)


@dataclass
class Result:
    """One benchmark row: the median of `repeat` runs."""

    bench: str
    name: str
    rows: int
    repeat: int
    wall_s: float
    peak_rss_mb: float
    rows_per_s: float | None = None
    ratio_to_copy: float | None = None
    ratio_to: str | None = None
    note: str = ""
    walls: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)


def median_result(bench: str, name: str, rows: int, runs: list[Run], note: str = "") -> Result:
    walls = [r.wall_s for r in runs]
    wall = statistics.median(walls)
    extra = runs[-1].extra if runs else {}
    return Result(bench, name, rows, len(runs), round(wall, 3),
                  round(statistics.median(r.peak_rss_mb for r in runs), 1),
                  round(rows / wall) if rows and wall else None, note=note, walls=[round(w, 3) for w in walls],
                  extra=extra)


class TreeSampler:
    """The resident memory of a process and its descendants, each time it is sampled; keeps the peak.

    Each process counts with the larger of its RSS and its kernel high-water mark (VmHWM, per address
    space, so it restarts at exec). The root counts only once it runs `argv` (before exec a forked child
    still shows the parent's pages)."""

    def __init__(self, pid: int, argv: list[str] | None = None):
        self.root = psutil.Process(pid)
        self.argv, self.peak = argv, 0
        self._execed = argv is None

    def sample(self) -> None:
        total = 0
        try:
            if not self._execed:
                self._execed = self.root.cmdline()[:1] == self.argv[:1]
            procs = [self.root, *self.root.children(recursive=True)] if self._execed else []
        except psutil.Error:
            return
        for p in procs:
            try:
                total += max(p.memory_info().rss, high_water_mark(p.pid))
            except psutil.Error:
                continue
        self.peak = max(self.peak, total)


def run_process(argv: list[str], timeout: float | None = None) -> Run:
    """Run a command to its end: wall time, and the peak RSS of its tree (sampled every 10 ms)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    readers = [threading.Thread(target=lambda s, b: b.append(s.read()), args=(proc.stdout, out_chunks), daemon=True),
               threading.Thread(target=lambda s, b: b.append(s.read()), args=(proc.stderr, err_chunks), daemon=True)]
    for t in readers:
        t.start()
    sampler = TreeSampler(proc.pid, argv)
    deadline = started + timeout if timeout else None
    while True:
        sampler.sample()
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if deadline and time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.01)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join()
    out, err = b"".join(out_chunks).decode(), b"".join(err_chunks).decode()
    if proc.returncode != 0:
        if deadline and time.monotonic() > deadline:
            raise TimeoutError(f"{argv[:4]} ran past {timeout:.0f}s")
        raise RuntimeError(f"{' '.join(argv[:4])} exited {proc.returncode}: {err[-2000:]}")
    peak = sampler.peak  # ru_maxrss would include the pre-exec copy of this process
    extra = {}
    last = out.strip().splitlines()[-1] if out.strip() else ""
    if last.startswith("{"):
        extra = json.loads(last)
    return Run(wall, peak / 2**20, extra)


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
