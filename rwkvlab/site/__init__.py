"""The book as a static website that reads offline: ``python -m rwkvlab book [--out DIR] [chapters…]``.

Each chapter is executed in a fresh kernel (nbclient), in ``book.toml`` order, and rendered by
nbconvert with this package's template (``templates/rwkvbook``, an extension of JupyterLab's):
an index of parts and chapters, a sidebar table of contents, previous/next links, each chapter's
device and check status and a link to its source, math typeset by MathJax 3 (its single-file
``tex-svg-full.js`` build, copied into the site from the ``django-static-mathjax`` package, which is
nothing but MathJax's files); no page loads anything from the network.

What the page leaves out: everything a cell wrote to stderr (library warnings, profiler and
kernel chatter) goes to ``build.log`` in the build folder instead; a value that is only a memory
address (``<torch._C.Generator at 0x7f…>``, a cell ending in ``torch.manual_seed(0)``) is dropped,
and so is the echoed return value of a cell that ends in ``check(...)``, which has printed its
own verdict line. What it folds away: the code of
a cell whose figure is the point (a cell that draws with matplotlib, or one tagged ``hide-input``
or ``hide-cell``); a ``show-input`` tag keeps a cell open, and ``remove-cell``, ``remove-input`` and
``remove-output`` drop what they say.

Execution is cached in ``DIR/.cache``: a chapter runs again only when its source, the package's
source files, ``data/``, or the versions of Python, torch and triton (or the device mode) changed.
A chapter whose checks fail is never cached; the build goes on with the other chapters, then
exits non-zero and names the chapter, the cell and the error.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.resources as _resources
import html
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import book as _book

HERE = Path(str(_resources.files("rwkvlab.site")))   # the template and stylesheet are package data
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
MATHJAX = "tex-svg-full.js"      # TeX in, SVG out: one file, no fonts or extensions to fetch
DEFAULT_OUT = Path("build") / "book"
FOLD_TAGS = {"hide-input", "hide-cell"}
SHOW_TAGS = {"show-input"}


@dataclass
class ChapterRun:
    chapter: _book.Chapter
    number: int
    built: bool = False            # executed now or taken from the cache
    cached: bool = False
    ok: bool = True
    seconds: float = 0.0
    device: str = ""
    failure: str = ""              # "code cell 7 (line 120): AssertionError: ..." when not ok
    nb: object = None
    stderr: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "notbuilt" if not self.built else ("ok" if self.ok else "failed")


# --------------------------------------------------------------------------- execution and cache

def environment_key() -> str:
    """What every chapter's outputs depend on besides its own text: the package and its versions."""
    import torch
    import triton

    from .. import __version__, device

    root = _book.root()
    h = hashlib.sha256()
    h.update(f"rwkvlab {__version__}|python {sys.version}|torch {torch.__version__}|"
             f"triton {triton.__version__}|{device.select()}".encode())
    pkg = Path(str(_resources.files("rwkvlab")))
    for p in sorted(pkg.rglob("*.py")):
        if "site" in p.relative_to(pkg).parts:       # rendering only: changes no output
            continue
        h.update(str(p.relative_to(pkg)).encode() + b"\0" + p.read_bytes())
    data = root / "data"
    if data.is_dir():
        for p in sorted(q for q in data.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(data)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def chapter_key(ch: _book.Chapter, env_key: str) -> str:
    return hashlib.sha256(env_key.encode() + b"\0" + ch.path.read_bytes()).hexdigest()[:32]


def _cell_lines(ch: _book.Chapter) -> list[int]:
    """1-based line numbers of the ``# %%`` markers, one per cell, in the chapter's .py file."""
    lines = ch.path.read_text(encoding="utf-8").splitlines()
    return [i + 1 for i, ln in enumerate(lines) if ln.startswith("# %%")]


def _describe_failure(ch: _book.Chapter, nb, fallback: str) -> str:
    markers = _cell_lines(ch)
    code_no = -1
    for idx, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        code_no += 1
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors:
            err = errors[0]
            where = f"code cell {code_no}"
            if len(markers) == len(nb.cells):
                where += f" (line {markers[idx]})"
            first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
            return f"{where}: {err.get('ename', 'Error')}: {err.get('evalue', '')}  [cell starts: {first[:70]}]"
    return fallback


def execute(ch: _book.Chapter, number: int, cache_dir: Path, env_key: str, timeout: int = 900) -> ChapterRun:
    """Run one chapter (or take it from the cache); never raises for a failing check."""
    import nbclient
    import nbformat
    from nbclient.exceptions import CellExecutionError

    key = chapter_key(ch, env_key)
    cached = cache_dir / f"{ch.slug}.ipynb"
    hit = _from_cache(ch, number, cached, key)
    if hit is not None:
        return hit
    run = ChapterRun(ch, number, built=True)
    nb = _book.read_notebook(ch.path)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(ch.path.parent)}})
    t0 = time.perf_counter()
    try:
        client.execute(stderr=subprocess.DEVNULL)   # the kernel process's own start-up chatter
    except CellExecutionError as e:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        lines = [ln for ln in plain.splitlines() if ln.strip()]
        run.ok = False
        run.failure = _describe_failure(ch, nb, lines[-1] if lines else "a cell failed")
    except Exception as e:                           # a kernel that died or timed out
        run.ok = False
        run.failure = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    run.seconds = time.perf_counter() - t0
    run.nb = nb
    run.device = _device_line(nb)
    if run.ok:
        cache_dir.mkdir(parents=True, exist_ok=True)
        nb.metadata["rwkvbook"] = {"key": key, "seconds": round(run.seconds, 2), "device": run.device}
        tmp = cached.with_suffix(".tmp")
        nbformat.write(nb, str(tmp))
        tmp.replace(cached)
    return run


