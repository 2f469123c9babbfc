"""Kernel by kernel: where FLA's ``chunk_rwkv7`` and our ``wkv7.triton_chunked`` spend a forward
(and, with ``--backward``, a forward+backward), from ``torch.profiler`` on one GPU.

    python benchmarks/gpu_kernel_profile.py [--backward] [--shape B,T,H] [--kind wkv6] [--ours-only]
        [--variants "bwd_dq=8,1 bwd_dkw=8,1 quarters=scan ..."]

(FLA wheels on PYTHONPATH; ``--kind wkv6`` profiles ``chunk_rwkv6`` and ``wkv6.triton_chunked``
instead; ``--ours-only`` skips FLA and its minutes of autotuning. ``--variants`` profiles ours once
more per entry, with that one launch setting of the kind's ``TUNE`` table changed, so a kernel's
time under each setting sits beside the default's in one process.)

Both run on the same inputs (``rwkvlab.bench.make_inputs``, bf16, K = V = 64, the declared lower
bound) in one process: a few warm calls first (FLA autotunes its kernels there: ~2 minutes for
the forward, ~5 with the backward), then ``--iters`` profiled calls. Prints each GPU kernel's
mean time per call (µs) and its share, so a launch of ours can be set beside the FLA launches
that do the same work. Needs a CUDA GPU; prints why not otherwise.
"""
from __future__ import annotations

import sys

import torch

import rwkvlab  # noqa: F401  (chooses the interpreter on a machine without a GPU)
from rwkvlab import wkv7


def table(fn, iters):
    """{kernel name: mean µs per call} over ``iters`` calls of ``fn``, longest first."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        if t is None:
            t = e.cuda_time_total
        if t > 0 and e.key not in ("", ) and not e.key.startswith("ProfilerStep"):
            rows[e.key] = t / iters
    return dict(sorted(rows.items(), key=lambda kv: -kv[1]))


def show(name, rows):
    total = sum(rows.values())
    print(f"{name}: {total:.1f} us of GPU kernels per call")
    for key, us in rows.items():
        print(f"    {us:9.1f} us  {100 * us / total:5.1f} %  {key[:110]}")


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not torch.cuda.is_available():
        print("no CUDA GPU here: this script profiles GPU kernels only")
        return 0
    from rwkvlab import wkv6
    from rwkvlab.bench import make_inputs
    backward = "--backward" in args
    kind = args[args.index("--kind") + 1] if "--kind" in args else "wkv7"
    B, T, H = (4, 4096, 32)
    if "--shape" in args:
        B, T, H = (int(x) for x in args[args.index("--shape") + 1].split(","))
    iters = int(args[args.index("--iters") + 1]) if "--iters" in args else 20
    x = make_inputs(kind, B, T, H, 64, dtype=torch.bfloat16, device="cuda")
    if kind == "wkv7":
        xs, kw, iv = [x[n] for n in "rwkvab"], {"lower_bound": wkv7.RWKV7_LOWER_BOUND}, 3
        runs = [("ours triton_chunked(lower_bound)", wkv7.triton_chunked)]
        if "--ours-only" not in args:
            from fla.ops.rwkv7 import chunk_rwkv7
            runs.insert(0, ("FLA chunk_rwkv7(lower_bound)", lambda *t, **k: chunk_rwkv7(*t, scale=1.0, **k)))
    else:
        xs, kw, iv = [x[n] for n in ("r", "k", "v", "w", "u")], {}, 2
        runs = [("ours wkv6.triton_chunked", wkv6.triton_chunked)]
        if "--ours-only" not in args:
            from fla.ops.rwkv6 import chunk_rwkv6
            runs.insert(0, ("FLA chunk_rwkv6", lambda *t, **k: chunk_rwkv6(*t, scale=1.0, **k)))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {kind} B={B} T={T} H={H} K=V=64 bf16, "
          f"{'forward+backward' if backward else 'forward'}, {iters} profiled calls", flush=True)
    for name, fn in runs:
        leaves = [t.detach().clone().requires_grad_(backward) for t in xs]
        do = torch.randn_like(xs[iv])

        def call():
            o, _ = fn(*leaves, output_final_state=True, **kw)
            if backward:
                o.backward(do)
                for t in leaves:
                    t.grad = None

        for _ in range(3):
            call()
        show(name, table(call, iters))
    from rwkvlab.wkv6 import kernels_subchunk
    from rwkvlab.wkv7 import kernels_chunked
    tune = (kernels_subchunk if kind == "wkv6" else kernels_chunked).TUNE
    for spec in (args[args.index("--variants") + 1].split() if "--variants" in args else []):
        key, val = spec.split("=")
        old, tune[key] = tune[key], (tuple(int(v) for v in val.split(",")) if val[0].isdigit() else val)
        try:
            for _ in range(3):
                call()
            show(f"{runs[-1][0]} with TUNE[{key!r}] = {tune[key]} (default {old})", table(call, iters))
        except Exception as e:  # a setting that does not compile or launch: say so, go on
            print(f"TUNE[{key!r}] = {tune[key]}: {type(e).__name__}: {str(e)[:200]}", flush=True)
        finally:
            tune[key] = old
    return 0


if __name__ == "__main__":
    sys.exit(main())
