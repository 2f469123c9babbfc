"""One benchmark for the whole ladder: ``python -m rwkvlab bench``.

Times, side by side in one process and on the same inputs, every rung the book builds for RWKV-6
and RWKV-7 (``naive``, ``chunked``, ``triton_recurrent``, ``triton_chunked``), the
flash-linear-attention (FLA) kernels when ``fla`` is importable, and causal
``torch.nn.functional.scaled_dot_product_attention`` as the softmax yardstick. For each row it
records:

- ``fwd_ms`` / ``fwdbwd_ms``: medians of the forward, and of forward + backward (a random
  cotangent for ``o`` and for the final state, gradients for every tensor input). On a GPU,
  ``triton.testing.do_bench(..., return_mode="median")``; on CPU, the median of repeated
  wall-clock runs (``time.perf_counter``, at least 3).
- ``peak_mem_mb``: on a GPU, the working memory of one call: ``torch.cuda.max_memory_allocated``
  during it minus what was allocated just before (inputs excluded), in 10^6 bytes.
- ``floor_ms`` and ``x_floor``: the memory-traffic floor of the forward, every input read once
  and every output (``o`` and the final state) written once at the device-copy bandwidth measured
  at the start of the same run, and the row's forward time over it.
- ``rel_diff_fla`` / ``rel_diff_ref``: ‖o − o_FLA‖/‖o_FLA‖ against FLA's chunk kernel, and
  against the package's torch ``chunked`` form run in float32 on the same (rounded) inputs.

Each row runs inside ``try``: a kernel that fails prints ``failed: <reason>`` and the run goes
on. Results go to a CSV (``bench_<device>_<date>.csv``, provenance in ``#`` header lines:
device, versions, date, the exact command) and, when matplotlib is installed, a PNG beside it.
The table is printed last.

The helpers are importable, so a chapter can time a kernel the same way::

    from rwkvlab import bench, wkv6
    x = bench.make_inputs("wkv6", B=1, T=256, H=2, D=32)
    ms = bench.time_forward(wkv6.chunked, x)
    rows = bench.read_csv("benchmarks/results/bench_h200_2026-12-01.csv")
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gc
import importlib
import inspect
import itertools
import math
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import book as _book
from . import device as _device
from .wkv7.reference import RWKV7_LOWER_BOUND

KINDS = ("wkv6", "wkv7")
COLUMNS = ["kind", "impl", "layout", "B", "T", "H", "K", "V", "dtype", "device",
           "fwd_ms", "fwdbwd_ms", "peak_mem_mb", "floor_ms", "x_floor",
           "rel_diff_fla", "rel_diff_ref", "status", "note"]
INT_COLUMNS = ("B", "T", "H", "K", "V")
FLOAT_COLUMNS = ("fwd_ms", "fwdbwd_ms", "peak_mem_mb", "floor_ms", "x_floor", "rel_diff_fla", "rel_diff_ref")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# timing defaults: do_bench milliseconds on a GPU, repetitions on CPU
GPU_WARMUP_MS, GPU_REP_MS = 25, 100
CPU_REPS = 3

# the default sweeps: (B, H, D, T) configurations
GPU_CONFIGS = [(4, 32, 64, 1024), (4, 32, 64, 4096), (4, 32, 64, 16384), (1, 8, 64, 65536)]
GPU_QUICK = [(4, 32, 64, 4096)]
CPU_CONFIGS = [(1, 4, 64, 4096)]
CPU_QUICK = [(1, 2, 32, 512)]


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------

def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype: expected one of {', '.join(DTYPES)} or a torch.dtype, got {dtype!r}")


def _dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).replace("torch.", ""))


def varlen_lengths(total: int, n: int, seed: int = 1) -> list[int]:
    """``n`` mixed sequence lengths (each ≥ 1) that add up to ``total`` tokens, seeded.

    Cut points are drawn uniformly without repetition, so the lengths spread from a few tokens
    to several times the mean, as a packed training batch does.
    """
    n = max(1, min(int(n), int(total)))
    g = torch.Generator().manual_seed(seed)
    cuts = (torch.randperm(total - 1, generator=g)[: n - 1] + 1).sort().values.tolist()
    bounds = [0, *cuts, total]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def make_inputs(kind: str, B: int, T: int, H: int, D: int, dtype=torch.float32, device=None,
                seed: int = 0, varlen: bool = False) -> dict:
    """Seeded inputs with the statistics of a trained layer, as a dict of keyword arguments.

    ``kind="wkv6"``: ``r, k, v, w, u`` for ``rwkvlab.wkv6.*`` and FLA's ``*_rwkv6``: r, v
    standard normal, k scaled by 1/√D, Finch log decays ``w = −exp(0.5·N(0,1) − 1)`` (factors
    from ≈0.9 down to ≈0.1 and below), bonus ``u = 0.5·N(0,1)`` of shape [H, D].
    ``kind="wkv7"``: ``r, w, k, v, a, b`` for ``rwkvlab.wkv7.*`` and FLA's ``*_rwkv7``: log decay
    ``w = −e^{−1/2}·σ(N(0,1))``, ``a = −κ̂``, ``b = κ̂·iclr`` with κ̂ L2-normalised per head and
    ``iclr = σ(N(0,1))``, k scaled by 1/√D.
    ``kind="sdpa"``: ``q, k, v`` in [B, H, T, D] for ``scaled_dot_product_attention``.

    Tensors are [B, T, H, D] (K = V = D), drawn in float32 from a generator on ``device``
    (default: the book's device) and cast to ``dtype`` (a torch dtype or "bf16"/"fp16"/"fp32").
    With ``varlen=True`` (wkv6/wkv7) the same number of tokens is packed into [1, B·T, H, D]
    with ``cu_seqlens`` (int64, the mixed lengths of :func:`varlen_lengths`, 2·B + 2 sequences)
    and an ``initial_state`` [N, H, D, D] in float32. No tensor requires grad.
    """
    if kind not in (*KINDS, "sdpa"):
        raise ValueError(f"kind: expected one of {', '.join((*KINDS, 'sdpa'))}, got {kind!r}")
    dtype = _dtype(dtype)
    dev = torch.device(device) if device is not None else _device.device()
    g = torch.Generator(device=dev).manual_seed(seed)
    if varlen and kind == "sdpa":
        raise ValueError("varlen: scaled_dot_product_attention takes no cu_seqlens")
    Bx, Tx = (1, B * T) if varlen else (B, T)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device=dev, dtype=torch.float32)

    shape = (Bx, Tx, H, D)
    if kind == "sdpa":
        x = {n: rnd(B, H, T, D) for n in ("q", "k", "v")}
    elif kind == "wkv6":
        r, k, v = rnd(*shape), rnd(*shape) / D ** 0.5, rnd(*shape)
        w = -torch.exp(rnd(*shape) * 0.5 - 1.0)
        u = rnd(H, D) * 0.5
        x = dict(r=r, k=k, v=v, w=w, u=u)
    else:
        r, k, v = rnd(*shape), rnd(*shape) / D ** 0.5, rnd(*shape)
        w = RWKV7_LOWER_BOUND * torch.sigmoid(rnd(*shape))
        kk = torch.nn.functional.normalize(rnd(*shape), dim=-1)
        iclr = torch.sigmoid(rnd(*shape))
        x = dict(r=r, w=w, k=k, v=v, a=-kk, b=kk * iclr)
    x = {n: t.to(dtype) for n, t in x.items()}
    if varlen:
        lengths = varlen_lengths(B * T, 2 * B + 2, seed=seed + 1)
        cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int64, device=dev)
        x["initial_state"] = rnd(len(lengths), H, D, D) * 0.1
        x["cu_seqlens"] = cu
    return x


def _split(out):
    """``(o, final_state | None)`` from a kernel's return value (a tensor or a tuple)."""
    if isinstance(out, torch.Tensor):
        return out, None
    return out[0], (out[1] if len(out) > 1 else None)


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _tensors(item)]
    return []


