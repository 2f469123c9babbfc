"""wkv6 subchunk v4 on the H200: prep kernel (q ⊙ e^p, k ⊙ e^s, 16×16 own weights, e^W) + a
products-only output kernel, against v3 in one process; TUNE sweep; end to end vs FLA; accuracy.

v3 is kernels_subchunk.py of commit e9552fd (the last one before v4), loaded from a file::

    git show e9552fd:rwkvlab/wkv6/kernels_subchunk.py > scratch/v3_kernels_subchunk.py   (here)
    WKV6_V3=scratch/v3_kernels_subchunk.py python benchmarks/results/h200_wkv6_v4_2026-12-01.py

(carry scratch/v3_kernels_subchunk.py to the device; without it the v3 lines are skipped). FLA
forward at every shape; FLA forward+backward once, at T=4096, last, in a child process killed when
the script's 4-minute budget runs out (its autotune alone can take minutes).
"""
import importlib.util, os, subprocess, sys, time
import torch
from triton.testing import do_bench
import rwkvlab
from rwkvlab import rel_err, wkv6
from rwkvlab.wkv6 import kernels_subchunk as ks
t_start = time.time()
try:
    from fla.ops.rwkv6 import chunk_rwkv6
except Exception as e:  # noqa
    print("no fla:", e); chunk_rwkv6 = None
old = None
if os.path.exists(os.environ.get("WKV6_V3", "scratch/v3_kernels_subchunk.py")):
    spec = importlib.util.spec_from_file_location("rwkvlab.wkv6._kernels_subchunk_v3",
                                                  os.environ.get("WKV6_V3", "scratch/v3_kernels_subchunk.py"))
    old = importlib.util.module_from_spec(spec); sys.modules[spec.name] = old; spec.loader.exec_module(old)
else:
    print("no v3 source (WKV6_V3): v3 lines skipped")