def _from_cache(ch: _book.Chapter, number: int, cached: Path, key: str) -> ChapterRun | None:
    """The cached run of this chapter if it was made from the same text and package, else None."""
    import nbformat

    if not cached.is_file():
        return None
    nb = nbformat.read(str(cached), as_version=4)
    meta = nb.metadata.get("rwkvbook", {})
    if meta.get("key") != key:
        return None
    return ChapterRun(ch, number, built=True, cached=True, nb=nb, seconds=meta.get("seconds", 0.0),
                      device=meta.get("device", ""))


def _device_line(nb) -> str:
    """The line the chapter's first code cell printed (``rwkvlab.device.describe()``)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
                if out.get("output_type") == "stream" and out.get("name") == "stdout":
                    first = out.get("text", "").strip().splitlines()
                    return first[0] if first else ""
            return ""
    return ""


# --------------------------------------------------------------------------- what reaches the page

def _source_text(cell) -> str:
    return cell.source if isinstance(cell.source, str) else "".join(cell.source)


_ADDRESS_REPR = re.compile(r"^<[\w.]+(?: object)? at 0x[0-9a-f]+>$")


def _ends_in_check(cell) -> bool:
    """Whether the cell's last statement is a call to ``check(...)`` (``rwkvlab.check``,
    ``exercises.check``): those print their own one-line verdict, and the number they return,
    echoed by the notebook, would only repeat it."""
    import ast

    try:
        body = ast.parse(_source_text(cell)).body
    except SyntaxError:                              # IPython magics
        return False
    if not body or not isinstance(body[-1], ast.Expr) or not isinstance(body[-1].value, ast.Call):
        return False
    func = body[-1].value.func
    return (isinstance(func, ast.Name) and func.id == "check") or \
        (isinstance(func, ast.Attribute) and func.attr == "check")


def prepare_for_page(run: ChapterRun):
    """A copy of the executed notebook as the page shows it: stderr out, figure code folded."""
    import copy

    nb = copy.deepcopy(run.nb)
    nb.metadata.pop("rwkvbook", None)
    cells = []
    for idx, cell in enumerate(nb.cells):
        tags = set(cell.metadata.get("tags", []))
        if "remove-cell" in tags:
            continue
        if cell.cell_type == "code":
            kept = []
            for out in cell.get("outputs", []):
                if out.get("output_type") == "stream" and out.get("name") == "stderr":
                    text = out.get("text", "")
                    run.stderr.append(f"--- {run.chapter.slug}, cell {idx}\n{text.rstrip()}")
                    continue
                if out.get("output_type") == "execute_result" and set(out.get("data", {})) == {"text/plain"} \
                        and (_ADDRESS_REPR.match(out["data"]["text/plain"].strip()) or _ends_in_check(cell)):
                    continue                         # a memory address, or the echo of a check's return value
                kept.append(out)
            cell.outputs = [] if "remove-output" in tags else kept
            has_figure = any("image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {})
                             for o in cell.outputs)
            source = _source_text(cell)
            draws = bool(re.search(r"\bplt\.|\bax\w*\.|matplotlib|\bfig\w*\.", source))
            fold = bool(tags & FOLD_TAGS) or (has_figure and draws and not tags & SHOW_TAGS)
            if "remove-input" in tags:             # nbconvert's TagRemovePreprocessor drops the code
                fold = False
            if fold:
                n = len(source.splitlines())
                what = "the code that draws this figure" if has_figure else "the code of this cell"
                cell.metadata["rwkvbook"] = {"fold": True, "summary": f"Show {what} ({n} lines)"}
        cells.append(cell)
    nb.cells = cells
    return nb


# --------------------------------------------------------------------------- rendering

def _book_context(runs: list[ChapterRun], version: str, device_line: str) -> dict:
    parts, by_slug = [], {}
    for run in runs:
        ch = run.chapter
        if run.status == "ok":
            label, text = "checks held", f"every check held · ran in {run.seconds:.1f} s" + \
                (" (cached)" if run.cached else "")
        elif run.status == "failed":
            label, text = "CHECK FAILED", f"a check failed: {run.failure}"
        else:
            label, text = "not built", "not run in this build"
        entry = {"slug": ch.slug, "file": ch.file, "title": ch.title, "part": ch.part, "href": f"{ch.slug}.html",
                 "number": ch.file[:2], "status": run.status, "status_label": label, "status_text": text,
                 "device": run.device, "source_href": f"_source/{ch.file}"}
        by_slug[ch.slug] = entry
        if not parts or parts[-1]["title"] != ch.part:
            parts.append({"title": ch.part, "chapters": []})
        parts[-1]["chapters"].append(entry)
    return {"title": _book.manifest().get("title", "rwkvlab"), "parts": parts, "by_slug": by_slug,
            "version": version, "device": device_line,
            "built": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "mathjax": f"_static/mathjax/{MATHJAX}"}


def _exporter():
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    c = Config()
    c.HTMLExporter.template_name = "rwkvbook"
    c.HTMLExporter.extra_template_basedirs = [str(TEMPLATES)]
    c.HTMLExporter.anchor_link_text = "¶"
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = ("remove-input",)
    return HTMLExporter(config=c)


_HEADING = re.compile(r'<h([23]) id="([^"]+)">(.*?)(?:<a class="anchor-link"[^>]*>.*?</a>)?</h\1>', re.S)


def _sections(body: str) -> str:
    """The chapter's own headings (h2, h3) as a nested list for the sidebar."""
    items = []
    for level, ident, inner in _HEADING.findall(body):
        text = re.sub(r"<[^>]+>", "", inner).strip()
        if level == "2":
            items.append((ident, text, []))
        elif items:
            items[-1][2].append((ident, text))
    if not items:
        return ""
    out = ['<ol class="book-sections">']
    for ident, text, subs in items:
        out.append(f'<li><a href="#{html.escape(ident, quote=True)}">{text}</a></li>')
    out.append("</ol>")
    return "".join(out)


