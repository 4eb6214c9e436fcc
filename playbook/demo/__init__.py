"""The demo SME, Northwind Provisions Ltd: seeded, reproducible deliveries for every source in playbook.yaml.

`generate()` writes the files under `<out>/landing/...` (their S3 keys), `manifest.json` with the clean control
totals, `expected_daily_sales.csv` and, when defects are asked for, `defects.json`. `deliver()` uploads them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path

from playbook.demo.company import DEFAULT_END, DEFAULT_SEED, build_company
from playbook.demo.defects import DEFECT_KINDS, REDELIVERED_DIR, inject, parse_kinds
from playbook.demo.delivery import DEFECTS_FILE, deliver
from playbook.demo.files import exports
from playbook.demo.manifest import (
    DAILY_SALES_FILE,
    MANIFEST_FILE,
    Defect,
    FileEntry,
    Manifest,
    build_manifest,
    daily_sales_csv,
)

__all__ = ["DEFECT_KINDS", "Defect", "FileEntry", "Manifest", "deliver", "generate"]


def generate(out_dir: Path | str, seed: int = DEFAULT_SEED, end: date = DEFAULT_END, years: int = 3,
             clients: int = 300, defects: Iterable[str] | str = ()) -> Manifest:
    """Write the demo company's deliveries under out_dir; same arguments, same bytes."""
    out = Path(out_dir)
    kinds = parse_kinds(defects)
    company = build_company(seed, end, years, clients)
    files = list(exports(company))
    clean = {f.key: f.render() for f in files}
    manifest = build_manifest(company, files, clean, seed, years)
    injection = inject(files, kinds, seed, company)

    for owned in ("landing", REDELIVERED_DIR):
        shutil.rmtree(out / owned, ignore_errors=True)
    for name in (MANIFEST_FILE, DEFECTS_FILE, DAILY_SALES_FILE):
        (out / name).unlink(missing_ok=True)
    delivered: dict[str, str] = {}
    for f in files:
        if f.key in injection.missing:
            continue
        content = injection.replaced[f.key].render() if f.key in injection.replaced else clean[f.key]
        _write(out / f.key, content)
        delivered[f.key] = _sha(content)
    later = []
    for key, path, f in injection.later:
        content = f.render()
        _write(out / path, content)
        delivered[path] = _sha(content)
        later.append({"key": key, "path": path, "sha256": delivered[path]})
    manifest.defects = [_with_sha(d, delivered) for d in injection.defects]

    (out / MANIFEST_FILE).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    (out / DAILY_SALES_FILE).write_bytes(daily_sales_csv(company))
    if kinds:
        (out / DEFECTS_FILE).write_text(json.dumps({
            "seed": seed, "kinds": list(kinds), "defects": [asdict(d) for d in manifest.defects],
            "later_deliveries": later, "missing": injection.missing,
        }, indent=2) + "\n")
    return manifest


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _with_sha(d: Defect, delivered: dict[str, str]) -> Defect:
    path = f"{REDELIVERED_DIR}/{d.key}" if d.kind == "resent_with_change" else d.key
    return replace(d, delivered_sha256=delivered.get(path))


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
