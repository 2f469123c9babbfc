"""``check``: compare two rungs of the ladder and print one deterministic line; ``randn``: seeded inputs."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _flat(x) -> list[torch.Tensor]:
    if x is None:
        return []
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, Sequence):
        out: list[torch.Tensor] = []
        for item in x:
            out.extend(_flat(item))
        return out
    raise TypeError(f"check: expected tensors or sequences of tensors, got {type(x).__name__}")


def rel_err(got, ref) -> float:
    """Relative error ‖got − ref‖ / ‖ref‖ in float64 (0 when both are zero).

    Sequences (e.g. ``(o, final_state)``) are compared element by element and the largest
    error is returned, so one small output cannot hide a wrong state. A NaN or infinite entry
    in either ``got`` or ``ref`` gives ``inf``: a reference that is not finite proves nothing.
    """
    gs, rs = _flat(got), _flat(ref)
    if len(gs) != len(rs):
        raise ValueError(f"check: got {len(gs)} tensors but the reference has {len(rs)}")
    worst = 0.0
    for g, r in zip(gs, rs):
        if g.shape != r.shape:
            raise ValueError(f"check: shape {tuple(g.shape)} differs from the reference's {tuple(r.shape)}")
        g64, r64 = g.detach().double().cpu(), r.detach().double().cpu()
        if not (torch.isfinite(g64).all() and torch.isfinite(r64).all()):
            return float("inf")
        num = torch.linalg.vector_norm(g64 - r64).item()
        den = torch.linalg.vector_norm(r64).item()
        worst = max(worst, num / den if den > 0 else num)
    return worst


def randn(*shape, seed: int = 0, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    """Seeded standard-normal tensor (times ``scale``) for the chapters' examples and checks.

    Drawn in float64 from its own generator, then cast to ``dtype``, so a float32 tensor and
    its float64 reference hold the same numbers and every run prints the same lines.
    """
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def check(name: str, got, ref, tol: float = 1e-5, quiet: bool = False) -> float:
    """Assert that ``got`` matches ``ref`` to relative error ``tol`` and print one line.

    >>> check("wkv6 chunked vs naive", o_chunked, o_naive)   # doctest: +SKIP
    wkv6 chunked vs naive: rel err 3.1e-07 (tol 1e-05)  ok

    The error is printed with one significant digit so the line reads the same run to run on
    one machine; the assertion compares the unrounded value.
    """
    err = rel_err(got, ref)
    ok = err <= tol                      # False for NaN, and rel_err is inf for non-finite tensors
    if not quiet or not ok:
        print(f"{name}: rel err {err:.0e} (tol {tol:.0e})  {'ok' if ok else 'FAILED'}")
    if not ok:
        why = "" if math.isfinite(err) else " (NaN or Inf in the result or the reference)"
        raise AssertionError(f"{name}: relative error {err:.3e} exceeds {tol:.0e}{why}")
    return err


class GridRecorder:
    """Stands in for a Triton kernel object: notes the grid of each launch ``kernel[grid](...)``,
    then launches the real kernel. Patch it over a module's kernel (``unittest.mock.patch.object``)
    to see which launches a call makes, and on which grids."""

    def __init__(self, kernel):
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid):
        self.grids.append(tuple(grid))
        return self.kernel[grid]
