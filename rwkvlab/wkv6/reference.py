"""RWKV-6 ("Finch") WKV in plain torch: the reference rungs of the ladder.

Per head, with the state ``S`` in K×V layout (rows are key channels, the decay acts on rows)::

    o_t = scale · r_tᵀ (S_{t-1} + diag(u) k_t v_tᵀ)          read-out: state BEFORE token t, plus the bonus
    S_t = diag(exp(w_t)) S_{t-1} + k_t v_tᵀ                  update: decay every key row, add a rank-1 outer product

``w`` is the *log* decay (≤ 0): the per-step factor is ``exp(w_t)`` ∈ (0, 1]. In a Finch model
``w_t = -exp(d_t)`` with ``d_t`` from a low-rank map of the input (paper Eq. 17–18).

Shapes (flash-linear-attention layout): ``r, k, w`` [B, T, H, K], ``v`` [B, T, H, V], ``u`` [H, K],
states [N, H, K, V] float32 with ``N = B`` or ``N = len(cu_seqlens) - 1`` (then ``B == 1``).
Accumulation is float32 (float64 inputs stay float64, which makes a convenient reference);
``o`` comes back in the input dtype. Everything is written without in-place updates of tensors
that need gradients, so autograd differentiates every argument, ``initial_state`` included.
"""
from __future__ import annotations

import torch

from .. import validate

__all__ = ["naive", "step"]


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    # float64 inputs keep float64 (a high-precision reference); everything else accumulates in float32
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(r, k, v, w, u, initial_state, cu_seqlens, scale):
    B, T, H, K, V, N = validate.linear_attention(
        keys={"r": r, "k": k, "w": w}, values={"v": v}, extra={"u": u, "initial_state": initial_state},
        initial_state=initial_state, cu_seqlens_=cu_seqlens, log_decay="w")
    validate.tensor("u", u, ndim=2)
    if tuple(u.shape) != (H, K):
        raise ValueError(f"u: expected shape (H, K) = {(H, K)} to match r, got {tuple(u.shape)}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"scale: expected a real number, got {type(scale).__name__}")
    return B, T, H, K, V, N


def _segments(B: int, T: int, cu_seqlens) -> list[tuple[int, int, int]]:
    """(batch row, start, end) for each of the N independent sequences."""
    if cu_seqlens is None:
        return [(b, 0, T) for b in range(B)]
    c = cu_seqlens.tolist()
    return [(0, s, e) for s, e in zip(c[:-1], c[1:])]


def naive(r, k, v, w, u, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None):
    """The recurrence, one token at a time: the rung a reader can check by hand.

    r, k, w: [B, T, H, K]; v: [B, T, H, V]; u: [H, K]; initial_state: [N, H, K, V] or None.
    Returns ``(o, final_state)`` with o [B, T, H, V] in the input dtype and final_state
    [N, H, K, V] float32 (float64 for float64 inputs) when ``output_final_state``, else None.

        o_t = scale · r_tᵀ (S_{t-1} + diag(u) k_t v_tᵀ),   S_t = diag(exp(w_t)) S_{t-1} + k_t v_tᵀ
    """
    B, T, H, K, V, N = _check(r, k, v, w, u, initial_state, cu_seqlens, scale)
    acc = _acc_dtype(r)
    r_, k_, v_, w_, u_ = (x.to(acc) for x in (r, k, v, w, u))
    outs, finals = [], []
    for n, (b, start, end) in enumerate(_segments(B, T, cu_seqlens)):
        S = (initial_state[n].to(acc) if initial_state is not None
             else torch.zeros(H, K, V, dtype=acc, device=r.device))
        seq = []
        for t in range(start, end):
            kv = k_[b, t, :, :, None] * v_[b, t, :, None, :]                  # [H, K, V] rank-1 k vᵀ
            # read the state *before* this token, plus the bonus u for the current token only
            seq.append(scale * torch.einsum("hk,hkv->hv", r_[b, t], S + u_[:, :, None] * kv))
            S = torch.exp(w_[b, t])[:, :, None] * S + kv                        # decay rows, then add
        outs.append(torch.stack(seq, 0))                                        # [len, H, V]
        finals.append(S)
    if cu_seqlens is None:
        o = torch.stack(outs, 0)                                                # [B, T, H, V]
    else:
        o = torch.cat(outs, 0)[None]                                            # [1, T, H, V]
    final = torch.stack(finals, 0) if output_final_state else None
    return o.to(r.dtype), final


def step(r, k, v, w, u, state=None, scale=1.0):
    """One token of RNN mode: ``(o, new_state)`` for r, k, w [B, H, K], v [B, H, V], u [H, K],
    state [B, H, K, V] (None = zeros). Equals the last position of a full forward."""
    for name, x in (("r", r), ("k", k), ("w", w), ("v", v)):
        validate.tensor(name, x, ndim=3)
    if state is not None:
        validate.tensor("state", state, ndim=4)
    o, new = naive(r[:, None], k[:, None], v[:, None], w[:, None], u, scale=scale,
                   initial_state=state, output_final_state=True)
    return o[:, 0], new
