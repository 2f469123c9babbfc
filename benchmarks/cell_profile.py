"""Time chosen code cells of a chapter and profile the last one (where do a cell's seconds go?).

    python benchmarks/cell_profile.py notebooks/11_wkv7_triton_chunked.py 0,1,21 [--top 25]

Runs the listed code cells (0-based, counting code cells only) in order in one namespace, as the
kernel would, with matplotlib drawing off screen; prints each cell's wall time, then runs the
last cell again under cProfile (a second run: its kernels are compiled by then) and prints the
functions with the most cumulative time. Only the cells named run, so the earlier ones must hold
what the last needs (usually the import cells and the helper definitions).
"""
from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    top = int(args[args.index("--top") + 1]) if "--top" in args else 25
    path, wanted = args[0], [int(n) for n in args[1].split(",")]
    import jupytext
    import matplotlib

    matplotlib.use("Agg")
    cells = [c.source for c in jupytext.read(path).cells if c.cell_type == "code"]
    ns = {"__name__": "__main__"}
    for n in wanted:
        t0 = time.perf_counter()
        exec(compile(cells[n], f"{path}:cell{n}", "exec"), ns)
        print(f"== cell {n}: {time.perf_counter() - t0:.2f} s (first run)", flush=True)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(exec, compile(cells[wanted[-1]], f"{path}:cell{wanted[-1]}", "exec"), ns)
    print(f"== cell {wanted[-1]} again, profiled: {time.perf_counter() - t0:.2f} s", flush=True)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
