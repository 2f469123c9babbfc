"""The book's manifest (``book.toml``) and a headless runner for its chapters.

``python -m rwkvlab run`` executes every chapter in book order, exactly as
``pytest --nbval notebooks`` does, and prints one line per chapter: did its checks hold and how
long did it take. The HTML edition of the book is built by :mod:`rwkvlab.site`
(``python -m rwkvlab book``; ``run --html DIR`` is the same as ``book --out DIR``).
"""
from __future__ import annotations

import os
import re
import subprocess
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

BOOK_ENV = "RWKVLAB_BOOK"


def find_root(start: Path | None = None) -> Path | None:
    """The book's directory (the checkout that holds ``book.toml``, ``notebooks/`` and ``data/``).

    Looked for, in order: the directory in ``$RWKVLAB_BOOK``; the current directory (or
    ``start``) and its parents; the directory above this package (an editable install from a
    checkout). ``None`` when there is none (e.g. a wheel installed outside the repository):
    :func:`root` then says where it looked.
    """
    env = os.environ.get(BOOK_ENV)
    if env:
        return Path(env).resolve() if (Path(env) / "book.toml").is_file() else None
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents, Path(__file__).resolve().parent.parent):
        if (d / "book.toml").is_file() and (d / "notebooks").is_dir():
            return d
    return None


def root() -> Path:
    """:func:`find_root`, or a ValueError naming the places it looked."""
    found = ROOT if ROOT is not None else find_root()
    if found is None:
        env = os.environ.get(BOOK_ENV)
        where = f"${BOOK_ENV} = {env!r} has no book.toml" if env else \
            f"no book.toml in {str(Path.cwd())!r} or its parents, nor beside the installed package"
        raise ValueError(f"book: the book's files (book.toml, notebooks/, data/) were not found: {where}; "
                         f"run from the repository's checkout or set {BOOK_ENV} to it")
    return found


def data_path(name: str) -> Path:
    """A file of the book's ``data/`` directory (e.g. ``shakespeare.txt``), or a ValueError naming the path."""
    path = root() / "data" / name
    if not path.is_file():
        raise ValueError(f"data: {str(path)!r} does not exist; the book's data files live in data/ of the repository")
    return path


ROOT = find_root()                                   # None outside a checkout: use root() for an error
NOTEBOOKS = ROOT / "notebooks" if ROOT is not None else None


@dataclass(frozen=True)
class Chapter:
    part: str
    file: str
    title: str

    @property
    def path(self) -> Path:
        return root() / "notebooks" / self.file

    @property
    def slug(self) -> str:
        return Path(self.file).stem


def manifest(path: Path | None = None) -> dict:
    with open(path or root() / "book.toml", "rb") as f:
        return tomllib.load(f)


def chapters(path: Path | None = None) -> list[Chapter]:
    """All chapters in book order."""
    book = manifest(path)
    return [Chapter(p["title"], c["file"], c["title"]) for p in book["parts"] for c in p["chapters"]]


def toc_markdown(path: Path | None = None) -> str:
    """The table of contents as README shows it (a test keeps the two equal)."""
    lines, part = [], None
    for ch in chapters(path):
        if ch.part != part:
            if part is not None:
                lines.append("")
            lines.append(f"**{ch.part}**")
            lines.append("")
            part = ch.part
        lines.append(f"- [{ch.title}](notebooks/{ch.file})")
    return "\n".join(lines)


def read_notebook(path: Path):
    """A chapter as an nbformat notebook, read through jupytext (the .py file is the source)."""
    import jupytext

    return jupytext.read(str(path))


def run_chapter(ch: Chapter, timeout: int = 600) -> tuple[bool, float, str]:
    """Execute one chapter in a fresh kernel; return (ok, seconds, first error line)."""
    import nbclient
    from nbclient.exceptions import CellExecutionError

    nb = read_notebook(ch.path)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(ch.path.parent)}})
    t0 = time.perf_counter()
    ok, err = True, ""
    try:
        client.execute(stderr=subprocess.DEVNULL)  # kernel start-up chatter; cell errors arrive via iopub
    except CellExecutionError as e:
        ok = False
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # drop the traceback's terminal colours
        lines = [ln for ln in plain.splitlines() if ln.strip()]
        err = lines[-1] if lines else "cell failed"
    return ok, time.perf_counter() - t0, err


def run(selected: list[str] | None = None) -> int:
    from . import device

    print(device.describe())
    todo = [c for c in chapters() if not selected or any(s in c.file for s in selected)]
    if not todo:
        print(f"no chapter matches {selected}")
        return 2
    failures, total = 0, 0.0
    for ch in todo:
        ok, seconds, err = run_chapter(ch)
        total += seconds
        failures += not ok
        mark = "ok" if ok else "FAILED"
        print(f"{ch.slug:<28} {seconds:6.1f} s  {mark}" + (f"  ({err})" if err else ""), flush=True)
    print(f"{len(todo) - failures}/{len(todo)} chapters passed in {total:.0f} s")
    return 1 if failures else 0
