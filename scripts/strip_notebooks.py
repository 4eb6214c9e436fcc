"""Strip outputs, execution counts and run metadata from the lessons, so only their text is committed.

    python scripts/strip_notebooks.py            # rewrite notebooks/*.ipynb in place
    python scripts/strip_notebooks.py --check    # exit 1 naming every notebook that carries outputs
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KEEP_CELL_METADATA = ("tags",)
KEEP_NOTEBOOK_METADATA = ("kernelspec", "language_info")


def stripped(book: nbformat.NotebookNode) -> nbformat.NotebookNode:
    for cell in book.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    book.metadata = {k: v for k, v in book.metadata.items() if k in KEEP_NOTEBOOK_METADATA}
    book.metadata.get("language_info", {}).pop("version", None)
    return book


def dirty(path: Path) -> bool:
    text = path.read_text()
    return nbformat.writes(stripped(nbformat.reads(text, as_version=4))).rstrip("\n") != text.rstrip("\n")


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [Path(a) for a in argv if not a.startswith("--")] or sorted(NOTEBOOKS.glob("*.ipynb"))
    found = []
    for path in paths:
        if dirty(path):
            found.append(path)
            if not check:
                nbformat.write(stripped(nbformat.read(path, as_version=4)), path)
    for path in found:
        print(f"{path}: {'carries outputs or run metadata' if check else 'stripped'}")
    return 1 if check and found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
