"""Command line: ``python -m rwkvlab run`` (run the book headless), ``python -m rwkvlab book`` (build
the book as an offline website; ``run --html DIR`` does the same), ``python -m rwkvlab toc``,
``python -m rwkvlab generate --model PATH.pth --prompt ...`` (stream text from an RWKV checkpoint),
and ``python -m rwkvlab bench`` (time every implementation side by side; see :mod:`rwkvlab.bench`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkvlab", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="execute every chapter in book order and report per chapter")
    p_run.add_argument("chapters", nargs="*", help="only chapters whose file name contains one of these")
    p_run.add_argument("--html", type=Path, default=None, metavar="DIR",
                       help="build the HTML book into DIR instead (the same as `book --out DIR`)")
    p_book = sub.add_parser("book", help="execute the chapters and build the book as an offline website",
                            description="Execute the chapters in book.toml order (only those whose source or the "
                                        "package changed since the last build) and write a static site.")
    p_book.add_argument("chapters", nargs="*", help="only chapters whose file name contains one of these")
    p_book.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="the build folder (default: build/book in the checkout)")
    p_book.add_argument("--browser-check", action="store_true",
                        help="then open every page in headless Chromium and check it (see rwkvlab.site.browser)")
    sub.add_parser("toc", help="print the table of contents (as README shows it)")
    from .model import cli as _generate_cli

    _generate_cli.add_parser(sub)
    from . import bench as _bench

    p_bench = sub.add_parser("bench", help="time naive / chunked / Triton / FLA / SDPA side by side, write a CSV",
                             description=_bench.__doc__.split("\n\n")[0])
    _bench.add_arguments(p_bench)
    from .exercises import editions as _exercises

    _exercises.add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["bench", "generate"]:               # the generation benchmark has its own options
        from . import bench_generate

        return bench_generate.main(argv[2:])
    if argv[:2] == ["bench", "block"]:                  # so has the RWKV-7 layer benchmark
        from . import bench_block

        return bench_block.main(argv[2:])
    args = parser.parse_args(argv)

    if args.cmd == "generate":
        return _generate_cli.run(args)
    if args.cmd == "bench":
        return _bench.run(args, argv[argv.index("bench") + 1:])
    if args.cmd == "exercises":
        return _exercises.main(args)

    from . import book

    if args.cmd == "run" and args.html is None:
        return book.run(args.chapters)
    if args.cmd in ("run", "book"):
        from . import site

        out = args.html if args.cmd == "run" else args.out
        code = site.build(out, args.chapters)
        if code == 0 and getattr(args, "browser_check", False):
            from .site import browser

            code = browser.main(out or book.root() / site.DEFAULT_OUT)
        return code
    if args.cmd == "toc":
        print(book.toc_markdown())
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
