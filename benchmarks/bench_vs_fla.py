"""rwkvlab's Triton kernels next to flash-linear-attention's, side by side in one run (GPU only).

    python benchmarks/bench_vs_fla.py [--B 4 --T 4096 --H 32 --D 64] [--dtype bf16]

For each mechanism (wkv6, wkv7) and each kernel it times the forward and the forward+backward
with ``triton.testing.do_bench`` (median of repeated runs, after warm-up) and prints a table of
milliseconds, FLA's kernels and rwkvlab's measured in the same process. It also prints the
relative difference between rwkvlab's and FLA's outputs on the same inputs: FLA is an independent
implementation of the same contract, so agreement is a cross-check of the layout and conventions.

FLA is optional: if ``fla`` cannot be imported the table shows rwkvlab alone. (On the device machine
used for the book, ``fla-core`` was carried as a wheel; see the README's benchmark section.)
"""
from __future__ import annotations

import argparse
import functools
import sys

import torch


def make_inputs(kind: str, B: int, T: int, H: int, D: int, dtype, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    r, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, D)
    if kind == "wkv6":
        # Finch decay: log w = -exp(d), d around -2 .. 1 (factors from ~0.9 down to ~0.07)
        w = -torch.exp(rnd(B, T, H, D) * 0.5 - 1.0)
        u = rnd(H, D) * 0.5
        k = k / D ** 0.5
        return dict(r=r.to(dtype), k=k.to(dtype), v=v.to(dtype), w=w.to(dtype), u=u.to(dtype))
    # Goose decay: log w = -e^{-0.5} sigmoid(d) in (-0.607, 0); a = -kk, b = kk * iclr
    w = -0.6065306597 * torch.sigmoid(rnd(B, T, H, D))
    kk = torch.nn.functional.normalize(rnd(B, T, H, D), dim=-1)
    iclr = torch.sigmoid(rnd(B, T, H, D))
    k = k / D ** 0.5
    return dict(r=r.to(dtype), w=w.to(dtype), k=k.to(dtype), v=v.to(dtype), a=(-kk).to(dtype), b=(kk * iclr).to(dtype))


def kernels(kind: str, with_recurrent: bool = False):
    import importlib

    mod = importlib.import_module(f"rwkvlab.{kind}")
    ours = {f"rwkvlab.{kind}.{n}": getattr(mod, n) for n in ("triton_recurrent", "triton_chunked") if hasattr(mod, n)}
    if kind == "wkv6":  # the opt-in parallel schedule of triton_chunked (FLA's split; not yet timed on a GPU)
        ours["rwkvlab.wkv6.triton_chunked parallel"] = functools.partial(mod.triton_chunked, schedule="parallel")
    theirs = {}
    try:
        if kind == "wkv6":
            from fla.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6
            theirs = {"fla chunk_rwkv6": chunk_rwkv6}
            if with_recurrent:
                theirs["fla fused_recurrent_rwkv6"] = fused_recurrent_rwkv6
        else:
            from fla.ops.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7
            theirs = {"fla chunk_rwkv7": chunk_rwkv7}
            if with_recurrent:
                theirs["fla fused_recurrent_rwkv7"] = fused_recurrent_rwkv7
    except Exception as e:  # noqa: BLE001 - FLA is optional
        print(f"(flash-linear-attention not available: {type(e).__name__}: {e})")
    return ours, theirs


def call(fn, inp):
    o, _ = fn(**inp, scale=1.0, output_final_state=True)
    return o


def bench(fn, inp, backward: bool):
    from triton.testing import do_bench

    if not backward:
        return do_bench(lambda: call(fn, inp), warmup=50, rep=300, return_mode="median")
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in inp.items()}
    do = torch.randn_like(inp["v"])

    def step():
        for t in leaves.values():
            t.grad = None
        call(fn, leaves).backward(do)
    return do_bench(step, warmup=50, rep=300, return_mode="median")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--H", type=int, default=32)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--kinds", default="wkv6,wkv7")
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--fla-recurrent", action="store_true",
                   help="also time FLA's fused recurrent kernels (their backward autotunes for minutes)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_vs_fla needs a CUDA GPU")
        return 1
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    import triton

    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {triton.__version__}; "
          f"B={args.B} T={args.T} H={args.H} K=V={args.D} {args.dtype}; do_bench medians in ms")
    print(f"\n{'kernel':<36} {'fwd ms':>8} {'fwd+bwd ms':>11} {'rel diff vs FLA chunk':>22}", flush=True)
    for kind in args.kinds.split(","):
        inp = make_inputs(kind, args.B, args.T, args.H, args.D, dtype)
        ours, theirs = kernels(kind, args.fla_recurrent)
        ref_name = next((n for n in theirs if "chunk" in n), None)
        ref_out = call(theirs[ref_name], inp).float() if ref_name else None
        for name, fn in {**ours, **theirs}.items():
            try:
                out = call(fn, inp).float()
                diff = (out - ref_out).norm().item() / ref_out.norm().item() if ref_out is not None else float("nan")
                fwd = bench(fn, inp, False)
                bwd = float("nan") if args.no_backward else bench(fn, inp, True)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"{name}: failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
                continue
            print(f"{name:<36} {fwd:8.3f} {bwd:11.3f} {diff:22.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