el = lambda: f"({time.time() - t_start:.0f}s)"  # noqa
def inputs(B, T, H, D, dtype, seed=0, slow=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa
    r, k, v = rnd(B, T, H, D), rnd(B, T, H, D) / D ** 0.5, rnd(B, T, H, D)
    w = -torch.exp(rnd(B, T, H, D) * 0.5 - (5.0 if slow else 1.0))
    return [x.to(dtype) for x in (r, k, v, w, rnd(H, D) * 0.5)]
bench = lambda f: do_bench(f, warmup=20, rep=80, return_mode="median")  # noqa
def fb(fn, xs):
    leaves = [t.detach().clone().requires_grad_() for t in xs]; g = torch.randn_like(xs[2])
    def step():
        for l in leaves: l.grad = None  # noqa
        fn(*leaves, output_final_state=True)[0].backward(g)
    return bench(step)
if sys.argv[1:] == ["--fla-fwd-bwd"]:   # the child: FLA forward+backward at B=4, T=4096, H=32
    xs = inputs(4, 4096, 32, 64, torch.bfloat16)
    print(f"B=4 T=4096 H=32 fla  fwd+bwd {fb(lambda *a, **kw: chunk_rwkv6(*a, scale=1.0, **kw), xs):7.3f}", flush=True)
    sys.exit()
print(rwkvlab.device.describe(), torch.__version__, flush=True)

# ---- accuracy first (cheap): float32 and bf16 against float64 naive, gradients included
def grads(fn, xs, s0):
    xs = [x.detach().clone().requires_grad_() for x in xs] + [s0.detach().clone().requires_grad_()]
    o, ht = fn(*xs[:5], initial_state=xs[5], output_final_state=True)
    return o, ht, torch.autograd.grad(o.float().sum() + ht.float().sum(), xs)
for label, (B, T, H, slow) in {"short": (2, 200, 2, False), "slow-decay T=2048": (1, 2048, 2, True)}.items():
    x32 = inputs(B, T, H, 64, torch.float32, 1, slow); s0 = torch.randn(B, H, 64, 64, device="cuda")
    o64, ht64, g64 = grads(wkv6.naive, [x.double() for x in x32], s0.double())
    for dtype in (torch.float32, torch.bfloat16):
        o, ht, g = grads(wkv6.triton_chunked, [x.to(dtype) for x in x32], s0)
        print(f"{label} {str(dtype)[6:]} v4: o {rel_err(o, o64):.1e} ht {rel_err(ht, ht64):.1e} grads r,k,v,w,u,s0",
              " ".join("%.1e" % rel_err(a, b) for a, b in zip(g, g64)), flush=True)
xs = inputs(1, 40, 2, 16, torch.float32, 5); s0 = torch.randn(1, 2, 16, 16, device="cuda")
xs[3] = torch.full_like(xs[3], -0.01); xs[3][:, [9, 23]] = -1e4
o, ht = wkv6.triton_chunked(*xs, initial_state=s0, output_final_state=True)
o64, ht64 = wkv6.naive(*[x.double() for x in xs], initial_state=s0.double(), output_final_state=True)
print(f"decay spike w=-1e4 fp32 v4: o {rel_err(o, o64):.1e} ht {rel_err(ht, ht64):.1e}", flush=True)
for arg, i, bad in (("r", 0, float("nan")), ("v", 2, float("nan")), ("w", 3, 1e-3)):
    xs = inputs(2, 300, 2, 64, torch.bfloat16); xs[i][1, 299, 1, 63] = bad
    try:
        wkv6.triton_chunked(*xs); print(f"bad {arg} NOT caught")
    except ValueError as e:
        print(f"bad {arg} caught: {e}", flush=True)

# ---- launches alone at B=4, T=4096, H=32, K=V=64, bf16: v3 against v4, then the TUNE sweep
B, T, H, D = 4, 4096, 32, 64
r, k, v, w, u = inputs(B, T, H, D, torch.bfloat16)
do = torch.randn_like(v)
flags = torch.zeros(1, dtype=torch.int32, device="cuda")
qe, ke, A, eW = ks.prep(r, k, w, u, 1.0, None, 64, flags)
hs, _ = ks.state_pass(k, v, w, None, True, None, B, 64, flags)
pieces = {"prep (checking r, k, w, u)": ("fwd_prep", lambda: ks.prep(r, k, w, u, 1.0, None, 64, flags)),
          "state pass (checking v, h0)": ("fwd_h", lambda: ks.state_pass(k, v, w, None, True, None, B, 64, flags)),
          "output": ("fwd_o", lambda: ks.output(qe, ke, v, A, eW, hs, None, 64))}
if old is not None:
    print(f"v3 state pass, no check {bench(lambda: old.state_pass(k, v, w, None, True, None, B, 64)):.3f} ms", flush=True)
    print(f"v3 state pass, checking {bench(lambda: old.state_pass(k, v, w, None, True, None, B, 64, r=r, u=u)):.3f} ms")
    print(f"v3 fwd launches {bench(lambda: old.fwd(r, k, v, w, u, 1.0, None, True, None, B)):.3f} ms  "
          f"v4 fwd launches {bench(lambda: ks.fwd(r, k, v, w, u, 1.0, None, True, None, B)):.3f} ms", flush=True)
print(f"v4 state pass, no check {bench(lambda: ks.state_pass(k, v, w, None, True, None, B, 64)):.3f} ms", flush=True)
sweep = {"fwd_prep": [(4, 1), (1, 1), (2, 1), (4, 2), (8, 1)],
         "fwd_h": [(4, 2), (4, 1), (4, 2, 168), (4, 2, 128), (4, 1, 128)],
         "fwd_o": [(4, 2), (4, 1), (4, 3), (8, 2), (4, 2, 128)]}
for name, (key, f) in pieces.items():
    res = {}
    for st in sweep[key]:
        ks.TUNE[key] = st
        try:
            res[st] = bench(f); print(f"v4 {name} {st}: {res[st]:.3f} ms", flush=True)
        except Exception as e:  # noqa
            print(f"v4 {name} {st} failed", str(e)[:300], flush=True)
    ks.TUNE[key] = min(res, key=res.get)
res = {}
for st in [(4, 2), (4, 2, 128)]:   # the reverse state pass: v3's kernel, the same register lesson as fwd_h
    ks.TUNE["bwd_dh"] = st
    res[st] = bench(lambda: ks.bwd(r, k, v, w, u, 1.0, None, None, B, do, None)); print(f"v4 bwd launches, bwd_dh {st}: {res[st]:.3f} ms", flush=True)
ks.TUNE["bwd_dh"] = min(res, key=res.get)
print("TUNE =", ks.TUNE, el(), flush=True)
print(f"v4 fwd launches (tuned) {bench(lambda: ks.fwd(r, k, v, w, u, 1.0, None, True, None, B)):.3f} ms", flush=True)
x = torch.empty(2 ** 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
bw = 2 * x.numel() / (bench(lambda: y.copy_(x)) * 1e-3); del x, y
print(f"copy {bw/1e12:.2f} TB/s", flush=True)

# ---- end to end (what a caller pays, structure checks included); FLA forward at each shape
fla = (lambda r, k, v, w, u, **kw: chunk_rwkv6(r, k, v, w, u, scale=1.0, **kw)) if chunk_rwkv6 else None
impls = {"v4": wkv6.triton_chunked}
if old is not None:   # v3 end to end: its own autograd function behind the same structure checks
    def v3(r, k, v, w, u, output_final_state=False):
        B, T, H, K, V, N = ks._rec.check_inputs(r, k, v, w, u, 1.0, None, None, check_values=False)
        return old.triton_subchunk(r, k, v, w, u, 1.0, None, output_final_state, None, N, 64)
    impls["v3"] = v3
if fla:
    impls["fla"] = fla
for (B, T, H) in [(4, 4096, 32), (4, 1024, 32), (1, 65536, 8)]:
    xs = inputs(B, T, H, 64, torch.bfloat16)
    floor_ms = (sum(t.numel() * t.element_size() for t in xs) + xs[2].numel() * 2) / bw * 1e3
    for name, fn in impls.items():
        f = bench(lambda: fn(*xs, output_final_state=True))
        g = fb(fn, xs) if name == "v4" else float("nan")   # v3's backward is v4's (unchanged)
        print(f"B={B} T={T} H={H} {name:4s} fwd {f:7.3f} fwd+bwd {g:7.3f} x_floor {f/floor_ms:5.1f} {el()}", flush=True)
    torch.cuda.empty_cache()
if fla:
    budget = 230 - (time.time() - t_start)
    try:
        out = subprocess.run([sys.executable, __file__, "--fla-fwd-bwd"], capture_output=True, text=True,
                             timeout=max(budget, 1))
        print(out.stdout.strip() or out.stderr[-500:], el(), flush=True)
    except subprocess.TimeoutExpired:
        print(f"FLA fwd+bwd: not done within the budget ({budget:.0f}s)", el(), flush=True)
