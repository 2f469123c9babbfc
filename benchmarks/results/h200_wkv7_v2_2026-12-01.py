"""wkv7 chunked v2 on the GPU: correctness (bf16/fp32 vs float64), then a tile/warp sweep and FLA at T=4096."""
import inspect, sys, time, torch
from triton.testing import do_bench
import rwkvlab
from rwkvlab import wkv7
from rwkvlab.checking import rel_err
from rwkvlab.wkv7 import kernels_chunked as kc
from rwkvlab.bench import make_inputs
LB = kc.RWKV7_LOWER_BOUND
dev = "cuda"
print(torch.cuda.get_device_name(), torch.__version__, __import__("triton").__version__, flush=True)

def xs(B, T, H, D, dtype, seed=0):
    x = make_inputs("wkv7", B, T, H, D, dtype=dtype, device=dev, seed=seed)
    return [x[n] for n in "rwkvab"]

def grads(fn, x, h0, go, gs):
    leaves = [t.detach().clone().requires_grad_() for t in x]
    s = h0.detach().clone().requires_grad_()
    o, S = fn(*leaves, initial_state=s, output_final_state=True)
    g = torch.autograd.grad((o.double() * go).sum() + (S.double() * gs).sum(), [*leaves, s])
    return (o, S, *g)

t0 = time.time()
for dtype in (torch.float32, torch.bfloat16):
    x = xs(2, 512, 4, 64, dtype, seed=1)
    h0 = torch.randn(2, 4, 64, 64, device=dev)
    go = torch.randn(2, 512, 4, 64, device=dev, dtype=torch.float64)
    gs = torch.randn(2, 4, 64, 64, device=dev, dtype=torch.float64)
    ref = grads(lambda *a, **k: wkv7.chunked(*a, chunk_size=16, **k), [t.double() for t in x], h0.double(), go, gs)
    for name, fn in (("hybrid", kc.triton_chunked), ("bounded", lambda *a, **k: kc.triton_chunked(*a, lower_bound=LB, **k)),
                     ("recurrent", wkv7.triton_recurrent)):
        got = grads(fn, x, h0, go, gs)
        errs = " ".join(f"{n}={rel_err(a, b):.1e}" for n, a, b in zip(["o", "S", "r", "w", "k", "v", "a", "b", "h0"], got, ref))
        print(f"{str(dtype)[6:]:9s} {name:9s} {errs}", flush=True)
# strong decay mixes the two paths; long run stays finite
x = xs(1, 700, 2, 64, torch.float32, seed=2); x[1] = x[1] * 8
o, S = kc.triton_chunked(*x, output_final_state=True)
o2, S2 = wkv7.naive(*[t.double() for t in x], output_final_state=True)
print("strong decay (w x8, fp32) hybrid:", f"{rel_err(o, o2):.1e} {rel_err(S, S2):.1e}", flush=True)
x = xs(1, 65536, 8, 64, torch.bfloat16, seed=3)
o, S = kc.triton_chunked(*x, output_final_state=True, lower_bound=LB)
print("T=65536 bf16 finite:", bool(torch.isfinite(o).all() and torch.isfinite(S).all()), f"{time.time()-t0:.0f}s", flush=True)

def bench(fn, x, bwd=True):
    f = do_bench(lambda: fn(*x, output_final_state=True), warmup=25, rep=100, return_mode="median")
    if not bwd:
        return f, float("nan")
    leaves = [t.detach().clone().requires_grad_() for t in x]
    do = torch.randn_like(x[3])
    def step():
        o, _ = fn(*leaves, output_final_state=True)
        o.backward(do)
    fb = do_bench(step, warmup=25, rep=100, grad_to_none=leaves, return_mode="median")
    return f, fb

x = xs(4, 4096, 32, 64, torch.bfloat16)
orig_bv, orig_tune = kc.block_v, dict(kc.TUNE)
for bv in (16, 32, 64):
    for wf, wb in ((4, 4), (8, 8), (4, 8)):
        kc.block_v = lambda V, bv=bv: bv
        kc.TUNE.update(fwd=(wf, 2), bwd=(wb, 1))
        try:
            f, fb = bench(lambda *a, **k: kc.triton_chunked(*a, lower_bound=LB, **k), x)
            print(f"bounded BV={bv} warps fwd {wf} bwd {wb}: fwd {f:.3f} fwd+bwd {fb:.3f} ms  ({time.time()-t0:.0f}s)", flush=True)
        except Exception as e:
            print(f"bounded BV={bv} warps {wf}/{wb}: FAILED {type(e).__name__} {str(e)[:200]}", flush=True)
        if time.time() - t0 > 420:
            break
kc.block_v, kc.TUNE = orig_bv, orig_tune
f, fb = bench(kc.triton_chunked, x)
print(f"hybrid default: fwd {f:.3f} fwd+bwd {fb:.3f}", flush=True)
try:
    from fla.ops.rwkv7 import chunk_rwkv7
    print("fla chunk_rwkv7 params:", list(inspect.signature(chunk_rwkv7).parameters), flush=True)
    fla = lambda *a, **k: chunk_rwkv7(*a, scale=1.0, **k)
    f, fb = bench(fla, x)
    print(f"FLA default: fwd {f:.3f} fwd+bwd {fb:.3f}", flush=True)
    f, fb = bench(lambda *a, **k: chunk_rwkv7(*a, scale=1.0, lower_bound=LB, **k), x)
    print(f"FLA lower_bound: fwd {f:.3f} fwd+bwd {fb:.3f}  ({time.time()-t0:.0f}s)", flush=True)
except Exception as e:
    print("FLA failed:", type(e).__name__, str(e)[:300], flush=True)
