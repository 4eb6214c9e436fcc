"""Write lambda_src/requirements.lock: every package the Lambda layer holds, at the version this venv has.

The tests run against this venv, so the layer built from the lock (playbook.package) holds the versions the
tests ran. Run it after changing lambda_src/requirements.txt or upgrading the venv; tests/playbook/
test_package.py fails while the lock and the venv disagree. boto3 and what only it needs stay out: the
Lambda runtime has its own (the deploy stage checks it can make the email's conditional put).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "lambda_src" / "requirements.txt"
LOCK = ROOT / "lambda_src" / "requirements.lock"
RUNTIME_HAS = {"boto3", "botocore", "s3transfer", "jmespath"}


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def closure() -> dict[str, str]:
    """name -> installed version of the requirements and everything they need (their markers evaluated here)."""
    todo = [Requirement(line) for line in REQUIREMENTS.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    found: dict[str, str] = {}
    while todo:
        req = todo.pop()
        name = _name(req.name)
        if name in found or name in RUNTIME_HAS or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        dist = metadata.distribution(req.name)
        found[name] = dist.version
        todo += [Requirement(r) for r in dist.requires or []]
    return found


def lock_text() -> str:
    lines = [f"{name}=={version}" for name, version in sorted(closure().items())]
    return ("# The Lambda layer, exactly: written by scripts/lock_layer.py from the venv the tests ran in.\n"
            "# Edit lambda_src/requirements.txt, then run .venv/bin/python scripts/lock_layer.py.\n"
            + "\n".join(lines) + "\n")


if __name__ == "__main__":
    text = lock_text()
    LOCK.write_text(text)
    print(f"{LOCK.relative_to(ROOT)}: {len(text.splitlines()) - 2} packages", file=sys.stderr)