def _on_gpu(inputs) -> bool:
    return any(t.is_cuda for t in _tensors(inputs))


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------

def _sync(gpu: bool) -> None:
    if gpu and torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_ms(step: Callable, gpu: bool, grad_to_none=None, warmup_ms: float = GPU_WARMUP_MS,
               rep_ms: float = GPU_REP_MS, reps: int = CPU_REPS) -> float:
    """Median time of ``step()`` in ms: ``do_bench`` on a GPU, repeated wall clock on CPU.

    On CPU one untimed warm-up call comes first, unless that call took over a second (then it
    is kept as one of the ``reps`` samples: a warm-up effect is small next to a second).
    """
    if gpu:
        from triton.testing import do_bench

        return float(do_bench(step, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none,
                              return_mode="median"))
    reps = max(3, int(reps))
    samples = []
    for i in range(reps + 1):
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        t0 = time.perf_counter()
        step()
        dt = time.perf_counter() - t0
        if i > 0 or dt > 1.0:
            samples.append(dt)
        if len(samples) >= reps:
            break
    return statistics.median(samples) * 1e3


def time_forward(fn: Callable, inputs: dict, *, warmup_ms: float = GPU_WARMUP_MS,
                 rep_ms: float = GPU_REP_MS, reps: int = CPU_REPS) -> float:
    """Median milliseconds of ``fn(**inputs)`` under ``torch.no_grad()``.

    ``fn`` takes the inputs as keywords (e.g. ``rwkvlab.wkv6.triton_chunked`` with a dict from
    :func:`make_inputs`; wrap options in ``functools.partial``). On a GPU (inputs on CUDA):
    ``triton.testing.do_bench(warmup=warmup_ms, rep=rep_ms, return_mode="median")``; on CPU:
    the median of ``reps`` (≥ 3) ``time.perf_counter`` runs after a warm-up call.
    """
    gpu = _on_gpu(inputs)

    def step():
        with torch.no_grad():
            return fn(**inputs)

    return _median_ms(step, gpu, warmup_ms=warmup_ms, rep_ms=rep_ms, reps=reps)


def backward_step(fn: Callable, inputs: dict, seed: int = 0):
    """``(step, leaves)``: one forward + backward of ``fn`` on fresh leaf copies of ``inputs``.

    Every floating-point input becomes a leaf that requires grad (``cu_seqlens`` stays as it is);
    the backward pass feeds seeded random cotangents for ``o`` and, when ``fn`` returns one, for
    the final state, so gradients flow through both. The first call of ``step`` happens here (it
    fixes the cotangents' shapes and compiles what needs compiling).
    """
    leaves = {n: (t.detach().clone().requires_grad_(True) if t.is_floating_point() else t)
              for n, t in inputs.items()}
    grads = [t for t in leaves.values() if t.requires_grad]
    o, s = _split(fn(**leaves))
    g = torch.Generator(device=o.device).manual_seed(seed + 7)
    do = torch.randn(o.shape, generator=g, device=o.device, dtype=torch.float32).to(o.dtype)
    ds = None
    if s is not None and s.requires_grad:
        ds = torch.randn(s.shape, generator=g, device=s.device, dtype=torch.float32).to(s.dtype) * 0.1
    outs, cots = ((o, s), (do, ds)) if ds is not None else ((o,), (do,))
    torch.autograd.backward(outs, cots)
    del o, s, outs

    def step():
        o, s = _split(fn(**leaves))
        if ds is not None:
            torch.autograd.backward((o, s), (do, ds))
        else:
            torch.autograd.backward((o,), (do,))

    return step, grads


