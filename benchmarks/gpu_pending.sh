#!/usr/bin/env bash
# The GPU measurements benchmarks/NOTES.md still asks for, in the order they matter, each under its
# own time limit so that one slow step cannot take the others' share of a 10-minute device call.
#
#   bash benchmarks/gpu_pending.sh [1|2]     # two calls' worth; outputs under $OUT (or ./gpu_pending/)
#
# Call 1: a smoke test of the new GPU defaults, the wkv7 launches one by one (the folded forward, TUNE["wu"], both backward schedules),
# then the wkv6 backward's launches (ours only: FLA's autotune costs minutes).
# Call 2: wkv7 against FLA in one process with the final settings (FLA's forward+backward last),
# then `bench generate` at the 0.1B shape against the official runtime.
# Before either: `python benchmarks/compile_check.py` on CPU (a compile error costs a whole call).
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
step() {  # step NAME SECONDS COMMAND...: run it, keep its output, say how it ended
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout -s INT -k 10 "$limit" "$@" 2>&1 | tee "$out/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]}"
}
if [ "$part" = 1 ]; then
  # first, the paths that became defaults on a GPU without having run compiled there: the model's
  # fused time mix, the early flag read, the folded forward, fused_output (tests, GPU shapes)
  step smoke 120 python3 -m pytest -q -x -p no:cacheprovider tests/test_model.py tests/test_wkv7_triton.py \
    -k "fused or value_checks or fold or flag or check_values"
  step wkv7_breakdown 300 python3 benchmarks/gpu_wkv7_breakdown.py --quick
  step wkv6_bwd_profile 100 python3 benchmarks/gpu_kernel_profile.py --kind wkv6 --backward --ours-only
  step wkv7_bwd_profile 60 python3 benchmarks/gpu_kernel_profile.py --backward --ours-only
else
  step wkv7_vs_fla 420 python3 benchmarks/results/h200_wkv7_v5_2026-12-01.py
  step generate_01b 150 python3 -m rwkvlab bench generate --sizes 0.1b --out-dir "$out"
fi
