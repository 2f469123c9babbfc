"""The RWKV-7 time-mix layer, forward and forward + backward: ``python -m rwkvlab bench block``.

The layer is the book's ``x070.TimeMix`` (token shift and mixes, the five projections and their
LoRAs, the WKV call, GroupNorm, the output correction, the gate and the output projection), in
one model of one block with random weights, called as the model calls it (``sequence_core``: the
chunked Triton kernel with RWKV-7's decay bound declared on a GPU, the torch ``chunked`` form on
CPU). When ``fla`` imports, FLA's ``fla.layers.rwkv7.RWKV7Attention`` of the same width and head
size runs beside it, in the same process, on the same input. Widths 768 and 2048 (the official
0.1B and 1.5B shapes) at head size 64 and T = 4096 on a GPU; a small shape on CPU (ours only:
FLA needs CUDA). Medians in ms (``triton.testing.do_bench`` on a GPU, wall clock on CPU), with
the gradients of the input and of every parameter in the backward. The CSV lands in
``benchmarks/results/`` with the command, device and versions.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import platform
import shlex
import sys
from pathlib import Path

import torch

COLUMNS = ["impl", "C", "heads", "B", "T", "dtype", "fwd_ms", "fwdbwd_ms", "vs_fla_fwd", "vs_fla_fwdbwd",
           "rel_diff_fla", "note"]


def ours(C: int, dtype: torch.dtype, device, seed: int = 0):
    """``(layer, call)``: the first block's time mix of a one-block RWKV-7 with random weights, and
    ``call(x) -> y`` running it as the model does in parallel mode."""
    from . import model as M

    cfg = M.Config7.make(16, C, 1, head_size=64)
    with torch.device("meta"):
        m = M.RWKV7(cfg)
    m = m.to_empty(device="cpu").init_weights("random", seed=seed).to(device=device, dtype=dtype)
    att = m.blocks[0].att
    core = m.sequence_core(m.wkv_module.triton_chunked if device.type == "cuda" else m.wkv_module.chunked)

    def call(x):
        return att(x, None, None, None, core)[0]
    return att, call


def fla_layer(C: int, dtype: torch.dtype, device):
    """``(layer, call, note)`` for FLA's RWKV7Attention of width C, head size 64, or ``(None, None, why)``."""
    try:
        from fla.layers.rwkv7 import RWKV7Attention
    except Exception as e:  # noqa: BLE001 - FLA is optional
        return None, None, f"fla.layers.rwkv7 not importable ({type(e).__name__})"
    try:    # fla-core 0.6.0 initialises by depth: layer_idx needs num_hidden_layers beside it
        layer = RWKV7Attention(mode="chunk", hidden_size=C, head_dim=64, layer_idx=0,
                               num_hidden_layers=12).to(device=device, dtype=dtype)
    except Exception as e:  # noqa: BLE001 - another FLA version's signature: say so, time ours alone
        return None, None, f"fla.layers.rwkv7.RWKV7Attention could not be built ({type(e).__name__}: {e})"

    def call(x):
        return layer(x)[0]
    return layer, call, ("fla.layers.rwkv7.RWKV7Attention(mode='chunk', head_dim=64, layer_idx=0, "
                         "num_hidden_layers=12), its defaults")


def _time(call, x, params, gpu: bool, reps: int, backward: bool) -> float:
    from .bench import _median_ms

    if not backward:
        def step():
            with torch.no_grad():
                call(x)
        return _median_ms(step, gpu, reps=reps)
    xl = x.detach().clone().requires_grad_(True)
    leaves = [xl, *params]
    dy = torch.randn_like(call(xl))

    def step():
        call(xl).backward(dy)
    return _median_ms(step, gpu, grad_to_none=leaves, reps=reps)


