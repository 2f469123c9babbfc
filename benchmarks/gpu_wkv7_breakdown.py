"""Where wkv7.triton_chunked's time goes, launch by launch, on a GPU (the next measurement NOTES asks for).

    python benchmarks/gpu_wkv7_breakdown.py            # B=4, T=4096, H=32 and B=1, T=65536, H=8, bf16
    python benchmarks/gpu_wkv7_breakdown.py --quick    # chunk size 16 only
    python benchmarks/gpu_wkv7_breakdown.py --dry-run  # CPU: run each launch once on a tiny shape, check o
    python benchmarks/gpu_wkv7_breakdown.py --quick --match fold   # only the variants naming "fold" (and the shipped row)
    python benchmarks/gpu_wkv7_breakdown.py --quick --match fold --shape 1,65536,8   # one shape only

Times each launch alone with ``triton.testing.do_bench`` (medians, ms) on inputs shaped like a
trained RWKV-7 layer's (``rwkvlab.bench.make_inputs``): the prep kernel, the state pass, the
whole forward as a caller sees it (value checks and the flag read included), and the backward
kernel alone, for chunk sizes 16 and 32, with and without the declared bound, then the state
pass's settings one at a time (``TUNE`` overrides: prefetch, piece dtype, V-block, warps), and
the backward's two schedules, and the folded forward (``{"fold": True}``). Also prints each
launch's memory floor at the copy bandwidth measured in the same run, so "latency-bound" or
"bandwidth-bound" can be read off the ratio. Needs a CUDA GPU; prints why not otherwise.
"""
from __future__ import annotations

import sys

import torch

import rwkvlab  # noqa: F401  (chooses the interpreter on a machine without a GPU, before triton loads)
from rwkvlab import wkv7


def variants(dry, quick=False):
    """(chunk size, lower bound, TUNE overrides) to time: the shipped settings at both chunk sizes
    (16 only with ``quick``) and both paths, then the state pass's options, bounded, chunk 16."""
    lb = wkv7.RWKV7_LOWER_BOUND
    out = [(C, b, {}) for C in ((16,) if quick or dry else (16, 32)) for b in (lb, None)]
    if dry:
        return out + [(16, lb, {"prefetch": False}), (16, lb, {"bwd_schedule": "parallel"}),
                      (16, lb, {"check": False}), (16, lb, {"inverse": "dot"}), (16, lb, {"fold": True}),
                      (16, None, {"fold": True}), (32, lb, {"fold": True})]
    return out + [(16, lb, t) for t in (
        {"check": False}, {"prep": (2, 1)}, {"prep": (1, 1)}, {"inverse": "dot"},
        {"inverse": "dot", "prep": (2, 1)}, {"fwd": (4, 1, 32)}, {"fwd": (4, 1, 16)},
        {"bwd_schedule": "sequential"}, {"bwd_schedule": "parallel"},
        {"bwd_schedule": "parallel", "bwd_parallel": (8, 1)}, {"bwd_schedule": "sequential", "bwd": (4, 1, 64)},
        {"bwd_schedule": "parallel", "dstate": (8, 1)},
        {"wu": "input"}, {"fold": True}, {"fold": True, "fold_prep": (4, 1)}, {"fold": True, "fold_state": (4, 1, 64)},
        {"fold": True, "check": False})] + [(32, lb, {"fold": True})]