def time_forward_backward(fn: Callable, inputs: dict, *, warmup_ms: float = GPU_WARMUP_MS,
                          rep_ms: float = GPU_REP_MS, reps: int = CPU_REPS, seed: int = 0) -> float:
    """Median milliseconds of forward + backward of ``fn(**inputs)`` (see :func:`backward_step`).

    Gradients are reset to ``None`` before every call (``do_bench``'s ``grad_to_none`` on a GPU),
    so the time includes writing them, not accumulating into old ones.
    """
    step, grads = backward_step(fn, inputs, seed=seed)
    return _median_ms(step, _on_gpu(inputs), grad_to_none=grads, warmup_ms=warmup_ms, rep_ms=rep_ms, reps=reps)


def peak_memory_mb(step: Callable, grad_to_none=()) -> float:
    """Working memory of one ``step()`` on the GPU, in 10^6 bytes (NaN on CPU).

    ``torch.cuda.max_memory_allocated`` during the call minus ``memory_allocated`` just before
    it: outputs, saved activations, gradients and scratch, without the inputs already held.
    """
    if not torch.cuda.is_available():
        return float("nan")
    for t in grad_to_none:
        t.grad = None
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 1e6


def copy_bandwidth(device=None, nbytes: int | None = None) -> float:
    """Measured copy bandwidth of ``device`` in bytes/s, counting bytes read + bytes written.

    A device-to-device copy of ``nbytes`` (default 1 GiB on a GPU, 256 MiB on CPU) timed like a
    kernel (do_bench median on a GPU, wall-clock median on CPU): the rate at which a kernel that
    only streams its inputs in and its outputs out could run.
    """
    dev = torch.device(device) if device is not None else _device.device()
    gpu = dev.type == "cuda"
    if nbytes is None:
        nbytes = 1 << 30 if gpu else 1 << 28
        if gpu:
            free, _ = torch.cuda.mem_get_info(dev)
            nbytes = int(min(nbytes, free // 8))
    x = torch.ones(nbytes, dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    ms = _median_ms(lambda: y.copy_(x), gpu, reps=5)
    x = y = None                 # free both buffers before the cache is emptied
    if gpu:
        torch.cuda.empty_cache()
    return 2 * nbytes / (ms * 1e-3)


def traffic_bytes(inputs, outputs) -> int:
    """Bytes of every tensor in ``inputs`` (read once) plus every tensor in ``outputs`` (written once)."""
    return sum(t.numel() * t.element_size() for t in _tensors(inputs) + _tensors(outputs))


def memory_floor_ms(inputs, outputs, bandwidth: float) -> float:
    """The memory-traffic floor in ms: :func:`traffic_bytes` at ``bandwidth`` bytes/s."""
    return traffic_bytes(inputs, outputs) / bandwidth * 1e3


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 on the tensors' device (inf if ``a`` is not finite)."""
    a64, b64 = a.detach().double(), b.detach().double()
    if not torch.isfinite(a64).all():
        return float("inf")
    den = torch.linalg.vector_norm(b64).item()
    num = torch.linalg.vector_norm(a64 - b64).item()
    return num / den if den > 0 else num


# --------------------------------------------------------------------------------------------
# the implementations
# --------------------------------------------------------------------------------------------

@dataclass
class Impl:
    """One row label of the benchmark and how to call it: ``fn(**inputs) -> (o, state | None)``."""

    kind: str
    name: str
    fn: Callable | None
    triton: bool = False          # a Triton kernel (the interpreter on CPU)
    fla: bool = False             # from flash-linear-attention
    gpu_default: bool = True
    cpu_default: bool = False
    default_max_T: int | None = None   # above this T a default run skips it (asking by name lifts it)
    bwd_max_T: int | None = None       # above this T a default run times its forward only
    varlen: bool = False          # also has a packed (cu_seqlens) row
    varlen_default: bool = False
    note: str = ""
    missing: str | None = None    # why it cannot run here


def _ours(fn, **kw):
    def call(**x):
        return fn(**x, scale=1.0, output_final_state=True, **kw)
    return call


def _folded(fn, **kw):
    """wkv7.triton_chunked with ``TUNE["fold"]`` on for the call (a forward without a gradient folds)."""
    from .wkv7 import kernels_chunked as kc

    def call(**x):
        saved = kc.TUNE["fold"]
        kc.TUNE["fold"] = True
        try:
            return fn(**x, scale=1.0, output_final_state=True, **kw)
        finally:
            kc.TUNE["fold"] = saved
    return call


def _fla(fn, **kw):
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}

    def call(**x):
        x = dict(x)
        if "log_w" in params and "w" in x:  # old FLA RWKV-7 entry points read w as −log(−log decay)
            x["log_w"] = x.pop("w")
        return fn(**x, scale=1.0, output_final_state=True, **kw)
    return call


def _sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), None


def fla_status() -> tuple[str | None, str]:
    """``(version or None, message)``: whether flash-linear-attention can be imported here."""
    try:
        fla = importlib.import_module("fla")
    except Exception as e:  # noqa: BLE001 - FLA is optional
        return None, f"fla not importable ({type(e).__name__}: {str(e).splitlines()[0][:160]}); FLA rows left out"
    version = getattr(fla, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as _v
            version = _v("fla-core")
        except Exception:  # noqa: BLE001
            version = "unknown"
    return str(version), f"fla {version} importable"


def implementations(kind: str, gpu: bool, fla_recurrent: bool = False) -> list[Impl]:
    """The rows for one kind: rwkvlab's ladder, then FLA's kernels (each with why it is missing)."""
    mod = importlib.import_module(f"rwkvlab.{kind}")
    out = [
        # autograd through the token loop re-materialises a full-size gradient for every indexed
        # token (index backward), so naive's backward costs O(T^2): time it only at small T
        Impl(kind, "naive", _ours(mod.naive), gpu_default=False, cpu_default=True, default_max_T=8192,
             bwd_max_T=1024, varlen=True, note="Python loop over T"),
        Impl(kind, "chunked", _ours(mod.chunked), cpu_default=True, default_max_T=None if not gpu else 4096,
             varlen=True, note="plain torch, default chunk size"),
        Impl(kind, "triton_recurrent", _ours(mod.triton_recurrent), triton=True, varlen=True),
        Impl(kind, "triton_chunked", _ours(mod.triton_chunked), triton=True, varlen=True, varlen_default=True,
             note="default: subchunk, C=64, sub-chunks of 16" if kind == "wkv6" else "default chunk size"),
    ]
    if kind == "wkv6":  # the earlier rungs of chapter 07, kept to show what the fast design gained
        for sched in ("sequential", "parallel"):
            out.append(Impl(kind, f"triton_chunked_{sched}", _ours(mod.triton_chunked, schedule=sched, chunk_size=16),
                            triton=True, note=f"C=16, schedule='{sched}'"))
    if kind == "wkv7":  # the declared-bound fast path, the counterpart of FLA's lower_bound
        out.append(Impl(kind, "triton_chunked_lb", _ours(mod.triton_chunked, lower_bound=RWKV7_LOWER_BOUND),
                        triton=True, varlen=True, varlen_default=True,
                        note=f"lower_bound=-exp(-0.5)={RWKV7_LOWER_BOUND:.4f}: every chunk factored"))
    # without the value check and its one host wait, as FLA's kernels run (chapter 11 measures the wait)
    name, kw = ("triton_chunked_lb_unchecked", {"lower_bound": RWKV7_LOWER_BOUND}) if kind == "wkv7" \
        else ("triton_chunked_unchecked", {})
    out.append(Impl(kind, name, _ours(mod.triton_chunked, check_values=False, **kw), triton=True, varlen=True,
                    note="check_values=False: no value check, no host-device wait" + (", lower_bound" if kw else "")))
    if kind == "wkv7":  # the folded forward (one product per 64 tokens on the chain); a backward unfolds it
        out.append(Impl(kind, "triton_chunked_lb_folded", _folded(mod.triton_chunked, lower_bound=RWKV7_LOWER_BOUND,
                                                                  check_values=False),
                        triton=True, varlen=True, gpu_default=False,
                        note="TUNE['fold']=True, unchecked, lower_bound: the forward folded; fwd+bwd is the unfolded path"))
    for c in ((16, 32) if kind == "wkv6" else (32,)):
        out.append(Impl(kind, f"triton_chunked_c{c}", _ours(mod.triton_chunked, chunk_size=c), triton=True,
                        gpu_default=False, note=f"C={c}"))

    if not gpu or fla_status()[0] is None:
        return out  # FLA needs a CUDA GPU and an importable fla; run() prints why it is absent

    n = kind[-1]
    for fname, is_rec in ((f"chunk_rwkv{n}", False), (f"fused_recurrent_rwkv{n}", True)):
        try:
            f = getattr(importlib.import_module(f"fla.ops.rwkv{n}"), fname)
            fn, missing = _fla(f), None
        except Exception as e:  # noqa: BLE001 - FLA is optional
            f, fn, missing = None, None, _short(e)
        # fused_recurrent: only with --fla-recurrent (its backward autotunes for minutes)
        out.append(Impl(kind, f"fla.{fname}", fn, fla=True, triton=True, missing=missing,
                        gpu_default=fla_recurrent if is_rec else True,
                        varlen=not is_rec, varlen_default=not is_rec))
        if kind == "wkv7" and not is_rec:
            lb_fn, lb_missing = None, missing
            if f is not None:
                try:
                    params = inspect.signature(f).parameters
                except (TypeError, ValueError) as e:
                    params, lb_missing = {}, f"signature not readable: {e}"
                # an explicit parameter only: a **kwargs catch-all would swallow the keyword silently
                if "lower_bound" in params:
                    lb_fn = _fla(f, lower_bound=RWKV7_LOWER_BOUND)
                elif lb_missing is None:
                    lb_missing = "this fla chunk_rwkv7 has no lower_bound parameter"
            out.append(Impl(kind, "fla.chunk_rwkv7_lb", lb_fn, fla=True, triton=True, missing=lb_missing,
                            note=f"lower_bound=-exp(-0.5)={RWKV7_LOWER_BOUND:.4f}"))
    return out


def _select(impl_key: str, filters: list[str] | None) -> bool:
    if not filters:
        return False
    for f in filters:
        if f.startswith("="):
            if impl_key == f[1:]:
                return True
        elif f in impl_key:
            return True
    return False


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------

@dataclass
class Row:
    kind: str
    impl: str
    layout: str
    B: int
    T: int
    H: int
    K: int
    V: int
    dtype: str
    device: str
    fwd_ms: float = float("nan")
    fwdbwd_ms: float = float("nan")
    peak_mem_mb: float = float("nan")
    floor_ms: float = float("nan")
    x_floor: float = float("nan")
    rel_diff_fla: float = float("nan")
    rel_diff_ref: float = float("nan")
    status: str = "ok"
    note: str = ""

    def as_dict(self) -> dict:
        return {c: getattr(self, c) for c in COLUMNS}


@dataclass
class Settings:
    gpu: bool
    backward: bool = True
    warmup_ms: float = GPU_WARMUP_MS
    rep_ms: float = GPU_REP_MS
    reps: int = CPU_REPS
    bandwidth: float = float("nan")
    seed: int = 0
    timing: dict = field(default_factory=dict)


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:200] if msg else ''}".rstrip(": ")


