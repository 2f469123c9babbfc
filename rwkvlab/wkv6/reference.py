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

__all__ = ["naive", "chunked", "step", "attention_matrix", "finch_log_decay", "random_inputs"]


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
    validate.real("scale", scale)          # finite, a real number (numpy scalars too), not bool
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
    state [B, H, K, V] (None = zeros). Equals the last position of a full forward.

        o = scale · rᵀ (S + diag(u) k vᵀ),   S' = diag(exp(w)) S + k vᵀ
    """
    validate.tensor("r", r, ndim=3)
    for name, x in (("k", k), ("w", w), ("v", v)):
        validate.tensor(name, x, ndim=3)
    if state is not None:
        validate.tensor("state", state, ndim=4)
        B, H, K = r.shape
        if tuple(state.shape) != (B, H, K, v.shape[-1]):
            raise ValueError(f"state: expected shape (B, H, K, V) = {(B, H, K, v.shape[-1])}, got {tuple(state.shape)}")
    o, new = naive(r[:, None], k[:, None], v[:, None], w[:, None], u, scale=scale,
                   initial_state=state, output_final_state=True)
    return o[:, 0], new


# ----------------------------------------------------------------------------------------------
# The chunked (chunkwise-parallel) form
# ----------------------------------------------------------------------------------------------

def _pairwise_decay(c: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """D[..., i, j, :] = exp(c_i − w_i − c_j) for j < i, and 0 elsewhere.

    c is the inclusive cumulative log decay inside a block ([..., C, K]). For j < i the exponent
    is a sum of log decays w_{j+1} … w_{i-1}, all ≤ 0, so every entry lies in [0, 1]: nothing can
    overflow, whatever the decay or the block length. The mask is applied to the *exponent*
    (−inf ↦ 0) so that no positive exponent is ever evaluated, not even in a discarded entry —
    an inf there would turn into NaN in the backward pass.
    """
    C = c.shape[-2]
    e = (c - w)[..., :, None, :] - c[..., None, :, :]                       # [..., C, C, K]
    below = torch.ones(C, C, dtype=torch.bool, device=c.device).tril(-1)   # strict lower: j < i
    return e.masked_fill(~below[:, :, None], float("-inf")).exp()


def attention_matrix(r, k, w, u, scale=1.0):
    """The T×T matrix one WKV-6 head applies to its values when it starts from a zero state.

    r, k, w: [B, T, H, K]; u: [H, K]. Returns A [B, H, T, T] (accumulation dtype) with
    ``o = A v`` per head, where for j < t

        A[t, j] = scale · Σ_κ r_t[κ] k_j[κ] exp(w_{j+1}[κ] + … + w_{t-1}[κ]),   A[t, t] = scale · Σ_κ r_t[κ] u[κ] k_t[κ]

    and A[t, j] = 0 for j > t (causal). Costs T²K: for pictures and short checks, not for training.
    """
    acc = _acc_dtype(r)
    r_, k_, w_ = (x.to(acc).transpose(1, 2) for x in (r, k, w))              # [B, H, T, K]
    c = w_.cumsum(-2)
    A = torch.einsum("bhik,bhjk,bhijk->bhij", r_, k_, _pairwise_decay(c, w_))
    bonus = (r_ * u.to(acc)[None, :, None, :] * k_).sum(-1)                  # [B, H, T]
    return scale * (A + torch.diag_embed(bonus))


def _chunked_one(r, k, v, w, u, S0, scale, C, stable):
    """Chunked forward for [B, T, H, ·] tensors already in the accumulation dtype; S0 [B, H, K, V]."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    n = -(-T // C)
    pad = n * C - T
    if pad:
        # padded tokens have k = v = r = 0 and w = 0 (decay factor 1): they change neither o nor S
        r, k, v, w = (torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)) for x in (r, k, v, w))
    # [B, T, H, ·] -> [B, H, n, C, ·]: one row of chunks per head
    r, k, v, w = (x.reshape(B, n, C, H, x.shape[-1]).permute(0, 3, 1, 2, 4) for x in (r, k, v, w))
    c = w.cumsum(-2)                       # inclusive cumulative log decay inside each chunk, ≤ 0
    c_last = c[..., -1:, :]                # log decay across the whole chunk    [B, H, n, 1, K]

    # (2) intra-chunk, strictly below the diagonal: Σ_{j<i} (r_i ⊙ e^{c_i − w_i − c_j} ⊙ k_j)·1  v_j
    if stable:
        A = torch.einsum("bhnik,bhnjk,bhnijk->bhnij", r, k, _pairwise_decay(c, w))
    else:
        # GLA-style factorisation e^{c_i − w_i − c_j} = e^{c_i − w_i} · e^{−c_j}: one matmul, but
        # e^{−c_j} grows like the inverse of the cumulative decay and overflows float32 once
        # −c_j > 88.7 (e.g. w = −8 over 12 tokens)
        below = torch.ones(C, C, dtype=torch.bool, device=r.device).tril(-1)
        A = ((r * torch.exp(c - w)) @ (k * torch.exp(-c)).transpose(-1, -2)) * below
    # (3) the diagonal: the current token with the bonus u
    bonus = (r * u[None, :, None, None, :] * k).sum(-1)                      # [B, H, n, C]
    o = (A + torch.diag_embed(bonus)) @ v                                    # [B, H, n, C, V]

    # (4) what each chunk adds to the state, decayed to the chunk's end: (k ⊙ e^{c_last − c})ᵀ v
    if stable:
        k_end = k * torch.exp(c_last - c)
    else:
        k_end = k * torch.exp(-c) * torch.exp(c_last)                        # same ratio, via 1/b_j
    dS = k_end.transpose(-1, -2) @ v                                         # [B, H, n, K, V]
    decay = torch.exp(c_last).transpose(-1, -2)                              # [B, H, n, K, 1]
    # the only sequential part: n hand-offs S ← e^{c_last} S + ΔS (no in-place writes, for autograd)
    S, starts = S0, []
    for i in range(n):
        starts.append(S)
        S = decay[:, :, i] * S + dS[:, :, i]
    S_start = torch.stack(starts, 2)                                         # [B, H, n, K, V]

    # (1) inter-chunk read-out: the state at the chunk start, decayed up to (not including) token i
    o = o + (r * torch.exp(c - w)) @ S_start
    o = scale * o.permute(0, 2, 3, 1, 4).reshape(B, n * C, H, V)[:, :T]
    return o, S


