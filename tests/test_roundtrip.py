"""Opening a chapter as a notebook and saving it unchanged leaves its .py file byte-for-byte the same.

JupyterLab reads and writes the chapters through jupytext's contents manager. When a notebook's
kernel starts, JupyterLab writes that kernel's spec (and its language_info) into the notebook's
metadata, so the headers must already say what the installed ``python3`` kernel says, and
``jupytext.toml`` must keep version-dependent fields out of the header.
"""
from __future__ import annotations

import shutil

import jupytext
import pytest
from jupytext.config import load_jupytext_config

from rwkvlab import book

ROOT = book.ROOT
# every chapter file, listed in book.toml or not yet
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _python3_kernelspec() -> dict:
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    return {"display_name": spec.display_name, "language": spec.language, "name": "python3"}


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_jupytext_round_trip_is_byte_for_byte(path):
    config = load_jupytext_config(str(path))
    assert config is not None, "jupytext.toml was not found above notebooks/"
    text = path.read_text(encoding="utf-8")
    nb = jupytext.reads(text, fmt="py:percent", config=config)
    again = jupytext.writes(nb, fmt="py:percent", config=config)
    assert again == text, f"{path.name}: jupytext rewrites this chapter; run `jupytext --to py:percent " \
                          f"notebooks/{path.name}` and commit the result"


def test_open_and_save_in_jupyterlab_changes_no_chapter(tmp_path):
    """What JupyterLab does on open + save, through the same contents manager, on a copy."""
    from jupytext import TextFileContentsManager

    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copy(ROOT / "jupytext.toml", tmp_path / "jupytext.toml")
    manager = TextFileContentsManager(root_dir=str(tmp_path))
    kernelspec = _python3_kernelspec()
    changed = []
    for path in CHAPTERS:
        rel = f"notebooks/{path.name}"
        before = (tmp_path / rel).read_bytes()
        model = manager.get(rel, content=True, type="notebook")
        nb = model["content"]
        assert nb.metadata.get("kernelspec") == kernelspec, \
            f"{path.name}: the header's kernelspec {nb.metadata.get('kernelspec')} differs from the installed " \
            f"python3 kernel's {kernelspec}, so JupyterLab marks the chapter modified as soon as it opens"
        nb.metadata["kernelspec"] = kernelspec          # what the frontend writes when the kernel starts
        nb.metadata["language_info"] = {"name": "python", "file_extension": ".py", "mimetype": "text/x-python",
                                        "nbconvert_exporter": "python", "pygments_lexer": "ipython3",
                                        "codemirror_mode": {"name": "ipython", "version": 3}, "version": "3.11"}
        manager.save({"type": "notebook", "content": nb}, rel)
        if (tmp_path / rel).read_bytes() != before:
            changed.append(path.name)
    assert not changed, f"saving an unchanged chapter in JupyterLab rewrites: {changed}"
