import time, torch
from triton.testing import do_bench
from rwkvlab.wkv7 import kernels_chunked as kc
from rwkvlab.bench import make_inputs
LB = kc.RWKV7_LOWER_BOUND
t0 = time.time()
for (B, T, H) in ((1, 65536, 8), (1, 16384, 32)):
    x = make_inputs("wkv7", B, T, H, 64, dtype=torch.bfloat16, device="cuda")
    x = [x[n] for n in "rwkvab"]
    for bv in (16, 32, 64):
        kc.TUNE["fwd"] = (4, 2, bv)
        f = do_bench(lambda: kc.triton_chunked(*x, output_final_state=True, lower_bound=LB), warmup=10, rep=50, return_mode="median")
        print(f"B={B} T={T} H={H} BV={bv}: fwd {f:.3f} ms ({time.time()-t0:.0f}s)", flush=True)