def chunked(r, k, v, w, u, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None,
            chunk_size=16, stable=True):
    """Chunkwise-parallel RWKV-6: exact (up to rounding) equal of :func:`naive`.

    Same shapes and returns as :func:`naive`, plus ``chunk_size`` (a positive int; T need not be a
    multiple). Inside a chunk of C tokens with inclusive cumulative log decay c (per channel)::

        o_i = scale · [ (r_i ⊙ e^{c_i − w_i}) S                                    inter-chunk
                        + Σ_{j<i} Σ_κ r_iκ k_jκ e^{c_iκ − w_iκ − c_jκ} v_j          intra-chunk
                        + (Σ_κ r_iκ u_κ k_iκ) v_i ]                                  bonus diagonal
        S ← diag(e^{c_last}) S + (k ⊙ e^{c_last − c})ᵀ v                             hand-off

    ``stable=True`` (default) forms the pairwise factor e^{c_i − w_i − c_j} directly for j < i, so
    every exponent is ≤ 0 and nothing overflows for any w ≤ 0 (cost C²K per chunk for the scores,
    as a matmul would have, but elementwise). ``stable=False`` keeps the textbook factorisation
    through e^{−c_j} (one matmul per chunk) that overflows in float32 under strong decay; it is
    here to be shown failing, not to be used.
    """
    B, T, H, K, V, N = _check(r, k, v, w, u, initial_state, cu_seqlens, scale)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    acc = _acc_dtype(r)
    r_, k_, v_, w_, u_ = (x.to(acc) for x in (r, k, v, w, u))
    S0 = (initial_state.to(acc) if initial_state is not None
          else torch.zeros(N, H, K, V, dtype=acc, device=r.device))
    if cu_seqlens is None:
        o, S = _chunked_one(r_, k_, v_, w_, u_, S0, scale, chunk_size, stable)
    else:
        # chunks never straddle two sequences: run each packed sequence on its own
        outs, finals = [], []
        for n, (_, s, e) in enumerate(_segments(B, T, cu_seqlens)):
            o_n, S_n = _chunked_one(r_[:, s:e], k_[:, s:e], v_[:, s:e], w_[:, s:e], u_, S0[n:n + 1],
                                    scale, chunk_size, stable)
            outs.append(o_n)
            finals.append(S_n)
        o, S = torch.cat(outs, 1), torch.cat(finals, 0)
    return o.to(r.dtype), (S if output_final_state else None)


def finch_log_decay(x, lam, A, B):
    """Finch's data-dependent log decay (paper Eqs. 17–18, with the token shift left out).

    x: [..., D] (the token-shifted input), lam: [D], A: [D, R], B: [R, D]. Returns
    ``w = −exp(d)`` with ``d = λ + tanh(x A) B``, so the decay factor is ``exp(w) = exp(−exp(d))`` ∈ (0, 1).
    The kernels take ``w`` (the log of the factor), never ``d``.
    """
    d = lam + torch.tanh(x @ A) @ B
    return -torch.exp(d)


def random_inputs(B, T, H, K, V, seed=0, dtype=torch.float32, decay=1.0):
    """Seeded ``(r, k, v, w, u)`` in the book's layout for examples and checks.

    r, k, w: [B, T, H, K]; v: [B, T, H, V]; u: [H, K]; all standard normal except the log decay
    ``w = −decay · exp(N(0, 1)) ≤ 0``, which spreads memory lengths from a fraction of a token to
    tens of tokens (``decay`` scales them all). Drawn in float32, then cast to ``dtype``.
    """
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, T, H, K, generator=g)
    k = torch.randn(B, T, H, K, generator=g)
    v = torch.randn(B, T, H, V, generator=g)
    w = -decay * torch.exp(torch.randn(B, T, H, K, generator=g))
    u = torch.randn(H, K, generator=g)
    return [x.to(dtype) for x in (r, k, v, w, u)]
