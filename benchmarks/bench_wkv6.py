"""RWKV-6 kernels side by side on one GPU: Triton recurrent, Triton chunked (both schedules), torch chunked.

    python benchmarks/bench_wkv6.py [--B 4 --T 4096 --H 32 --K 64 --V 64] [--dtype bf16]

Times the forward and the forward+backward of each implementation with
``triton.testing.do_bench`` (median of repeated runs after warm-up) in one process, and prints a
table of milliseconds, the ratio to the plain-torch ``rwkvlab.wkv6.chunked`` measured in the same
run, and each output's relative difference from the torch chunked output on the same inputs.
GPU only: in the Triton interpreter a benchmark would measure the interpreter.
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import rwkvlab  # noqa: E402
from rwkvlab import rel_err, wkv6  # noqa: E402


def make_inputs(B, T, H, K, V, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    r, k, v = rnd(B, T, H, K), rnd(B, T, H, K) / K ** 0.5, rnd(B, T, H, V)
    w = -torch.exp(rnd(B, T, H, K) * 0.5 - 1.0)  # Finch-like log decays: factors ~0.9 .. 0.1
    u = rnd(H, K) * 0.5
    return [x.to(dtype).requires_grad_() for x in (r, k, v, w, u)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in [("B", 4), ("T", 4096), ("H", 32), ("K", 64), ("V", 64)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--no-torch", action="store_true", help="skip the plain-torch chunked baseline")
    a = p.parse_args(argv)
    if not rwkvlab.device.has_gpu():
        print("bench_wkv6: needs a CUDA GPU (in the interpreter it would time the interpreter)")
        return 0
    import triton

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    print(rwkvlab.device.describe())
    print(f"shape B={a.B} T={a.T} H={a.H} K={a.K} V={a.V} {a.dtype}; medians of triton.testing.do_bench (ms)")
    xs = make_inputs(a.B, a.T, a.H, a.K, a.V, dtype)
    do = torch.randn_like(xs[2])
    impls = [] if a.no_torch else [("torch chunked (C=16)", functools.partial(wkv6.chunked, chunk_size=16))]
    impls += [("triton_recurrent", wkv6.triton_recurrent)]
    impls += [(f"triton_chunked (C={c})", functools.partial(wkv6.triton_chunked, chunk_size=c)) for c in (16, 32, 64)]
    # the opt-in parallel schedule (state pass, then outputs parallel over chunks): not yet timed on a GPU
    impls += [("triton_chunked parallel (C=16)", functools.partial(wkv6.triton_chunked, chunk_size=16,
                                                                   schedule="parallel"))]

    ref = None
    rows = []
    for name, fn in impls:
        def fwd():
            with torch.no_grad():
                return fn(*xs)[0]

        def fwd_bwd():
            o, _ = fn(*xs)
            torch.autograd.backward(o, do)

        o = fwd()
        ref = o if ref is None else ref
        err = rel_err(o.float(), ref.float())
        t_f = triton.testing.do_bench(fwd, warmup=25, rep=100)
        for x in xs:
            x.grad = None
        t_fb = triton.testing.do_bench(fwd_bwd, warmup=25, rep=100, grad_to_none=xs)
        rows.append((name, t_f, t_fb, err))
        torch.cuda.empty_cache()

    base_f, base_fb = rows[0][1], rows[0][2]
    first = rows[0][0]
    print(f"| implementation | fwd ms | fwd+bwd ms | fwd vs {first} | fwd+bwd vs {first} | rel diff of o |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, t_f, t_fb, err in rows:
        print(f"| {name} | {t_f:.3f} | {t_fb:.3f} | {base_f / t_f:.2f}x | {base_fb / t_fb:.2f}x | {err:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
