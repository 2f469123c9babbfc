"""wkv7 chunked v3 (prep kernel + light state pass) on the H200: correctness, launch sweep, vs FLA."""
import sys, time, torch
from triton.testing import do_bench
from rwkvlab import wkv7
from rwkvlab.checking import rel_err
from rwkvlab.wkv7 import kernels_chunked as kc
from rwkvlab.bench import make_inputs
LB = kc.RWKV7_LOWER_BOUND
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

x = xs(4, 4096, 32, 64, torch.bfloat16)
base = dict(kc.TUNE)
best = (1e9, None)
for fwd in ((4, 2, 64), (8, 2, 64), (4, 3, 64), (4, 2, 32), (8, 2, 32), (4, 1, 64)):
    for prep in ((4, 2),):
        kc.TUNE.update(fwd=fwd, prep=prep)
        try:
            f, _ = bench(kc.triton_chunked, x, bwd=False, lower_bound=LB)
            print(f"fwd tune {fwd} prep {prep}: bounded fwd {f:.3f} ms ({time.time()-t0:.0f}s)", flush=True)
            best = min(best, (f, fwd))
        except Exception as e:
            print(f"fwd tune {fwd}: FAILED {type(e).__name__} {str(e)[:200]}", flush=True)
kc.TUNE.update(fwd=best[1])
for bwd in ((8, 1, 64), (4, 1, 64), (8, 2, 64)):
    kc.TUNE.update(bwd=bwd)
    f, fb = bench(kc.triton_chunked, x, lower_bound=LB)
    print(f"bwd tune {bwd}: bounded fwd {f:.3f} fwd+bwd {fb:.3f} ({time.time()-t0:.0f}s)", flush=True)
kc.TUNE.update(bwd=base["bwd"])
print("TUNE now", kc.TUNE, flush=True)
from fla.ops.rwkv7 import chunk_rwkv7
fla = lambda *a, **k: chunk_rwkv7(*a, scale=1.0, **k)
rows = []
for (B, T, H) in ((4, 4096, 32), (4, 1024, 32), (4, 16384, 32), (1, 65536, 8)):
    x = xs(B, T, H, 64, torch.bfloat16)
    bw = time.time() - t0 < 330
    for name, fn, kw in (("ours hybrid", kc.triton_chunked, {}), ("ours lower_bound", kc.triton_chunked, {"lower_bound": LB}),
                         ("FLA lower_bound", fla, {"lower_bound": LB})):
        if time.time() - t0 > 520:
            break
        f, fb = bench(fn, x, bwd=bw and (T == 4096 or not name.startswith("FLA")), **kw)
        print(f"B={B} T={T} H={H} {name:17s} fwd {f:.3f} fwd+bwd {fb:.3f}  ({time.time()-t0:.0f}s)", flush=True)
