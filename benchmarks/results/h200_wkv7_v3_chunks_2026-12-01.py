"""wkv7 chunked v3: chunk size 16 / 32 / 64 on the H200 (ours), FLA lower_bound forward in the same process."""
import time, torch
from triton.testing import do_bench
from rwkvlab.wkv7 import kernels_chunked as kc
from rwkvlab.bench import make_inputs
from rwkvlab.checking import rel_err
from rwkvlab import wkv7
LB = kc.RWKV7_LOWER_BOUND
dev = "cuda"
t0 = time.time()
print(torch.cuda.get_device_name(), torch.__version__, __import__("triton").__version__, kc.TUNE, flush=True)

def xs(B, T, H, D, dtype, seed=0):
    x = make_inputs("wkv7", B, T, H, D, dtype=dtype, device=dev, seed=seed)
    return [x[n] for n in "rwkvab"]

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

x = xs(2, 1024, 4, 64, torch.float32, seed=4)
ref = wkv7.chunked(*[t.double() for t in x], output_final_state=True)
for c in (32, 64):
    o = kc.triton_chunked(*x, output_final_state=True, chunk_size=c, lower_bound=LB)
    print(f"fp32 chunk {c}: o {rel_err(o[0], ref[0]):.1e} S {rel_err(o[1], ref[1]):.1e}", flush=True)
for (B, T, H) in ((4, 4096, 32), (1, 65536, 8), (4, 16384, 32), (4, 1024, 32)):
    x = xs(B, T, H, 64, torch.bfloat16)
    for c in (16, 32, 64):
        for name, kw in (("lower_bound", {"lower_bound": LB}), ("hybrid", {})):
            if name == "hybrid" and c == 64 or time.time() - t0 > 300:
                continue
            f, fb = bench(kc.triton_chunked, x, bwd=(T <= 4096 or c == 32), chunk_size=c, **kw)
            print(f"B={B} T={T} H={H} ours {name:11s} C={c}: fwd {f:.3f} fwd+bwd {fb:.3f}  ({time.time()-t0:.0f}s)", flush=True)
from fla.ops.rwkv7 import chunk_rwkv7
for (B, T, H) in ((4, 4096, 32), (1, 65536, 8)):
    x = xs(B, T, H, 64, torch.bfloat16)
    f, _ = bench(lambda *a, **k: chunk_rwkv7(*a, scale=1.0, **k), x, bwd=False, lower_bound=LB)
    print(f"B={B} T={T} H={H} FLA lower_bound: fwd {f:.3f}  ({time.time()-t0:.0f}s)", flush=True)
