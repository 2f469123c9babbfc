"""Generation benchmark: ``python -m rwkvlab bench generate``.

For RWKV-7 models shaped like the official releases (random weights, saved under the official
RWKV-LM names), measured side by side in one process on the same checkpoint:

- ``rwkvlab``: :meth:`~rwkvlab.model.LanguageModel.generate_batch`, greedy, its own timings
  (prefill: one parallel call over the prompt; decode: RNN steps, tokens read per second, every
  sequence counted). On a CUDA device the step is a captured CUDA graph; ``rwkvlab_eager`` is the
  same loop without the graph; ``rwkvlab_reference`` is the differentiable step (the blocks'
  own code around ``wkv7.step``, what ``model.step`` ran before the lean decoder) at batch 1;
- ``official``: the ``rwkv`` pip runtime (BlinkDL's ChatRWKV package) on the same ``.pth``, greedy
  ``forward(token, state)`` per token (one sequence per call: at batch B it runs B sequences one
  after another), prefill ``forward(prompt, state)``; its CUDA kernel when it builds, its torch
  path otherwise (``note`` says which);
- ``softmax_kv``: :class:`rwkvlab.model.transformer.Transformer` of the same width, depth, heads
  and vocabulary, one decoding step with a KV cache already holding ``context`` tokens.

Sizes: ``ch14`` (chapter 14's byte model: L=2, C=64, heads of 32), ``0.1b`` (L=12, C=768) and
``1.5b`` (L=24, C=2048), World vocabulary (65,536) for the last two. Defaults: ``0.1b,1.5b`` on a
GPU; ``ch14,0.1b`` on CPU (``--sizes`` adds ``1.5b``, slow there). ``--quick``: fewer tokens and
contexts. The CSV (``generate_<device>_<date>.csv`` in ``benchmarks/results``) starts with ``#``
provenance lines: command, date, device, versions, threads, the official runtime's path.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import gc
import io
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

SIZES = {   # name: (vocab, C, L, head size, LoRA ranks or None for RWKV-LM's formula)
    "ch14": (256, 64, 2, 32, dict(d_decay=16, d_aaa=16, d_mv=16, d_gate=16)),
    "0.1b": (65536, 768, 12, 64, None),
    "1.5b": (65536, 2048, 24, 64, None),
}
COLUMNS = ["size", "impl", "phase", "batch", "context", "tokens", "dtype", "device", "threads",
           "tok_per_s", "ms_per_step", "vs_official", "rel_diff_official", "status", "note"]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def build(size: str, dtype: torch.dtype, device, seed: int = 0):
    """The RWKV-7 model of ``size`` with random weights (every parameter non-zero)."""
    from . import model as M

    V, C, L, N, ranks = SIZES[size]
    cfg = M.Config7.make(V, C, L, head_size=N, **(ranks or {}))
    with torch.device("meta"):
        m = M.RWKV7(cfg)
    m = m.to_empty(device="cpu")
    m.init_weights("random", seed=seed)
    return m.to(device=device, dtype=dtype).eval()


# ------------------------------------------------------------------------------------ official
def import_official(gpu: bool):
    """``rwkv.model.RWKV`` for x070, with its CUDA kernel when that builds; (class, note).

    The package reads its switches from the environment when it is imported; they are set for
    the import and put back afterwards. Importing it also switches torch to TF32 matrix products
    for the whole process (rwkv 0.8.32, rwkv/model.py lines 10-12 and 178-180: cudnn.allow_tf32,
    cuda.matmul.allow_tf32, cudnn.benchmark); those are put back too, so that float32 stays
    float32 on a GPU, in its runs and ours (with TF32 on, the 1e-5 agreement below became 2e-4)."""
    saved = {k: os.environ.get(k) for k in ("RWKV_V7_ON", "RWKV_JIT_ON", "RWKV_CUDA_ON")}
    flags = torch_precision_flags()
    try:
        return _import_official(gpu)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        set_torch_precision_flags(flags)


def torch_precision_flags() -> dict:
    """The process-wide torch switches that change what a float32 product computes."""
    return {"cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn.benchmark": torch.backends.cudnn.benchmark}


def set_torch_precision_flags(flags: dict) -> None:
    torch.backends.cuda.matmul.allow_tf32 = flags["cuda.matmul.allow_tf32"]
    torch.backends.cudnn.allow_tf32 = flags["cudnn.allow_tf32"]
    torch.backends.cudnn.benchmark = flags["cudnn.benchmark"]


def _import_official(gpu: bool):
    os.environ["RWKV_V7_ON"] = "1"
    os.environ.setdefault("RWKV_JIT_ON", "1")
    tries = ["1", "0"] if gpu else ["0"]
    last = None
    for cuda_on in tries:
        os.environ["RWKV_CUDA_ON"] = cuda_on
        for k in [k for k in sys.modules if k == "rwkv.model" or k.startswith("rwkv.model.")]:
            del sys.modules[k]
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)     # its torch.jit.script decorators
                from rwkv.model import RWKV
            import rwkv

            ver = getattr(rwkv, "__version__", None)
            if ver is None:
                from importlib.metadata import version
                ver = version("rwkv")
            return RWKV, f"rwkv {ver}, {'its CUDA kernel' if cuda_on == '1' else 'its torch path'} (JIT {os.environ['RWKV_JIT_ON']})"
        except Exception as e:  # noqa: BLE001  (no nvcc, a failed build: fall back to the torch path)
            last = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    return None, f"official runtime unavailable ({last})"


class Official:
    def __init__(self, cls, path: Path, dev: torch.device, dtype: torch.dtype):
        name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        with contextlib.redirect_stdout(io.StringIO()):
            self.m = cls(str(path)[:-4], f"{dev.type} {name}")
        self.dev = dev

    def prefill(self, prompt: list[int]):
        with torch.no_grad():
            return self.m.forward(list(prompt), None)

    def decode(self, logits, state, n: int) -> None:
        with torch.no_grad():
            for _ in range(n):
                tok = int(logits.argmax())
                logits, state = self.m.forward(tok, state)
        _sync(self.dev)


# ------------------------------------------------------------------------------------ timing
def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def time_ours(m, prompts, n, graph, reps):
    """Median prefill and decode rates of ``generate_batch`` (greedy) over ``reps`` runs."""
    pre, dec = [], []
    for _ in range(reps):
        r = m.generate_batch(prompts, n, temperature=0, graph=graph)
        pre.append(r.stats.prefill_tps)
        dec.append(r.stats.decode_tps)
    return _median(pre), _median(dec)


def time_reference(m, prompt, n, reps):
    """The differentiable step (blocks + ``wkv7.step``), greedy, batch 1: tokens per second."""
    dev = m.emb.weight.device
    rates = []
    with torch.no_grad():
        logits, s = m.prefill(torch.tensor([prompt], device=dev))
        for _ in range(reps):
            lg, st = logits, s
            t0 = time.perf_counter()
            for _ in range(n):
                lg, st = m.reference_step(lg.argmax(-1), st)
            _sync(dev)
            rates.append(n / (time.perf_counter() - t0))
    return _median(rates)


def time_official(off: Official, prompts, n, reps):
    pre, dec = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        starts = [off.prefill(p) for p in prompts]
        _sync(off.dev)
        pre.append(sum(len(p) for p in prompts) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for logits, state in starts:
            off.decode(logits, state, n)
        dec.append(n * len(prompts) / (time.perf_counter() - t0))
    return _median(pre), _median(dec)


def time_softmax_step(tf_model, contexts, dev, dtype, reps, steps):
    """ms per decoding step of the softmax baseline over a cache of each length (random keys/values)."""
    from .attention import KVCache

    c = tf_model.cfg
    out = {}
    tok = torch.tensor([7], device=dev)
    with torch.no_grad():
        for T in contexts:
            cache = [KVCache(torch.randn(1, T, c.n_head, c.head_size, device=dev, dtype=dtype),
                             torch.randn(1, T, c.n_head, c.head_size, device=dev, dtype=dtype))
                     for _ in range(c.n_layer)]
            tf_model.step(tok, cache)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                for _ in range(steps):
                    tf_model.step(tok, cache)
                _sync(dev)
                times.append((time.perf_counter() - t0) / steps)
            out[T] = _median(times) * 1e3
            del cache
    return out


def startup_s(path: Path, reps: int = 3):
    """Wall seconds of ``python -m rwkvlab generate --tokens 1`` and of ``python -c 'import torch'``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def wall(cmd):
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, env=env, check=False, timeout=120)
            ts.append(time.perf_counter() - t0)
        return _median(ts)

    gen = wall([sys.executable, "-m", "rwkvlab", "generate", "--model", str(path), "--tokens", "1",
                "--temperature", "0", "--quiet", "--device", "cpu"])
    return gen, wall([sys.executable, "-c", "import torch"])