def _free_gpu(gpu: bool) -> None:
    gc.collect()
    if gpu and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _measure(row: Row, fn: Callable, inputs: dict, refs: dict, st: Settings, backward: bool = True) -> Row:
    """Fill one row: warm-up forward (output for the diffs and the floor), timings, memory."""
    kw = dict(warmup_ms=st.warmup_ms, rep_ms=st.rep_ms, reps=st.reps)
    try:
        with torch.no_grad():
            out = fn(**inputs)
        _sync(st.gpu)
        o, s = _split(out)
        row.floor_ms = memory_floor_ms(inputs, [o, s], st.bandwidth)
        if refs.get("fla") is not None:
            row.rel_diff_fla = rel_diff(o, refs["fla"])
        if refs.get("ref") is not None:
            row.rel_diff_ref = rel_diff(o, refs["ref"])
        del out, o, s
        row.fwd_ms = time_forward(fn, inputs, **kw)
        row.x_floor = row.fwd_ms / row.floor_ms
        if st.backward and backward:
            step, grads = backward_step(fn, inputs, seed=st.seed)
            if st.gpu:
                row.peak_mem_mb = peak_memory_mb(step, grads)
            row.fwdbwd_ms = _median_ms(step, st.gpu, grad_to_none=grads, **kw)
            del step, grads
        elif st.gpu:
            def fwd():
                with torch.no_grad():
                    return fn(**inputs)
            row.peak_mem_mb = peak_memory_mb(fwd)
    except Exception as e:  # noqa: BLE001 - report and go on
        row.status = f"failed: {_short(e)}"
    finally:
        _free_gpu(st.gpu)
    return row


