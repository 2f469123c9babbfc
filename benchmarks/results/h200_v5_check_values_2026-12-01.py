"""The forward's one host sync (reading the value-check flag) measured: wkv7 and wkv6
``triton_chunked`` with ``check_values`` on (the default) and off, beside FLA, in one process;
then wkv7's two backward schedules where they differ (B=1, H=8, T=65536).

    python3 benchmarks/results/h200_v5_check_values_2026-12-01.py   (FLA wheels on PYTHONPATH)

bf16, K = V = 64, ``rwkvlab.bench.make_inputs``, ``do_bench`` medians (ms). FLA forward only
(its forward+backward autotune costs ~5 minutes a process); FLA's forward+backward figure for
wkv7 at B=4, T=4096 is last session's (4.65 ms, h200_wkv7_v3_2026-12-01.txt)."""
import time

import torch
from triton.testing import do_bench

from rwkvlab import wkv6, wkv7
from rwkvlab.bench import make_inputs
from rwkvlab.checking import rel_err
from rwkvlab.wkv7 import kernels_chunked as kc

LB = wkv7.RWKV7_LOWER_BOUND
t0 = time.time()
print(torch.cuda.get_device_name(), torch.__version__, __import__("triton").__version__, flush=True)


def ms(f):
    return do_bench(f, warmup=25, rep=100, return_mode="median")


def fwd_bwd(fn, x, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in x]
    do = torch.randn_like(x[3] if len(x) == 6 else x[2])

    def step():
        o, _ = fn(*leaves, output_final_state=True, **kw)
        o.backward(do)
    return do_bench(step, warmup=10, rep=50, grad_to_none=leaves, return_mode="median")


# correctness of the switch on this GPU: bit-identical outputs, and the bf16 error vs a float64 loop
x = make_inputs("wkv7", 2, 512, 4, 64, dtype=torch.bfloat16, device="cuda", seed=1)
x7 = [x[n] for n in "rwkvab"]
a = wkv7.triton_chunked(*x7, output_final_state=True, lower_bound=LB)
b = wkv7.triton_chunked(*x7, output_final_state=True, lower_bound=LB, check_values=False)
ref = wkv7.naive(*[t.double() for t in x7], output_final_state=True)
print(f"wkv7 check_values off == on: {torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])}; "
      f"bf16 vs float64 loop o {rel_err(b[0], ref[0]):.1e} state {rel_err(b[1], ref[1]):.1e}", flush=True)

from fla.ops.rwkv6 import chunk_rwkv6  # noqa: E402
from fla.ops.rwkv7 import chunk_rwkv7  # noqa: E402

for (B, T, H) in ((4, 4096, 32), (4, 1024, 32), (1, 65536, 8)):
    x = make_inputs("wkv7", B, T, H, 64, dtype=torch.bfloat16, device="cuda")
    x7 = [x[n] for n in "rwkvab"]
    row = {}
    row["ours check on"] = ms(lambda: kc.triton_chunked(*x7, output_final_state=True, lower_bound=LB))
    row["ours check off"] = ms(lambda: kc.triton_chunked(*x7, output_final_state=True, lower_bound=LB,
                                                         check_values=False))
    row["FLA"] = ms(lambda: chunk_rwkv7(*x7, scale=1.0, output_final_state=True, lower_bound=LB))
    print(f"wkv7 B={B} T={T} H={H} fwd " + "  ".join(f"{n} {t:.3f}" for n, t in row.items())
          + f"  (FLA/ours off {row['FLA'] / row['ours check off']:.2f}x) ({time.time() - t0:.0f}s)", flush=True)
    if T == 4096:
        on = fwd_bwd(kc.triton_chunked, x7, lower_bound=LB)
        off = fwd_bwd(kc.triton_chunked, x7, lower_bound=LB, check_values=False)
        print(f"wkv7 B={B} T={T} H={H} fwd+bwd ours check on {on:.3f} off {off:.3f} ({time.time() - t0:.0f}s)",
              flush=True)
    if B == 1:
        for sched in ("parallel", "sequential"):
            kc.TUNE["bwd_schedule"] = sched
            t = fwd_bwd(kc.triton_chunked, x7, lower_bound=LB, check_values=False)
            print(f"wkv7 B={B} T={T} H={H} fwd+bwd check off, backward {sched}: {t:.3f} ({time.time() - t0:.0f}s)",
                  flush=True)
        kc.TUNE["bwd_schedule"] = "auto"
    del x, x7

for (B, T, H) in ((4, 4096, 32), (4, 1024, 32), (1, 65536, 8)):
    x = make_inputs("wkv6", B, T, H, 64, dtype=torch.bfloat16, device="cuda")
    x6 = [x[n] for n in ("r", "k", "v", "w", "u")]
    row = {"ours check on": ms(lambda: wkv6.triton_chunked(*x6, output_final_state=True)),
           "ours check off": ms(lambda: wkv6.triton_chunked(*x6, output_final_state=True, check_values=False)),
           "FLA": ms(lambda: chunk_rwkv6(*x6, scale=1.0, output_final_state=True))}
    print(f"wkv6 B={B} T={T} H={H} fwd " + "  ".join(f"{n} {t:.3f}" for n, t in row.items())
          + f"  (FLA/ours off {row['FLA'] / row['ours check off']:.2f}x) ({time.time() - t0:.0f}s)", flush=True)
    if T == 4096:
        on = fwd_bwd(wkv6.triton_chunked, x6)
        off = fwd_bwd(wkv6.triton_chunked, x6, check_values=False)
        print(f"wkv6 B={B} T={T} H={H} fwd+bwd ours check on {on:.3f} off {off:.3f} ({time.time() - t0:.0f}s)",
              flush=True)
