#!/usr/bin/env bash
# The GPU measurements benchmarks/NOTES.md still asks for, in the order they matter, each under its
# own time limit so that one slow step cannot take the others' share of a 10-minute device call.
#
#   bash benchmarks/gpu_pending.sh [1|2|3|4|5|6|7|8]   # one call's worth each; outputs under $OUT (or ./gpu_pending/)
#
# Call 1: wkv6 against FLA's chunk_rwkv6 in one process at the four target shapes (the defaults of
# `python -m rwkvlab bench` on a GPU), ours checked and unchecked, and our packed batch; FLA's
# packed-batch row is left out (on 2026-12-01 it had not finished when the run hit its limit).
# Call 2: the same for wkv7 with the declared bound, against chunk_rwkv7(..., lower_bound).
# Both start with benchmarks/gpu_grad_check.py (bf16 gradients against float32, a few seconds);
# call 1 then profiles the wkv6 backward's kernels under a few launch settings (gpu_kernel_profile.py).
# Calls 1 and 2 ran on 2026-12-01 (session 4); what they left is calls 3-6:
# Call 3: wkv6's backward after it took dA entries from its tile (untimed), kernel by kernel, with
#   TUNE["quarters"] = "scan" beside it; then ours beside FLA at T=4096 only.
# Call 4: wkv7 beside FLA's chunk_rwkv7(lower_bound) at the four target shapes, one process. FLA's
#   kernels autotune on their first call, keyed by block sizes and head sizes, not by T
#   (fla/ops/generalized_delta_rule/dplr/*.py, key=['BT', 'BK', 'BV'] and the like; cumsum and
#   solve_tril add B and H), so the minutes go to the first shape and the rest reuse the choice;
#   fla-core 0.6.0 also stores the choice in Triton's cache (FLA_CACHE_RESULTS=1, fla/utils/env.py).
# Call 5: call 4 again, sent at once if call 4 ran out: TRITON_CACHE_DIR below is an ignored folder
#   of the working tree, which a warm machine keeps between calls, so FLA's tuning and every
#   compiled kernel are found there and the rows come quickly.
# Call 6: `python -m rwkvlab bench block` (the model's RWKV-7 time mix against FLA's RWKV7Attention,
#   widths 768 and 2048, T=4096); never run on a GPU yet.
# Call 7: the folded state pass's step time for steps of 16, 32 and 64 tokens at B=1, H=8, T=65536
#   (benchmarks/gpu_fold_steps.py), then call 6's block bench under a shorter limit.
# Call 8: the block bench at width 2048 alone (call 7 ran out in FLA's tuning there), then where
#   the GPU-only check-and-time cells of chapters 11 and 07 spend their time (cell_profile.py).
# Before any: `python benchmarks/compile_check.py` on CPU (a compile error costs a whole call).
set -u
cd "$(dirname "$0")/.."
part=${1:-1}
out=${OUT:-gpu_pending}
mkdir -p "$out"
if ls .whl/*.whl > /dev/null 2>&1; then   # FLA, einops, rwkv; and pytest with its kin from .whl/nb/
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    $(ls .whl/*.whl .whl/nb/*.whl 2>/dev/null) || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.triton_cache}   # kept by a warm machine (see call 5)
step() {  # step NAME SECONDS COMMAND...: run it, keep its output, say how it ended
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout -s INT -k 10 "$limit" "$@" 2>&1 | tee "$out/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]}"
}
if [ "$part" = 1 ]; then
  step grad_check 60 python3 benchmarks/gpu_grad_check.py wkv6
  # the v5 backward's three gradient kernels under other launch settings, one process, kernel by kernel
  step wkv6_tune 100 python3 benchmarks/gpu_kernel_profile.py --kind wkv6 --backward --ours-only --iters 10 \
    --variants "bwd_dq=8,1 bwd_dq=8,2 bwd_dkw=8,1 bwd_dkw=8,2 bwd_dv=4,2 bwd_dv=8,3"
  step bench_wkv6 420 python3 -m rwkvlab bench --kinds wkv6 --no-plot --out-dir "$out" \
    --impls =triton_chunked,=triton_chunked_unchecked,=fla.chunk_rwkv6,=triton_chunked_unchecked+varlen
elif [ "$part" = 3 ]; then
  step grad_check 50 python3 benchmarks/gpu_grad_check.py wkv6
  step wkv6_profile 90 python3 benchmarks/gpu_kernel_profile.py --kind wkv6 --backward --ours-only --iters 10 \
    --variants "quarters=scan"
  step bench_wkv6 400 python3 -m rwkvlab bench --kinds wkv6 --no-plot --out-dir "$out" --T 4096 \
    --impls =triton_chunked_unchecked,=fla.chunk_rwkv6
elif [ "$part" = 4 ] || [ "$part" = 5 ]; then
  step bench_wkv7 570 python3 -m rwkvlab bench --kinds wkv7 --no-plot --out-dir "$out" \
    --impls =triton_chunked_lb_unchecked,=fla.chunk_rwkv7_lb
elif [ "$part" = 6 ]; then
  step bench_block 570 python3 -m rwkvlab bench block --out "$out/block_h200.csv"
elif [ "$part" = 7 ]; then
  step fold_steps 150 python3 benchmarks/gpu_fold_steps.py
  step bench_block 400 python3 -m rwkvlab bench block --out "$out/block_h200.csv"
elif [ "$part" = 8 ]; then
  step bench_block_2048 250 python3 -m rwkvlab bench block --C 2048 --out "$out/block_h200_2048.csv"
  step cells_ch11 100 python3 benchmarks/cell_profile.py notebooks/11_wkv7_triton_chunked.py 0,1,21 --top 30
  step cells_ch07 100 python3 benchmarks/cell_profile.py notebooks/07_wkv6_triton.py 0,1,35 --top 30
elif [ "$part" = 2 ]; then
  step grad_check 50 python3 benchmarks/gpu_grad_check.py wkv7
  step wkv7_fold 100 python3 benchmarks/gpu_wkv7_breakdown.py --quick --match fold   # the fold prep's new form
  step bench_wkv7 360 python3 -m rwkvlab bench --kinds wkv7 --no-plot --out-dir "$out" \
    --impls =triton_chunked_lb,=triton_chunked_lb_unchecked,=fla.chunk_rwkv7_lb,=triton_chunked_lb_unchecked+varlen
else
  echo "gpu_pending.sh: no call $part (calls are 1-8)" >&2
  exit 2
fi
