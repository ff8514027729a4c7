"""Course material generated from the notebooks: student copies with the solution cells emptied.

A notebook ends with a markdown cell headed ``## Exercises`` (each exercise with a difficulty, ★ to ★★★, and a
hint). A code exercise is a cell tagged ``solution`` (the teacher's answer) followed by a check cell that tests it
the way the contract tests do. The student copy keeps every cell but replaces each solution's bodies by a stub that
raises ``NotImplementedError``: signatures and docstrings stay, so the check cell says what is missing.

    python -m backdoorlab.course exercises      # (make exercises) notebooks/*.py -> exercises/*.ipynb
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

import jupytext
import nbformat

SOLUTION_TAG = "solution"
EXERCISES_HEADING = "## Exercises"
ROOT = Path(__file__).resolve().parents[2]
STUB = 'raise NotImplementedError("exercise: your code here")'


def stub(source: str) -> str:
    """A solution cell's source with every top-level function and class body replaced by `STUB` (decorators,
    signatures and docstrings kept); imports stay, anything else goes."""
    lines = source.splitlines()
    out: list[str] = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out += lines[node.lineno - 1:node.end_lineno]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            body = node.body
            documented = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
            keep_to = body[0].end_lineno if documented else body[0].lineno - 1
            indent = " " * body[0].col_offset
            out += ["", *lines[first - 1:keep_to], indent + STUB]
    return "\n".join(out).strip() + "\n"


def first_exercise(cells) -> int:
    """Index of the cell that opens a notebook's exercises (len(cells) when it has none)."""
    return next((i for i, c in enumerate(cells) if c.cell_type == "markdown"
                 and c.source.lstrip().startswith(EXERCISES_HEADING)), len(cells))


def student_copy(notebook: Path) -> nbformat.NotebookNode:
    """The notebook (its jupytext source) with every solution cell stubbed and no outputs."""
    nb = jupytext.read(notebook)
    for cell in nb.cells:
        if SOLUTION_TAG in cell.metadata.get("tags", []):
            cell.source = stub(cell.source)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def write_exercises(out: Path | None = None, notebooks: Path | None = None) -> list[Path]:
    out = Path(out or ROOT / "exercises")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(Path(notebooks or ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        path = out / source.with_suffix(".ipynb").name
        nbformat.write(student_copy(source), path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backdoorlab.course", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("exercises", help="write student copies of the notebooks (solution cells emptied)")
    cmd.add_argument("--out", type=Path, default=None, help="folder (default: exercises/)")
    args = parser.parse_args(argv)
    for path in write_exercises(args.out):
        print(path)


if __name__ == "__main__":
    main()
