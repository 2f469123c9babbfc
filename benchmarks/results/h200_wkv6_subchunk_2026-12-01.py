"""Per-kernel breakdown + full table (scratch; one device call)."""
import os, sys, time
import torch, triton
from triton.testing import do_bench
import rwkvlab
from rwkvlab import rel_err, wkv6
from rwkvlab.wkv6 import kernels_subchunk as ks
try:
    from fla.ops.rwkv6 import chunk_rwkv6
except Exception as e:  # noqa
    chunk_rwkv6 = None
print(rwkvlab.device.describe(), flush=True)
def inputs(B, T, H, D, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa
    r, k, v = rnd(B, T, H, D), rnd(B, T, H, D) / D ** 0.5, rnd(B, T, H, D)
    w = -torch.exp(rnd(B, T, H, D) * 0.5 - 1.0)
    return [x.to(dtype) for x in (r, k, v, w, rnd(H, D) * 0.5)]
bench = lambda f: do_bench(f, warmup=20, rep=80, return_mode="median")
x = torch.empty(2 ** 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
bw = 2 * x.numel() / (bench(lambda: y.copy_(x)) * 1e-3); del x, y
print(f"copy {bw/1e12:.2f} TB/s", flush=True)
def fb(fn, xs):
    leaves = [t.detach().clone().requires_grad_() for t in xs]; g = torch.randn_like(xs[2])
    def step():
        for l in leaves: l.grad = None
        fn(*leaves, output_final_state=True)[0].backward(g)
    return bench(step)
impls = {"subchunk": wkv6.triton_chunked}
if chunk_rwkv6 is not None:
    impls["fla"] = lambda r, k, v, w, u, **kw: chunk_rwkv6(r, k, v, w, u, scale=1.0, **kw)
for (B, T, H) in [(4, 1024, 32), (4, 4096, 32), (4, 16384, 32), (1, 65536, 8)]:
    xs = inputs(B, T, H, 64, torch.bfloat16)
    floor_ms = (sum(t.numel() * t.element_size() for t in xs) + xs[2].numel() * 2) / bw * 1e3
    for name, fn in impls.items():
        f = bench(lambda: fn(*xs, output_final_state=True)); g = fb(fn, xs)
        print(f"B={B} T={T} H={H} {name:9s} fwd {f:7.3f} fwd+bwd {g:7.3f} x_floor {f/floor_ms:5.1f}", flush=True)
    torch.cuda.empty_cache()
# varlen: same total tokens as B=4,T=4096, mixed lengths
lens = [4096 * 4 // 8 * f for f in (1, 3, 2, 2)]
cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), device="cuda")
xs = inputs(1, sum(lens), 32, 64, torch.bfloat16)
s0 = torch.zeros(4, 32, 64, 64, device="cuda")
print(f"varlen 4 seqs {lens}: fwd {bench(lambda: wkv6.triton_chunked(*xs, initial_state=s0, output_final_state=True, cu_seqlens=cu)):.3f}", flush=True)
