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


def run(args: argparse.Namespace, out=None) -> int:
    out = out or sys.stdout
    if args.model is None or not Path(args.model).is_file():
        if args.model is not None:
            print(f"generate: no checkpoint file at {str(args.model)!r}\n", file=sys.stderr)
        print(WHERE_TO_GET, file=sys.stderr)
        return 2
    if args.tokens < 0:
        print("generate: --tokens must be >= 0", file=sys.stderr)
        return 2
    import torch

    from .. import device as _dev
    from .. import tokenizer as tk
    from . import load

    model = load(args.model, impl=args.impl, device=_dev.device())
    model.eval()
    try:
        tok = tk.for_vocab(model.cfg.vocab_size, args.vocab)
    except ValueError as e:
        print(f"generate: {e}", file=sys.stderr)
        return 2
    c = model.cfg
    print(f"[{model.version}: {c.n_layer} blocks, C = {c.n_embd}, {c.n_head} heads of {c.head_size}, "
          f"vocab {c.vocab_size}; {type(tok).__name__}]", file=sys.stderr)
    ids = tok.encode(args.prompt)
    if not ids:
        ids = [0]
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