def render_chapter(run: ChapterRun, context: dict, exporter) -> str:
    slugs = list(context["by_slug"])
    i = slugs.index(run.chapter.slug)
    book = dict(context)
    book["chapter"] = context["by_slug"][run.chapter.slug]
    book["prev"] = context["by_slug"][slugs[i - 1]] if i > 0 else None
    book["next"] = context["by_slug"][slugs[i + 1]] if i + 1 < len(slugs) else None
    nb = prepare_for_page(run)
    body, _ = exporter.from_notebook_node(nb, resources={"book": book, "metadata": {"name": run.chapter.title}})
    return body.replace("<!--rwkvbook:sections-->", _sections(body), 1)


def _jinja():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES / "rwkvbook")), autoescape=False)


def mathjax_source() -> Path:
    """MathJax's browser build as the ``django-static-mathjax`` package ships it (no Django needed)."""
    import importlib.util

    spec = importlib.util.find_spec("mathjax")
    path = Path(spec.origin).parent / "static" / "mathjax" / "es5" / MATHJAX if spec and spec.origin else None
    if path is None or not path.is_file():
        raise FileNotFoundError("MathJax was not found: `pip install -r requirements.txt` installs it "
                                "(the django-static-mathjax package)")
    return path


def copy_static(out: Path) -> None:
    """book.css and MathJax into ``out/_static``: the site needs nothing from outside its folder."""
    static = out / "_static"
    (static / "mathjax").mkdir(parents=True, exist_ok=True)
    shutil.copy2(STATIC / "book.css", static / "book.css")
    src = mathjax_source()
    shutil.copy2(src, static / "mathjax" / MATHJAX)
    license_file = src.parents[1] / "LICENSE"
    if license_file.is_file():
        shutil.copy2(license_file, static / "mathjax" / "LICENSE")


