"""How long one step of the folded state pass takes for steps of 16, 32 and 64 tokens (wkv7).

The question behind it: at B=1, H=8, T=65536 the state pass is a chain of 4,096 chunk steps of
~1.4 µs (two dependent products each). With each chunk's map S ← P S + Q stored (a 16-token
"fold" of one chunk) the chain is one product a step; is that step shorter? The folded launches
already exist (``kernels_chunked.fold_launches``, whose ``step`` sets the tokens a step); this
script times the fold prep and the folded state pass alone (``do_bench`` medians), beside the plain
training forward's two launches (checkpoints kept).

    python benchmarks/gpu_fold_steps.py            # on a GPU
    python benchmarks/gpu_fold_steps.py --dry-run  # CPU, interpreter: the launches agree, nothing timed
"""
from __future__ import annotations

import sys

import torch


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    dry = "--dry-run" in args
    if not dry and not torch.cuda.is_available():
        print("no CUDA GPU here (--dry-run checks the launches on CPU)")
        return 0
    from rwkvlab import device, wkv7
    from rwkvlab.bench import make_inputs
    from rwkvlab.checking import rel_err
    from rwkvlab.wkv7 import kernels_chunked as kc

    if dry:
        B, T, H, D, dtype = 1, 72, 2, 16, torch.float32
        ms = lambda f: (f(), float("nan"))[1]  # noqa: E731
    else:
        from triton.testing import do_bench
        B, T, H, D, dtype = 1, 65536, 8, 64, torch.bfloat16
        ms = lambda f: do_bench(f, warmup=25, rep=100, return_mode="median")  # noqa: E731
        print(torch.cuda.get_device_name())
    x = make_inputs("wkv7", B, T, H, D, dtype=dtype, device=device.device())
    r, w, k, v, a, b = (x[n] for n in "rwkvab")
    lb = wkv7.RWKV7_LOWER_BOUND
    want = wkv7.triton_chunked(r, w, k, v, a, b, chunk_size=16, lower_bound=lb, check_values=False)[0]
    prep, state, _ = kc.fwd_launches(r, w, k, v, a, b, 1.0, None, False, None, True, 16, lb, check=False)
    prep(), state()
    print(f"B={B} T={T} H={H} K=V={D}: plain training forward: prep {ms(prep):.3f} ms, state {ms(state):.3f} ms "
          f"({T // 16} chunk steps)", flush=True)
    for step in (16, 32, 64):
        prep, state, (o, *_) = kc.fold_launches(r, w, k, v, a, b, 1.0, None, False, None, 16, lb, check=False,
                                                step=step)
        prep(), state()
        err = rel_err(o.float(), want.float())
        t_prep, t_state = ms(prep), ms(state)
        print(f"  fold of {step:2d} tokens: prep {t_prep:.3f} ms, state {t_state:.3f} ms = "
              f"{1e3 * t_state / (T // step):.2f} us/step, {1e3 * t_state / (T // 16):.2f} us per 16 tokens; "
              f"o vs plain {err:.1e}", flush=True)
        assert err < (1e-5 if dtype == torch.float32 else 2e-2), err
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
