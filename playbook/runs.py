"""Run folders of the chain: `reports/runs/<run id>/` holds each executed notebook, each stage's outputs and the
run manifest; `reports/latest` points at the newest run.

A stage hands its results to the next as a small JSON file (`outputs/<stage>.json`) of names, ARNs, ids and
counts: never a secret value. A stage looks for an earlier stage's outputs in its own run first, then in the
previous runs, newest first, so `playbook run --from validate` in a new run reads what the last backfill left.
"""

from __future__ import annotations

import json
import os
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from playbook.errors import PlaybookError
from playbook.settings import reports_root

OUTPUTS_DIR = "outputs"
MANIFEST = "manifest.json"


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, date | datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | tuple):
        return list(value)
    return str(value)


def write_json(path: Path, data: Any, sort_keys: bool = True) -> Path:
    """Atomic write: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=sort_keys, default=_default) + "\n")
    os.replace(tmp, path)
    return path


def run_dir_for(run_id: str | None = None, run_dir: str | os.PathLike | None = None) -> Path:
    """The run folder a stage writes into: the one given, the run id's, or a new run (reports/latest moves)."""
    from playbook.reports import new_run_dir

    if run_dir:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return new_run_dir(reports_root(), run_id)


def runs_newest_first(root: Path | None = None) -> list[Path]:
    runs = (root or reports_root()) / "runs"
    return sorted((p for p in runs.iterdir() if p.is_dir()), reverse=True) if runs.is_dir() else []


def record_outputs(run_dir: str | os.PathLike, stage: str, outputs: dict[str, Any]) -> Path:
    """What this stage hands to the next ones: names, ARNs, ids and counts (no secret values)."""
    return write_json(Path(run_dir) / OUTPUTS_DIR / f"{stage}.json", {"stage": stage, **outputs})


def find_outputs(stage: str, run_dir: str | os.PathLike | None = None) -> tuple[dict[str, Any], Path] | None:
    """An earlier stage's outputs and where they were found: this run's, else the newest run that has them."""
    candidates = [Path(run_dir)] if run_dir else []
    candidates += [p for p in runs_newest_first() if not run_dir or p.resolve() != Path(run_dir).resolve()]
    for directory in candidates:
        path = directory / OUTPUTS_DIR / f"{stage}.json"
        if path.is_file():
            return json.loads(path.read_text()), path
    return None


def outputs_of(stage: str, run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """An earlier stage's outputs; a clear error naming the stage to run when no run has them."""
    found = find_outputs(stage, run_dir)
    if found is None:
        raise PlaybookError(f"no run under {reports_root()} has the outputs of the {stage} stage: run it first "
                            f"(`playbook run --only {stage}`)")
    return found[0]


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> Path:
    return write_json(run_dir / MANIFEST, manifest, sort_keys=False)  # stages in chain order
