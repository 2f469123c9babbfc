"""A quick GPU check of the Triton kernels' gradients in bf16, before a timing run.

    python benchmarks/gpu_grad_check.py [wkv6] [wkv7]      (default: both)

For each kind: the benchmark's inputs (``rwkvlab.bench.make_inputs``, B=2, T=1024, H=4,
K=V=64), rounded to bf16; the outputs' and every gradient's relative error (Frobenius norm) of
``triton_chunked`` in bf16 against the torch ``chunked`` form in float32 on the same rounded
inputs, with the same random output and final-state gradients. The float32 reference on a
bf16-rounded input isolates the kernel's own error; the test suite states and checks the
tolerances (tests/test_wkv6_triton.py, tests/test_wkv7_triton.py). Prints one line per kind.
"""
from __future__ import annotations

import sys

import torch

from rwkvlab import rel_err, wkv6, wkv7
from rwkvlab.bench import make_inputs


def check(kind):
    mod = wkv6 if kind == "wkv6" else wkv7
    names = "rkvwu" if kind == "wkv6" else "rwkvab"
    x = make_inputs(kind, 2, 1024, 4, 64, dtype=torch.bfloat16, device="cuda", seed=3)
    extra = {} if kind == "wkv6" else {"lower_bound": wkv7.RWKV7_LOWER_BOUND}
    g = torch.Generator(device="cuda").manual_seed(4)
    grads = {}
    for name, dt, fn in (("ours", torch.bfloat16, mod.triton_chunked), ("ref", torch.float32, mod.chunked)):
        leaves = [x[n].to(dt).clone().requires_grad_() for n in names]
        kw = extra if name == "ours" else {}
        o, ht = fn(*leaves, output_final_state=True, **kw)
        if name == "ours":
            do = torch.randn(o.shape, generator=g, device="cuda")
            dht = torch.randn(ht.shape, generator=g, device="cuda")
        torch.autograd.backward([o.float(), ht.float()], [do, dht])
        grads[name] = [o.detach(), ht.detach()] + [t.grad for t in leaves]
    errs = [rel_err(a, b) for a, b in zip(grads["ours"], grads["ref"])]
    labels = ["o", "state"] + [f"d{n}" for n in names]
    print(f"{kind} bf16 triton_chunked vs float32 chunked (B=2 T=1024 H=4 K=V=64): "
          + "  ".join(f"{n} {e:.1e}" for n, e in zip(labels, errs)), flush=True)
    return max(errs)


if __name__ == "__main__":
    kinds = sys.argv[1:] or ["wkv6", "wkv7"]
    worst = max(check(k) for k in kinds)
    sys.exit(0 if worst < 5e-2 else 1)
