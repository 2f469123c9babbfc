"""wkv7 triton_chunked v5 (prep on 2 warps; ``check_values``) against FLA ``chunk_rwkv7`` in one
process, forward at three shapes, then forward+backward at B=4, T=4096 for both (FLA last: its
forward+backward autotune costs ~5 minutes).

    python3 benchmarks/results/h200_wkv7_v5_2026-12-01.py   (FLA wheels on PYTHONPATH)

bf16, K = V = 64, ``rwkvlab.bench.make_inputs``, the declared lower bound everywhere,
``do_bench`` medians (ms)."""
import time

import torch
from triton.testing import do_bench

from rwkvlab import wkv7
from rwkvlab.bench import make_inputs
from rwkvlab.wkv7 import kernels_chunked as kc

LB = wkv7.RWKV7_LOWER_BOUND
t0 = time.time()
print(torch.cuda.get_device_name(), torch.__version__, __import__("triton").__version__, "TUNE", kc.TUNE, flush=True)
from fla.ops.rwkv7 import chunk_rwkv7  # noqa: E402

fla = lambda *a, **k: chunk_rwkv7(*a, scale=1.0, **k)  # noqa: E731
ours = lambda *a, **k: kc.triton_chunked(*a, **k)  # noqa: E731
off = lambda *a, **k: kc.triton_chunked(*a, check_values=False, **k)  # noqa: E731


def fwd_bwd(fn, x):
    leaves = [t.detach().clone().requires_grad_() for t in x]
    do = torch.randn_like(x[3])

    def step():
        o, _ = fn(*leaves, output_final_state=True, lower_bound=LB)
        o.backward(do)
    return do_bench(step, warmup=10, rep=50, grad_to_none=leaves, return_mode="median")


for (B, T, H) in ((4, 4096, 32), (4, 1024, 32), (4, 16384, 32), (1, 65536, 8)):
    x = make_inputs("wkv7", B, T, H, 64, dtype=torch.bfloat16, device="cuda")
    x7 = [x[n] for n in "rwkvab"]
    row = {n: do_bench(lambda: f(*x7, output_final_state=True, lower_bound=LB), warmup=25, rep=100,
                       return_mode="median") for n, f in (("ours", ours), ("ours check off", off), ("FLA", fla))}
    print(f"B={B} T={T} H={H} fwd " + "  ".join(f"{n} {t:.3f}" for n, t in row.items())
          + f"  FLA/ours {row['FLA'] / row['ours']:.2f}x, FLA/ours off {row['FLA'] / row['ours check off']:.2f}x"
          f" ({time.time() - t0:.0f}s)", flush=True)
    if T == 4096:
        xb = x7
    if B == 1:
        print(f"B={B} T={T} H={H} fwd+bwd ours {fwd_bwd(ours, x7):.3f} ours check off {fwd_bwd(off, x7):.3f}"
              f" ({time.time() - t0:.0f}s)", flush=True)
print(f"B=4 T=4096 H=32 fwd+bwd ours {fwd_bwd(ours, xb):.3f} ours check off {fwd_bwd(off, xb):.3f}"
      f" ({time.time() - t0:.0f}s)", flush=True)
print(f"B=4 T=4096 H=32 fwd+bwd FLA {fwd_bwd(fla, xb):.3f} ({time.time() - t0:.0f}s)", flush=True)