def fold_row(ms, dry, copy_tbs, r, w, k, v, a, b, B, T, H, D, C, lb, tune, check):
    """One row for the folded forward (``TUNE["fold"]``): its two launches alone and the whole
    forward, or in a dry run the launches against triton_chunked's (folded and not)."""
    import triton

    from rwkvlab.checking import rel_err
    from rwkvlab.wkv7 import kernels_chunked as kc

    prep, state, (o, ht, _, flags, _) = kc.fold_launches(r, w, k, v, a, b, 1.0, None, True, None, C, lb, check=check)
    prep(), state()
    name = f"B={B} T={T} H={H} C={C} {'bounded' if lb is not None else 'any w'} {tune}"

    def whole():
        wkv7.triton_chunked(r, w, k, v, a, b, output_final_state=True, chunk_size=C, lower_bound=lb,
                            check_values=check)

    if dry:
        want = wkv7.triton_chunked(r, w, k, v, a, b, chunk_size=C, lower_bound=lb)[0]
        assert torch.equal(o, want), "the folded launches here no longer match triton_chunked's"
        kc.TUNE["fold"] = False
        plain = wkv7.triton_chunked(r, w, k, v, a, b, chunk_size=C, lower_bound=lb)[0]
        print(f"{name}: the launches match triton_chunked's; vs the unfolded forward {rel_err(o, plain):.1e} "
              "(dry run, nothing timed)")
        return
    tok, e = B * T * H, r.element_size()
    n_steps = B * triton.cdiv(T, kc.FOLD_TOKENS)
    pe = e if kc.TUNE["pieces"] == "input" else 4
    we = e if kc.TUNE["wu"] == "input" else 4
    piece_bytes = tok * (pe * D + we * D) + 4 * n_steps * H * (D * D + D + D * D)      # R̄, Ō; P̄, e^Σc, Q̄
    prep_bytes, state_bytes = tok * 6 * e * D + piece_bytes, piece_bytes + tok * e * D
    t_prep, t_state, t_all = ms(prep), ms(state), ms(whole)
    print(f"{name:60s} prep {t_prep:.3f} ({t_prep / (prep_bytes / copy_tbs / 1e9):.0f}x floor)  "
          f"state {t_state:.3f} ({t_state / (state_bytes / copy_tbs / 1e9):.0f}x floor, "
          f"{1e3 * t_state / triton.cdiv(T, kc.FOLD_TOKENS):.2f} us/step of {kc.FOLD_TOKENS})  "
          f"fwd as called {t_all:.3f}  backward (none: no checkpoints)", flush=True)


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    dry, quick = "--dry-run" in args, "--quick" in args
    # --match TEXT: only the variants whose TUNE overrides mention TEXT (and the shipped settings)
    match = args[args.index("--match") + 1] if "--match" in args else None
    if not dry and not torch.cuda.is_available():
        print("no CUDA GPU here: this script times GPU launches only (--dry-run checks the launches on CPU)")
        return 0
    import triton
    from triton.testing import do_bench

    from rwkvlab import device as _device
    from rwkvlab.bench import make_inputs
    from rwkvlab.wkv7 import kernels_chunked as kc

    dev = _device.device()
    if dry:
        ms = lambda f: (f(), 1.0)[1]  # noqa: E731  (one call, no timing)
        copy_tbs, shapes, D, dtype = 1.0, ((1, 40, 2),), 16, torch.float32
    else:
        ms = lambda f: do_bench(f, warmup=25, rep=100, return_mode="median")  # noqa: E731
        buf = torch.empty(2 ** 28, dtype=torch.uint8, device=dev)
        copy_tbs = 2 * buf.numel() / ms(lambda: buf.clone()) / 1e9
        shapes, D, dtype = ((4, 4096, 32), (1, 65536, 8)), 64, torch.bfloat16
        if "--shape" in args:
            shapes = (tuple(int(n) for n in args[args.index("--shape") + 1].split(",")),)
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
              f"copy {copy_tbs:.2f} TB/s (read + write)")
    for B, T, H in shapes:
        x = make_inputs("wkv7", B, T, H, D, dtype=dtype, device=dev)
        r, w, k, v, a, b = (x[n] for n in "rwkvab")
        K = V = D
        for C, lb, tune in variants(dry, quick):
            if match is not None and tune and match not in repr(tune):
                continue
            saved = dict(kc.TUNE)
            check = tune.get("check", True)                 # not a TUNE key: the value check on or off
            kc.TUNE.update({n: x for n, x in tune.items() if n != "check"})
            try:
                if tune.get("fold"):        # the folded forward: no checkpoints, so no backward row
                    fold_row(ms, dry, copy_tbs, r, w, k, v, a, b, B, T, H, D, C, lb, tune, check)
                    continue
                prep, state, (o, ht, ckpt, flags, pieces) = kc.fwd_launches(
                    r, w, k, v, a, b, 1.0, None, True, None, True, C, lb, check=check)
                do = torch.randn_like(v)
                parallel = kc.bwd_schedule(B, H, V) == "parallel"

                def bwd():
                    kc.bwd(r, w, k, v, a, b, do, None, ckpt, pieces if parallel else None, 1.0, None, need_dh0=False, chunk_size=C, lower_bound=lb)

                def whole():
                    wkv7.triton_chunked(r, w, k, v, a, b, output_final_state=True, chunk_size=C, lower_bound=lb)

                prep(), state()
                name = f"B={B} T={T} H={H} C={C} {'bounded' if lb is not None else 'any w'} {tune or ''}"
                if dry:
                    want = wkv7.triton_chunked(r, w, k, v, a, b, chunk_size=C, lower_bound=lb)[0]
                    assert torch.equal(o, want), "the launches here no longer match triton_chunked's"
                    bwd()
                    print(f"{name}: the launches match triton_chunked's (dry run, nothing timed)")
                    continue
                tok = B * T * H
                e = r.element_size()
                pe = e if kc.TUNE["pieces"] == "input" else 4
                n_chunks = B * triton.cdiv(T, C)
                we = e if kc.TUNE["wu"] == "input" else 4
                piece_bytes = tok * (we * 3 * D + 3 * pe * D + 4 * C) + 4 * n_chunks * H * K  # W, U, A_rk V; Kd, Bd, Rd; A_rb; G
                prep_bytes = tok * 6 * e * D + piece_bytes                             # inputs in, pieces out
                state_bytes = piece_bytes + tok * 2 * e * D + 4 * n_chunks * H * K * V  # pieces, v in, o out; ckpt
                t_prep, t_state, t_all = ms(prep), ms(state), ms(whole)
                t_bwd = ms(bwd) if not tune or {"bwd", "bwd_schedule", "dstate"} & set(tune) else float("nan")
                if {"inverse", "wu"} & set(tune):            # a precision option: its error too
                    kc.TUNE.clear()
                    kc.TUNE.update(saved)
                    ref = kc.fwd(r, w, k, v, a, b, 1.0, None, True, None, False, C, lb)
                    err = lambda x, y: float((x.float() - y.float()).abs().max() / y.float().abs().max())  # noqa: E731
                    name += f" [o err vs default {err(o, ref[0]):.1e}, state {err(ht, ref[1]):.1e}]"
                print(f"{name:60s} prep {t_prep:.3f} ({t_prep / (prep_bytes / copy_tbs / 1e9):.0f}x floor)  "
                      f"state {t_state:.3f} ({t_state / (state_bytes / copy_tbs / 1e9):.0f}x floor, "
                      f"{1e3 * t_state / triton.cdiv(T, C):.2f} us/chunk)  fwd as called {t_all:.3f}  backward {t_bwd:.3f}",
                      flush=True)
            finally:
                kc.TUNE.clear()
                kc.TUNE.update(saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
