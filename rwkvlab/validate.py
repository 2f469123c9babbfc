"""Input checks shared by every mechanism: bad input fails early with a ``ValueError`` that
names the argument and says what was expected, never deep inside a kernel.

The linear-attention contract (README's API section, chapter 00): tensors ``[B, T, H, K]`` (values ``[B, T, H, V]``),
states ``[N, H, K, V]`` float32 with ``N = B``, or ``N = len(cu_seqlens) - 1`` when ``B == 1``.
"""
from __future__ import annotations

import math
import numbers
import weakref

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def has_data(name: str, x: torch.Tensor) -> None:
    """A tensor whose values can be read: not on the ``meta`` device (shapes only, no numbers)."""
    if x.device.type == "meta":
        raise ValueError(f"{name}: is on the meta device, which holds no values; expected a tensor on "
                         "cpu or cuda (the device of the other inputs)")


def tensor(name: str, x, ndim: int | None = None, dtypes=FLOAT_DTYPES, finite: bool = True) -> torch.Tensor:
    """Check one tensor argument: type, rank, dtype and (optionally) finiteness.

    Structure first, values last: the finiteness check is the only one that reads the tensor,
    and a ``meta`` tensor is refused before it (it has no values to read).
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d tensor, got shape {tuple(x.shape)} ({x.ndim}-d)")
    if dtypes is not None and x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name}: unsupported dtype {str(x.dtype).replace('torch.', '')}; expected one of {names}")
    if finite and x.is_floating_point():
        has_data(name, x)
        if not torch.isfinite(x).all():
            raise ValueError(f"{name}: contains NaN or Inf")
    return x


def real(name: str, x, allow_none: bool = False) -> float | None:
    """A finite real number (int, float or a numpy scalar; not ``bool``), returned as a float.

    The contract of ``scale`` in :mod:`rwkvlab.attention`, :mod:`rwkvlab.wkv6` and
    :mod:`rwkvlab.wkv7` (``None`` only where a default is computed from the shapes).
    """
    if x is None and allow_none:
        return None
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or type(x).__name__ == "bool_":
        raise ValueError(f"{name}: expected a real number{' or None' if allow_none else ''}, "
                         f"got {type(x).__name__} {x!r}")
    if not math.isfinite(float(x)):
        raise ValueError(f"{name}: expected a finite number, got {x!r}")
    return float(x)


def positive_int(name: str, x, power_of_two: bool = False, minimum: int = 1) -> int:
    """An int (or numpy integer; not ``bool``) >= ``minimum``, optionally a power of two."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or int(x) < minimum \
            or (power_of_two and int(x) & (int(x) - 1)):
        want = "a power of two" if power_of_two else "an int"
        raise ValueError(f"{name}: expected {want} >= {minimum}, got {x!r}")
    return int(x)


def nonempty(name: str, shape: tuple, sizes: dict) -> None:
    """Every size in ``sizes`` (e.g. ``{"B": B, "H": H}``) at least 1.

    The book's one rule for empty inputs, in every implementation: an error naming the argument
    (a Triton kernel cannot launch on an empty grid, and an empty batch is a bug upstream).
    """
    empty = [n for n, s in sizes.items() if s < 1]
    if empty:
        raise ValueError(f"{name}: expected {', '.join(f'{n} >= 1' for n in empty)}, got shape {tuple(shape)} "
                         "(empty inputs are refused)")


def same_shape(name: str, x: torch.Tensor, expected: tuple, ref_name: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)} (to match {ref_name}), got {tuple(x.shape)}")


def same_device(named: dict) -> None:
    devs = {n: t.device for n, t in named.items() if isinstance(t, torch.Tensor)}
    if len(set(devs.values())) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devs.items())
        raise ValueError(f"all tensors must be on one device; got {desc}")


_SEQS: dict[int, dict] = {}   # id(cu_seqlens) -> its host copy and the tables made from it


def _seqs(cu: torch.Tensor) -> dict:
    """The memo entry of ``cu``: made (one host read) unless this very tensor, unchanged since,
    already has one. The identity check goes through a weak reference, so an id reused by a
    later tensor is never mistaken for this one; the entry goes when the tensor does. An in-place
    write bumps ``_version`` and is seen; one that bypasses it (``.data``, a NumPy view) is not."""
    try:
        version = cu._version
    except RuntimeError:              # an inference-mode tensor keeps no version: not remembered
        return {"host": cu.tolist()}
    key = id(cu)
    e = _SEQS.get(key)
    if e is not None and e["ref"]() is cu and e["version"] == version:
        return e

    def forget(ref, key=key):
        if _SEQS.get(key, {}).get("ref") is ref:
            _SEQS.pop(key, None)
    e = {"ref": weakref.ref(cu, forget), "version": version, "host": cu.tolist()}
    _SEQS[key] = e
    return e


def host_list(cu: torch.Tensor) -> list:
    """``cu.tolist()``, read once per tensor: the memo is kept for as long as this tensor lives
    unchanged, so the kernels' tables (``kernels_common``) and later calls reuse the read."""
    return _seqs(cu)["host"]


