"""Let ``pytest --nbval notebooks`` run the book's chapters straight from their jupytext sources.

nbval collects only ``.ipynb`` files; the chapters live in git as percent-format ``NN_slug.py``
files. This hook reads each one through jupytext and hands nbval the notebook, one test item
per code cell, so a failing assert fails the run and names the chapter and the cell.

Nothing is compared against stored outputs (there are none): every cell's own asserts are the
test. The kernel is always the Python that runs pytest, so the venv's packages are the ones used.
"""
from __future__ import annotations

import re
from collections import defaultdict

import pytest

CHAPTER = re.compile(r"^\d\d_[a-z0-9_]+\.py$")


def _nbval_on(config) -> bool:
    opt = config.option
    return bool(getattr(opt, "nbval", False) or getattr(opt, "nbval_lax", False))


def pytest_collect_file(file_path, parent):
    if not (_nbval_on(parent.config) and CHAPTER.match(file_path.name)):
        return None
    from nbval.plugin import IPyNbCell, IPyNbFile, find_comment_markers, find_metadata_tags

    class JupytextChapter(IPyNbFile):
        """An nbval notebook whose cells come from a jupytext ``.py`` chapter."""

        def collect(self):
            import jupytext

            opt = self.config.option
            if not opt.nbval_kernel_name:
                opt.nbval_current_env = True
            self.nb = jupytext.read(str(self.fspath))
            code_cells = [c for c in self.nb.cells if c.cell_type == "code"]
            for num, cell in enumerate(code_cells):
                options = defaultdict(bool, find_metadata_tags(cell.metadata))
                options.update(dict(find_comment_markers(cell.source)))
                options["check"] = False  # the cell's asserts are the test, not its printed output
                yield IPyNbCell.from_parent(self, name=f"Cell {num}", cell_num=num, cell=cell, options=options)

    return JupytextChapter.from_parent(parent, path=file_path)
