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

import math
import numbers

import torch

from .. import validate

__all__ = ["naive", "step", "chunked", "ut_transform", "segment_log_decays", "intra_chunk_matrices",
           "random_inputs"]


# --------------------------------------------------------------------------- input handling
def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    # float64 stays float64 (tests use it as a reference); everything else accumulates in float32
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_scale(scale) -> float:
    return validate.real("scale", scale)   # finite, a real number (numpy scalars too), not bool


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


# --------------------------------------------------------------------------- the chunked form
def ut_transform(A: torch.Tensor) -> torch.Tensor:
    """``(I - A)^{-1}`` for strictly lower-triangular ``A`` [..., C, C], by forward substitution.

    Row t of ``T = (I - A)^{-1}`` solves ``T_t = I_t + Σ_{i<t} A[t, i] T_i`` (``I_t``: row t of
    the identity): it needs only the rows above it, so the rows are built one after another
    (the UT transform). Written without in-place writes so autograd can differentiate through it.
    """
    C = A.shape[-1]
    eye = torch.eye(C, dtype=A.dtype, device=A.device).expand(A.shape)
    rows = [eye[..., 0, :]]
    for t in range(1, C):
        done = torch.stack(rows, dim=-2)                                     # rows 0..t-1 of T
        rows.append(eye[..., t, :] + (A[..., t:t + 1, :t] @ done).squeeze(-2))
    return torch.stack(rows, dim=-2)


def segment_log_decays(w: torch.Tensor) -> torch.Tensor:
    """``L[..., t, i, :] = Σ_{i<j≤t} w_j`` for ``i ≤ t`` (0 on the diagonal), ``−inf`` for ``i > t``.

    Input ``w`` [..., C, K] (log decays of one chunk); output [..., C(t), C(i), K]. Each entry is
    summed over its own interval, not taken as a difference ``c_t − c_i`` of running sums: the
    difference of two large numbers loses digits, and its gradient cancels O(1) terms, which wipes
    out the (tiny, but real) gradient of a strong decay.
    """
    C = w.shape[-2]
    ones = torch.ones(C, C, dtype=torch.bool, device=w.device)
    below = torch.tril(ones, -1).unsqueeze(-1)                       # j > i  (rows j, columns i)
    grid = torch.where(below, w.unsqueeze(-2), torch.zeros((), dtype=w.dtype, device=w.device))
    L = torch.cumsum(grid, dim=-3)                                   # sum over j ≤ t of w_j [j > i]
    return L.masked_fill(~torch.tril(ones).unsqueeze(-1), float("-inf"))


def intra_chunk_matrices(r, w, k, a, b):
    """The state-independent pieces of one chunk (any leading dims, time on dim -2).

    Input ``r, w, k, a, b`` [..., C, K] in the accumulation dtype. With ``c_t = Σ_{j≤t} w_j``
    the log decay from the chunk's start through token t (and ``c_0 = 0``), returns a dict of

    - ``A_ab[t, i] = Σ_κ a_tκ e^{c_{t-1},κ − c_iκ} b_iκ``  (i < t)   how the removal at t sees b_i
    - ``A_ak[t, i] = Σ_κ a_tκ e^{c_{t-1},κ − c_iκ} k_iκ``  (i < t)   how the removal at t sees k_i
    - ``A_rb[t, i] = Σ_κ r_tκ e^{c_tκ − c_iκ} b_iκ``       (i ≤ t)   how the read-out at t sees b_i
    - ``A_rk[t, i] = Σ_κ r_tκ e^{c_tκ − c_iκ} k_iκ``       (i ≤ t)   how the read-out at t sees k_i
    - ``a_start = a_t ⊙ e^{c_{t-1}}``, ``r_start = r_t ⊙ e^{c_t}``  (seen from the chunk's start state)
    - ``k_end = k_i ⊙ e^{c_C − c_i}``, ``b_end = b_i ⊙ e^{c_C − c_i}``, ``gamma = e^{c_C}``  (to its end)

    Every exponent is a sum of log decays over a forward time interval, hence ≤ 0: nothing
    overflows for any ``w ≤ 0``. The pairwise ones are formed pair by pair ([C, C, K], see
    :func:`segment_log_decays`), never as a product ``e^{c_t} · e^{−c_i}``, which overflows once
    ``−c`` passes ~88 in float32.
    """
    E_r = segment_log_decays(w).exp()                           # e^{c_t − c_i} (i ≤ t), else 0
    # e^{c_{t-1} − c_i} for i < t is the row above: shift E_r down by one row (row 0 is empty)
    E_a = torch.nn.functional.pad(E_r[..., :-1, :, :], (0, 0, 0, 0, 1, 0))
    c = torch.cumsum(w, dim=-2)                                 # c_t (a plain running sum: no
    c_prev = torch.nn.functional.pad(c[..., :-1, :], (0, 0, 1, 0))   # differences are taken)
    to_end = E_r[..., -1, :, :]                                 # e^{c_C − c_i}: the last row
    pair = lambda x, E, y: torch.einsum("...tk,...tik,...ik->...ti", x, E, y)  # noqa: E731
    return {
        "A_ab": pair(a, E_a, b), "A_ak": pair(a, E_a, k),
        "A_rb": pair(r, E_r, b), "A_rk": pair(r, E_r, k),
        "a_start": a * c_prev.exp(), "r_start": r * c.exp(),
        "k_end": k * to_end, "b_end": b * to_end,
        "gamma": c[..., -1, :].exp(),
    }


