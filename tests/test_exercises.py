"""The exercise machinery: every registered exercise has a cell in its chapter whose solution
passes and whose student stub raises the not-implemented error; the student edition changes
only solution regions; the grader tells pass, fail and not attempted apart.

Each chapter's wrong answers (at least two per exercise, each with the hint it must trigger)
live in ``tests/test_exercises_chCC.py``.
"""
from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rwkvlab  # noqa: F401
from rwkvlab import book, exercises
from rwkvlab.exercises import editions

ROOT = Path(__file__).resolve().parents[1]
EXS = exercises.all_exercises()
IDS = [e.id for e in EXS]


def _chapter(ch: int) -> Path:
    return next(c.path for c in book.chapters() if c.file.startswith(f"{ch:02d}_"))


def _cell(id_: str) -> str:
    ch = int(id_.split(".")[0])     # a chapter may span two files (11: Triton I and II)
    cells = {i: src for c in book.chapters() if c.file.startswith(f"{ch:02d}_")
             for i, src in editions.exercise_cells(c.path).items()}
    assert id_ in cells, f"exercise {id_} is registered but no cell of its chapter calls exercises.check({id_!r}, ...)"
    return cells[id_]


def test_at_least_three_exercises_per_chapter_01_to_14():
    per = {ch: sum(e.chapter == ch for e in EXS) for ch in range(1, 15)}
    missing = {ch: n for ch, n in per.items() if n < 3}
    assert not missing, f"chapters with fewer than three coding exercises: {missing}"


@pytest.mark.parametrize("id_", IDS)
def test_solution_passes_and_stub_is_not_attempted(id_):
    src = _cell(id_)
    assert editions.has_solution(src), f"{id_}: the solution must sit between the markers"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        editions.run_cell(src, f"<exercise {id_}>")      # kept in linecache: compiled Triton reads it back
    assert f"exercise {id_} " in out.getvalue() and "passed  ok" in out.getvalue()
    stub, n = editions.strip_solutions(src)
    assert n >= 1
    with pytest.raises(NotImplementedError, match=re.escape(f"exercise {id_}: not implemented")):
        with contextlib.redirect_stdout(io.StringIO()):
            editions.run_cell(stub, f"<stub {id_}>")


@pytest.mark.parametrize("id_", IDS)
def test_every_exercise_has_wrong_answers_in_its_test_file(id_):
    ch = id_.split(".")[0]
    path = ROOT / "tests" / f"test_exercises_ch{ch}.py"
    assert path.exists(), f"{path.name} (the wrong answers of chapter {ch}) is missing"
    assert re.search(rf'["\']{re.escape(id_)}["\']', path.read_text()), f"no wrong answers for {id_} in {path.name}"


def test_spec_list_and_ids():
    assert all(e.spec and e.title and e.difficulty in exercises.DIFFICULTIES for e in EXS)
    with pytest.raises(ValueError, match="^id:"):
        exercises.get("99.9")
    with pytest.raises(ValueError, match="^id:"):
        exercises.exercise("3.1", "x", difficulty="easy", spec="x")
    with pytest.raises(ValueError, match="^fn:"):
        exercises.check(IDS[0], 42)
    out = subprocess.run([sys.executable, "-m", "rwkvlab", "exercises", "list"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert all(i in out for i in IDS) and "difficulty" in out


def test_strip_solutions_keeps_everything_else():
    src = 'x = 1\ndef f(a):\n    ### BEGIN SOLUTION\n    return a\n    ### END SOLUTION\nexercises.check("03.7", f)'
    stub, n = editions.strip_solutions(src)
    assert n == 1 and stub.splitlines() == ["x = 1", "def f(a):",
                                            '    raise NotImplementedError("' + exercises.not_attempted_message("03.7") + '")',
                                            'exercises.check("03.7", f)']
    md, _ = editions.strip_solutions("Answer:\n### BEGIN SOLUTION\n42\n### END SOLUTION", markdown=True)
    assert md == "Answer:\nYOUR ANSWER HERE"
    for bad in ("### BEGIN SOLUTION\nx", "x\n### END SOLUTION"):
        with pytest.raises(ValueError, match="^source:"):
            editions.strip_solutions(bad)


def test_student_edition_changes_only_solution_cells(tmp_path):
    import jupytext

    for ch in book.chapters():
        teacher = jupytext.read(ch.path)
        student = editions.student_notebook(ch.path)
        assert len(teacher.cells) == len(student.cells)
        first = None
        for i, (t, s) in enumerate(zip(teacher.cells, student.cells)):
            if editions.has_solution(t.source):
                first = i if first is None else first
                assert not editions.has_solution(s.source) and "nbgrader" in s.metadata
            else:
                assert t.source == s.source, f"{ch.file}: cell {i} changed in the student edition"
        # everything before the first exercise is the teacher's edition, which nbval runs
        if any(e.chapter == int(ch.file[:2]) for e in EXS):
            assert first is not None, f"{ch.file}: registered exercises but no solution cell"
    paths = editions.write_student_edition(tmp_path, [_chapter(3)])
    assert paths[0].suffix == ".ipynb" and paths[0].exists()


def test_grade_reports_pass_fail_and_not_attempted(tmp_path):
    """A tiny class: one notebook with a correct answer, a wrong one and a stub."""
    import nbformat

    src = _cell("03.7")
    stub, _ = editions.strip_solutions(src)
    wrong = src.replace("torch.exp(p - w - q2)", "torch.exp(p - q2)")
    assert wrong != src
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in (src, wrong, stub)])
    nbformat.write(nb, tmp_path / "class.ipynb")
    rows = editions.grade(tmp_path, timeout=300)
    assert [r[2] for r in rows] == ["pass", "fail", "not attempted"], rows
    assert "y is wrong" in rows[1][3]


