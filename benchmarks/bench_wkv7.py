"""RWKV-7 kernels side by side in one run: rwkvlab's Triton kernels vs the plain-torch chunked form.

    python benchmarks/bench_wkv7.py [--B 4 --T 4096 --H 32 --D 64] [--dtype bf16] [--no-torch]

Times forward and forward+backward with ``triton.testing.do_bench`` (median over repeats, after
warm-up) and prints milliseconds, tokens per second and the ratio to the torch chunked form
measured in the same process. Also prints each kernel's relative difference to the torch
chunked output on the same inputs. Needs a CUDA GPU (the interpreter would take hours).
"""
from __future__ import annotations

import argparse
import sys

import torch


def make_inputs(B, T, H, D, dtype, seed=0):
    """Inputs with the statistics of a trained RWKV-7 layer: log w = -e^{-1/2} σ(·),
    a = -κ̂, b = κ̂ ⊙ iclr with κ̂ unit-norm per head."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    r, k, v = rnd(B, T, H, D), rnd(B, T, H, D) / D ** 0.5, rnd(B, T, H, D)
    w = -0.6065306597 * torch.sigmoid(rnd(B, T, H, D))
    kk = torch.nn.functional.normalize(rnd(B, T, H, D), dim=-1)
    iclr = torch.sigmoid(rnd(B, T, H, D))
    return [x.to(dtype) for x in (r, w, k, v, -kk, kk * iclr)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--H", type=int, default=32)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--no-torch", action="store_true", help="skip the (slow, memory-hungry) torch chunked form")
    args = p.parse_args(argv)

    import triton

    import rwkvlab
    from rwkvlab import wkv7

    if not rwkvlab.device.has_gpu():
        print("bench_wkv7: needs a CUDA GPU; the Triton interpreter is far too slow for these shapes")
        return 1
    print(rwkvlab.device.describe())
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    B, T, H, D = args.B, args.T, args.H, args.D
    xs = make_inputs(B, T, H, D, dtype)
    do = torch.randn(B, T, H, D, device="cuda", dtype=dtype)
    print(f"shape B={B} T={T} H={H} K=V={D} {args.dtype}; do_bench medians")

    impls = {"wkv7.triton_recurrent": wkv7.triton_recurrent, "wkv7.triton_chunked": wkv7.triton_chunked}
    if not args.no_torch:
        impls["wkv7.chunked (torch)"] = wkv7.chunked
    ref_name = "wkv7.chunked (torch)" if not args.no_torch else "wkv7.triton_recurrent"

    rows, outs = [], {}
    for name, f in impls.items():
        def fwd():
            return f(*xs)[0]

        leaves = [x.detach().clone().requires_grad_() for x in xs]

        def fwd_bwd():
            o, _ = f(*leaves)
            torch.autograd.grad(o, leaves, do)

        try:
            with torch.no_grad():
                outs[name] = fwd().float()
                t_f = triton.testing.do_bench(fwd, warmup=25, rep=100)
            t_fb = triton.testing.do_bench(fwd_bwd, warmup=25, rep=100)
        except torch.cuda.OutOfMemoryError:
            print(f"{name}: out of memory at this shape")
            torch.cuda.empty_cache()
            continue
        rows.append((name, t_f, t_fb))

    ref_f = dict((n, (tf, tfb)) for n, tf, tfb in rows).get(ref_name)
    print(f"{'kernel':26s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'fwd Mtok/s':>11s} "
          f"{'fwd x':>7s} {'f+b x':>7s} {'rel diff':>9s}")
    for name, t_f, t_fb in rows:
        sx = f"{ref_f[0] / t_f:6.2f}x" if ref_f else "    -  "
        sxb = f"{ref_f[1] / t_fb:6.2f}x" if ref_f else "    -  "
        diff = rwkvlab.rel_err(outs[name], outs[ref_name]) if ref_name in outs else float("nan")
        print(f"{name:26s} {t_f:9.3f} {t_fb:11.3f} {B * T / t_f / 1e3:11.2f} {sx} {sxb} {diff:9.1e}")
    print(f"(x = speed-up over {ref_name}, measured in this run; rel diff = ‖o − o_ref‖/‖o_ref‖)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
