"""Check and time the CUDA-graph decode path on a GPU (not run in CI: this machine has none).

    python benchmarks/gpu_generate_check.py                 # 0.1B shape, bf16, batch 1 and 64
    python benchmarks/gpu_generate_check.py --size 1.5b --dtype fp16 --batch 1,8,64

For each batch size it

1. builds an RWKV-7 model of the official shape with random weights (rwkvlab.bench_generate.build),
2. reads the same prompt with ``model.prefill`` and decodes ``--tokens`` greedy steps three ways on
   identical inputs: the eager lean decoder, the graph-replayed decoder
   (``rwkvlab.model.generation.GraphStepper(capture=True)``) and the differentiable reference step
   (blocks + ``wkv7.step``, in float32 as the ground truth),
3. checks that graph replay gives the eager logits and states (relative difference <= 1e-6 in
   float32, 1e-3 in bf16/fp16: the same kernels on the same buffers, so any real mistake, a stale
   buffer or a state not carried, shows up as O(1)), and reports both against the float32
   reference (bf16: a few 1e-3 expected),
4. times eager vs graph per step (CUDA events, median of ``--reps``) and ``generate_batch``'s own
   decode rate, and prints one line per batch size;
5. does the same graph replay with the decoder's other WKV path (``x070.Decoder(fused=...)``: the
   one-kernel Triton WKV part, the default on CUDA, against the torch operations it replaces),
   checks that the two paths agree (1e-5 in float32; 5e-2 in bf16/fp16, where the torch path rounds
   its intermediates to the activations' dtype) and times its step beside the default's.

Exit status 1 if a check fails. Paste the printed lines into benchmarks/NOTES.md (generation section).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def time_steps(fn, n, reps, cuda: bool):
    """Median ms per call: CUDA events on a GPU, perf_counter otherwise (the --cpu-dry-run)."""
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / n)
        else:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times.append((time.perf_counter() - t0) * 1e3 / n)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="0.1b", choices=["ch14", "0.1b", "1.5b"])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--batch", default="1,64")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="run the same script with the eager stand-in for the graph, on the book's device "
                        "(CPU here; tests this file)")
    args = p.parse_args(argv)
    cuda = not args.cpu_dry_run
    if cuda and not torch.cuda.is_available():
        print("gpu_generate_check: no CUDA GPU here; run it on a GPU machine (or --cpu-dry-run)", file=sys.stderr)
        return 2
    from rwkvlab.bench_generate import build
    from rwkvlab.model import x070
    from rwkvlab.model.generation import EagerStepper, GraphStepper

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    # the dry run uses the book's device: CPU with the Triton interpreter here; on a GPU machine
    # CUDA (Triton kernels take CUDA tensors there), still without capture or timing by events
    from rwkvlab import device as _device
    dev = torch.device("cuda") if cuda else _device.device()
    m = build(args.size, dtype, dev)
    ref = build(args.size, torch.float32, dev)                 # the same weights (same seed), float32
    V = m.cfg.vocab_size
    name = torch.cuda.get_device_name(0) if cuda else f"dry run on {dev.type} (graph = eager stand-in)"
    print(f"{name}; torch {torch.__version__}; {args.size} {args.dtype}")
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    tol_paths = 1e-5 if dtype == torch.float32 else 5e-2      # fused vs torch WKV: different roundings
    ok = True
    for B in [int(b) for b in args.batch.split(",")]:
        g = torch.Generator().manual_seed(B)
        prompt = torch.randint(0, V, (B, 16), generator=g).to(dev)
        toks = torch.randint(0, V, (args.tokens, B), generator=g).to(dev)       # teacher-forced inputs
        with torch.no_grad():
            _, s0 = m.prefill(prompt)
            _, s_ref = ref.prefill(prompt)
            dec = m.decoder()
            eager = EagerStepper(dec, B)
            graph = GraphStepper(dec, B, capture=cuda)
            other = GraphStepper(x070.Decoder(m, fused=not dec.fused), B, capture=cuda)   # the other WKV path
            eager.load(s0)
            graph.load(s0)
            other.load(s0)
            worst_eq, worst_ref, worst_paths, worst_other_ref = 0.0, 0.0, 0.0, 0.0
            for t in range(args.tokens):
                le = eager(toks[t]).clone()
                lg = graph(toks[t]).clone()
                lo = other(toks[t]).clone()
                lr, s_ref = ref.reference_step(toks[t], s_ref)
                worst_eq = max(worst_eq, rel(lg, le))
                worst_ref = max(worst_ref, rel(lg.float(), lr))
                worst_paths = max(worst_paths, rel(lo, lg))
                worst_other_ref = max(worst_other_ref, rel(lo.float(), lr))
            st_eq = max(rel(a, b) for la, lb in zip(graph.state, eager.state) for a, b in zip(la, lb))
            ms_eager = time_steps(lambda: eager(toks[0]), args.tokens, args.reps, cuda)
            ms_graph = time_steps(lambda: graph(toks[0]), args.tokens, args.reps, cuda)
            ms_other = time_steps(lambda: other(toks[0]), args.tokens, args.reps, cuda)
            res = m.generate_batch(prompt.tolist(), args.tokens, temperature=0)
        good = worst_eq <= tol and st_eq <= tol
        good_paths = worst_paths <= tol_paths
        ok &= good and good_paths
        path, other_path = ("fused", "torch") if dec.fused else ("torch", "fused")
        print(f"B={B:3d} ({path} WKV): graph vs eager logits {worst_eq:.1e}, state {st_eq:.1e} "
              f"({'ok' if good else 'FAIL'}); vs float32 reference {worst_ref:.1e}; step eager {ms_eager:.3f} ms, "
              f"graph {ms_graph:.3f} ms ({ms_eager / ms_graph:.1f}x); generate_batch decode "
              f"{res.stats.decode_tps:,.0f} tok/s")
        print(f"       {other_path} WKV: graph {ms_other:.3f} ms ({ms_other / ms_graph:.2f}x the {path} graph step); "
              f"logits vs {path} {worst_paths:.1e} ({'ok' if good_paths else 'FAIL'}), "
              f"vs float32 reference {worst_other_ref:.1e}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