def cu_seqlens(cu, B: int, T: int) -> int:
    """Check ``cu_seqlens`` and return the number of sequences ``N``."""
    if cu is None:
        return B
    if not isinstance(cu, torch.Tensor) or cu.ndim != 1 or cu.dtype not in (torch.int32, torch.int64):
        raise ValueError("cu_seqlens: expected a 1-d int32/int64 tensor of cumulative sequence lengths")
    has_data("cu_seqlens", cu)
    if B != 1:
        raise ValueError(f"cu_seqlens: variable-length input must be packed with B == 1, got B = {B}")
    if cu.numel() < 2:
        raise ValueError("cu_seqlens: expected at least two entries [0, ..., T]")
    c = host_list(cu)   # one read per tensor: the kernels' tables are made from the same copy
    if c[0] != 0:
        raise ValueError(f"cu_seqlens: must start at 0, starts at {c[0]}")
    if c[-1] != T:
        raise ValueError(f"cu_seqlens: must end at T = {T}, ends at {c[-1]}")
    if any(b <= a for a, b in zip(c, c[1:])):
        raise ValueError(f"cu_seqlens: must be strictly increasing (no empty sequences), got {c}")
    return len(c) - 1


def state(name: str, s, N: int, H: int, K: int, V: int, n_desc: str) -> None:
    """Check a state's structure (type, rank, float dtype, shape); its values are checked with
    the other inputs' in :func:`linear_attention` (or call :func:`tensor` for them)."""
    if s is None:
        return
    tensor(name, s, ndim=4, finite=False)
    if tuple(s.shape) != (N, H, K, V):
        raise ValueError(f"{name}: expected shape (N, H, K, V) = {(N, H, K, V)} with N = {n_desc}, got {tuple(s.shape)}")


def linear_attention(*, keys: dict, values: dict, extra: dict | None = None, initial_state=None,
                     cu_seqlens_=None, log_decay: str | None = None,
                     check_values: bool = True) -> tuple[int, int, int, int, int, int]:
    """Validate the common ``[B, T, H, K]`` / ``[B, T, H, V]`` contract.

    ``keys`` maps argument names to tensors shaped like ``r`` (first one is the reference),
    ``values`` those shaped like ``v``; ``extra`` holds further tensors already checked by the
    caller (only the device is compared). ``log_decay`` names the argument that holds a log
    decay, which must be ≤ 0 (a positive log decay would grow the state without bound).
    ``check_values=False`` leaves the values (NaN/Inf, the sign of the log decay) to the caller, for
    kernels that check them while they read the inputs anyway. Returns ``(B, T, H, K, V, N)``.
    """
    (ref_name, ref), *rest = keys.items()
    # structure (types, ranks, shapes, dtypes, devices) first; values are read last, so a tensor
    # on the wrong device is reported as such, never as a failed read
    tensor(ref_name, ref, ndim=4, finite=False)
    B, T, H, K = ref.shape
    if T < 1:
        raise ValueError(f"{ref_name}: expected T >= 1, got shape {tuple(ref.shape)}")
    nonempty(ref_name, ref.shape, {"B": B, "H": H, "K": K})
    for n, x in rest:
        tensor(n, x, ndim=4, finite=False)
        same_shape(n, x, (B, T, H, K), ref_name)
    V = None
    for n, x in values.items():
        tensor(n, x, ndim=4, finite=False)
        if x.shape[:3] != (B, T, H):
            raise ValueError(f"{n}: expected shape (B, T, H, V) with (B, T, H) = {(B, T, H)} from {ref_name}, got {tuple(x.shape)}")
        V = x.shape[3]
        nonempty(n, x.shape, {"V": V})
    dtypes = {x.dtype for x in list(keys.values()) + list(values.values())}
    if len(dtypes) > 1:
        raise ValueError(f"{', '.join(list(keys) + list(values))}: expected one dtype for all, got {sorted(map(str, dtypes))}")
    same_device({**keys, **values, **(extra or {})})
    has_data(ref_name, ref)
    N = cu_seqlens(cu_seqlens_, B, T)
    state("initial_state", initial_state, N, H, K, V, "len(cu_seqlens) - 1" if cu_seqlens_ is not None else "B")
    # values last: finiteness and the sign of the log decay, for all tensors at once: one pass
    # over each (min and max propagate NaN) and a single wait for the device, not one per tensor
    if not check_values:
        return B, T, H, K, V, N
    named = [(n, x) for n, x in {**keys, **values, "initial_state": initial_state}.items()
             if x is not None and x.numel() > 0]
    stats = torch.stack([torch.stack(torch.aminmax(x.detach())).float() for _, x in named]).tolist()
    for (n, _), (lo, hi) in zip(named, stats):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{n}: contains NaN or Inf")
        if n == log_decay and hi > 0:
            raise ValueError(f"{log_decay}: is a log decay and must be <= 0 (decay factor exp({log_decay}) in (0, 1]); "
                             f"got max {hi:.3g}")
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
