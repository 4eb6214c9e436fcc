"""The deployment artifacts: the function zip (lambda_src/) and the dependency layer.

Zips are reproducible (sorted entries, fixed timestamps and modes), so unchanged code has the same bytes
and the same content-addressed key, and a second deployment changes nothing.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

from playbook.errors import PlaybookError
from playbook.settings import PROJECT_ROOT

LAMBDA_SRC = PROJECT_ROOT / "lambda_src"
REQUIREMENTS = LAMBDA_SRC / "requirements.txt"
# the layer exactly, at the versions the tests ran with (scripts/lock_layer.py writes it from the venv)
LOCK = LAMBDA_SRC / "requirements.lock"
# the Lambda runtime's platform: Amazon Linux 2023 (glibc 2.34) on x86_64, which takes both wheel tags
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64")
_EPOCH = (1980, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
# Lambda's limit on a function's code and all its layers together, unzipped
UNZIPPED_LIMIT = 262_144_000
# what the layer leaves out besides caches: the packages' own test suites (pandas' alone is ~40 MB), which
# no function imports (boto3 stays out by not being in lambda_src/requirements.txt: the runtime has it)
_LAYER_SKIP_DIRS = {"tests"}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path, skip_dirs: set[str] = _SKIP_DIRS) -> list[Path]:
    return sorted(
        p for p in root.rglob("*")
        if p.is_file() and not (skip_dirs & set(p.relative_to(root).parts)) and not p.name.endswith(_SKIP_SUFFIXES)
    )


def layer_entries(layer_root: Path, limit: int = UNZIPPED_LIMIT, bytecode: bool = False) -> list[tuple[str, bytes]]:
    """The files of an installed layer (python/...) as zip entries, without test suites, and without caches
    unless `bytecode` (compiled for the runtime's Python: /opt is read-only, so a layer without it is
    compiled again at every cold start).

    Raises when they would not fit Lambda's unzipped limit, naming the largest packages, rather than let
    the deployment fail later with AWS's bare 'unzipped size must be smaller than' message."""
    skip = (_SKIP_DIRS - {"__pycache__"} if bytecode else _SKIP_DIRS) | _LAYER_SKIP_DIRS
    entries = [(p.relative_to(layer_root).as_posix(), p.read_bytes()) for p in sorted(
        p for p in layer_root.rglob("*") if p.is_file() and not (skip & set(p.relative_to(layer_root).parts))
        and (bytecode or not p.name.endswith(_SKIP_SUFFIXES)))]
    total = sum(len(data) for _, data in entries)
    if total > limit:
        sizes: dict[str, int] = {}
        for name, data in entries:
            top = name.split("/")[1]  # python/<package>/...
            sizes[top] = sizes.get(top, 0) + len(data)
        largest = ", ".join(f"{n} {b / 2**20:.0f} MiB" for n, b in sorted(sizes.items(), key=lambda kv: -kv[1])[:5])
        raise PlaybookError(f"the dependency layer is {total / 2**20:.0f} MiB unzipped, over Lambda's "
                            f"{limit / 2**20:.0f} MiB for code and layers together; largest: {largest}. "
                            f"Trim lambda_src/requirements.txt")
    return entries


def _write_zip(out: Path, entries: list[tuple[str, bytes]]) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    tmp.replace(out)
    return out


def build_function_zip(out_dir: Path, source: Path = LAMBDA_SRC) -> Path:
    """lambda_src/ zipped as the function code (its root is the package `pipeline/`), caches excluded."""
    entries = [(p.relative_to(source).as_posix(), p.read_bytes()) for p in _files(source)]
    if not any(name.startswith("pipeline/") for name, _ in entries):
        raise PlaybookError(f"{source} holds no pipeline/ package: nothing to deploy")
    return _write_zip(Path(out_dir) / "pipeline.zip", entries)


def build_local_layer_zip(out_dir: Path) -> Path:
    """A small stand-in layer for the local stack, where the playbook's own venv provides the packages.

    It carries the requirements it stands for, so the layer still says what the functions depend on.
    """
    note = (b"Local stand-in for the dependency layer: on the local stack the functions run with the\n"
            b"playbook's virtual environment, which installs these same requirements.\n")
    return _write_zip(Path(out_dir) / "layer-local.zip", [
        ("python/README.txt", note), ("python/requirements.lock", LOCK.read_bytes())])


def layer_install_command(target: Path, python_version: str) -> list[str]:
    """pip installing the lock exactly (no resolving), as wheels for the runtime's Python and platform."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--no-deps", *platforms,
            "--implementation", "cp", "--only-binary=:all:", "--python-version", python_version,
            "--target", str(target), "-r", str(LOCK)]


def build_dependency_layer(out_dir: Path, python_version: str | None = None) -> Path:
    """The real layer for AWS: lambda_src/requirements.lock as wheels for the runtime's platform, under python/,
    compiled to bytecode when this Python is the runtime's (else the runtime compiles it at each cold start).

    Downloads every wheel from PyPI, so it is cached by the lock's hash and reused.
    """
    from playbook.templates import RUNTIME

    python_version = python_version or RUNTIME.removeprefix("python")
    out_dir = Path(out_dir)
    stamp = hashlib.sha256(LOCK.read_bytes() + python_version.encode()).hexdigest()[:16]
    out = out_dir / f"layer-{stamp}.zip"
    if out.exists():
        return out
    target = out_dir / f"layer-{stamp}" / "python"
    result = subprocess.run(layer_install_command(target, python_version), capture_output=True, text=True)
    if result.returncode != 0:
        raise PlaybookError(f"building the dependency layer failed: {result.stderr.strip()[-2000:]}")
    compiled = f"{sys.version_info.major}.{sys.version_info.minor}" == python_version
    if compiled:
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                        str(target)], check=True, capture_output=True)
    return _write_zip(out, layer_entries(target.parent, bytecode=compiled))
