"""The README's map of the package stays true: every module is listed once, and its "chapters"
column names exactly the chapters that import it or reach it as ``rwkvlab.<module>``."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules() -> list[str]:
    """Every module of the package as a dotted name (a package by its own name); the per-chapter
    exercise modules ``rwkvlab.exercises.ch01`` … count as one entry, ``rwkvlab.exercises.chNN``."""
    out = set()
    for p in (ROOT / "rwkvlab").rglob("*.py"):
        if "__pycache__" in p.parts:
            continue
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out.add(re.sub(r"\.exercises\.ch\d\d$", ".exercises.chNN", name))
    return sorted(out)


def chapter_uses(path: Path, known: set[str]) -> set[str]:
    """Modules a chapter imports (``import rwkvlab.x``, ``from rwkvlab.x import y``, ``from rwkvlab
    import x``) or names as an attribute chain ``rwkvlab.x.y``."""
    src = path.read_text(encoding="utf-8")
    used = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            used |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rwkvlab"):
            used.add(node.module)
            used |= {f"{node.module}.{a.name}" for a in node.names}
    used |= set(re.findall(r"\brwkvlab(?:\.\w+)+", src))
    # a submodule's use is a use of every package above it
    closed = set()
    for name in used:
        parts = name.split(".")
        closed |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return closed & known


def readme_map() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The package", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`(rwkvlab[\w.]*)`\s*\|.*\|\s*([^|]*)\|\s*$", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} is listed twice in README's map"
            chapters = m.group(2).strip()
            rows[m.group(1)] = [] if chapters in ("", "—", "-") else [c.strip() for c in chapters.split(",")]
    return rows


def chapter_ids() -> dict[str, list[Path]]:
    """Chapter number → its files (a number may hold two chapters, e.g. 14)."""
    out: dict[str, list[Path]] = {}
    for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.py")):
        out.setdefault(p.name.split("_", 1)[0], []).append(p)
    return out


def test_every_module_is_in_the_map_and_nothing_else():
    listed = set(readme_map())
    actual = set(modules()) - {"rwkvlab"}
    assert actual - listed == set(), f"modules missing from README's map: {sorted(actual - listed)}"
    assert listed - actual == set(), f"README's map lists modules that do not exist: {sorted(listed - actual)}"


def test_the_chapters_column_is_what_the_chapters_use():
    known = set(modules())
    uses = {cid: set().union(*(chapter_uses(p, known) for p in paths)) for cid, paths in chapter_ids().items()}
    for module, claimed in readme_map().items():
        actual = sorted(cid for cid, used in uses.items() if module in used)
        assert sorted(claimed) == actual, f"{module}: README says chapters {claimed}, the chapters use it in {actual}"


def test_the_map_check_can_fail(tmp_path):
    """The extractor sees an import, a from-import and an attribute chain, and ignores prose."""
    src = tmp_path / "99_x.py"
    src.write_text("import torch\nfrom rwkvlab import wkv6\nfrom rwkvlab.wkv7 import reference\n"
                   "rwkvlab.device.device()\n# a comment naming rwkvlab.aft\n", encoding="utf-8")
    got = chapter_uses(src, set(modules()))
    assert {"rwkvlab.wkv6", "rwkvlab.wkv7.reference", "rwkvlab.wkv7", "rwkvlab.device"} <= got
    assert "rwkvlab.aft" in got   # an attribute chain in a comment counts too: prose naming a module is a use
