"""The student edition and the grader: ``python -m rwkvlab exercises {list, student, grade}``.

The chapters are the teacher's edition. Solutions sit between nbgrader's markers,
``### BEGIN SOLUTION`` and ``### END SOLUTION``, in code cells (coding exercises) and markdown
cells (answers to conceptual questions). The student edition replaces each code region by a stub
that raises ``NotImplementedError`` naming the exercise, and each markdown region by
"YOUR ANSWER HERE"; every other cell is left exactly as it is. Cells that hold a solution get
nbgrader's cell metadata, so the ``.ipynb`` files can also serve nbgrader as a source release.
"""
from __future__ import annotations

import re
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
_ID = re.compile(r"""exercises\.(?:check|spec)\(\s*["'](\d\d\.\d+)["']""")


def exercise_ids(source: str) -> list[str]:
    """The exercise ids a cell's source refers to, in order (``exercises.check("03.1", …)``)."""
    return list(dict.fromkeys(_ID.findall(source)))


def strip_solutions(source: str, markdown: bool = False) -> tuple[str, int]:
    """Replace every BEGIN/END SOLUTION region of one cell; return the new source and the count."""
    ids = exercise_ids(source)
    stub_id = ids[0] if ids else "?"
    out, n, inside = [], 0, False
    for line in source.splitlines():
        if line.strip() == BEGIN:
            if inside:
                raise ValueError(f"source: nested '{BEGIN}'")
            inside, n = True, n + 1
            indent = line[: len(line) - len(line.lstrip())]
            if markdown:
                out.append("YOUR ANSWER HERE")
            else:
                from . import not_attempted_message
                out.append(f'{indent}raise NotImplementedError("{not_attempted_message(stub_id)}")')
        elif line.strip() == END:
            if not inside:
                raise ValueError(f"source: '{END}' without '{BEGIN}'")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"source: '{BEGIN}' without '{END}'")
    return "\n".join(out), n


def has_solution(source: str) -> bool:
    """True when a cell holds a solution region (a line that is exactly the BEGIN marker)."""
    return any(line.strip() == BEGIN for line in source.splitlines())


def run_cell(source: str, name: str) -> dict:
    """Run one cell's ``source`` as Jupyter would, under the file name ``name``; returns its globals.

    The source is kept in :mod:`linecache` first, as Jupyter keeps every cell it runs: compiled
    Triton reads a ``@triton.jit`` function's source back (``inspect``), and without it refuses
    the kernel ("@jit functions should be defined in a Python file"); the interpreter does not."""
    import linecache

    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    scope = {"__name__": "__exercise__"}
    exec(compile(source, name, "exec"), scope)
    return scope


def exercise_cells(path: Path) -> dict[str, str]:
    """``{id: source}`` of the code cells of a chapter that call ``exercises.check(id, …)``."""
    import jupytext

    cells = {}
    for cell in jupytext.read(path).cells:
        if cell.cell_type == "code":
            for ex in re.findall(r"""exercises\.check\(\s*["'](\d\d\.\d+)["']""", cell.source):
                cells[ex] = cell.source
    return cells


def student_notebook(path: Path):
    """The student edition of one chapter as an nbformat notebook."""
    import jupytext

    nb = jupytext.read(path)
    for i, cell in enumerate(nb.cells):
        if not has_solution(cell.source):
            continue
        cell.source, _ = strip_solutions(cell.source, markdown=cell.cell_type == "markdown")
        ids = exercise_ids(cell.source)
        cell.metadata["nbgrader"] = {"solution": True, "grade": False, "locked": False, "schema_version": 3,
                                     "grade_id": f"ex-{ids[0] if ids else path.stem}-{i}"}
    return nb


def write_student_edition(out: Path, chapters: list[Path]) -> list[Path]:
    """Write ``NN_slug.ipynb`` student notebooks for ``chapters`` into ``out``; return the paths."""
    import nbformat

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in chapters:
        target = out / (path.stem + ".ipynb")
        nbformat.write(student_notebook(path), target)
        written.append(target)
    return written


def _status(cell) -> tuple[str, str]:
    """(pass | fail | not attempted | error | not run, message) from an executed exercise cell."""
    for o in cell.get("outputs", []):
        if o.get("output_type") == "error":
            name, value = o.get("ename", ""), o.get("evalue", "")
            if name == "NotImplementedError":
                return "not attempted", value
            if name == "AssertionError":
                return "fail", value
            return "error", f"{name}: {value}"
    text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    if "cases passed  ok" in text:
        return "pass", ""
    return "not run", ""


def grade(folder: Path, timeout: int = 900) -> list[tuple[str, str, str, str]]:
    """Execute every notebook in ``folder``; return (notebook, exercise, status, message) rows."""
    import nbformat
    from nbclient import NotebookClient

    rows = []
    for path in sorted(folder.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=timeout, allow_errors=True, kernel_name="python3",
                       resources={"metadata": {"path": str(folder)}}).execute()
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            for ex in re.findall(r"""exercises\.check\(\s*["'](\d\d\.\d+)["']""", cell.source):
                status, msg = _status(cell)
                rows.append((path.name, ex, status, msg))
    return rows


def main(args) -> int:
    """The ``exercises`` subcommand."""
    from . import all_exercises
    from .. import book

    if args.action == "list":
        print(f"{'id':<6} {'chapter':<8} {'difficulty':<10} {'GPU':<4} title")
        for ex in all_exercises():
            print(f"{ex.id:<6} {ex.chapter:<8} {ex.difficulty:<10} {'yes' if ex.gpu else 'no':<4} {ex.title}")
        return 0
    if args.action == "student":
        chapters = [ch.path for ch in book.chapters()]
        if args.chapters:
            chapters = [p for p in chapters if any(c in p.name for c in args.chapters)]
        for p in write_student_edition(args.out, chapters):
            print(f"wrote {p}")
        return 0
    if args.action == "grade":
        if args.folder is None or not args.folder.is_dir():
            print(f"folder: expected a directory of student notebooks, got {args.folder}")
            return 2
        rows = grade(args.folder)
        print(f"{'notebook':<28} {'exercise':<9} {'status':<14} message")
        for nb, ex, status, msg in rows:
            first = msg.strip().splitlines()[0] if msg.strip() else ""
            print(f"{nb:<28} {ex:<9} {status:<14} {first[:120]}")
        counts = {s: sum(r[2] == s for r in rows) for s in ("pass", "fail", "not attempted", "error", "not run")}
        print(", ".join(f"{v} {k}" for k, v in counts.items()))
        return 0
    return 2  # pragma: no cover


def add_parser(sub) -> None:
    p = sub.add_parser("exercises", help="list the exercises, write the student edition, or grade a class")
    p.add_argument("action", choices=["list", "student", "grade"])
    p.add_argument("folder", nargs="?", type=Path, default=None, help="grade: the folder of student notebooks")
    p.add_argument("--out", type=Path, default=Path("student"), help="student: where to write the notebooks")
    p.add_argument("--chapters", nargs="*", default=[], help="student: only chapters whose file name contains one of these")
