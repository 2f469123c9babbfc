"""Same-process A/B of the lean RWKV-7 decoder, before and after it called wkv7's own unchecked update.

"before" is x070.py of commit 7cb57f2 (the decoder with its own copy of the three-line update),
"after" the working tree's. Set up and run (2-core CPU, one intra-op thread)::

    mkdir -p /tmp/base && git archive 7cb57f2 | tar -x -C /tmp/base
    python benchmarks/results/generate_cpu_2026-12-01_wkv7_update_ab.py ch14 2000 7
    python benchmarks/results/generate_cpu_2026-12-01_wkv7_update_ab.py 0.1b 40 5

Both decoders run on the same model, interleaved run by run; each figure is the median of the
runs (greedy, token fed back, inference_mode per step as generate does). Output: the .txt beside it.
"""
import importlib.util, statistics, sys, time
import torch
torch.set_num_threads(1)
import rwkvlab.model.x070 as new
from rwkvlab.bench_generate import build
spec = importlib.util.spec_from_file_location("rwkvlab.model._x070_old", "/tmp/base/rwkvlab/model/x070.py")
old = importlib.util.module_from_spec(spec); sys.modules[spec.name] = old; spec.loader.exec_module(old)
size = sys.argv[1] if len(sys.argv) > 1 else "ch14"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 7
m = build(size, torch.float32, "cpu")
def rate(dec, B):
    st = dec.new_state(B); tok = torch.zeros(B, dtype=torch.long)
    t0 = time.perf_counter()
    for _ in range(n):
        with torch.inference_mode():
            tok = dec.step_(tok, st).argmax(-1)
    return n * B / (time.perf_counter() - t0)
for script in (True, False):
    decs = {"before": old.Decoder(m, script=script), "after": new.Decoder(m, script=script)}
    if script:
        for d in decs.values(): d.compile()
    for B in ((1, 64) if size == "ch14" else (1,)):
        for d in decs.values(): rate(d, B)            # warm-up
        res = {k: [] for k in decs}
        for _ in range(reps):
            for k, d in decs.items(): res[k].append(rate(d, B))
        med = {k: statistics.median(v) for k, v in res.items()}
        print(f"{size} script={script} B={B}: before {med['before']:,.0f}  after {med['after']:,.0f} tok/s  "
              f"after/before {med['after']/med['before']:.3f}  (runs {[round(x) for x in res['after']]} vs {[round(x) for x in res['before']]})", flush=True)
# same numbers?
st1, st2 = old.Decoder(m, script=False).new_state(1), None
d1, d2 = old.Decoder(m, script=False), new.Decoder(m, script=False)
s1, s2 = d1.new_state(1), d2.new_state(1)
with torch.inference_mode():
    for t in range(32):
        tok = torch.tensor([t * 7 % 256]); l1 = d1.step_(tok, s1); l2 = d2.step_(tok, s2)
print("max |logits before - after| after 32 tokens:", float((l1 - l2).abs().max()), "rel", float((l1-l2).norm()/l1.norm()))