def _reference_outputs(kind: str, inputs: dict, impls: dict, st: Settings, log) -> dict:
    """o of FLA's chunk kernel (default arguments) and of the float32 torch ``chunked`` form."""
    refs = {"fla": None, "ref": None}
    fla_chunk = impls.get(f"fla.chunk_rwkv{kind[-1]}")
    if fla_chunk is not None and fla_chunk.fn is not None:
        try:
            with torch.no_grad():
                refs["fla"] = _split(fla_chunk.fn(**inputs))[0]
        except Exception as e:  # noqa: BLE001
            log(f"  (FLA reference output failed: {_short(e)})")
    try:
        mod = importlib.import_module(f"rwkvlab.{kind}")
        x32 = {n: (t.float() if t.is_floating_point() else t) for n, t in inputs.items()}
        with torch.no_grad():
            refs["ref"] = mod.chunked(**x32, scale=1.0)[0]
        del x32
    except Exception as e:  # noqa: BLE001
        log(f"  (float32 chunked reference failed: {_short(e)})")
    _free_gpu(st.gpu)
    return refs


def run_sweep(configs, kinds, dtype, st: Settings, filters=None, fla_recurrent=False,
              on_row=None, log=print) -> list[Row]:
    """Measure every selected row of every (B, H, D, T) configuration; returns the rows."""
    dev = _device.device()
    dname = "cuda" if st.gpu else "cpu"
    dt_name = _dtype_name(dtype)
    rows: list[Row] = []
    registry = {k: implementations(k, st.gpu, fla_recurrent) for k in kinds}

    def emit(row: Row):
        rows.append(row)
        if row.status == "ok":
            parts = [f"fwd {row.fwd_ms:.3f} ms"]
            if not math.isnan(row.fwdbwd_ms):
                parts.append(f"fwd+bwd {row.fwdbwd_ms:.3f} ms")
            if not math.isnan(row.x_floor):
                parts.append(f"{row.x_floor:.1f}x floor")
            if not math.isnan(row.rel_diff_ref):
                parts.append(f"vs ref {row.rel_diff_ref:.1e}")
            if not math.isnan(row.rel_diff_fla):
                parts.append(f"vs FLA {row.rel_diff_fla:.1e}")
            msg = ", ".join(parts)
        else:
            msg = row.status
        log(f"  {row.kind} {row.impl}{' varlen' if row.layout != 'dense' else ''}: {msg}")
        if on_row is not None:
            on_row(rows)

    for (B, H, D, T) in configs:
        log(f"B={B} T={T} H={H} K=V={D} {dt_name}")
        for kind in kinds:
            impls = {i.name: i for i in registry[kind]}
            for varlen in (False, True):
                chosen = []
                for impl in impls.values():
                    if varlen and not impl.varlen:
                        continue
                    key = impl.name + ("+varlen" if varlen else "")
                    asked = _select(key, filters)
                    if filters:
                        take = asked
                        if take and impl.triton and not st.gpu and not any("triton" in f for f in filters):
                            take = False  # the interpreter: only when a filter names triton
                    elif st.gpu:
                        take = impl.gpu_default and (impl.varlen_default if varlen else True)
                    else:
                        take = impl.cpu_default and not varlen
                    if not take:
                        continue
                    if impl.default_max_T is not None and T > impl.default_max_T and not asked:
                        log(f"  {kind} {key}: skipped at T={T} (default limit T<={impl.default_max_T}; "
                            f"name it in --impls to time it)")
                        continue
                    chosen.append(impl)
                if not chosen:
                    continue
                layout = "dense"
                note_extra = ""
                try:
                    inputs = make_inputs(kind, B, T, H, D, dtype, dev, seed=st.seed, varlen=varlen)
                except Exception as e:  # noqa: BLE001
                    log(f"  {kind}: inputs failed: {_short(e)}")
                    _free_gpu(st.gpu)
                    continue
                if varlen:
                    lens = torch.diff(inputs["cu_seqlens"]).tolist()
                    layout = f"varlen N={len(lens)}"
                    note_extra = f"packed [1, {B * T}], lengths {'/'.join(map(str, lens))}, initial+final state"
                refs = _reference_outputs(kind, inputs, impls, st, log)
                for impl in chosen:
                    row = Row(kind, impl.name, layout, B, T, H, D, D, dt_name, dname,
                              note="; ".join(x for x in (impl.note, note_extra) if x))
                    if impl.fn is None:
                        row.status = f"skipped: {impl.missing}"
                        emit(row)
                        continue
                    key = impl.name + ("+varlen" if varlen else "")
                    bwd = impl.bwd_max_T is None or T <= impl.bwd_max_T or _select(key, filters)
                    if st.backward and not bwd:
                        row.note = "; ".join(x for x in (row.note, f"backward not timed above T={impl.bwd_max_T} "
                                                         "by default (name it in --impls)") if x)
                    emit(_measure(row, impl.fn, inputs, refs, st, backward=bwd))
                del inputs, refs
                _free_gpu(st.gpu)
        # the softmax yardstick
        if not filters or _select("sdpa_causal", filters):
            row = Row("softmax", "sdpa_causal", "dense", B, T, H, D, D, dt_name, dname,
                      note="F.scaled_dot_product_attention(is_causal=True), [B, H, T, D]")
            try:
                inputs = make_inputs("sdpa", B, T, H, D, dtype, dev, seed=st.seed)
            except Exception as e:  # noqa: BLE001
                row.status = f"failed: {_short(e)}"
                emit(row)
                continue
            emit(_measure(row, _sdpa, inputs, {}, st))
            del inputs
            _free_gpu(st.gpu)
    return rows


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------

