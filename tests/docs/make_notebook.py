"""Build docs/quickstart.ipynb from docs/quickstart.md and execute it (on the default model).

    python tests/docs/make_notebook.py            # needs nbformat, nbclient and ipykernel

Prose becomes markdown cells and every ```python block a code cell, in order (blocks marked
``# needs: default-model`` included, so the notebook ends up on the default model); the notebook is executed
in a temporary folder with nbclient and written with its outputs. tests/docs/test_docs.py checks that the
notebook's code is the page's code and that every cell ran without an error.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```[^\n]*\n?", re.S | re.M)


def cells(page: str) -> list[tuple[str, str]]:
    """("markdown" | "code", source) in page order."""
    out, pos = [], 0
    for m in FENCE.finditer(page):
        prose = page[pos:m.start()].strip()
        if prose:
            out.append(("markdown", prose))
        out.append(("code", m.group(1).strip()))
        pos = m.end()
    if page[pos:].strip():
        out.append(("markdown", page[pos:].strip()))
    return out


def build(page: Path = DOCS / "quickstart.md", timeout: int = 1200):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, source in cells(page.read_text(encoding="utf-8")):
        nb.cells.append(nbformat.v4.new_markdown_cell(source) if kind == "markdown" else
                        nbformat.v4.new_code_cell(source))
    with tempfile.TemporaryDirectory() as work:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": work}}).execute()
    for cell in nb.cells:  # keep the file small and stable: no per-run metadata, no warnings of this machine
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs
                            if not (o.output_type == "stream" and o.name == "stderr" and "Warning" in o.text)]
    nbformat.validate(nb)
    return nb


def main() -> None:
    import nbformat

    out = DOCS / "quickstart.ipynb"
    nbformat.write(build(), out)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
