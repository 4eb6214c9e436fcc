"""`playbook run`: the five notebooks, executed in order with papermill, as one run of the playbook.

Every stage writes into one run folder (`reports/runs/<run id>/`, `reports/latest` pointing at it): its
executed notebook, the outputs it hands on (`outputs/<stage>.json`) and, for the reports stage, the charts,
dashboard and email. `manifest.json` records the parameters, each stage's status, duration and artifacts.
The chain stops at the first failing stage and names the failing cell; `--from STAGE` resumes there, in the
same run (`--run-id`) or in a new one that reads the earlier stages' outputs from the previous runs.
Parameters carry names, paths and ARNs only: a value that looks like a credential is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from playbook.errors import PlaybookError
from playbook.settings import PROJECT_ROOT

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
KERNEL_NAME = "playbook"
STAGES: dict[str, str] = {
    "provision": "00_provision.ipynb",
    "deploy": "10_deploy.ipynb",
    "backfill": "20_backfill.ipynb",
    "validate": "30_validate.ipynb",
    "reports": "40_reports.ipynb",
}
_CREDENTIAL_MARKERS = ("password", "secret_value", "postgresql://", "postgres://")


class ChainFailed(PlaybookError):
    """A stage failed; the message names the stage, the cell and the error, and how to resume."""

    def __init__(self, message: str, result: ChainResult):
        super().__init__(message)
        self.result = result


@dataclass
class StageRun:
    stage: str
    notebook: str
    status: str = "pending"  # ok | failed | skipped (reused from an earlier run)
    seconds: float = 0.0
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    reused_from: str | None = None


@dataclass
class ChainResult:
    run_id: str
    run_dir: Path
    stages: list[StageRun]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(s.status in ("ok", "skipped") for s in self.stages)


# -- the kernel ---------------------------------------------------------------------------------------
def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """A Jupyter kernel for this environment's Python, installed into the venv (sys.prefix) if missing."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    spec_dir = specs.get(name)
    if spec_dir:
        argv = json.loads((Path(spec_dir) / "kernel.json").read_text()).get("argv", [])
        if argv and Path(argv[0]).exists():
            return name
    from ipykernel.kernelspec import install

    install(kernel_name=name, display_name="Python (playbook)", prefix=sys.prefix)
    return name


# -- parameters ----------------------------------------------------------------------------------------
def declared_parameters(stage: str) -> dict[str, Any]:
    """The names (and defaults, as text) a stage's notebook declares in its `parameters` cell."""
    import papermill

    return papermill.inspect_notebook(str(NOTEBOOKS_DIR / STAGES[stage]))


def _refuse_credentials(parameters: dict[str, Any]) -> None:
    for key, value in parameters.items():
        text = f"{key}={value}".lower()
        if any(marker in text for marker in _CREDENTIAL_MARKERS):
            raise PlaybookError(f"parameter {key!r} looks like a credential: pass names and ARNs (the secret's name, "
                                "e.g. playbook/db/reporting), never values; notebooks and the manifest are kept")


def select_stages(from_stage: str | None = None, only: list[str] | None = None) -> list[str]:
    names = list(STAGES)
    for given in [from_stage, *(only or [])]:
        if given and given not in STAGES:
            raise PlaybookError(f"unknown stage {given!r}: choose from {', '.join(names)}")
    if only:
        return [s for s in names if s in only]
    if from_stage:
        return names[names.index(from_stage):]
    return names


