# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     notebook_metadata_filter: -jupytext.text_representation
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A teacher's guide: running a class on this book, on CPUs only
#
# This appendix is for whoever teaches from the book. By its end you will know how to set up a
# room of laptops with no GPU, which exercises to assign for which course, how long chapters and
# exercises take, how to hand out the student edition and how to grade what comes back — with
# the commands that do each step, run live below.
#
# The whole idea fits in one line: **the chapters are the teacher's edition**. Every coding
# exercise is a cell in its chapter holding a reference solution between nbgrader's markers and a
# call to `rwkvlab.exercises.check`, so `pytest --nbval notebooks` proves that every solution
# passes its checker. The student edition is generated from the chapters by removing exactly
# those solution regions; the grader runs the students' notebooks and reads the checkers'
# verdicts.

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %% [markdown]
# ## 1. The room: laptops, one command, no GPU
#
# Every student runs the README's install command in a fresh virtual environment (Python 3.11),
# then `jupyter lab notebooks`. Nothing in a class needs a GPU: without CUDA the package switches
# Triton to its interpreter, which runs the very same kernels on CPU tensors, slowly — which is
# why the chapters and the exercises keep Triton shapes tiny. The first line each chapter prints
# (above) says which mode it is in, so a student whose laptop does have a GPU sees it at once.
# `python -m rwkvlab run` executes every chapter headless and prints, per chapter, whether its
# checks held and how long it took: the one-command answer to "does my install work".
#
# ## 2. The exercises
#
# Each chapter ends with numbered exercises. The conceptual ones are prose; the *coding* ones
# check themselves: the student writes a function to a spec with shapes, and
# `exercises.check(id, fn)` runs it on seeded random cases of several shapes against an
# independent reference (usually the chapter's naive loop in float64, or autograd through it).
# On success it prints one line; on failure it raises an `AssertionError` that names the case,
# the shape, the largest error and where it is, and a hint — chosen, when the wrong output
# matches the output of a typical mistake (bonus applied after the update, decay one step late,
# a missing causal mask, …), for that mistake. Here is every registered exercise, as
# `python -m rwkvlab exercises list` prints it.

# %%
from collections import Counter

from rwkvlab import exercises

rows = exercises.all_exercises()
print(f"{'id':<6} {'ch':>3} {'difficulty':<10} {'GPU':<4} title")
for ex in rows:
    print(f"{ex.id:<6} {ex.chapter:>3} {ex.difficulty:<10} {'yes' if ex.gpu else 'no':<4} {ex.title}")
per_chapter = Counter(ex.chapter for ex in rows)
print(f"\n{len(rows)} coding exercises; per chapter: {dict(sorted(per_chapter.items()))}; "
      f"by difficulty: {dict(Counter(ex.difficulty for ex in rows))}")
assert all(per_chapter[ch] >= 3 for ch in range(1, 15)) and not any(ex.gpu for ex in rows)

# %% [markdown]
# A spec reads like this (the statement the student sees above the stub):

# %%
print(exercises.spec(rows[0].id))

# %% [markdown]
# ## 3. How long things take
#
# Chapter times, measured with `python -m rwkvlab run` on a 2-core CPU with no GPU (the machine
# CI uses), are recorded in `data/chapter_times_cpu.txt` with the date and the command; a
# laptop of the last few years is usually faster. Reading time is the larger cost: the chapters
# are 2–5 thousand words each, a 60–90 minute session per chapter with its exercises.
#
# The cost of checking is small. The cell below times every exercise's checker on its reference
# solution, here and now: it executes each exercise cell of the teacher's edition exactly as a
# student's finished cell would run.

# %%
import contextlib
import io
import time

from rwkvlab import book
from rwkvlab.exercises import editions

timings = {}
for ch in book.chapters():
    for ex_id, src in editions.exercise_cells(ch.path).items():
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()) as out:
            editions.run_cell(src, f"<exercise {ex_id}>")     # as Jupyter runs a cell (Triton reads it back)
        timings[ex_id] = time.perf_counter() - t0
        assert "passed  ok" in out.getvalue(), ex_id
slowest = max(timings, key=timings.get)
print(f"{len(timings)} exercise checks, {sum(timings.values()):.1f} s in all on this machine; "
      f"median {sorted(timings.values())[len(timings) // 2]:.2f} s, slowest {slowest} ({timings[slowest]:.2f} s)")
assert set(timings) == {ex.id for ex in rows}

# %% [markdown]
# ## 4. The student edition
#
# `python -m rwkvlab exercises student --out class/` writes one `.ipynb` per chapter into
# `class/`. In each, every solution region (code between `### BEGIN SOLUTION` and
# `### END SOLUTION`) is replaced by a stub that raises
# `NotImplementedError("exercise CC.N: not implemented yet: …")`, every hidden answer to a
# conceptual question (markdown between the same markers) by "YOUR ANSWER HERE", and nothing
# else changes. A student edition therefore runs exactly like the teacher's up to its first
# exercise and stops there with the stub's message. The solution cells carry nbgrader's cell
# metadata, so the folder can also be taken by nbgrader as a source release if your course
# already uses it. The cell writes chapter 03's student edition to a temporary folder and shows
# what the student sees in place of the solution.