def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.6g}"
    return str(v)


def write_csv(path, rows, meta: dict, columns=COLUMNS) -> Path:
    """Write ``rows`` (Row objects or dicts) with ``meta`` as ``# key: value`` header lines; every
    benchmark of the package (``bench``, ``bench generate``, ``bench block``) writes through it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        for k, v in meta.items():
            f.write(f"# {k}: {v}\n")
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            d = r.as_dict() if isinstance(r, Row) else r
            w.writerow([_fmt(d.get(c, "")) for c in columns])
    return path


class Rows(list):
    """The rows of a benchmark CSV (dicts), with its ``#`` header lines in ``.meta``."""

    meta: dict


def read_csv(path) -> Rows:
    """Read a CSV written by ``python -m rwkvlab bench``.

    Returns a list of dicts, one per row, keyed by :data:`COLUMNS`; B, T, H, K, V are ints, the
    measured columns floats (NaN where the run left them empty); ``.meta`` holds the provenance
    lines (``command``, ``date``, ``device``, ``versions``, ``copy_bandwidth`` ...).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: no benchmark record at {str(path)!r} (the recorded CSVs live in benchmarks/results/ "
                         "of the repository)")
    lines = path.read_text().splitlines()
    meta, body = {}, []
    for line in lines:
        if line.startswith("#"):
            k, _, v = line[1:].strip().partition(":")
            meta[k.strip()] = v.strip()
        elif line.strip():
            body.append(line)
    out = Rows()
    for d in csv.DictReader(body):
        for c in INT_COLUMNS:
            d[c] = int(d[c])
        for c in FLOAT_COLUMNS:
            d[c] = float(d[c]) if d.get(c, "") != "" else float("nan")
        out.append(d)
    out.meta = meta
    return out


def plot(rows, path, title: str = "") -> Path | None:
    """Time vs T per implementation (dense rows), forward and forward+backward, one row per kind.

    Uses matplotlib's object API (no pyplot, no backend switch); returns the PNG path, or None
    when matplotlib is missing or nothing was measured.
    """
    try:
        from matplotlib.figure import Figure
    except Exception:  # noqa: BLE001 - plots are optional
        return None
    rows = [r.as_dict() if isinstance(r, Row) else r for r in rows]
    ok = [r for r in rows if r["status"] == "ok" and r["layout"] == "dense"]
    kinds = [k for k in (*KINDS,) if any(r["kind"] == k for r in ok)]
    if not kinds:
        return None
    shapes = sorted({(r["B"], r["H"], r["K"]) for r in ok})
    fig = Figure(figsize=(11, 4 * len(kinds)))
    axes = fig.subplots(len(kinds), 2, squeeze=False)
    for i, kind in enumerate(kinds):
        for j, (col, title) in enumerate((("fwd_ms", "forward"), ("fwdbwd_ms", "forward + backward"))):
            ax = axes[i][j]
            series = {}
            for r in ok:
                if r["kind"] not in (kind, "softmax") or math.isnan(float(r[col])):
                    continue
                label = r["impl"] if len(shapes) == 1 else f"{r['impl']} (B={r['B']}, H={r['H']})"
                series.setdefault(label, []).append((r["T"], float(r[col])))
            for label, pts in sorted(series.items()):
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                        linestyle="--" if "sdpa" in label else "-", label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("T")
            ax.set_ylabel("ms (median)")
            ax.set_title(f"{kind}: {title}")
            ax.grid(True, which="both", alpha=0.3)
            if series:
                ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


# --------------------------------------------------------------------------------------------
# printing
# --------------------------------------------------------------------------------------------

def _base_times(rows) -> dict:
    """Per (kind, shape): the base row's times (FLA's chunk kernel if measured, else ``chunked``)."""
    base = {}
    for pref in ("chunked", "fla.chunk_rwkv"):  # later preference wins
        for r in rows:
            if r.status != "ok" or r.layout != "dense":
                continue
            if r.impl == pref or (pref.startswith("fla") and r.impl in ("fla.chunk_rwkv6", "fla.chunk_rwkv7")):
                base[(r.kind, r.B, r.T, r.H, r.K)] = (r.impl, r.fwd_ms, r.fwdbwd_ms)
    return base


def format_table(rows) -> str:
    """The results as a fixed-width table (the last thing ``bench`` prints)."""
    rows = [r if isinstance(r, Row) else Row(**{c: r[c] for c in COLUMNS}) for r in rows]
    base = _base_times(rows)
    dense = {(r.kind, r.impl, r.B, r.T, r.H, r.K): r for r in rows if r.layout == "dense" and r.status == "ok"}

    def f(v, spec):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    head = ["kind", "impl", "layout", "dtype", "B", "T", "H", "K=V", "fwd ms", "f+b ms", "peak MB",
            "floor ms", "x floor", "vs FLA", "vs ref", "fwd/base", "f+b/base"]
    lines = []
    for r in rows:
        if r.status != "ok":
            lines.append([r.kind, r.impl, r.layout, r.dtype, str(r.B), str(r.T), str(r.H), str(r.K), r.status])
            continue
        if r.layout == "dense":
            b = base.get((r.kind, r.B, r.T, r.H, r.K))
            bf, bb = (b[1], b[2]) if b else (None, None)
        else:
            d = dense.get((r.kind, r.impl, r.B, r.T, r.H, r.K))
            bf, bb = (d.fwd_ms, d.fwdbwd_ms) if d else (None, None)
        rf = r.fwd_ms / bf if bf else None
        rb = r.fwdbwd_ms / bb if bb and not math.isnan(r.fwdbwd_ms) else None
        lines.append([r.kind, r.impl, r.layout, r.dtype, str(r.B), str(r.T), str(r.H), str(r.K),
                      f(r.fwd_ms, ".3f"), f(r.fwdbwd_ms, ".3f"), f(r.peak_mem_mb, ".0f"),
                      f(r.floor_ms, ".4f"), f(r.x_floor, ".1f"), f(r.rel_diff_fla, ".1e"),
                      f(r.rel_diff_ref, ".1e"),
                      "-" if rf is None else f"{rf:.2f}x", "-" if rb is None or math.isnan(rb) else f"{rb:.2f}x"])
    full = [l for l in lines if len(l) == len(head)]
    widths = [max([len(h)] + [len(l[i]) for l in full]) for i, h in enumerate(head)]
    right = set(range(4, len(head)))

    def fmt_line(cells):
        if len(cells) < len(head):  # a failed or skipped row: the status spans the numbers
            pre = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells[:-1])]
            return "  ".join(pre + [cells[-1]])
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells))

    out = [fmt_line(head), "  ".join("-" * w for w in widths)]
    prev = None
    for r, l in zip(rows, lines):
        key = (r.B, r.T, r.H, r.K)
        if prev is not None and key != prev:
            out.append("")
        prev = key
        out.append(fmt_line(l))
    return "\n".join(out)


TABLE_NOTES = (
    "ms: medians. peak MB: GPU working memory of one call (fwd+bwd), inputs excluded. floor: the forward's\n"
    "inputs read + outputs written once at the measured copy bandwidth; x floor = fwd / floor. vs FLA / vs ref:\n"
    "||o - o_FLA||/||o_FLA|| (FLA's chunk kernel) and vs the float32 torch chunked form on the same inputs.\n"
    "fwd/base, f+b/base: time over FLA's chunk kernel where measured, else over chunked (same kind and shape);\n"
    "for varlen rows, over the same implementation's dense row (same number of tokens)."
)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

def _int_list(s: str) -> list[int]:
    try:
        vals = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {s!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {s!r}")
    return vals


def _kinds(s: str) -> list[str]:
    vals = [x.strip() for x in s.split(",") if x.strip()]
    bad = [v for v in vals if v not in KINDS]
    if bad or not vals:
        raise argparse.ArgumentTypeError(
            f"unknown kind {', '.join(repr(b) for b in bad) or repr(s)}; expected a comma-separated "
            f"subset of {', '.join(KINDS)}")
    return list(dict.fromkeys(vals))


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``bench`` options (shared by ``python -m rwkvlab bench`` and :func:`main`)."""
    p.add_argument("--kinds", type=_kinds, default=list(KINDS), help="comma-separated: wkv6, wkv7 (default both)")
    p.add_argument("--impls", default=None,
                   help="comma-separated substrings of row names to time (e.g. 'triton,fla.chunk'; "
                        "'=chunked' matches exactly; varlen rows are named '<impl>+varlen', the softmax row "
                        "'sdpa_causal'). Default: the device's set (GPU: chunked, the Triton kernels, FLA's chunk "
                        "kernels, SDPA, varlen rows; CPU: naive, chunked, SDPA). On CPU a Triton row runs only "
                        "when a term contains 'triton' (it runs in the interpreter, slowly)")
    p.add_argument("--T", type=_int_list, default=None, help="sequence lengths, comma-separated")
    p.add_argument("--B", type=_int_list, default=None, help="batch sizes, comma-separated")
    p.add_argument("--H", type=_int_list, default=None, help="head counts, comma-separated")
    p.add_argument("--D", type=_int_list, default=None, help="head sizes K = V, comma-separated")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bf16 on a GPU, fp32 on CPU")
    p.add_argument("--quick", action="store_true", help="one small configuration, shorter timing")
    p.add_argument("--no-backward", action="store_true", help="time the forward only")
    p.add_argument("--fla-recurrent", action="store_true",
                   help="also time FLA's fused_recurrent kernels (their backward autotunes for minutes)")
    p.add_argument("--reps", type=int, default=CPU_REPS, help="CPU: timed repetitions per measurement (>= 3)")
    p.add_argument("--warmup", type=float, default=None, help=f"GPU: do_bench warmup ms (default {GPU_WARMUP_MS})")
    p.add_argument("--rep", type=float, default=None, help=f"GPU: do_bench rep ms (default {GPU_REP_MS})")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU: torch.set_num_threads for the run (default: torch's own choice); 1 is the "
                        "steadiest on a shared machine, where spinning worker threads wait on each other")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=None, help="where the CSV and PNG go (default benchmarks/results)")
    p.add_argument("--out", type=Path, default=None,
                   help="CSV file name (a bare name goes into --out-dir); default bench_<device>_<date>.csv")
    p.add_argument("--no-plot", action="store_true")
    return p


