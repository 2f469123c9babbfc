"""The HTML book (``python -m rwkvlab book``): build, cache, failure reports, and a real browser.

Two kinds of builds are tested:

- a tiny book made here (two chapters of a few cells, in a temporary copy pointed at by
  ``$RWKVLAB_BOOK``): what the page keeps and drops, the cache, and a failing check;
- the real book, a cheap subset by default (``RWKVLAB_SITE_CHAPTERS=all`` builds every chapter,
  or name some: ``RWKVLAB_SITE_CHAPTERS="03 06"``), opened page by page in headless Chromium.

The browser test needs Debian's ``chromium`` (``.ci/run`` installs it). Without it the test is
skipped with a message, except under CI (``$CI`` set), where a missing browser is a failure.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rwkvlab import book, site
from rwkvlab.site import browser

ROOT = book.ROOT
CI_SUBSET = ["00_preface", "01_softmax_attention"]   # math, figures, and the profiler cell: ~20 s


# --------------------------------------------------------------------------- a tiny book of our own

OK_CHAPTER = '''\
# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A small chapter
#
# The state obeys $S_t = S_{t-1} + k_t v_t^\\top$, and
#
# $$o_t = r_t^\\top S_t .$$
#
# ## Its one section

# %%
import sys
import warnings

print("rwkvlab: a tiny test book")
print("US" + "DT: fake profiler chatter", file=sys.stderr)   # split, so the source shows neither string
warnings.warn("a library " + "warning the page must not show")

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(3, 2))
ax.plot([0, 1, 2], [0, 1, 4])
plt.show()

# %% tags=["hide-input"]
def helper():
    return 42
print("helper ready", helper())

# %%
object()

# %%
def check(name):
    print(name, "ok")
    return 1.5e-7
check("a tiny check")
'''

BAD_CHAPTER = '''\
# %% [markdown]
# # A chapter whose check fails

# %%
print("rwkvlab: a tiny test book")

# %%
x = 1 + 1
assert x == 3, "one plus one is not three"

# %%
print("never reached")
'''


def _tiny_book(root: Path, bad: bool = True) -> Path:
    (root / "notebooks").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "notebooks" / "00_small.py").write_text(OK_CHAPTER, encoding="utf-8")
    chapters = '[[parts.chapters]]\nfile = "00_small.py"\ntitle = "A small chapter"\n'
    if bad:
        (root / "notebooks" / "01_bad.py").write_text(BAD_CHAPTER, encoding="utf-8")
        chapters += '\n[[parts.chapters]]\nfile = "01_bad.py"\ntitle = "A failing chapter"\n'
    (root / "book.toml").write_text(f'title = "A tiny book"\n\n[[parts]]\ntitle = "Part I"\n\n{chapters}',
                                    encoding="utf-8")
    return root


def _book_cli(root: Path, out: Path, *chapters: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RWKVLAB_BOOK=str(root))
    return subprocess.run([sys.executable, "-m", "rwkvlab", "book", "--out", str(out), *chapters],
                          capture_output=True, text=True, env=env, cwd=root, timeout=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = _tiny_book(tmp_path_factory.mktemp("tinybook"))
    out = root / "site"
    res = _book_cli(root, out)
    return root, out, res


def test_a_failing_check_fails_the_build_and_names_chapter_and_cell(tiny):
    root, out, res = tiny
    assert res.returncode == 1, res.stdout + res.stderr
    assert "BUILD FAILED" in res.stdout
    line = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith("notebooks/01_bad.py:"))
    # the assert is in the second code cell, which starts on line 7 of the file
    assert "code cell 1" in line and "line 7" in line and "AssertionError" in line and "one plus one" in line, line
    page = (out / "01_bad.html").read_text(encoding="utf-8")
    assert "CHECK FAILED" in page and "one plus one is not three" in page
    assert "CHECK FAILED" in (out / "index.html").read_text(encoding="utf-8")


def test_the_page_drops_stderr_and_folds_figure_and_tagged_code(tiny):
    root, out, res = tiny
    page = (out / "00_small.html").read_text(encoding="utf-8")
    assert "rwkvlab: a tiny test book" in page                  # stdout stays
    assert "USDT" not in page and "a library warning" not in page and "UserWarning" not in page
    log = (out / "build.log").read_text(encoding="utf-8")
    assert "USDT: fake profiler chatter" in log and "a library warning the page must not show" in log
    folds = re.findall(r'<details class="book-fold">\s*<summary>([^<]*)</summary>', page)
    assert any("draws this figure" in f for f in folds), folds   # the matplotlib cell
    assert any("code of this cell" in f for f in folds), folds   # the hide-input cell
    assert len(folds) == 2, folds                                # the first code cell stays open
    assert "data:image/png;base64," in page
    assert " at 0x" not in page                                 # a bare memory address is not worth a line
    assert "a tiny check ok" in page and "1.5e-07" not in page  # the verdict, not the echoed number


def test_pages_load_nothing_from_the_network(tiny):
    root, out, res = tiny
    for p in [out / "index.html", out / "00_small.html", out / "01_bad.html"]:
        text = p.read_text(encoding="utf-8")
        remote = re.findall(r'<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)="(?:https?:)?//[^"]*"', text)
        assert not remote, f"{p.name} loads {remote}"
        assert "cdnjs" not in text and "require.min.js" not in text
    assert (out / "_static" / "mathjax" / site.MATHJAX).stat().st_size > 1_000_000
    assert (out / "_source" / "00_small.py").read_text(encoding="utf-8") == OK_CHAPTER


def test_only_changed_chapters_run_again(tmp_path):
    root = _tiny_book(tmp_path / "book", bad=False)
    out = tmp_path / "site"
    first = _book_cli(root, out)
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads((out / "build.json").read_text())["chapters"][0]["cached"] is False
    again = _book_cli(root, out)
    assert again.returncode == 0 and re.search(r"^00_small\s+cached  ok$", again.stdout, re.M), again.stdout
    chapter = root / "notebooks" / "00_small.py"
    chapter.write_text(chapter.read_text() + "\n# %% [markdown]\n# One more paragraph.\n", encoding="utf-8")
    changed = _book_cli(root, out)
    assert changed.returncode == 0 and re.search(r"^00_small\s+[0-9.]+ s  ok$", changed.stdout, re.M), changed.stdout
    assert "One more paragraph." in (out / "00_small.html").read_text(encoding="utf-8")


def test_cache_key_follows_the_chapter_and_the_package(tmp_path):
    env = site.environment_key()
    ch = book.chapters()[0]
    assert site.chapter_key(ch, env) == site.chapter_key(ch, env)
    assert site.chapter_key(ch, env) != site.chapter_key(ch, env + "x")
    assert site.chapter_key(ch, env) != site.chapter_key(book.chapters()[1], env)


def test_run_html_is_an_alias_and_unknown_chapters_are_reported(tmp_path):
    from rwkvlab.__main__ import main

    assert main(["book", "--out", str(tmp_path), "no-such-chapter"]) == 2
    assert main(["run", "--html", str(tmp_path), "no-such-chapter"]) == 2


# --------------------------------------------------------------------------- the real book, in Chromium

def _subset() -> list[str] | None:
    want = os.environ.get("RWKVLAB_SITE_CHAPTERS", "").strip()
    if want == "all":
        return None
    return want.split() if want else CI_SUBSET


@pytest.fixture(scope="module")
def real_site(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    lines: list[str] = []
    code = site.build(out, _subset(), log=lines.append)
    return out, code, "\n".join(lines)


def test_real_book_subset_builds(real_site):
    out, code, log = real_site
    assert code == 0, log
    built = json.loads((out / "build.json").read_text())["chapters"]
    assert [c["file"] for c in built] == [c.file for c in book.chapters()]
    want = _subset()
    for c in built:
        if want is None or any(s in c["file"] for s in want):
            assert c["status"] == "ok", c
    page = (out / f"{book.chapters()[0].slug}.html").read_text(encoding="utf-8")
    assert "checks held" in page
    assert re.search(r'<span class="book-device">rwkvlab: [^<]+</span>', page), "the page names the device"
    if (out / "01_softmax_attention.html").is_file() and "01" in " ".join(want or ["01"]):
        ch01 = (out / "01_softmax_attention.html").read_text(encoding="utf-8")
        assert "USDT" not in ch01 and "profiler_start" not in ch01


def test_every_page_reads_well_in_chromium(real_site):
    out, code, log = real_site
    assert code == 0, log
    if browser.find_chromium() is None:
        msg = "no Chromium on this machine: apt-get install chromium (Debian), or set $RWKVLAB_CHROMIUM"
        if os.environ.get("CI"):
            pytest.fail(msg + " -- CI must have it (.ci/run installs it)")
        pytest.skip(msg)
    reports = browser.check_site(out)
    problems = {r.name: r.problems for r in reports if r.problems}
    assert not problems, textwrap.indent(json.dumps(problems, indent=1), "  ")
    names = [r.name for r in reports]
    assert names == ["index"] + [c.slug for c in book.chapters()]
    typeset = {r.name: r.formulas for r in reports}
    assert typeset[book.chapters()[0].slug] > 20, typeset   # the preface's notation table is math
    assert (out / "screenshot.png").stat().st_size > 20_000