def run(args) -> list[dict]:
    from . import device as _device

    gpu = _device.has_gpu()
    dev = _device.device()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if gpu else "fp32")]
    widths = args.C or ([768, 2048] if gpu else [64])
    T = args.T or (4096 if gpu else 64)
    rows = []
    for C in widths:
        g = torch.Generator(device="cpu").manual_seed(args.seed)
        x = torch.randn(args.B, T, C, generator=g).to(device=dev, dtype=dtype)
        layer, call = ours(C, dtype, dev, seed=args.seed)
        y = call(x)
        ok = dict(impl="rwkvlab x070.TimeMix", C=C, heads=C // 64, B=args.B, T=T, dtype=str(dtype)[6:],
                  fwd_ms=_time(call, x, list(layer.parameters()), gpu, args.reps, False),
                  fwdbwd_ms=_time(call, x, list(layer.parameters()), gpu, args.reps, True),
                  note="the model's own call (triton_chunked, lower_bound)" if gpu else "CPU: torch chunked core")
        rows.append(ok)
        print(f"C={C} ours: fwd {ok['fwd_ms']:.3f} ms, fwd+bwd {ok['fwdbwd_ms']:.3f} ms", flush=True)
        if not gpu or args.no_fla:
            continue
        flayer, fcall, note = fla_layer(C, dtype, dev)
        if flayer is None:
            print(note, flush=True)
            continue
        fy = fcall(x)
        fr = dict(impl="fla RWKV7Attention", C=C, heads=C // 64, B=args.B, T=T, dtype=str(dtype)[6:],
                  fwd_ms=_time(fcall, x, list(flayer.parameters()), gpu, args.reps, False),
                  fwdbwd_ms=_time(fcall, x, list(flayer.parameters()), gpu, args.reps, True), note=note)
        rows.append(fr)
        ok["vs_fla_fwd"] = fr["fwd_ms"] / ok["fwd_ms"]          # > 1: ours is faster
        ok["vs_fla_fwdbwd"] = fr["fwdbwd_ms"] / ok["fwdbwd_ms"]
        ok["rel_diff_fla"] = float("nan")                        # different weights: outputs not comparable
        print(f"C={C} FLA:  fwd {fr['fwd_ms']:.3f} ms, fwd+bwd {fr['fwdbwd_ms']:.3f} ms "
              f"(ours {ok['vs_fla_fwd']:.2f}x / {ok['vs_fla_fwdbwd']:.2f}x FLA's speed; shapes {tuple(y.shape)} "
              f"and {tuple(fy.shape)})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    from . import device as _device
    from .bench import _default_out_dir, _device_name, device_slug, write_csv

    p = argparse.ArgumentParser(prog="python -m rwkvlab bench block", description=__doc__.split("\n\n")[0])
    p.add_argument("--C", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="model widths, comma-separated (default 768,2048 on a GPU, 64 on CPU)")
    p.add_argument("--T", type=int, default=None, help="sequence length (default 4096 on a GPU, 64 on CPU)")
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on a GPU, fp32 on CPU")
    p.add_argument("--reps", type=int, default=3, help="CPU: timed repetitions (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-fla", action="store_true",
                   help="time ours alone (FLA's kernels autotune for minutes on their first call)")
    p.add_argument("--out", type=Path, default=None, help="CSV path (default benchmarks/results/block_<device>_<date>.csv)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    for name in ("B", "reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: at least 1")
    gpu = _device.has_gpu()
    print(_device.describe(), flush=True)
    rows = run(args)
    path = args.out or _default_out_dir() / f"block_{device_slug(gpu)}_{_dt.date.today().isoformat()}.csv"
    meta = {"rwkvlab bench block": "one process; ours and FLA's layer on the same input",
            "command": "python -m rwkvlab bench block" + ("" if not argv else " " + shlex.join(argv)),
            "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": _device_name(gpu),
            "versions": f"python {platform.python_version()}, torch {torch.__version__}",
            "columns": "vs_fla_* = FLA's ms / ours (above 1: ours is faster)"}
    print(f"wrote {write_csv(path, rows, meta, columns=COLUMNS)}")
    return 0
