"""The lessons stay true: nbval executes every notebook, as committed, on the chain's own stack (after the chain ran
there, so each lesson finds the stage before it), and the committed notebooks carry no outputs."""

from __future__ import annotations

import re
import subprocess
import sys

import nbformat
import pytest

from playbook.chain import NOTEBOOKS_DIR, STAGES
from playbook.settings import PROJECT_ROOT

pytestmark = pytest.mark.stack


def test_committed_notebooks_carry_no_outputs_and_one_parameters_cell():
    assert sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb")) == sorted(STAGES.values())
    for name in STAGES.values():
        book = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
        code = [c for c in book.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} carries outputs"
        assert [c for c in book.cells if "parameters" in c.metadata.get("tags", [])] == [code[0]], name
        assert book.metadata["kernelspec"]["name"] == "playbook"
        assert sum(c.cell_type == "markdown" for c in book.cells) >= 2, f"{name}: the lesson explains itself"
        for cell in code:
            for line in cell.source.splitlines():
                assert not line.lstrip().startswith(("def ", "class ", "for ", "while ", "lambda ")), \
                    f"{name}: logic belongs in playbook/, not in a lesson: {line}"
    done = subprocess.run([sys.executable, "scripts/strip_notebooks.py", "--check"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_strip_script_removes_what_a_run_leaves(chained, tmp_path):
    executed = tmp_path / STAGES["reports"]
    executed.write_text((chained["run_dir"] / STAGES["reports"]).read_text())
    check = [sys.executable, "scripts/strip_notebooks.py", "--check", str(executed)]
    assert subprocess.run(check, cwd=PROJECT_ROOT, capture_output=True).returncode == 1
    subprocess.run([sys.executable, "scripts/strip_notebooks.py", str(executed)], cwd=PROJECT_ROOT, check=True)
    assert subprocess.run(check, cwd=PROJECT_ROOT, capture_output=True).returncode == 0
    stripped = nbformat.read(executed, as_version=4)
    lesson = nbformat.read(NOTEBOOKS_DIR / STAGES["reports"], as_version=4)
    assert [c.source for c in stripped.cells if "injected-parameters" not in c.metadata.get("tags", [])] == \
        [c.source for c in lesson.cells]
    assert not any(c.get("outputs") for c in stripped.cells)


def test_notebooks_pass_nbval(nbval_run):
    done = nbval_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", done.stdout) and " failed" not in done.stdout, done.stdout[-2000:]
