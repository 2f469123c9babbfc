"""Compile rwkvlab's Triton kernels for an H100/H200 (sm_90) on a machine without a GPU.

    python benchmarks/compile_check.py [--dtype bf16|fp32] [--warps 4] [--qscan] [name-substring ...]

Triton can build a kernel for a GPU it does not see: this script asks it for sm_90 code for each
kernel of wkv6 and wkv7 (dense and varlen variants) and prints the registers per thread and the
stack (spill) bytes that ``cuobjdump -res-usage`` reads off the cubin — the numbers that decide
how many programs fit on a multiprocessor. It catches compile errors before any device time is
spent, and it is how the register figures in benchmarks/NOTES.md were taken. The ptxas bundled
with Triton does the compiling; nothing runs.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import os
import subprocess
import sys
import tempfile

import rwkvlab  # noqa: F401  (selects the interpreter on a CPU machine; undone below)

os.environ.pop("TRITON_INTERPRET", None)
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

F32 = {"eW", "h0", "ht", "hs", "dhs", "xs", "dht", "dh0", "du", "ckpt", "scratch", "dwT", "acc", "Wp", "Up", "Op", "Arb", "G", "dsk",
       "Of", "Pf", "Gf", "Qf", "mean", "rstd", "dgamma", "dbeta", "drho", "dmu", "dshift"}
INT = {"flags": "*i32", "cu_seqlens": "*i32", "cu": "*i32", "chunk_offsets": "*i32", "chunk_indices": "*i32", "ck_off": "*i32", "idx": "*i32",
       "T": "i32", "rows": "i32", "n_rows": "i32", "part_stride": "i64", "scale": "fp32", "lower": "fp32",
       # the decode kernels (kernels_decode): its state S is float32
       "S": "*fp32", "eps": "fp32", "decay_scale": "fp32", "B": "i32", "C": "i32", "n": "i32", "BD": "i32"}


def kernels(dt16: bool, qscan: bool = False):
    """(module, kernel name, constexprs) for every kernel, dense and varlen."""
    common = dict(H=32, K=64, V=64)
    out = []
    for varlen in (False, True):
        out += [
            ("rwkvlab.wkv6.kernels_recurrent", "wkv6_fwd_recurrent_kernel",
             {**common, "BK": 64, "BV": 64, "USE_H0": True, "STORE_HT": True, "VARLEN": varlen}),
            ("rwkvlab.wkv6.kernels_subchunk", "wkv6_fwd_h_kernel",
             {**common, "BT": 64, "BK": 32, "BV": 32, "USE_H0": True, "STORE_HT": True, "VARLEN": varlen, "DOT16": dt16,
              "CHECK": True}),
            ("rwkvlab.wkv6.kernels_subchunk", "wkv6_fwd_prep_kernel",
             {"H": 32, "K": 64, "BT": 64, "BC": 16, "QB": 4, "BK": 64, "VARLEN": varlen, "DOT16": dt16, "CHECK": True,
              "QSCAN": qscan}),
            ("rwkvlab.wkv6.kernels_subchunk", "wkv6_fwd_o_kernel",
             {**common, "BT": 64, "BC": 16, "BK": 64, "BV": 64, "VARLEN": varlen, "DOT16": dt16}),
            ("rwkvlab.wkv6.kernels_subchunk", "wkv6_bwd_dh_kernel",
             {**common, "BT": 64, "BK": 32, "BV": 32, "USE_DHT": True, "STORE_DH0": True, "VARLEN": varlen, "DOT16": dt16}),
            ("rwkvlab.wkv6.kernels_subchunk", "wkv6_bwd_dq_kernel",
             {**common, "BT": 64, "BC": 16, "QB": 4, "BK": 64, "BV": 64, "VARLEN": varlen, "DOT16": dt16,
              "QSCAN": qscan}),
            ("rwkvlab.wkv6.kernels_subchunk", "wkv6_bwd_dv_kernel",
             {**common, "BT": 64, "BC": 16, "BK": 64, "BV": 64, "VARLEN": varlen, "DOT16": dt16}),
            ("rwkvlab.wkv6.kernels_subchunk", "wkv6_bwd_dkw_kernel",
             {**common, "BT": 64, "BC": 16, "QB": 4, "BK": 64, "BV": 64, "VARLEN": varlen, "DOT16": dt16,
              "QSCAN": qscan}),
            ("rwkvlab.wkv6.kernels_chunked", "wkv6_output_kernel",
             {**common, "BT": 16, "BK": 64, "BV": 64, "VARLEN": varlen, "DOT16": dt16}),
            ("rwkvlab.wkv6.kernels_chunked", "wkv6_bwd_chunked_kernel",
             {**common, "BT": 16, "BK": 64, "BV": 64, "USE_DHT": True, "STORE_DH0": True, "VARLEN": varlen,
              "DOT16": dt16}),
            ("rwkvlab.wkv7.kernels_recurrent", "wkv7_fwd_recurrent_kernel",
             {**common, "BK": 64, "BV": 64, "C": 16, "USE_H0": True, "STORE_HT": True, "STORE_CKPT": True, "VARLEN": varlen}),
            ("rwkvlab.wkv7.kernels_recurrent", "wkv7_bwd_recurrent_kernel",
             {**common, "BK": 64, "BV": 32, "C": 16, "USE_DHT": True, "STORE_DH0": True, "VARLEN": varlen}),
        ]
        out.append(("rwkvlab.wkv7.kernels_chunked", "wkv7_bwd_dstate_kernel",
                    {**common, "BT": 16, "BK": 64, "BV": 64, "USE_DHT": True, "STORE_DH0": True, "VARLEN": varlen,
                     "DOT_PREC": "tf32" if dt16 else "ieee"}))
        out.append(("rwkvlab.wkv7.kernels_chunked", "wkv7_fwd_chunked_kernel",
                    {**common, "BT": 16, "BK": 64, "BV": 64, "CHECK": True, "USE_H0": True, "STORE_HT": True, "STORE_CKPT": True,
                     "VARLEN": varlen, "PREFETCH": True, "DOT_PREC": "tf32" if dt16 else "ieee"}))
        out.append(("rwkvlab.wkv7.kernels_chunked", "wkv7_fwd_folded_kernel",
                    {**common, "BS": 64, "BK": 64, "BV": 64, "CHECK": True, "USE_H0": True, "STORE_HT": True,
                     "VARLEN": varlen, "DOT_PREC": "tf32" if dt16 else "ieee"}))
        for bounded in (False, True):   # any w ≤ 0 (both paths compiled), or a declared lower bound
            out += [
                ("rwkvlab.wkv7.kernels_chunked", "wkv7_fwd_fold_kernel",
                 {**common, "BT": 16, "FOLD": 4, "NSQ": 3, "SPAN": 40.0, "BOUNDED": bounded, "CHECK": True,
                  "VARLEN": varlen, "DOT_PREC": "tf32" if dt16 else "ieee", "INV_PREC": "ieee"}),
                ("rwkvlab.wkv7.kernels_chunked", "wkv7_fwd_prep_kernel",
                 {**common, "BT": 16, "NSQ": 3, "SPAN": 40.0, "BOUNDED": bounded, "CHECK": True,
                  "VARLEN": varlen, "DOT_PREC": "tf32" if dt16 else "ieee", "INV_PREC": "ieee"}),
                ("rwkvlab.wkv7.kernels_chunked", "wkv7_bwd_chunked_kernel",
                 {**common, "BT": 16, "BK": 64, "BV": 64, "NSQ": 3, "SPAN": 40.0, "BOUNDED": bounded,
                  "USE_DHT": True, "STORE_DH0": True, "VARLEN": varlen, "DOT_PREC": "tf32" if dt16 else "ieee"}),
                ("rwkvlab.wkv7.kernels_chunked", "wkv7_bwd_parallel_kernel",
                 {**common, "BT": 16, "BK": 64, "BV": 64, "NSQ": 3, "SPAN": 40.0, "BOUNDED": bounded,
                  "VARLEN": varlen, "DOT_PREC": "tf32" if dt16 else "ieee"}),
            ]
    for mix_v in (False, True):
        out.append(("rwkvlab.wkv7.kernels_decode", "wkv7_fwd_decode_kernel",
                    {"H": 12, "N": 64, "BN": 64, "MIX_V": mix_v, "GATE_BIAS": True}))
    out += [("rwkvlab.wkv7.kernels_decode", "token_mix_decode_kernel", {"M": m, "BC": 1024}) for m in (6, 1)]
    out += [("rwkvlab.wkv7.kernels_decode", "lora_act_decode_kernel", {"BLOCK": 128}),
            ("rwkvlab.wkv7.kernels_decode", "relu_square_decode_kernel", {"BLOCK": 1024})]
    # the training block's fused pieces (kernels_fused): mixes, and GroupNorm + bonus + gate
    out += [("rwkvlab.wkv7.kernels_fused", "_mix_fwd_kernel", {"C": 2048, "M": 6, "BR": 32, "BC": 128, "USE_SHIFT": True}),
            ("rwkvlab.wkv7.kernels_fused", "_mix_bwd_kernel", {"C": 2048, "M": 6, "BR": 32, "BC": 128, "USE_SHIFT": True}),
            ("rwkvlab.wkv7.kernels_fused", "_tail_fwd_kernel", {"C": 2048, "H": 32, "N": 64, "BR": 32}),
            ("rwkvlab.wkv7.kernels_fused", "_tail_bwd_kernel", {"C": 2048, "H": 32, "N": 64, "BR": 16})]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--warps", type=int, default=4)
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--maxnreg", type=int, default=None, help="cap on registers per thread (ptxas spills past it)")
    p.add_argument("--qscan", action="store_true", help='wkv6 sub-chunk kernels with TUNE["quarters"] = "scan"')
    p.add_argument("names", nargs="*", help="only kernels whose name contains one of these")
    args = p.parse_args(argv)
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    # reload the kernel modules now that TRITON_INTERPRET is unset, so @triton.jit builds real kernels
    for name in ("rwkvlab.kernels_common", "rwkvlab.wkv6.kernels_recurrent", "rwkvlab.wkv6.kernels_subchunk",
                 "rwkvlab.wkv6.kernels_chunked", "rwkvlab.wkv7.kernels_recurrent", "rwkvlab.wkv7.kernels_chunked",
                 "rwkvlab.wkv7.kernels_decode", "rwkvlab.wkv7.kernels_fused"):
        importlib.reload(importlib.import_module(name))
    failures = 0
    for mod, kname, consts in kernels(args.dtype == "bf16", args.qscan):
        if args.names and not any(n in kname for n in args.names):
            continue
        fn = getattr(importlib.import_module(mod), kname)
        params = list(inspect.signature(fn.fn).parameters)
        sig = {n: "constexpr" if n in consts else INT.get(n, "*fp32" if n in F32 else f"*{args.dtype}")
               for n in params}
        label = (f"{mod.split('.', 1)[1]}.{kname}{' varlen' if consts.get('VARLEN') else ''}"
                 f"{' bounded' if consts.get('BOUNDED') else ''}")
        try:
            k = triton.compile(ASTSource(fn, sig, constexprs={(params.index(n),): v for n, v in consts.items()}),
                               target=GPUTarget("cuda", 90, 32),
                               options={"num_warps": args.warps, "num_stages": args.stages,
                                        **({"maxnreg": args.maxnreg} if args.maxnreg else {})})
        except Exception as e:  # noqa: BLE001 - report every kernel
            failures += 1
            print(f"{label:<58} FAILED: {type(e).__name__}: {str(e).splitlines()[-1][:150]}")
            continue
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"])
            f.flush()
            res = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
        usage = next((line.split() for line in res.splitlines() if "REG:" in line), ["REG:?", "STACK:?"])
        print(f"{label:<58} {usage[0]:<8} {usage[1]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
