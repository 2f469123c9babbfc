"""``python -m rwkvlab generate``: stream text from an RWKV-6/7 checkpoint in RNN mode."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

WHERE_TO_GET = """\
generate needs a checkpoint: --model PATH.pth

Official RWKV checkpoints are BlinkDL's .pth files on Hugging Face, e.g.
  RWKV-7 (x070):  https://huggingface.co/BlinkDL/rwkv7-g1        (G1 series, World vocabulary)
                  https://huggingface.co/BlinkDL/rwkv-7-world
  RWKV-6 (x060):  https://huggingface.co/BlinkDL/rwkv-6-world
Download one file (the 0.1B ones run on a laptop CPU) and pass its path:
  python -m rwkvlab generate --model rwkv7-g1-0.1b-....pth --prompt "The Eiffel tower is in"
World models use the 65,536-token World vocabulary (shipped in the `rwkv` pip package, or
--vocab PATH). The book's own small models (chapter 14 saves one) use bytes (vocabulary 256).
"""


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="stream text from an RWKV-6/7 .pth checkpoint (RNN mode)",
                       description=__doc__)
    p.add_argument("--model", type=Path, default=None, help="official RWKV-LM .pth checkpoint (x060 or x070)")
    p.add_argument("--prompt", default="\n", help="text to start from")
    p.add_argument("--tokens", type=int, default=100, help="how many tokens to generate (default 100)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy (default 1.0)")
    p.add_argument("--top-p", type=float, default=0.85, help="nucleus sampling mass (default 0.85)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--vocab", type=Path, default=None, help="World vocabulary file (default: the one in the rwkv package)")
    p.add_argument("--impl", default=None, help="WKV core for reading the prompt: naive, chunked, triton_chunked, ...")


IMPLS = ("naive", "chunked", "triton_recurrent", "triton_chunked")


def _fail(option: str, message: str) -> int:
    """One line on stderr naming the option, and exit status 2 (as argparse does for bad usage)."""
    print(f"generate: {option}: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace, out=None) -> int:
    out = out or sys.stdout
    # every option is checked before the model is read and before anything is printed
    if args.model is None:
        print(WHERE_TO_GET, file=sys.stderr)
        return 2
    if args.tokens < 0:
        return _fail("--tokens", f"expected >= 0, got {args.tokens}")
    if not args.temperature >= 0 or args.temperature == float("inf"):       # NaN fails the first test
        return _fail("--temperature", f"expected a finite number >= 0 (0 = greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        return _fail("--top-p", f"expected a value in (0, 1], got {args.top_p}")
    if args.impl is not None and args.impl not in IMPLS:
        return _fail("--impl", f"expected one of {', '.join(IMPLS)}, got {args.impl!r}")
    if not Path(args.model).is_file():
        return _fail("--model", f"no checkpoint file at {str(args.model)!r} (run without --model to see where "
                                "to get one)")
    import torch

    from .. import device as _dev
    from .. import tokenizer as tk
    from . import load

    try:
        model = load(args.model, impl=args.impl, device=_dev.device())
    except ValueError as e:
        return _fail("--model", e)
    model.eval()
    c = model.cfg
    if c.vocab_size not in (256, 65536):
        return _fail("--model", f"no built-in tokenizer for its {c.vocab_size}-token vocabulary "
                                "(256 → bytes, 65536 → RWKV World)")
    try:
        tok = tk.for_vocab(c.vocab_size, args.vocab)
    except ValueError as e:
        return _fail("--vocab", e)
    try:
        ids = tok.encode(args.prompt)
    except ValueError as e:
        return _fail("--prompt", e)
    if not ids:
        ids = [0]
    print(f"[{model.version}: {c.n_layer} blocks, C = {c.n_embd}, {c.n_head} heads of {c.head_size}, "
          f"vocab {c.vocab_size}; {type(tok).__name__}]", file=sys.stderr)
    stream = tk.StreamDecoder(tok)
    out.write(args.prompt)
    out.flush()
    with torch.no_grad():
        for t in model.generate(ids, args.tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed):
            out.write(stream.push(t))
            out.flush()
    out.write(stream.flush() + "\n")
    out.flush()
    return 0
