"""RWKV-7 ("Goose") state update in plain torch: the loop (``naive``), one RNN step (``step``)
and the chunkwise-parallel WY/UT form (``chunked``).

Layout (DESIGN.md, as in FLA): ``r, w, k, a, b`` are ``[B, T, H, K]``, ``v`` is ``[B, T, H, V]``,
``w`` is the *log* decay (≤ 0), states are ``[N, H, K, V]``. With the state ``S`` in K×V layout
(rows are key channels)::

    S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T
    o_t = scale * S_t^T r_t                       (the read-out sees the *updated* state)

The RWKV-7 paper and its CUDA kernel store the transpose (V×K, decay on the columns); models
call this with ``a = -κ̂`` and ``b = κ̂ ⊙ iclr`` (κ̂ the L2-normalised removal key).

Accumulation is float32 (float64 inputs stay float64); ``o`` comes back in the input dtype and
the final state in the accumulation dtype.
"""
from __future__ import annotations

import numbers

import torch

from .. import validate

__all__ = ["naive", "step", "chunked", "ut_transform", "intra_chunk_matrices"]


# --------------------------------------------------------------------------- input handling
def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    # float64 stays float64 (tests use it as a reference); everything else accumulates in float32
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise ValueError(f"scale: expected a real number, got {type(scale).__name__}")
    return float(scale)


def _validate(r, w, k, v, a, b, scale, initial_state, cu_seqlens):
    scale = _check_scale(scale)
    B, T, H, K, V, N = validate.linear_attention(
        keys={"r": r, "w": w, "k": k, "a": a, "b": b}, values={"v": v},
        extra={"initial_state": initial_state}, initial_state=initial_state,
        cu_seqlens_=cu_seqlens, log_decay="w")
    return scale, (B, T, H, K, V, N)


def _sequences(B: int, T: int, cu_seqlens):
    """Yield ``(n, batch_slice, time_slice)`` for every independent sequence."""
    if cu_seqlens is None:
        yield slice(0, B), slice(0, B), slice(0, T)
        return
    c = cu_seqlens.tolist()
    for n, (bos, eos) in enumerate(zip(c, c[1:])):
        yield slice(n, n + 1), slice(0, 1), slice(bos, eos)


def _initial(initial_state, N, H, K, V, acc, device):
    if initial_state is None:
        return torch.zeros(N, H, K, V, dtype=acc, device=device)
    return initial_state.to(acc)


# --------------------------------------------------------------------------- the recurrence
def _update(S, r, w, k, v, a, b, scale):
    """One token: ``S`` [.., H, K, V]; ``r, w, k, a, b`` [.., H, K]; ``v`` [.., H, V] (all in the
    accumulation dtype). Returns ``(o, S_new)``; never writes into ``S`` (autograd needs it)."""
    sa = torch.einsum("...k,...kv->...v", a, S)              # a_t^T S_{t-1}: one row of length V
    S = (w.exp().unsqueeze(-1) * S                           # decay every key row
         + b.unsqueeze(-1) * sa.unsqueeze(-2)                # rank-one correction b_t (a_t^T S)
         + k.unsqueeze(-1) * v.unsqueeze(-2))                # write k_t v_t^T
    o = scale * torch.einsum("...k,...kv->...v", r, S)       # read the updated state
    return o, S


def naive(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None):
    """RWKV-7 as a plain loop over time, one token at a time.

    Shapes: ``r, w, k, a, b`` [B, T, H, K]; ``v`` [B, T, H, V]; ``initial_state`` [N, H, K, V]
    (N = B, or ``len(cu_seqlens) - 1`` with B == 1). Returns ``(o [B, T, H, V], S_T or None)``.

        S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T,   o_t = scale · S_t^T r_t
    """
    scale, (B, T, H, K, V, N) = _validate(r, w, k, v, a, b, scale, initial_state, cu_seqlens)
    acc = _acc_dtype(r)
    r_, w_, k_, v_, a_, b_ = (x.to(acc) for x in (r, w, k, v, a, b))
    S0 = _initial(initial_state, N, H, K, V, acc, r.device)
    outs, finals = [], []
    for ns, bs, ts in _sequences(B, T, cu_seqlens):
        S = S0[ns]
        for t in range(ts.start, ts.stop):
            o_t, S = _update(S, r_[bs, t], w_[bs, t], k_[bs, t], v_[bs, t], a_[bs, t], b_[bs, t], scale)
            outs.append(o_t)
        finals.append(S)
    # with cu_seqlens every sequence appended its tokens in order, so stacking restores [1, T, ...]
    o = torch.stack(outs, dim=1).to(r.dtype)
    return o, (torch.cat(finals, dim=0) if output_final_state else None)


def step(r, w, k, v, a, b, state, scale=1.0):
    """One RNN step (inference): ``r, w, k, a, b`` [B, H, K]; ``v`` [B, H, V]; ``state``
    [B, H, K, V]. Returns ``(o [B, H, V], new_state [B, H, K, V])``, equal to the last position
    of a full forward. Same equation as :func:`naive`; ``state`` is required (zeros for a
    fresh sequence)."""
    named = {"r": r, "w": w, "k": k, "v": v, "a": a, "b": b}
    for n, x in named.items():
        validate.tensor(n, x, ndim=3)
    if state is None:
        raise ValueError("state: expected a [B, H, K, V] tensor (use zeros for a fresh sequence), got None")
    validate.tensor("state", state, ndim=4)
    scale = _check_scale(scale)
    B_, _, H_, K_, V_, _ = validate.linear_attention(
        keys={n: named[n].unsqueeze(1) for n in ("r", "w", "k", "a", "b")},
        values={"v": v.unsqueeze(1)}, extra={"state": state}, log_decay="w")
    if tuple(state.shape) != (B_, H_, K_, V_):
        raise ValueError(f"state: expected shape (B, H, K, V) = {(B_, H_, K_, V_)}, got {tuple(state.shape)}")
    acc = _acc_dtype(r)
    o, S = _update(state.to(acc), *(x.to(acc) for x in (r, w, k, v, a, b)), scale)
    return o.to(r.dtype), S