def _default_out_dir() -> Path:
    return RESULTS if RESULTS.is_dir() else Path("benchmarks") / "results"


# the recorded results of the repository (chapters read their GPU tables from here); found with
# the book's other files (rwkvlab.book.find_root), not from this module's path
RESULTS = (_book.ROOT if _book.ROOT is not None else Path.cwd()) / "benchmarks" / "results"


def device_slug(gpu: bool) -> str:
    """A short file-name slug for the device: ``h200``, ``h100``, ... or ``cpu``."""
    if not gpu:
        return "cpu"
    name = torch.cuda.get_device_name(0).lower().replace("nvidia", "").replace("geforce", "").strip()
    tok = (name.split() or ["gpu"])[0]
    return "".join(c for c in tok if c.isalnum() or c in "-_") or "gpu"


def _device_name(gpu: bool) -> str:
    if gpu:
        p = torch.cuda.get_device_properties(0)
        return f"{torch.cuda.get_device_name(0)} ({p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB)"
    proc = platform.processor() or platform.machine()
    return f"CPU {proc} ({torch.get_num_threads()} torch threads)"


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Run the benchmark for parsed ``args``; ``argv`` is recorded as the command line."""
    import triton

    gpu = _device.has_gpu()
    if args.reps < 3:
        raise SystemExit("python -m rwkvlab bench: error: --reps: at least 3")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("python -m rwkvlab bench: error: --threads: at least 1")
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if gpu else torch.float32)
    defaults = (GPU_QUICK if args.quick else GPU_CONFIGS) if gpu else (CPU_QUICK if args.quick else CPU_CONFIGS)
    if any(x is not None for x in (args.T, args.B, args.H, args.D)):
        b0, h0, d0, t0 = defaults[0]
        configs = [(B, H, D, T) for B in (args.B or [b0]) for H in (args.H or [h0])
                   for D in (args.D or [d0]) for T in (args.T or sorted({c[3] for c in defaults if c[:3] == (b0, h0, d0)}))]
    else:
        configs = list(defaults)
    filters = [f.strip() for f in args.impls.split(",") if f.strip()] if args.impls else None
    st = Settings(gpu=gpu, backward=not args.no_backward, reps=args.reps, seed=args.seed,
                  warmup_ms=args.warmup if args.warmup is not None else (10 if args.quick else GPU_WARMUP_MS),
                  rep_ms=args.rep if args.rep is not None else (40 if args.quick else GPU_REP_MS))

    print(_device.describe(), flush=True)
    fla_version, fla_msg = (fla_status() if gpu else (None, "FLA not timed on CPU (its kernels need a CUDA GPU)"))
    print(fla_msg, flush=True)
    if not gpu:
        print("CPU: timing the torch forms and SDPA; the Triton kernels would run in the interpreter "
              "(name them in --impls to time them anyway, at tiny shapes)", flush=True)
    if filters and not gpu and any("triton" in f for f in filters):
        print("warning: Triton rows in the interpreter take seconds per time step at these shapes; "
              "keep T, H, D tiny (e.g. --T 64 --H 2 --D 16)", flush=True)

    st.bandwidth = copy_bandwidth()
    print(f"copy bandwidth: {st.bandwidth / 1e9:.1f} GB/s (read + write)", flush=True)

    out_dir = args.out_dir if args.out_dir is not None else _default_out_dir()
    today = _dt.date.today().isoformat()
    name = args.out if args.out is not None else Path(
        f"bench_{device_slug(gpu)}_{today}{'_quick' if args.quick else ''}.csv")
    csv_path = name if name.parent != Path(".") else out_dir / name
    timing = (f"triton.testing.do_bench(warmup={st.warmup_ms:g}, rep={st.rep_ms:g}, return_mode='median')"
              if gpu else f"time.perf_counter median of {st.reps} runs after a warm-up call")
    cmd = "python -m rwkvlab bench" + ("" if not argv else " " + shlex.join(argv))
    meta = {
        "rwkvlab bench": "one process, same inputs for every row",
        "command": cmd,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": _device_name(gpu),
        "versions": (f"python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}, "
                     f"fla {fla_version or 'absent'}"),
        "copy_bandwidth": f"{st.bandwidth / 1e9:.1f} GB/s (read + write, {'do_bench median of a device-to-device copy' if gpu else 'median of a memory copy'})",
        "timing": timing,
        "columns": ("ms are medians; peak_mem_mb = max_memory_allocated during one call minus memory allocated "
                    "before it (1e6 bytes); floor_ms = (inputs read once + o and final state written once) / "
                    "copy_bandwidth; x_floor = fwd_ms / floor_ms; rel_diff = ||o - o_x||/||o_x|| vs FLA's chunk "
                    "kernel (fla) and vs rwkvlab chunked in float32 (ref)"),
    }

    def save(rows):
        try:
            write_csv(csv_path, rows, meta)
        except OSError as e:
            print(f"  (could not write {csv_path}: {e})", flush=True)

    t0 = time.perf_counter()
    rows = run_sweep(configs, args.kinds, dtype, st, filters=filters, fla_recurrent=args.fla_recurrent,
                     on_row=save, log=lambda m: print(m, flush=True))
    meta["wall_s"] = f"{time.perf_counter() - t0:.1f}"
    save(rows)
    print(f"\nwrote {csv_path}", flush=True)
    if not args.no_plot:
        try:
            png = plot(rows, csv_path.with_suffix(".png"),
                       title=f"{meta['device']}; {_dtype_name(dtype)}; {timing}; {meta['date']}")
            print(f"wrote {png}" if png else "(no plot: matplotlib missing or nothing measured)", flush=True)
        except Exception as e:  # noqa: BLE001 - a plot never fails the run
            print(f"(plot failed: {_short(e)})", flush=True)
    print(f"\n{meta['device']}; {meta['versions']}; {timing}; copy {st.bandwidth / 1e9:.1f} GB/s; "
          f"{meta['wall_s']} s\n")
    print(format_table(rows))
    print("\n" + TABLE_NOTES)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m rwkvlab bench [options]``; ``argv`` excludes the word ``bench``."""
    parser = add_arguments(argparse.ArgumentParser(prog="python -m rwkvlab bench", description=__doc__.split("\n\n")[0],
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(parser.parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
