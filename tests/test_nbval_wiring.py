"""The notebooks/conftest.py hook: a failing assert in a chapter fails pytest and names the cell."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

from rwkvlab import book


def test_failing_cell_fails_the_run_and_is_named(tmp_path):
    shutil.copy(book.NOTEBOOKS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "99_broken.py").write_text(textwrap.dedent("""\
        # %% [markdown]
        # # A broken chapter

        # %%
        x = 1

        # %%
        assert x == 2, "the check this chapter claims does not hold"
        """))
    (tmp_path / "helper.py").write_text("assert False  # not a chapter: must not be collected\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "99_broken.py::Cell 1" in out and "1 failed, 1 passed" in out, out