# %%
import tempfile
from pathlib import Path

import nbformat

with tempfile.TemporaryDirectory() as tmp:
    ch03 = next(c.path for c in book.chapters() if c.file.startswith("03_"))
    (path,) = editions.write_student_edition(Path(tmp), [ch03])
    nb = nbformat.read(path, as_version=4)
    stubs = [c for c in nb.cells if "nbgrader" in c.metadata]
    code_stubs = [c for c in stubs if c.cell_type == "code"]
    print(f"{path.name}: {len(nb.cells)} cells, {len(code_stubs)} exercise stubs, "
          f"{len(stubs) - len(code_stubs)} hidden answers")
    print(next(line for line in code_stubs[0].source.splitlines() if "NotImplementedError" in line).strip())
    print(next(c.source for c in stubs if c.cell_type == "markdown").splitlines()[-1])
assert code_stubs and len(code_stubs) == sum(e.chapter == 3 for e in rows)

# %% [markdown]
# ## 5. Grading
#
# Collect the students' notebooks into one folder and run
# `python -m rwkvlab exercises grade FOLDER`. It executes every notebook (errors do not stop
# it), and for every exercise cell reports **pass** (the checker's success line), **fail** (the
# checker's `AssertionError`, whose first line it prints), **not attempted** (the stub's
# `NotImplementedError`) or **error** (anything else the student's code raised). The cell below
# grades a tiny class of one notebook with three answers to exercise 03.7 — the reference
# solution, a wrong one (the state forgets to decay) and the untouched stub.

# %%
with tempfile.TemporaryDirectory() as tmp:
    src = editions.exercise_cells(ch03)["03.7"]
    stub, _ = editions.strip_solutions(src)
    wrong = src.replace("torch.exp(p - w - q2)", "torch.exp(p - q2)")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in (src, wrong, stub)])
    nbformat.write(nb, Path(tmp) / "student_a.ipynb")
    graded = editions.grade(Path(tmp), timeout=300)
for notebook, ex_id, status, msg in graded:
    print(f"{notebook:<16} {ex_id:<6} {status:<14} {msg.strip().splitlines()[0][:90] if msg.strip() else ''}")
assert [g[2] for g in graded] == ["pass", "fail", "not attempted"]

# %% [markdown]
# ## 6. Which exercises for which course
#
# The difficulty labels are relative: *easy* is a formula with the shapes given, *medium* a loop
# or a mask that has to be right at the edges, *hard* a kernel, a backward formula or a training
# loop. Three tracks through the book work well:
#
# - **A machine-learning course** (attention and sequence models): chapters 01–06 and 08–09,
#   then 12–14. Assign the easy and medium exercises of each; chapter 14's training loop is the
#   natural final assignment, and its checker asserts that the loss actually fell.
# - **A systems or GPU course**: chapters 01 (flash-style attention), 03, 06, 07, 10 and 11,
#   with their Triton exercises (they run in the interpreter on laptops; a GPU only makes them
#   fast), and `python -m rwkvlab bench` on a lab GPU for the measured part — chapter 07's
#   roofline cell is the model of the write-up to ask for.
# - **A theory seminar** (expressivity, associative memory): chapters 05, 08, 09 and 10, with
#   the conceptual exercises' hidden answers as the discussion key.
#
# ## 7. How the editions are made, and how to add an exercise
#
# An exercise is three pieces. Its *checker* lives in `rwkvlab/exercises/chCC.py`: a function
# decorated with `@exercise("CC.N", title, difficulty=..., spec=...)` that runs the student's
# function through `exercises.call` and compares with `exercises.compare`, passing the outputs of
# a few deliberate mistakes so that a matching wrong answer gets the right hint. Its *cell* sits
# at the end of chapter CC, self-contained (its own imports), with the solution between the
# markers. Its *wrong answers* — at least two per exercise, each with the hint it must trigger —
# live in `tests/test_exercises_chCC.py`, and `tests/test_exercises.py` checks for every
# registered exercise that its solution passes, its stub is reported as not attempted, and the
# student edition changes nothing else. An exercise that only makes sense on a GPU is marked
# `gpu=True` and must come with a CPU variant; at present none needs one.
#
# ## Summary
#
# - One install command, no GPU: the Triton exercises run in the interpreter.
# - The chapters are the teacher's edition and are tested as such; the student edition is
#   generated from them (`python -m rwkvlab exercises student --out DIR`).
# - Checkers say which case failed, where, by how much, and — for the common mistakes — why.
# - `python -m rwkvlab exercises grade DIR` turns a folder of notebooks into a pass / fail /
#   not-attempted table.