# --------------------------------------------------------------------------- the build

def select(selected: list[str] | None) -> list[_book.Chapter]:
    return [c for c in _book.chapters() if not selected or any(s in c.file for s in selected)]


def build(out: Path | None = None, selected: list[str] | None = None, log=print) -> int:
    """Build the site into ``out``; return 0 when every selected chapter's checks held, 1 if not, 2 if none match.

    Chapters that were not selected are still rendered when a cached run of their current text
    exists; otherwise they get a short page saying how to build them, so every link resolves.
    """
    from .. import __version__, device

    out = Path(out or _book.root() / DEFAULT_OUT)
    todo = select(selected)
    if not todo:
        log(f"no chapter matches {selected}")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    cache = out / ".cache"
    log(device.describe())
    env_key = environment_key()
    t_build = time.perf_counter()
    runs = []
    wanted = {c.file for c in todo}
    for number, ch in enumerate(_book.chapters()):
        if ch.file in wanted:
            run = execute(ch, number, cache, env_key)
            mark = "ok" if run.ok else "FAILED"
            how = "cached" if run.cached else f"{run.seconds:6.1f} s"
            log(f"{ch.slug:<28} {how:>8}  {mark}" + (f"  ({run.failure})" if not run.ok else ""))
        else:
            run = execute_if_cached(ch, number, cache, env_key)
        runs.append(run)

    copy_static(out)
    (out / "_source").mkdir(exist_ok=True)
    context = _book_context(runs, __version__, device.describe())
    exporter = _exporter()
    env = _jinja()
    stub = env.get_template("stub.html.j2")
    stderr_log = []
    for i, run in enumerate(runs):
        ch = run.chapter
        shutil.copy2(ch.path, out / "_source" / ch.file)
        if run.built:
            page = render_chapter(run, context, exporter)
            stderr_log.extend(run.stderr)
        else:
            slugs = list(context["by_slug"])
            page = stub.render(book=context, chapter=context["by_slug"][ch.slug],
                               prev=context["by_slug"][slugs[i - 1]] if i > 0 else None,
                               next=context["by_slug"][slugs[i + 1]] if i + 1 < len(slugs) else None)
        (out / f"{ch.slug}.html").write_text(page, encoding="utf-8")
    front = env.get_template("front.html.j2").render(book=context)
    (out / "index.html").write_text(front, encoding="utf-8")
    (out / "build.log").write_text("\n".join(stderr_log) + ("\n" if stderr_log else ""), encoding="utf-8")
    summary = {"chapters": [{"file": r.chapter.file, "status": r.status, "cached": r.cached,
                             "seconds": round(r.seconds, 2), "failure": r.failure} for r in runs],
               "seconds": round(time.perf_counter() - t_build, 1)}
    (out / "build.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")

    failed = [r for r in runs if r.built and not r.ok]
    ran = [r for r in runs if r.chapter.file in wanted]
    log(f"{len(ran) - len(failed)}/{len(ran)} chapters passed; site built in {summary['seconds']:.0f} s "
        f"({sum(not r.cached for r in ran)} executed, {sum(r.cached for r in ran)} from the cache)")
    if stderr_log:
        log(f"stderr of {len(stderr_log)} cell(s) kept off the pages: {out / 'build.log'}")
    log(f"HTML book: {out / 'index.html'}")
    if failed:
        log("")
        log("BUILD FAILED: a check failed in " + ", ".join(r.chapter.file for r in failed))
        for r in failed:
            log(f"  notebooks/{r.chapter.file}: {r.failure}")
        return 1
    return 0


def execute_if_cached(ch: _book.Chapter, number: int, cache_dir: Path, env_key: str) -> ChapterRun:
    """A chapter that was not selected: its cached run if that is still current, else not built."""
    hit = _from_cache(ch, number, cache_dir / f"{ch.slug}.ipynb", chapter_key(ch, env_key))
    return hit if hit is not None else ChapterRun(ch, number, built=False)
