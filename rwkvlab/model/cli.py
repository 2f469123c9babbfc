"""``python -m rwkvlab generate``: stream text from an RWKV-6/7 checkpoint in RNN mode.

The prompt is read in parallel mode (one call), then one RNN step per token; stderr gets a header
line and, at the end, prefill and decode tokens per second. Every mistake in the options or the
checkpoint is one line on stderr and exit status 2, before anything is generated."""
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
    p.add_argument("--dtype", default="fp32", help="weights and activations: fp32, bf16 or fp16 (the WKV state "
                                                   "stays float32; default fp32)")
    p.add_argument("--batch", type=int, default=1, help="generate this many continuations of the prompt at once "
                                                        "(each its own sample; default 1)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the GPU if there is one)")
    p.add_argument("--threads", type=int, default=None, help="CPU: torch threads (default: torch's choice, and one "
                                                            "while decoding a model under 32 MiB of weights)")
    p.add_argument("--quiet", action="store_true", help="no header or timing lines on stderr")


IMPLS = ("naive", "chunked", "triton_recurrent", "triton_chunked")
DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16", "half": "float16"}


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
    if args.dtype not in DTYPES:
        return _fail("--dtype", f"expected fp32, bf16 or fp16, got {args.dtype!r}")
    if args.batch < 1:
        return _fail("--batch", f"expected >= 1, got {args.batch}")
    if args.threads is not None and args.threads < 1:
        return _fail("--threads", f"expected >= 1, got {args.threads}")
    if not Path(args.model).is_file():
        return _fail("--model", f"no checkpoint file at {str(args.model)!r} (run without --model to see where "
                                "to get one)")
    import time

    t_start = time.perf_counter()
    import torch

    from .. import device as _dev
    from .. import tokenizer as tk
    from . import load

    dtype = getattr(torch, DTYPES[args.dtype])
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = "auto" if args.threads is None else None         # an explicit --threads is used as given
    try:
        model = load(args.model, dtype=dtype, impl=args.impl,
                     device=args.device if args.device is not None else _dev.device())
    except ValueError as e:
        option = "--device" if str(e).startswith("device:") else "--model"
        return _fail(option, e)
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
    say = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"[{model.version}: {c.n_layer} blocks, C = {c.n_embd}, {c.n_head} heads of {c.head_size}, "
        f"vocab {c.vocab_size}; {type(tok).__name__}; {str(dtype).replace('torch.', '')} on "
        f"{model.emb.weight.device}; ready in {time.perf_counter() - t_start:.2f} s]")
    if args.batch == 1:
        stream = tk.StreamDecoder(tok)
        out.write(args.prompt)
        out.flush()
        gen = model.generate(ids, args.tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                             threads=threads)
        for t in gen:
            out.write(stream.push(t))
            out.flush()
        out.write(stream.flush() + "\n")
        out.flush()
        stats = gen.stats
    else:
        res = model.generate_batch([ids] * args.batch, args.tokens, temperature=args.temperature,
                                   top_p=args.top_p, seed=args.seed, threads=threads)
        for b, toks in enumerate(res.tokens):
            out.write(f"--- {b}\n{args.prompt}{tok.decode(toks)}\n")
        out.flush()
        stats = res.stats
    say(f"[{stats.line()}]")
    return 0