def test_a_real_chapter_student_edition_stops_at_its_first_exercise_and_grades(tmp_path):
    """Chapter 08 end to end: the student edition runs until its first exercise and raises the
    stub's error there and nowhere earlier; graded, the raw student edition is all 'not attempted'
    and the teacher's edition (the chapter itself, as a notebook) is all 'pass'."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    ch08 = _chapter(8)
    ids = [e.id for e in EXS if e.chapter == 8]
    student_dir, teacher_dir = tmp_path / "student", tmp_path / "teacher"
    (path,) = editions.write_student_edition(student_dir, [ch08])
    teacher_dir.mkdir()
    nbformat.write(jupytext.read(ch08), teacher_dir / ch08.with_suffix(".ipynb").name)

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, allow_errors=True, kernel_name="python3").execute()
    errors = [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    first_exercise = next(i for i, c in enumerate(nb.cells)
                          if c.cell_type == "code" and "nbgrader" in c.metadata)
    assert errors, "the student edition raised nothing"
    assert errors[0][0] == first_exercise and errors[0][1]["ename"] == "NotImplementedError"
    assert f"exercise {ids[0]}" in errors[0][1]["evalue"]

    student = editions.grade(student_dir, timeout=300)
    teacher = editions.grade(teacher_dir, timeout=300)
    assert sorted(r[1] for r in student) == sorted(ids) and {r[2] for r in student} == {"not attempted"}
    assert sorted(r[1] for r in teacher) == sorted(ids) and {r[2] for r in teacher} == {"pass"}


def test_at_least_two_wrong_answers_per_exercise():
    """Counts the wrong answers each chapter's test file lists for each exercise."""
    import importlib.util

    for ch in sorted({e.chapter for e in EXS}):
        path = ROOT / "tests" / f"test_exercises_ch{ch:02d}.py"
        spec = importlib.util.spec_from_file_location(f"_wrong_{ch:02d}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        wrong = getattr(mod, "WRONG", None)
        assert isinstance(wrong, dict), f"{path.name}: no WRONG table"
        for e in (e for e in EXS if e.chapter == ch):
            assert len(wrong.get(e.id, [])) >= 2, f"{e.id}: fewer than two wrong answers in {path.name}"


def test_run_cell_keeps_a_kernels_source_for_compiled_triton():
    """Compiled Triton (a GPU machine) reads a @triton.jit function's source back and refuses one
    exec'd from a bare string; run_cell keeps the cell where inspect finds it, as Jupyter does.
    Checked here with the interpreter switched off before the kernel is defined (nothing launches)."""
    code = (
        "import os\n"
        "from rwkvlab.exercises import editions\n"
        "os.environ.pop('TRITON_INTERPRET', None)\n"
        "src = 'import triton\\nimport triton.language as tl\\n@triton.jit\\ndef kern(x):\\n    tl.store(x, 1.0)\\n'\n"
        "try:\n"
        "    exec(compile(src, '<bare>', 'exec'), {})\n"
        "    print('bare: accepted')\n"
        "except ValueError as e:\n"
        "    print('bare:', e)\n"
        "k = editions.run_cell(src, '<cell kern>')['kern']\n"
        "print('run_cell:', type(k).__name__, k.src.splitlines()[0])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "bare: @jit functions should be defined in a Python file" in res.stdout   # the failure is real
    assert "run_cell: JITFunction def kern(x):" in res.stdout