def read_params_file(path: str | Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise PlaybookError(f"{path}: expected a mapping of parameter names to values")
    return data


def parse_value(text: str) -> Any:
    """`-p key value`: the value read as YAML (numbers, booleans, lists), else kept as text."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# -- running -------------------------------------------------------------------------------------------
def _first_line(source: str) -> str:
    lines = [line for line in (source or "").splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return lines[0].strip() if lines else (source or "").strip()


def lesson_cell(stage: str, source: str) -> int | None:
    """The failing cell's position (0-based) in the lesson notebook itself, found by its source."""
    import nbformat

    book = nbformat.read(NOTEBOOKS_DIR / STAGES[stage], as_version=4)
    for index, cell in enumerate(book.cells):
        if cell.cell_type == "code" and cell.source.strip() == (source or "").strip():
            return index
    return None


def _artifacts(run_dir: Path) -> list[dict[str, Any]]:
    """The run folder's files; a folder of invocation logs is listed as one entry with its file count."""
    listed = []
    for path in sorted(run_dir.iterdir()):
        if path.name.startswith(".") or path.name == "manifest.json":
            continue
        if path.is_dir():
            files = [p for p in path.rglob("*") if p.is_file()]
            if path.name == "logs":
                listed.append({"path": "logs/", "files": len(files), "bytes": sum(p.stat().st_size for p in files)})
                continue
            listed += [{"path": str(p.relative_to(run_dir)), "bytes": p.stat().st_size} for p in sorted(files)]
        else:
            listed.append({"path": path.name, "bytes": path.stat().st_size})
    return listed


def _write_manifest(result: ChainResult, target: str, parameters: dict[str, Any], started: str) -> None:
    from playbook.runs import read_manifest, write_manifest

    previous = read_manifest(result.run_dir)
    stages = dict(previous.get("stages", {}))
    for s in result.stages:
        if s.status != "pending":
            stages[s.stage] = {"notebook": s.notebook, "status": s.status, "seconds": round(s.seconds, 2),
                               "parameters": s.parameters, "outputs": s.outputs, "error": s.error,
                               "reused_from": s.reused_from}
    ordered = {name: stages[name] for name in STAGES if name in stages}
    status = "failed" if any(v["status"] == "failed" for v in ordered.values()) else (
        "ok" if len(ordered) == len(STAGES) else "partial")
    write_manifest(result.run_dir, {
        "run_id": result.run_id, "target": target, "status": status,
        "started_at": previous.get("started_at", started), "updated_at": datetime.now(UTC).isoformat(),
        "parameters": parameters, "seconds": round(sum(v["seconds"] for v in ordered.values()), 2),
        "stages": ordered, "artifacts": _artifacts(result.run_dir),
        "command": " ".join(["playbook", *sys.argv[1:]]) if Path(sys.argv[0]).name == "playbook" else None,
    })


def run_chain(target: str = "local", parameters: dict[str, Any] | None = None, *, from_stage: str | None = None,
              only: list[str] | None = None, run_id: str | None = None, echo=print) -> ChainResult:
    """Execute the selected stages' notebooks in order; raises ChainFailed at the first failing stage."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from playbook.runs import find_outputs, run_dir_for
    from playbook.targets import target_named

    target_named(target)  # the notebooks resolve it; an unknown name fails here, before any of them runs
    parameters = dict(parameters or {})
    _refuse_credentials(parameters)
    stages = select_stages(from_stage, only)
    declared = {stage: declared_parameters(stage) for stage in stages}
    known = sorted({name for names in declared.values() for name in names})
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise PlaybookError(f"unknown parameter(s) {', '.join(unknown)}: the notebooks of {', '.join(stages)} "
                            f"declare {', '.join(known)}")
    kernel = ensure_kernel()
    run_dir = run_dir_for(run_id)
    result = ChainResult(run_dir.name, run_dir, [StageRun(s, STAGES[s]) for s in stages])
    started_at, started = datetime.now(UTC).isoformat(), time.monotonic()
    # stages before the first selected one: which earlier run's outputs this run builds on
    for stage in list(STAGES)[:list(STAGES).index(stages[0])]:
        found = find_outputs(stage, run_dir)
        if found and found[1].parent.parent != run_dir:
            result.stages.insert(0, StageRun(stage, STAGES[stage], status="skipped", outputs=found[0],
                                             reused_from=found[1].parent.parent.name))
    echo(f"run {result.run_id} ({target}): {', '.join(stages)} -> {run_dir}")
    for stage_run in [s for s in result.stages if s.status == "pending"]:
        stage = stage_run.stage
        given = {"target": target, "run_id": result.run_id, "run_dir": str(run_dir), **parameters}
        stage_run.parameters = {k: v for k, v in given.items() if k in declared[stage]}
        t0 = time.monotonic()
        echo(f"  {stage:<10} {stage_run.notebook}")
        try:
            papermill.execute_notebook(str(NOTEBOOKS_DIR / stage_run.notebook), str(run_dir / stage_run.notebook),
                                       parameters=stage_run.parameters, kernel_name=kernel, cwd=str(PROJECT_ROOT),
                                       progress_bar=False, request_save_on_cell_execute=True)
        except PapermillExecutionError as exc:
            stage_run.seconds, stage_run.status = time.monotonic() - t0, "failed"
            cell = lesson_cell(stage, exc.source)
            stage_run.error = {"cell": cell, "execution_count": exc.exec_count,
                               "source_first_line": _first_line(exc.source), "ename": exc.ename,
                               "evalue": exc.evalue}
            result.seconds = time.monotonic() - started
            _write_manifest(result, target, parameters, started_at)
            message = (f"stage {stage} failed at cell {cell} of notebooks/{stage_run.notebook} "
                       f"(In [{exc.exec_count}]): "
                       f"{_first_line(exc.source)}\n  {exc.ename}: {exc.evalue}\n"
                       f"  executed notebook: {run_dir / stage_run.notebook}\n"
                       f"  fix it, then resume: playbook run --target {target} --from {stage} --run-id {result.run_id}")
            echo(f"  {stage:<10} failed after {stage_run.seconds:.1f}s")
            raise ChainFailed(message, result) from None
        stage_run.seconds, stage_run.status = time.monotonic() - t0, "ok"
        found = find_outputs(stage, run_dir)
        stage_run.outputs = found[0] if found and found[1].parent.parent == run_dir else None
        echo(f"  {stage:<10} ok ({stage_run.seconds:.1f}s)")
        _write_manifest(result, target, parameters, started_at)
    result.seconds = time.monotonic() - started
    _write_manifest(result, target, parameters, started_at)
    return result


# -- CLI -----------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    parameters: dict[str, Any] = {}
    for path in args.params_file or []:
        parameters.update(read_params_file(path))
    for key, value in args.parameter or []:
        parameters[key] = parse_value(value)
    if args.config:
        parameters["config"] = args.config
    try:
        result = run_chain(args.target, parameters, from_stage=args.from_stage, only=args.only, run_id=args.run_id)
    except ChainFailed as exc:
        print(f"playbook: {exc}", file=sys.stderr)
        return 1
    print(f"run {result.run_id}: {len([s for s in result.stages if s.status == 'ok'])} stage(s) ok in "
          f"{result.seconds:.1f}s; notebooks, manifest and reports in {result.run_dir}")
    return 0


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("run", help="execute the playbook's notebooks in order (papermill), one run folder")
    p.add_argument("--target", choices=["local", "aws"], default="local")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help=f"start at this stage ({', '.join(STAGES)})")
    p.add_argument("--only", action="append", metavar="STAGE", help="run only this stage (repeatable)")
    p.add_argument("--run-id", help="write into this run (e.g. to resume a failed one); default: a new run")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="a notebook parameter (value read as YAML), e.g. -p demo_years 1")
    p.add_argument("-f", "--params-file", action="append", metavar="YAML", help="parameters from a YAML file")
    p.add_argument("--config", help="configuration file (default: $PLAYBOOK_CONFIG or playbook.yaml)")
    p.set_defaults(func=cmd_run)