# ------------------------------------------------------------------------------------ the run
def run_size(size, args, dev, dtype, official_cls, official_note, log, rows, tmp):
    from . import model as M
    from .model import transformer as tf

    gpu = dev.type == "cuda"
    V, C, L, N, _ = SIZES[size]
    quick = args.quick
    n_dec = args.tokens or (8 if size == "1.5b" and not gpu else (32 if quick else 128) if size != "ch14" or gpu
                            else (200 if quick else 1000))
    n_pre = args.prompt or (4096 if gpu else (64 if size != "ch14" else 512))
    batches = args.batch or ([1, 64])
    contexts = args.contexts or ([16, 256, 1024, 4096, 16384, 65536] if gpu else
                                 ([16, 1024] if quick else [16, 256, 1024, 4096]))
    reps = args.reps
    dname = "cuda" if gpu else "cpu"
    dt = str(dtype).replace("torch.", "")
    base = dict(size=size, dtype=dt, device=dname, threads=torch.get_num_threads())

    def add(**kw):
        r = dict(base, **kw)
        rows.append(r)
        msg = r.get("status", "ok")
        if msg == "ok":
            msg = f"{r['tok_per_s']:,.0f} tok/s" if r.get("tok_per_s") not in (None, "") else f"{r['ms_per_step']:.3f} ms"
            if r.get("vs_official") not in (None, ""):
                msg += f" ({r['vs_official']:.2f}x official)"
        log(f"  {size} {r['impl']} {r['phase']} B={r['batch']}{' T=' + str(r['context']) if r.get('context') not in (None, '') else ''}: {msg}")

    log(f"{size}: L={L}, C={C}, heads of {N}, vocab {V}; {dt} on {dname}; decode {n_dec} tokens, prompt {n_pre}")
    t0 = time.perf_counter()
    m = build(size, dtype, dev, seed=args.seed)
    path = Path(tmp) / f"rwkv7_{size}.pth"
    M.save(m, path)
    log(f"  built and saved a random {sum(p.numel() for p in m.parameters()) / 1e6:.1f}M-parameter checkpoint "
        f"({time.perf_counter() - t0:.1f} s)")
    g = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, V, (n_pre,), generator=g).tolist()
    short = prompt[:16]

    off = None
    if official_cls is not None and not args.no_official:
        try:
            off = Official(official_cls, path, dev, dtype)
        except Exception as e:  # noqa: BLE001
            official_note = f"official runtime failed to load: {type(e).__name__}: {str(e)[:100]}"
            off = None
    rel = ""
    if off is not None:
        with torch.no_grad():
            ours_l, _ = m.prefill(torch.tensor([short], device=dev))
            their_l, _ = off.prefill(short)
        a, b = ours_l[0].double(), their_l.double().to(ours_l.device)
        rel = float((a - b).norm() / b.norm())
        log(f"  same checkpoint, same 16-token prompt: ||ours - official|| / ||official|| = {rel:.2e}")

    # ---- decode and prefill, side by side
    for B in batches:
        prompts = [short] * B
        graphs = [None, False] if gpu else [None]
        n_b = max(4, n_dec // (4 if B > 1 and not gpu else 1))
        m.decoder().compile()                 # TorchScript's one-time cost on CPU, outside the timings
        m.generate_batch(prompts, 2, temperature=0)                        # warm-up (and graph capture)
        res = {g: [] for g in graphs}
        o_runs = []
        n_off = n_b if B == 1 else max(2, n_b // 8)
        for _ in range(reps):               # interleaved, so that a busy spell hits both sides
            for graph in graphs:
                res[graph].append(time_ours(m, prompts, n_b, graph, 1)[1])
            if off is not None:
                o_runs.append(time_official(off, prompts[:B], n_off, 1)[1])
        res = {g: _median(v) for g, v in res.items()}
        o_dec = _median(o_runs) if o_runs else float("nan")
        if off is not None:
            add(impl="official", phase="decode", batch=B, tokens=n_off * B, tok_per_s=o_dec,
                ms_per_step=1e3 * B / o_dec, status="ok",
                note=official_note + ("" if B == 1 else f"; {B} sequences one after another (one per call)"))
        for graph, tps in res.items():
            name = "rwkvlab" if graph is None else "rwkvlab_eager"
            add(impl=name, phase="decode", batch=B, tokens=n_b * B, tok_per_s=tps, ms_per_step=1e3 * B / tps,
                vs_official=tps / o_dec if not math.isnan(o_dec) else "", rel_diff_official=rel, status="ok",
                note=("CUDA graph" if gpu and graph is None else "no graph" + ("" if gpu else ", TorchScript block"))
                + ", greedy, generate_batch's own timing (threads='auto')")
        if B == 1:
            tps = time_reference(m, short, max(4, n_b // 4), reps)
            add(impl="rwkvlab_reference", phase="decode", batch=1, tokens=max(4, n_b // 4), tok_per_s=tps,
                ms_per_step=1e3 / tps, vs_official=tps / o_dec if not math.isnan(o_dec) else "", status="ok",
                note="blocks + wkv7.step (the differentiable step; model.step before the lean decoder)")
    # prefill
    m.prefill(torch.tensor([prompt], device=dev))
    pre = []
    for _ in range(reps):
        _sync(dev)
        t0 = time.perf_counter()
        m.prefill(torch.tensor([prompt], device=dev))
        _sync(dev)
        pre.append(n_pre / (time.perf_counter() - t0))
    o_pre = float("nan")
    if off is not None:
        o_pre, _ = time_official(off, [prompt], 1, reps)
        add(impl="official", phase="prefill", batch=1, context=n_pre, tokens=n_pre, tok_per_s=o_pre,
            ms_per_step="", status="ok", note=official_note)
    add(impl="rwkvlab", phase="prefill", batch=1, context=n_pre, tokens=n_pre, tok_per_s=_median(pre), ms_per_step="",
        vs_official=_median(pre) / o_pre if not math.isnan(o_pre) else "", status="ok",
        note=f"model.prefill: one parallel call ({'triton_chunked' if gpu else 'chunked'} core)")
    if size == "ch14" and not gpu and not args.no_startup:
        gen_s, torch_s = startup_s(path)
        add(impl="cli_startup", phase="startup", batch=1, tokens=1, tok_per_s="", ms_per_step=gen_s * 1e3,
            status="ok", note=f"python -m rwkvlab generate --tokens 1 wall time; python -c 'import torch' alone "
                              f"{torch_s * 1e3:.0f} ms")
    del off
    gc.collect()

    # ---- the softmax baseline, one step over caches of growing length
    if not args.no_softmax:
        from .model.common import random_init

        tcfg = tf.Config(vocab_size=V, n_embd=C, n_layer=L, head_size=N, dim_ffn=4 * C, max_len=max(contexts) + 1)
        with torch.device("meta"):
            tfm = tf.Transformer(tcfg)
        tfm = tfm.to_empty(device="cpu")
        random_init(tfm, torch.Generator().manual_seed(args.seed))
        tfm = tfm.to(device=dev, dtype=dtype).eval()
        steps = 3 if size == "1.5b" and not gpu else 10
        dec = m.decoder()
        st = dec.new_state(1)
        tok = torch.tensor([7], device=dev)

        def rwkv_step_ms():
            with torch.inference_mode():
                dec.step_(tok, st)
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        dec.step_(tok, st)
                    _sync(dev)
                    times.append((time.perf_counter() - t0) / steps)
            return _median(times) * 1e3

        for T in contexts:             # each context's softmax row next to an RWKV step measured just after it
            ms = time_softmax_step(tfm, [T], dev, dtype, reps, steps)[T]
            rwkv_ms = rwkv_step_ms()
            add(impl="softmax_kv", phase="step", batch=1, context=T, tokens=1, tok_per_s=1e3 / ms, ms_per_step=ms,
                status="ok", note="transformer.step: attention.kv_cache_step over T cached tokens (torch.cat growth)")
            add(impl="rwkvlab_step", phase="step", batch=1, context=T, tokens=1, tok_per_s=1e3 / rwkv_ms,
                ms_per_step=rwkv_ms, status="ok",
                note="decoder.step_ alone (inference mode); its inputs are the same at every position")
        del tfm
    del m
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()


def write_csv(path: Path, rows, meta: dict) -> Path:
    """This benchmark's rows through :func:`rwkvlab.bench.write_csv`, in its own columns."""
    from .bench import write_csv as _write

    return _write(path, rows, meta, columns=COLUMNS)


def read_csv(path) -> list[dict]:
    """The rows of a CSV written by this benchmark (numbers as floats, ``#`` lines skipped)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    for r in rows:
        for k in ("tok_per_s", "ms_per_step", "vs_official", "rel_diff_official"):
            r[k] = float(r[k]) if r.get(k) not in (None, "") else float("nan")
        for k in ("batch", "context", "tokens", "threads"):
            r[k] = int(r[k]) if r.get(k) not in (None, "") else None
    return rows


def _list(kind):
    def parse(s):
        try:
            vals = [kind(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {s!r}") from None
        if not vals:
            raise argparse.ArgumentTypeError("expected at least one value")
        return vals
    return parse


def main(argv: list[str] | None = None) -> int:
    from . import device as _device

    p = argparse.ArgumentParser(prog="python -m rwkvlab bench generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=_list(str), default=None, help="comma-separated: ch14, 0.1b, 1.5b")
    p.add_argument("--batch", type=_list(int), default=None, help="decode batch sizes (default 1,64)")
    p.add_argument("--contexts", type=_list(int), default=None, help="softmax cache lengths")
    p.add_argument("--tokens", type=int, default=None, help="tokens to decode per measurement")
    p.add_argument("--prompt", type=int, default=None, help="prefill length")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="default: bf16 on a GPU, fp32 on CPU")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per row (median)")
    p.add_argument("--threads", type=int, default=None, help="CPU: torch.set_num_threads for the run")
    p.add_argument("--quick", action="store_true", help="fewer tokens and contexts")
    p.add_argument("--no-official", action="store_true")
    p.add_argument("--no-softmax", action="store_true")
    p.add_argument("--no-startup", action="store_true", help="skip the CLI start-up timing (ch14 on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    gpu = _device.has_gpu()
    sizes = args.sizes or (["0.1b", "1.5b"] if gpu else ["ch14", "0.1b"])
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        p.error(f"--sizes: unknown {bad}; choose from {', '.join(SIZES)}")
    if args.reps < 1:
        p.error("--reps: at least 1")
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads: at least 1")
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype] if args.dtype \
        else (torch.bfloat16 if gpu else torch.float32)
    dev = _device.device()
    from .bench import _default_out_dir, _device_name, device_slug

    official_cls, official_note = import_official(gpu)
    print(_device.describe(), flush=True)
    print(official_note, flush=True)
    today = _dt.date.today().isoformat()
    name = args.out or Path(f"generate_{device_slug(gpu)}_{today}{'_quick' if args.quick else ''}.csv")
    out_dir = args.out_dir if args.out_dir is not None else _default_out_dir()
    path = name if name.parent != Path(".") else out_dir / name
    meta = {
        "rwkvlab bench generate": "one process; every size's rows on the same random-weight checkpoint",
        "command": "python -m rwkvlab bench generate" + ("" if not argv else " " + shlex.join(argv)),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": _device_name(gpu),
        "versions": f"python {platform.python_version()}, torch {torch.__version__}; {official_note}",
        "timing": f"median of {args.reps} runs after a warm-up; decode tok/s = steps x batch / wall s "
                  "(greedy, sampling included); official at batch B = B sequences one after another",
        "columns": "vs_official = tok_per_s / official tok_per_s of the same phase and batch; rel_diff_official = "
                   "||logits_ours - logits_official|| / ||logits_official|| after the same 16-token prompt",
    }
    rows: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            cls, note = official_cls, official_note
            if SIZES[size][3] != 64 and "CUDA kernel" in official_note:
                # rwkv 0.8.32 builds its x070 CUDA kernel for heads of 64 only (rwkv/model.py:
                # HEAD_SIZE = 64, passed to nvcc as -D_N_); other head sizes read garbage there
                # (NaN logits), so such a size gets the package's torch path
                cls, note = import_official(False)
                print(f"  {size}: heads of {SIZES[size][3]}; the official CUDA kernel takes heads of 64 only: "
                      f"{note}", flush=True)
            try:
                run_size(size, args, dev, dtype, cls, note, lambda s: print(s, flush=True), rows, tmp)
            except Exception as e:  # noqa: BLE001  a size that fails is a row, the run goes on
                rows.append(dict(size=size, impl="-", phase="-", status=f"failed: {type(e).__name__}: {str(e)[:160]}"))
                print(f"  {size}: failed: {type(e).__name__}: {e}", flush=True)
            meta["wall_s"] = f"{time.perf_counter() - t0:.1f}"
            write_csv(path, rows, meta)
    print(f"\nwrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
