"""wkv7 chunked v4 (prep kernel writes every state-free piece; state pass of five accumulating
products, next chunk prefetched) on the H200: correctness, then ours vs FLA in one process.

    python3 benchmarks/results/h200_wkv7_v4_2026-12-01.py   (FLA wheels on PYTHONPATH)

FLA forward only (its fwd+bwd autotune costs ~5 minutes a process); ours fwd+bwd at T=4096.
The launch-by-launch sweep is benchmarks/gpu_wkv7_breakdown.py."""
import sys, time, torch
from triton.testing import do_bench
from rwkvlab import wkv7
from rwkvlab.checking import rel_err
from rwkvlab.wkv7 import kernels_chunked as kc
from rwkvlab.bench import make_inputs
LB = wkv7.RWKV7_LOWER_BOUND
dev = "cuda"
t0 = time.time()
print(torch.cuda.get_device_name(), torch.__version__, __import__("triton").__version__, flush=True)

def xs(B, T, H, D, dtype, seed=0):
    x = make_inputs("wkv7", B, T, H, D, dtype=dtype, device=dev, seed=seed)
    return [x[n] for n in "rwkvab"]

def grads(fn, x, h0, go, gs, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in x]
    s = h0.detach().clone().requires_grad_()
    o, S = fn(*leaves, initial_state=s, output_final_state=True, **kw)
    g = torch.autograd.grad((o.double() * go).sum() + (S.double() * gs).sum(), [*leaves, s])
    return (o, S, *g)

for dtype in (torch.float32, torch.bfloat16):
    x = xs(2, 512, 4, 64, dtype, seed=1)
    h0 = torch.randn(2, 4, 64, 64, device=dev)
    go = torch.randn(2, 512, 4, 64, device=dev, dtype=torch.float64)
    gs = torch.randn(2, 4, 64, 64, device=dev, dtype=torch.float64)
    ref = grads(wkv7.chunked, [t.double() for t in x], h0.double(), go, gs, chunk_size=16)
    for name, kw in (("hybrid", {}), ("bounded", {"lower_bound": LB})):
        got = grads(kc.triton_chunked, x, h0, go, gs, **kw)
        print(f"{str(dtype)[6:]:9s} {name:8s}", " ".join(f"{n}={rel_err(a, b):.1e}" for n, a, b in
              zip(["o", "S", "r", "w", "k", "v", "a", "b", "h0"], got, ref)), flush=True)
# varlen and strong decay (both paths) in fp32
x = xs(1, 1000, 2, 64, torch.float32, seed=2); x[1] = x[1] * 8
cu = torch.tensor([0, 5, 300, 301, 1000], device=dev)
o, S = kc.triton_chunked(*x, output_final_state=True, cu_seqlens=cu)
o2, S2 = wkv7.naive(*[t.double() for t in x], output_final_state=True, cu_seqlens=cu)
print(f"varlen + strong decay fp32: o {rel_err(o, o2):.1e} S {rel_err(S, S2):.1e}", flush=True)
try:
    kc.triton_chunked(*x, lower_bound=LB)
    print("ERROR: bound violation not caught")
except ValueError as e:
    print("bound violation:", str(e)[:80], flush=True)

def bench(fn, x, bwd=True, **kw):
    f = do_bench(lambda: fn(*x, output_final_state=True, **kw), warmup=25, rep=100, return_mode="median")
    if not bwd:
        return f, float("nan")
    leaves = [t.detach().clone().requires_grad_() for t in x]
    do = torch.randn_like(x[3])
    def step():
        o, _ = fn(*leaves, output_final_state=True, **kw)
        o.backward(do)
    return f, do_bench(step, warmup=25, rep=100, grad_to_none=leaves, return_mode="median")

from fla.ops.rwkv7 import chunk_rwkv7
fla = lambda *a, **k: chunk_rwkv7(*a, scale=1.0, **k)
print("TUNE", kc.TUNE, flush=True)
for (B, T, H) in ((4, 4096, 32), (4, 1024, 32), (4, 16384, 32), (1, 65536, 8)):
    x = xs(B, T, H, 64, torch.bfloat16)
    for name, fn, kw in (("ours hybrid", kc.triton_chunked, {}), ("ours lower_bound", kc.triton_chunked, {"lower_bound": LB}),
                         ("FLA lower_bound", fla, {"lower_bound": LB})):
        f, fb = bench(fn, x, bwd=T == 4096 and not name.startswith("FLA"), **kw)
        print(f"B={B} T={T} H={H} {name:17s} fwd {f:.3f} fwd+bwd {fb:.3f}  ({time.time()-t0:.0f}s)", flush=True)
