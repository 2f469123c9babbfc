#!/usr/bin/env bash
# The whole book's checks on a GPU machine: `pytest --nbval notebooks tests`, the README's test
# command, split into shards that run side by side (compiling Triton kernels is CPU work, and a
# GPU machine here has 16 cores and a 10-minute limit per call).
#
#   bash benchmarks/gpu_book_run.sh [shards] [timeout_s]     # defaults: 8 shards, 540 s
#   FILES="tests/test_model.py notebooks/13_two_modes.py" bash benchmarks/gpu_book_run.sh 2
#   SKIP_WHEELS=1 FILES=... bash benchmarks/gpu_book_run.sh 2 300    # a dry run of the sharding on CPU
#   PART=1/2 bash benchmarks/gpu_book_run.sh 12 540; PART=2/2 ...      # the book in two device calls
#   XDIST=8 (default), HEAVY="...", PER_TEST=300 (default): see below
# (one H200 machine, 16 cores, 12 shards: the whole book did not fit in one 10-minute call)
#
# Wheels: anything under .whl/ (and .whl/nb/: nbval, jupytext, ipykernel, matplotlib, nbconvert,
# django-static-mathjax and their dependencies, for a machine whose Python has torch and triton but
# not the book's requirements; the download commands are in benchmarks/NOTES.md)
# is installed into /tmp/site, which goes first on PYTHONPATH. Logs: one file per shard under
# $OUT (or ./gpu_book_run/), then one summary line per shard, and the failures.
set -u
cd "$(dirname "$0")/.."
shards=${1:-8}
limit=${2:-540}
out=${OUT:-gpu_book_run}
mkdir -p "$out"
wheels=$(ls .whl/*.whl .whl/nb/*.whl 2>/dev/null)
if [ -n "$wheels" ] && [ -z "${SKIP_WHEELS:-}" ]; then     # SKIP_WHEELS=1: use this Python's own packages
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  # --target puts nbconvert's templates and the wheels' scripts beside the packages, where neither
  # nbconvert nor the shell looks by itself (the HTML book's tests failed without these on 2026-12-02)
  export JUPYTER_PATH=/tmp/site/share/jupyter PATH=/tmp/site/bin:$PATH
fi
export PYTHONUNBUFFERED=1
all=($(printf '%s\n' notebooks/[0-9]*.py tests/test_*.py | LC_ALL=C sort))   # one order on every machine
files=($(printf '%s\n' ${FILES:-${all[@]}} | LC_ALL=C sort))                 # FILES="a b": only those (a rerun)
# test files too long for one shard on a GPU (every shape compiles new kernels: 15-60 s a test,
# ~2,500 s in all for test_wkv6_triton on 2026-12-02) run on XDIST pytest-xdist workers of their
# own when xdist imports (the H200 machine has it); chapters never do (a chapter's cells share one
# kernel, which xdist does not keep). HEAVY="" puts them back in the shards.
heavy=()
if python3 -c "import xdist" 2> /dev/null; then
  kept=()
  for f in "${files[@]}"; do
    if [[ " ${HEAVY-tests/test_kernel_sizes.py tests/test_wkv6_triton.py} " == *" $f "* ]]; then heavy+=("$f"); else kept+=("$f"); fi
  done
  files=("${kept[@]}")
fi
pick_part() {  # pick_part NAME...: every n-th of the names, for PART=p/n
  local j
  for ((j = p - 1; j < $#; j += n)); do echo "${@:j+1:1}"; done
}
if [ -n "${PART:-}" ]; then          # PART=1/2, PART=2/2: every other file, for a book split over two calls
  p=${PART%/*}; n=${PART#*/}
  files=($(pick_part "${files[@]}"))
  heavy=($(pick_part "${heavy[@]}"))     # the heavy files are shared out on their own, one a part
  echo "part $PART: $(( ${#files[@]} + ${#heavy[@]} )) files"
fi
# tests/test_jupyterlab.py checks what `pip install -r requirements.txt` put under sys.prefix, and
# tests/test_roundtrip.py needs JupyterLab's server from it; the wheels here go to /tmp/site and
# carry neither, so both are left out and said so (neither has anything GPU-specific)
skip_env="tests/test_jupyterlab.py tests/test_roundtrip.py"
echo "not run here: $skip_env (they check the README's install, which this script does not do)"
# with pytest-timeout installed (the H200 machine has it), a test or cell past PER_TEST seconds
# fails with its stack, and the shard goes on: one hang costs one test, not the shard's log
per_test=()
python3 -c "import pytest_timeout" 2> /dev/null && per_test=(--timeout "${PER_TEST:-300}")
if [ ${#heavy[@]} -gt 0 ]; then
  echo "on ${XDIST:-8} xdist workers: ${heavy[*]}"
  timeout -s INT -k 30 "$limit" python3 -m pytest -v -rfE -p no:cacheprovider --durations=15 "${per_test[@]}" \
    -n "${XDIST:-8}" "${heavy[@]}" > "$out/shardx.txt" 2>&1 &
fi
for ((i = 0; i < shards; i++)); do
  # each shard passes the folders, as the README's command does, and ignores the other shards'
  # files: a chapter named on the command line would also be imported by pytest as a module
  picked=" "
  for ((j = i; j < ${#files[@]}; j += shards)); do picked+="${files[j]} "; done
  ignore=()
  for f in $skip_env; do ignore+=("--ignore=$f"); done
  for f in "${all[@]}"; do
    [[ "$picked" == *" $f "* ]] || ignore+=("--ignore=$f")
  done
  # SIGINT at the limit: pytest stops and still prints its summary (which tests ran, which failed)
  # --durations=0: every item's time, so that each chapter's total can be added up below
  timeout -s INT -k 30 "$limit" python3 -m pytest -v -rfE -p no:cacheprovider --durations=0 --durations-min=0.2 \
    "${per_test[@]}" --nbval notebooks tests "${ignore[@]}" > "$out/shard$i.txt" 2>&1 &
done
wait
names=()
for ((i = 0; i < shards; i++)); do names+=("$i"); done
[ ${#heavy[@]} -gt 0 ] && names+=(x)
for i in "${names[@]}"; do
  echo "shard $i: $(tail -n 1 "$out/shard$i.txt")"
done
grep -h "^FAILED\|^ERROR" "$out"/shard*.txt || echo "no FAILED or ERROR lines"
# each chapter's time (its cells' setup + call, items under 0.2 s left out), against the book's
# budget of 60 s a chapter (never over 90 s); measured beside the other shards, so an upper bound
python3 - "$out"/shard*.txt <<'PY'
import re, sys
from collections import defaultdict
tot = defaultdict(float)
for path in sys.argv[1:]:
    for line in open(path, errors="replace"):
        m = re.match(r"\s*([0-9.]+)s (setup|call|teardown)\s+(notebooks/\S+\.py)::Cell", line)
        if m:
            tot[m[3]] += float(m[1])
for name, t in sorted(tot.items(), key=lambda kv: -kv[1]):
    print(f"chapter {name:45s} {t:7.1f} s{'  over 90 s' if t > 90 else '  over 60 s' if t > 60 else ''}")
PY
# every shard's log in one file (a device call brings back only a few files)
for i in "${names[@]}"; do echo "######## shard $i"; cat "$out/shard$i.txt"; done | gzip > "$out/shards.txt.gz"
