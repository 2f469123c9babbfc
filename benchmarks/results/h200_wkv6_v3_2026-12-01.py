"""wkv6 subchunk v3b on the GPU: in-kernel value checks, split backward, launch tuning, table vs FLA."""
import torch
from triton.testing import do_bench
import rwkvlab
from rwkvlab import rel_err, wkv6
from rwkvlab.wkv6 import kernels_subchunk as ks
try:
    from fla.ops.rwkv6 import chunk_rwkv6
except Exception as e:  # noqa
    print("no fla:", e); chunk_rwkv6 = None
print(rwkvlab.device.describe(), torch.__version__, flush=True)
def inputs(B, T, H, D, dtype, seed=0, slow=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa
    r, k, v = rnd(B, T, H, D), rnd(B, T, H, D) / D ** 0.5, rnd(B, T, H, D)
    w = -torch.exp(rnd(B, T, H, D) * 0.5 - (5.0 if slow else 1.0))
    return [x.to(dtype) for x in (r, k, v, w, rnd(H, D) * 0.5)]
bench = lambda f: do_bench(f, warmup=20, rep=80, return_mode="median")
fla = (lambda r, k, v, w, u, **kw: chunk_rwkv6(r, k, v, w, u, scale=1.0, **kw)) if chunk_rwkv6 else None
B, T, H, D = 4, 4096, 32, 64
r, k, v, w, u = inputs(B, T, H, D, torch.bfloat16)
do = torch.randn_like(v)
print(f"state pass, no check {bench(lambda: ks.state_pass(k, v, w, None, True, None, B, 64)):.3f} ms", flush=True)
print(f"state pass, checking {bench(lambda: ks.state_pass(k, v, w, None, True, None, B, 64, r=r, u=u)):.3f} ms", flush=True)
fwd = lambda: ks.fwd(r, k, v, w, u, 1.0, None, True, None, B)  # noqa
bwd = lambda: ks.bwd(r, k, v, w, u, 1.0, None, None, B, do, None)  # noqa
for names, f, settings in [(("fwd_o",), fwd, [(4, 2), (4, 2, 168), (4, 1, 168), (4, 3, 168), (8, 2)]),
                           (("fwd_h", "bwd_dh"), bwd, [(4, 2), (4, 1), (8, 2)]),
                           (("bwd_dq", "bwd_dkv"), bwd, [(4, 2), (8, 2), (4, 1), (4, 2, 168), (8, 1)])]:
    res = {}
    for st in settings:
        for n in names:
            ks.TUNE[n] = st
        try:
            res[st] = bench(f)
            print(f"{names} {st}: {res[st]:.3f} ms", flush=True)
        except Exception as e:  # noqa
            print(names, st, "failed", str(e)[:300], flush=True)
    best = min(res, key=res.get)
    for n in names:
        ks.TUNE[n] = best
print("TUNE =", ks.TUNE, flush=True)
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
if fla:
    impls["fla"] = fla
rows = []
for (B, T, H) in [(4, 4096, 32), (4, 16384, 32), (1, 65536, 8), (4, 1024, 32)]:
    xs = inputs(B, T, H, 64, torch.bfloat16)
    floor_ms = (sum(t.numel() * t.element_size() for t in xs) + xs[2].numel() * 2) / bw * 1e3
    for name, fn in impls.items():
        f = bench(lambda: fn(*xs, output_final_state=True)); g = fb(fn, xs)
        print(f"B={B} T={T} H={H} {name:10s} fwd {f:7.3f} fwd+bwd {g:7.3f} x_floor {f/floor_ms:5.1f}", flush=True)
    torch.cuda.empty_cache()
lens = [4096 * 4 // 8 * f for f in (1, 3, 2, 2)]
cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), device="cuda")
xs = inputs(1, sum(lens), 32, 64, torch.bfloat16)
s0 = torch.zeros(4, 32, 64, 64, device="cuda")
print(f"varlen 4 seqs {lens}: fwd {bench(lambda: wkv6.triton_chunked(*xs, initial_state=s0, output_final_state=True, cu_seqlens=cu)):.3f}", flush=True)
if fla:
    print(f"varlen fla: fwd {bench(lambda: fla(*xs, initial_state=s0, output_final_state=True, cu_seqlens=cu)):.3f}", flush=True)
def grads(fn, xs, s0):
    xs = [x.detach().clone().requires_grad_() for x in xs] + [s0.detach().clone().requires_grad_()]
    o, ht = fn(*xs[:5], initial_state=xs[5], output_final_state=True)
    g = torch.autograd.grad(o.float().sum() + ht.float().sum(), xs)
    return o, ht, g
for label, (B, T, H, slow) in {"short": (2, 200, 2, False), "slow-decay T=2048": (1, 2048, 2, True)}.items():
    x32 = inputs(B, T, H, 64, torch.float32, 1, slow); s0 = torch.randn(B, H, 64, 64, device="cuda")
    o64, ht64, g64 = grads(lambda *a, **kw: wkv6.naive(*a, **kw), [x.double() for x in x32], s0.double())
    for dtype in (torch.float32, torch.bfloat16):
        xs = [x.to(dtype) for x in x32]
        o, ht, g = grads(wkv6.triton_chunked, xs, s0)
        print(f"{label} {dtype} subchunk: o {rel_err(o, o64):.1e} ht {rel_err(ht, ht64):.1e} grads r,k,v,w,u,s0",
              " ".join("%.1e" % rel_err(a, b) for a, b in zip(g, g64)), flush=True)
# a NaN is caught by the state pass on the GPU too
xs = inputs(2, 300, 2, 64, torch.bfloat16); xs[2][1, 299, 1, 63] = float("nan")
try:
    wkv6.triton_chunked(*xs); print("NaN NOT caught")
except ValueError as e:
    print("NaN caught:", e)
