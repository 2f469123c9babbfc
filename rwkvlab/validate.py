"""Input checks shared by every mechanism: bad input fails early with a ``ValueError`` that
names the argument and says what was expected, never deep inside a kernel.

The linear-attention contract (DESIGN.md): tensors ``[B, T, H, K]`` (values ``[B, T, H, V]``),
states ``[N, H, K, V]`` float32 with ``N = B``, or ``N = len(cu_seqlens) - 1`` when ``B == 1``.
"""
from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def tensor(name: str, x, ndim: int | None = None, dtypes=FLOAT_DTYPES, finite: bool = True) -> torch.Tensor:
    """Check one tensor argument: type, rank, dtype and (optionally) finiteness."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d tensor, got shape {tuple(x.shape)} ({x.ndim}-d)")
    if dtypes is not None and x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name}: unsupported dtype {str(x.dtype).replace('torch.', '')}; expected one of {names}")
    if finite and x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return x


def same_shape(name: str, x: torch.Tensor, expected: tuple, ref_name: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)} (to match {ref_name}), got {tuple(x.shape)}")


def same_device(named: dict) -> None:
    devs = {n: t.device for n, t in named.items() if isinstance(t, torch.Tensor)}
    if len(set(devs.values())) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devs.items())
        raise ValueError(f"all tensors must be on one device; got {desc}")


def cu_seqlens(cu, B: int, T: int) -> int:
    """Check ``cu_seqlens`` and return the number of sequences ``N``."""
    if cu is None:
        return B
    if not isinstance(cu, torch.Tensor) or cu.ndim != 1 or cu.dtype not in (torch.int32, torch.int64):
        raise ValueError("cu_seqlens: expected a 1-d int32/int64 tensor of cumulative sequence lengths")
    if B != 1:
        raise ValueError(f"cu_seqlens: variable-length input must be packed with B == 1, got B = {B}")
    if cu.numel() < 2:
        raise ValueError("cu_seqlens: expected at least two entries [0, ..., T]")
    c = cu.tolist()
    if c[0] != 0:
        raise ValueError(f"cu_seqlens: must start at 0, starts at {c[0]}")
    if c[-1] != T:
        raise ValueError(f"cu_seqlens: must end at T = {T}, ends at {c[-1]}")
    if any(b <= a for a, b in zip(c, c[1:])):
        raise ValueError(f"cu_seqlens: must be strictly increasing (no empty sequences), got {c}")
    return len(c) - 1


def state(name: str, s, N: int, H: int, K: int, V: int, n_desc: str) -> None:
    if s is None:
        return
    tensor(name, s, ndim=4)
    if tuple(s.shape) != (N, H, K, V):
        raise ValueError(f"{name}: expected shape (N, H, K, V) = {(N, H, K, V)} with N = {n_desc}, got {tuple(s.shape)}")


def linear_attention(*, keys: dict, values: dict, extra: dict | None = None, initial_state=None,
                     cu_seqlens_=None, log_decay: str | None = None) -> tuple[int, int, int, int, int, int]:
    """Validate the common ``[B, T, H, K]`` / ``[B, T, H, V]`` contract.

    ``keys`` maps argument names to tensors shaped like ``r`` (first one is the reference),
    ``values`` those shaped like ``v``; ``extra`` holds further tensors already checked by the
    caller (only the device is compared). ``log_decay`` names the argument that holds a log
    decay, which must be ≤ 0 (a positive log decay would grow the state without bound).
    Returns ``(B, T, H, K, V, N)``.
    """
    (ref_name, ref), *rest = keys.items()
    tensor(ref_name, ref, ndim=4, finite=False)
    B, T, H, K = ref.shape
    if T < 1:
        raise ValueError(f"{ref_name}: expected T >= 1, got shape {tuple(ref.shape)}")
    for n, x in rest:
        tensor(n, x, ndim=4, finite=False)
        same_shape(n, x, (B, T, H, K), ref_name)
    V = None
    for n, x in values.items():
        tensor(n, x, ndim=4, finite=False)
        if x.shape[:3] != (B, T, H):
            raise ValueError(f"{n}: expected shape (B, T, H, V) with (B, T, H) = {(B, T, H)} from {ref_name}, got {tuple(x.shape)}")
        V = x.shape[3]
    dtypes = {x.dtype for x in list(keys.values()) + list(values.values())}
    if len(dtypes) > 1:
        raise ValueError(f"{', '.join(list(keys) + list(values))}: expected one dtype for all, got {sorted(map(str, dtypes))}")
    same_device({**keys, **values, **(extra or {})})
    # finiteness and the sign of the log decay, for all tensors at once: one pass over each
    # (min and max propagate NaN) and a single wait for the device, not one per tensor
    named = [(n, x) for n, x in {**keys, **values}.items() if x.numel() > 0]
    stats = torch.stack([torch.stack(torch.aminmax(x.detach())).float() for _, x in named]).tolist()
    for (n, _), (lo, hi) in zip(named, stats):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{n}: contains NaN or Inf")
        if n == log_decay and hi > 0:
            raise ValueError(f"{log_decay}: is a log decay and must be <= 0 (decay factor exp({log_decay}) in (0, 1]); "
                             f"got max {hi:.3g}")
    N = cu_seqlens(cu_seqlens_, B, T)
    state("initial_state", initial_state, N, H, K, V, "len(cu_seqlens) - 1" if cu_seqlens_ is not None else "B")
    return B, T, H, K, V, N


def kernel_device(name: str, x: torch.Tensor) -> None:
    """Triton kernels run where the mode says: CUDA tensors on a GPU, CPU tensors in the interpreter.

    One rule for every Triton wrapper, checked before any launch.
    """
    from . import device

    want = device.device()
    if x.device.type != want.type:
        raise ValueError(f"{name}: the Triton kernels run on {want.type} tensors in this mode "
                         f"({device.select()}), got a tensor on {x.device}; move it with .to(rwkvlab.device.device())")
