"""Coding exercises that check themselves.

Each exercise has an id ``"CC.N"`` (chapter ``CC``, number ``N`` in that chapter's Exercises
section), a title, a difficulty, a one-paragraph spec with shapes, and a *checker*: a function
that runs the reader's code on seeded random cases of several shapes (odd T, T = 1, several
heads, …) against an independent reference — usually a naive form from the package, never the
exercise's own solution — and, on failure, raises an ``AssertionError`` that names the case, the
shape, the largest error and where it is, and a hint aimed at the likely mistake.

In a chapter (the teacher's edition) an exercise cell looks like::

    print(exercises.spec("03.7"))

    def stable_step(...):
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

    exercises.check("03.7", stable_step)

``python -m rwkvlab exercises student --out DIR`` replaces every solution region by a stub that
raises ``NotImplementedError("exercise 03.7: …")``; ``check`` lets that error through untouched,
so a class's notebooks can be graded as pass / fail / not attempted
(``python -m rwkvlab exercises grade DIR``). The checkers live in this package, one module per
chapter (``rwkvlab/exercises/chCC.py``); the solutions live only in the chapters.
"""
from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["Exercise", "exercise", "get", "all_exercises", "spec", "check", "compare", "close",
           "call", "not_attempted_message"]

DIFFICULTIES = ("easy", "medium", "hard")


@dataclass(frozen=True)
class Exercise:
    id: str
    title: str
    difficulty: str
    spec: str
    checker: Callable = field(repr=False)
    gpu: bool = False

    @property
    def chapter(self) -> int:
        return int(self.id.split(".")[0])


_REGISTRY: dict[str, Exercise] = {}
_LOADED = False


def exercise(id: str, title: str, *, difficulty: str, spec: str, gpu: bool = False):
    """Register the decorated function as the checker of exercise ``id``.

    The checker takes the reader's function and returns the number of cases it ran; it raises
    ``AssertionError`` (via :func:`compare`) on the first wrong case.
    """
    parts = id.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or len(parts[0]) != 2:
        raise ValueError(f"id: expected 'CC.N' (two-digit chapter, exercise number), got {id!r}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty: expected one of {DIFFICULTIES}, got {difficulty!r}")

    def register(checker):
        if id in _REGISTRY:
            raise ValueError(f"id: exercise {id} is registered twice")
        _REGISTRY[id] = Exercise(id, title, difficulty, " ".join(spec.split()), checker, gpu)
        return checker
    return register


def _load() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("ch")):
            importlib.import_module(f"{__name__}.{mod}")


def _key(id: str):
    c, n = id.split(".")
    return int(c), int(n)


def all_exercises() -> list[Exercise]:
    """Every registered exercise, in chapter and number order."""
    _load()
    return [_REGISTRY[i] for i in sorted(_REGISTRY, key=_key)]


def get(id: str) -> Exercise:
    _load()
    if not isinstance(id, str) or id not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY, key=_key)) or "none"
        raise ValueError(f"id: no exercise {id!r}; known: {known}")
    return _REGISTRY[id]


def spec(id: str) -> str:
    """The exercise's statement: id, title, difficulty and the spec paragraph."""
    ex = get(id)
    return f"Exercise {ex.id}: {ex.title} ({ex.difficulty}{', GPU' if ex.gpu else ''})\n{ex.spec}"


def not_attempted_message(id: str) -> str:
    return f"exercise {id}: not implemented yet: write your solution in place of this line"


def check(id: str, fn: Callable) -> int:
    """Run exercise ``id``'s checker on ``fn``; print one line on success, raise on failure.

    A ``NotImplementedError`` from ``fn`` (the student edition's stub) passes through unchanged.
    """
    ex = get(id)
    if not callable(fn):
        raise ValueError(f"fn: expected the function you wrote for exercise {id}, got {type(fn).__name__}")
    n = ex.checker(fn)
    print(f"exercise {id} ({ex.title}): {n} cases passed  ok")
    return n


# ---------------------------------------------------------------------------------------------
# tools for checkers
# ---------------------------------------------------------------------------------------------
def call(fn: Callable, case: str, *args, **kwargs):
    """Call the reader's function; any exception but NotImplementedError becomes an AssertionError naming the case."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise
    except Exception as e:  # noqa: BLE001 - the reader's code may raise anything
        raise AssertionError(f"case {case}: your function raised {type(e).__name__}: {e}") from e


def close(a, b, tol: float = 1e-4) -> bool:
    """True when ``a`` is within relative error ``tol`` of ``b`` (same shapes, finite)."""
    if not isinstance(a, torch.Tensor) or tuple(a.shape) != tuple(b.shape):
        return False
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    if not torch.isfinite(a64).all():
        return False
    den = torch.linalg.vector_norm(b64).item()
    return torch.linalg.vector_norm(a64 - b64).item() <= tol * max(den, 1e-30)


def compare(case: str, got, want: torch.Tensor, *, tol: float = 1e-5, name: str = "output",
            mistakes: dict[str, torch.Tensor] | None = None, hint: str = "") -> None:
    """Assert ``got`` ≈ ``want`` (relative error ``tol``), else explain what is wrong.

    ``mistakes`` maps a hint to the output a plausible mistake would produce (computed by the
    checker from the reference with that mistake made on purpose): when ``got`` matches one of
    them, its hint is given; otherwise ``hint``, the general one.
    """
    where = f"case {case}: {name}"
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{where}: expected a torch.Tensor, got {type(got).__name__}")
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f"{where}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}"
                             + (f"\nhint: {hint}" if hint else ""))
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    if not torch.isfinite(g).all():
        bad = (~torch.isfinite(g)).nonzero()[0].tolist()
        raise AssertionError(f"{where}: contains NaN or Inf (first at index {tuple(bad)})"
                             + _pick_hint(got, mistakes, hint))
    den = torch.linalg.vector_norm(w).item()
    err = torch.linalg.vector_norm(g - w).item() / max(den, 1e-30)
    if err <= tol and math.isfinite(err):
        return
    diff = (g - w).abs()
    idx = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    raise AssertionError(
        f"{where} is wrong: relative error {err:.2e} (tolerance {tol:.0e}); largest error "
        f"{diff.max().item():.3g} at index {idx} (got {g[idx].item():.6g}, expected {w[idx].item():.6g}), "
        f"shape {tuple(want.shape)}" + _pick_hint(got, mistakes, hint))


def _pick_hint(got, mistakes, hint) -> str:
    for text, wrong in (mistakes or {}).items():
        if close(got, wrong, 1e-3):
            return f"\nhint: {text}"
    return f"\nhint: {hint}" if hint else ""
