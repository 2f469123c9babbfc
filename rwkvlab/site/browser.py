"""Open every page of a built book in headless Chromium and say what a reader would find wrong.

``python -m rwkvlab book --browser-check`` (or ``python -m rwkvlab.site.browser DIR``) checks, on
each page: no console error or uncaught exception; every formula typeset by MathJax (no TeX
delimiters left in the prose, no MathJax error); every image loaded; every internal link
pointing at a file of the build (and at an element of the page it names with ``#…``); previous
and next links in ``book.toml`` order; and no request leaving the machine (every URL other than
``file:`` and ``data:`` is blocked and reported). A screenshot of one chapter page is saved as
``screenshot.png`` in the build folder.

The browser is the system's Chromium (Debian's ``chromium`` package; ``$RWKVLAB_CHROMIUM``
overrides the path), driven through Playwright's Python API: Playwright downloads nothing here.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# What the page itself reports once MathJax is done: untypeset formulas, raw TeX in the prose,
# MathJax errors, images that did not load, links and ids, prev/next.
_PROBE = r"""() => {
  const formulas = document.querySelectorAll('mjx-container').length;
  const prose = Array.from(document.querySelectorAll('.jp-MarkdownOutput, .book-contents')).map(el => {
    const c = el.cloneNode(true);
    c.querySelectorAll('code, pre, script, style, mjx-container, mjx-assistive-mml').forEach(n => n.remove());
    return c.textContent;
  }).join('\n');
  const errors = Array.from(document.querySelectorAll('mjx-merror, [data-mml-node="merror"]'))
    .map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 80));
  const badImages = Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)
    .map(i => (i.currentSrc || i.src).slice(0, 80));
  const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'));
  const ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id)
    .concat(Array.from(document.querySelectorAll('a[name]')).map(e => e.getAttribute('name')));
  const rel = r => { const a = document.querySelector('a[rel="' + r + '"]'); return a ? a.getAttribute('href') : null; };
  return {formulas, prose, errors, badImages, links, ids, prev: rel('prev'), next: rel('next'),
          images: document.images.length};
}"""

TEX_LEFT = re.compile(r"\$[^$\s][^$]*\$|\\\(|\\\)|\\\[|\\\]|\\(?:frac|sum|mathbb|mathrm|exp|odot|top)\b")


def find_chromium() -> str | None:
    env = os.environ.get("RWKVLAB_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    name: str
    formulas: int = 0
    images: int = 0
    problems: list[str] = field(default_factory=list)


def check_site(out: Path, chapters: list[str] | None = None, screenshot: str | None = None,
               chromium: str | None = None) -> list[PageReport]:
    """Open ``index.html`` and every chapter page of the build in ``out``; one report per page.

    ``chapters`` are the page names (``00_preface``…) in book order (default: book.toml's);
    ``screenshot`` the page to photograph (default: the first chapter page with formulas and a
    figure, else the first with formulas), scrolled to its first displayed equation.
    """
    from playwright.sync_api import sync_playwright

    from .. import book

    out = Path(out).resolve()
    order = chapters or [c.slug for c in book.chapters()]
    pages = ["index"] + order
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium, or set $RWKVLAB_CHROMIUM)")
    reports, probes = [], {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        context = browser.new_context(viewport={"width": 1360, "height": 900}, device_scale_factor=1,
                                      service_workers="block")
        shot_done, fallback = False, None
        for name in pages:
            rep = PageReport(name)
            page = context.new_page()
            outside: list[str] = []

            def route(r, outside=outside):
                url = r.request.url
                if url.startswith(("file:", "data:", "about:", "blob:")):
                    r.continue_()
                else:
                    outside.append(url)
                    r.abort()

            page.route("**/*", route)
            page.on("console", lambda m, rep=rep: m.type == "error" and rep.problems.append(f"console error: {m.text}"))
            page.on("pageerror", lambda e, rep=rep: rep.problems.append(f"uncaught exception: {e}"))
            page.on("requestfailed", lambda q, rep=rep: q.url.startswith("file:")
                    and rep.problems.append(f"failed to load {q.url}"))
            path = out / f"{name}.html"
            if not path.is_file():
                rep.problems.append(f"{path.name} is missing from the build")
                reports.append(rep)
                page.close()
                continue
            page.goto(path.as_uri(), wait_until="load")
            if page.evaluate("() => !!document.querySelector('script[src*=\"mathjax\"]')"):
                try:
                    page.wait_for_function("() => window.rwkvbookMathDone === true", timeout=60_000)
                except Exception:
                    rep.problems.append("MathJax did not finish typesetting within 60 s")
            probe = page.evaluate(_PROBE)
            probes[name] = probe
            rep.formulas, rep.images = probe["formulas"], probe["images"]
            rep.problems += [f"request leaving the machine: {u}" for u in outside]
            rep.problems += [f"MathJax error: {t!r}" for t in probe["errors"]]
            rep.problems += [f"image did not load: {s}" for s in probe["badImages"]]
            left = TEX_LEFT.findall(probe["prose"])
            if left:
                rep.problems.append(f"TeX left in the text: {left[:5]}")
            if name != "index" and probe["formulas"] and fallback is None:
                fallback = name
            take = name == screenshot if screenshot else \
                (name != "index" and probe["formulas"] > 0 and probe["images"] > 0)
            if take and not shot_done:
                _photograph(page, out / "screenshot.png")
                shot_done = True
            reports.append(rep)
            page.close()
        if not shot_done and (fallback or screenshot):
            page = context.new_page()
            page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("file:", "data:")) else r.abort())
            page.goto((out / f"{screenshot or fallback}.html").as_uri(), wait_until="load")
            page.wait_for_function("() => window.rwkvbookMathDone === true", timeout=60_000)
            _photograph(page, out / "screenshot.png")
        browser.close()

    # links and prev/next, now that every page's ids are known
    ids = {name: set(p["ids"]) for name, p in probes.items()}
    for rep in reports:
        probe = probes.get(rep.name)
        if probe is None:
            continue
        for href in probe["links"]:
            rep.problems += _check_link(out, rep.name, href, ids)
        if rep.name in order:
            i = order.index(rep.name)
            want_prev = f"{order[i - 1]}.html" if i > 0 else "index.html"
            want_next = f"{order[i + 1]}.html" if i + 1 < len(order) else "index.html"
            if probe["prev"] != want_prev:
                rep.problems.append(f"previous link is {probe['prev']!r}, book.toml says {want_prev!r}")
            if probe["next"] != want_next:
                rep.problems.append(f"next link is {probe['next']!r}, book.toml says {want_next!r}")
    return reports


def _photograph(page, path: Path) -> None:
    """The page at its first displayed equation, with the text above it for context."""
    page.evaluate("() => { const m = document.querySelector('mjx-container[display]');"
                  " if (m) window.scrollTo(0, Math.max(0, m.getBoundingClientRect().top + window.scrollY - 300)); }")
    page.screenshot(path=str(path))


def _check_link(out: Path, page: str, href: str, ids: dict[str, set[str]]) -> list[str]:
    parsed = urlparse(href)
    if parsed.scheme in ("http", "https", "mailto"):
        return []                                   # a citation to read online; never loaded by the page
    if parsed.scheme:
        return [f"link with an unexpected scheme: {href}"]
    target = page if not parsed.path else Path(unquote(parsed.path)).name.removesuffix(".html")
    if parsed.path:
        path = (out / unquote(parsed.path)).resolve()
        if not path.is_file():
            return [f"broken link: {href}"]
        if path.suffix != ".html":
            return []
    known = ids.get(target, set())
    if parsed.fragment and parsed.fragment not in known and unquote(parsed.fragment) not in known:
        return [f"link to a missing anchor: {href}"]
    return []


def main(out: Path) -> int:
    """Check a build from the command line; print one line per page and return 0 when all are clean."""
    exe = find_chromium()
    if exe is None:
        print("browser check: no Chromium on this machine (Debian: apt-get install chromium)")
        return 1
    reports = check_site(Path(out))
    bad = 0
    for rep in reports:
        mark = "ok" if not rep.problems else f"{len(rep.problems)} problem(s)"
        print(f"{rep.name:<28} {rep.formulas:5d} formulas {rep.images:3d} images  {mark}")
        for p in rep.problems[:20]:
            print(f"    {p}")
        bad += bool(rep.problems)
    print(f"browser check: {len(reports) - bad}/{len(reports)} pages clean; screenshot: {Path(out) / 'screenshot.png'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("build/book")))
