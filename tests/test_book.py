"""The book's manifest, its README and its notebooks agree."""
from __future__ import annotations

import re

import pytest

from rwkvlab import book

ROOT = book.ROOT


def test_every_notebook_is_listed_and_every_listed_notebook_exists():
    listed = [c.file for c in book.chapters()]
    on_disk = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    assert len(listed) == len(set(listed)), f"book.toml lists a chapter twice: {listed}"
    missing = [f for f in listed if not (ROOT / "notebooks" / f).exists()]
    unlisted = [f for f in on_disk if f not in listed]
    assert not missing, f"book.toml lists chapters that do not exist: {missing}"
    assert not unlisted, f"notebooks not listed in book.toml: {unlisted}"


def test_chapters_are_in_numeric_order():
    nums = [int(c.file[:2]) for c in book.chapters()]
    assert nums == sorted(nums), f"book.toml order differs from the file numbers: {nums}"


def test_readme_table_of_contents_matches_book_toml():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- toc -->\n(.*?)\n<!-- /toc -->", readme, re.S)
    assert m, "README.md has no <!-- toc --> ... <!-- /toc --> block"
    assert m.group(1).strip() == book.toc_markdown().strip(), \
        "README's table of contents differs from book.toml; paste the output of `python -m rwkvlab toc`"


def test_no_ipynb_in_notebooks():
    assert not list((ROOT / "notebooks").glob("*.ipynb")), "keep executed .ipynb files out of notebooks/"


@pytest.mark.parametrize("chapter", book.chapters(), ids=lambda c: c.slug)
def test_chapter_opens_by_announcing_the_device(chapter):
    nb = book.read_notebook(chapter.path)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "describe()" in first_code.source, f"{chapter.file}: the first code cell must print rwkvlab.device.describe()"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("#"), \
        f"{chapter.file}: a chapter opens with a markdown title"


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()

    def fenced(marker):
        m = re.search(rf"<!-- ci:{marker} -->\n```bash\n(.*?)\n```\n<!-- /ci:{marker} -->", readme, re.S)
        assert m, f"README.md has no ci:{marker} block"
        return m.group(1).strip()

    install, test = fenced("install"), fenced("test")
    assert f"install='{install}'" in ci, ".ci/run's install command differs from README's"
    assert f"test='{test}'" in ci, ".ci/run's test command differs from README's"
    assert test.startswith("pytest") and "notebooks" in test and "tests" in test


def test_headless_runner_runs_a_chapter():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "rwkvlab", "run", "00_preface"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1/1 chapters passed" in res.stdout
    assert re.search(r"^00_preface\s+[0-9.]+ s  ok$", res.stdout, re.M), res.stdout


def test_run_html_builds_the_html_book(tmp_path):
    """``run --html DIR`` is ``book --out DIR`` (tests/test_site.py tests the site itself)."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "rwkvlab", "run", "00_preface", "--html", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1/1 chapters passed" in res.stdout
    assert (tmp_path / "00_preface.html").stat().st_size > 10_000
    assert "00_preface.html" in (tmp_path / "index.html").read_text()


def test_headless_runner_reports_unknown_chapters():
    from rwkvlab.__main__ import main

    assert main(["run", "no-such-chapter"]) == 2