def _chunked_one(r, w, k, v, a, b, S, scale, C):
    """``[B, T, H, *]`` inputs (accumulation dtype), state ``S`` [B, H, K, V] → (o, S_T)."""
    B, T, H, K = r.shape
    NC = -(-T // C)
    pad = NC * C - T

    def chunks(x):
        # padding with zeros is exact: w = 0, k = a = b = 0 leave the state untouched
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        return x.reshape(B, NC, C, H, x.shape[-1]).permute(0, 3, 1, 2, 4)   # [B, H, NC, C, *]

    r, w, k, v, a, b = (chunks(x) for x in (r, w, k, v, a, b))
    M = intra_chunk_matrices(r, w, k, a, b)
    # WY form: the removal rows e_t^T = a_t^T S_{t-1} of a chunk satisfy (I − A_ab) E = ã S_0 + A_ak V,
    # so E = W S_0 + U with W = T ã, U = T A_ak V and T = (I − A_ab)^{-1}, all state-independent.
    Tm = ut_transform(M["A_ab"])
    W = Tm @ M["a_start"]                                       # [B, H, NC, C, K]
    U = Tm @ (M["A_ak"] @ v)                                    # [B, H, NC, C, V]
    o_local = M["A_rk"] @ v                                     # the chunk's own writes, read at t
    outs = []
    for n in range(NC):                                         # the only sequential part
        E = W[:, :, n] @ S + U[:, :, n]                         # removal rows, given S_0 = S
        outs.append(scale * (M["r_start"][:, :, n] @ S + o_local[:, :, n] + M["A_rb"][:, :, n] @ E))
        S = (M["gamma"][:, :, n].unsqueeze(-1) * S               # hand the state to the next chunk
             + M["k_end"][:, :, n].transpose(-1, -2) @ v[:, :, n]
             + M["b_end"][:, :, n].transpose(-1, -2) @ E)
    o = torch.stack(outs, dim=2)                                # [B, H, NC, C, V]
    o = o.permute(0, 2, 3, 1, 4).reshape(B, NC * C, H, -1)[:, :T]
    return o, S


def chunked(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None,
            chunk_size=16):
    """RWKV-7 in chunkwise-parallel (WY / UT) form; same contract and result as :func:`naive`.

    Per chunk of ``C = chunk_size`` tokens with start state ``S`` (see
    :func:`intra_chunk_matrices` for the symbols)::

        T = (I − A_ab)^{-1}            W = T ã        U = T A_ak V
        E = W S + U                                        (the rows a_t^T S_{t-1})
        O = scale · (r̃ S + A_rk V + A_rb E)
        S ← diag(γ) S + k̂^T V + b̂^T E

    Cost O(T·C·K + T·K·V) per head; only the hand-off between chunks is sequential.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    scale, (B, T, H, K, V, N) = _validate(r, w, k, v, a, b, scale, initial_state, cu_seqlens)
    acc = _acc_dtype(r)
    r_, w_, k_, v_, a_, b_ = (x.to(acc) for x in (r, w, k, v, a, b))
    S0 = _initial(initial_state, N, H, K, V, acc, r.device)
    outs, finals = [], []
    for ns, bs, ts in _sequences(B, T, cu_seqlens):
        o, S = _chunked_one(*(x[bs, ts] for x in (r_, w_, k_, v_, a_, b_)), S0[ns], scale, int(chunk_size))
        outs.append(o)
        finals.append(S)
    o = torch.cat(outs, dim=1).to(r.dtype)
    return o, (torch.cat(finals, dim=0) if output_final_state else None)


# --------------------------------------------------------------------------- example inputs
def random_inputs(B, T, H, K, V, seed=0, dtype=torch.float32, decay=math.exp(-0.5), w_const=None):
    """Seeded ``(r, w, k, v, a, b)`` shaped as an RWKV-7 model feeds the kernel, for examples and checks.

    r, w, k, a, b: [B, T, H, K]; v: [B, T, H, V]. r, k, v are standard normal; ``a = −κ̂`` and
    ``b = κ̂ ⊙ iclr`` with κ̂ a unit vector per head and iclr uniform in (0, 1); the log decay is
    ``w = −decay · U(0, 1)``, by default in ``(−e^{−0.5}, 0)`` as in the paper's Eq. 12 (or the
    constant ``w_const`` everywhere, for stress tests). Drawn in float64, then cast to ``dtype``.
    """
    g = torch.Generator().manual_seed(seed)
    r, k, kappa = (torch.randn(B, T, H, K, generator=g, dtype=torch.float64) for _ in range(3))
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    kappa_hat = kappa / kappa.norm(dim=-1, keepdim=True)
    iclr = torch.rand(B, T, H, K, generator=g, dtype=torch.float64)
    if w_const is None:
        w = -decay * torch.rand(B, T, H, K, generator=g, dtype=torch.float64)
    else:
        w = torch.full((B, T, H, K), float(w_const), dtype=torch.float64)
    return [x.to(dtype) for x in (r, w, k, v, -kappa_hat, kappa_hat * iclr)]
