"""RWKV-7 ("Goose") state update in plain torch: the loop (``naive``), one RNN step (``step``)
and the chunkwise-parallel WY/UT form (``chunked``).

Layout (the book's contract, as in FLA): ``r, w, k, a, b`` are ``[B, T, H, K]``, ``v`` is ``[B, T, H, V]``,
``w`` is the *log* decay (≤ 0), states are ``[N, H, K, V]``. With the state ``S`` in K×V layout
(rows are key channels)::

    S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T
    o_t = scale * S_t^T r_t                       (the read-out sees the *updated* state)

The RWKV-7 paper and its CUDA kernel store the transpose (V×K, decay on the columns); models
call this with ``a = -κ̂`` and ``b = κ̂ ⊙ iclr`` (κ̂ the L2-normalised removal key).

Accumulation is float32 (float64 inputs stay float64); ``o`` comes back in the input dtype and
the final state in the accumulation dtype.

One token's update is written once, unchecked, in ``_update``: ``naive`` runs it in its loop,
``step`` after validating its inputs, and the model's inference decoder (``rwkvlab.model.x070.
Decoder``) in place, where ``step``'s checks would cost several times the arithmetic.
"""
from __future__ import annotations

import math
import numbers

import torch

from .. import validate
from ..checking import check, rel_err

#: RWKV-7's log decay is w = −e^{−1/2}·σ(·) (the paper's Eq. 12; ``x070.TimeMix.log_decay``), so
#: w ≥ −e^{−1/2} ≈ −0.6065 always; a kernel told so may skip its strong-decay path
RWKV7_LOWER_BOUND = -math.exp(-0.5)

__all__ = ["naive", "step", "chunked", "ut_transform", "segment_log_decays", "intra_chunk_matrices",
           "chunk_matrices", "factored_matrices", "CHUNK_FACTOR_SPAN", "random_inputs", "naive64", "forward_check", "grad_check"]


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
def _update(S: torch.Tensor, r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
            b: torch.Tensor, scale: float = 1.0, in_place: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the recurrence, unchecked: the package's one copy of the update.

    ``S`` [.., H, K, V]; ``r, w, k, a, b`` [.., H, K] (``w`` the log decay); ``v`` [.., H, V];
    all in the accumulation dtype, nothing validated. Returns ``(o [.., H, V], S_new)``::

        S_new = diag(exp(w)) S + b (aᵀ S) + k vᵀ,     o = scale · S_newᵀ r

    :func:`naive` and :func:`step` (after checking their inputs) call it with ``in_place=False``,
    which never writes into ``S`` (autograd needs the old state). The inference decoder
    (``rwkvlab.model.x070.Decoder``) calls it with ``in_place=True``: ``S`` is overwritten with
    ``S_new`` and returned (no new state tensor per token; not for tensors that need grad).
    Written in the TorchScript subset, because that decoder's block is scripted on CPU."""
    sa = torch.matmul(a.unsqueeze(-2), S)                    # a_t^T S_{t-1}: one row of length V
    decay = torch.exp(w).unsqueeze(-1)                       # e^{w_t}: one factor per key row
    b_col, k_col, v_row = b.unsqueeze(-1), k.unsqueeze(-1), v.unsqueeze(-2)
    # decay every key row, add the rank-one correction b_t (a_t^T S_{t-1}), write k_t v_t^T
    if in_place:
        S = S.mul_(decay).addcmul_(b_col, sa).addcmul_(k_col, v_row)
    else:
        S = torch.addcmul(torch.addcmul(S * decay, b_col, sa), k_col, v_row)
    o = torch.matmul(r.unsqueeze(-2), S).squeeze(-2)         # read the updated state
    if scale != 1.0:
        o = o * scale
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


def chunk_matrices(r, w, k, a, b):
    """The same pieces as :func:`intra_chunk_matrices`, built by halving the chunk again and again.

    Input ``r, w, k, a, b`` [..., C, K] (accumulation dtype, any ``C ≥ 1``; it is padded to a
    power of two with tokens that do nothing). Returns the dict of :func:`intra_chunk_matrices`.

    Write ``w(i, t] = Σ_{i<j≤t} w_j`` for the log decay over an interval (``c_t − c_i`` in the
    notation of :func:`intra_chunk_matrices`). Split a block of tokens at its midpoint ``m``. For
    ``i`` in the first half and ``t`` in the second, the decay between them factors there, and both
    factors are decays over forward intervals, hence ≤ 1::

        e^{w(i, t]} = e^{w(m, t]} · e^{w(i, m]},   so   A_rk[t, i] = Σ_κ (r_t e^{w(m, t]})_κ (k_i e^{w(i, m]})_κ

    and the whole block of ``A_rk``, ``A_rb``, ``A_ak``, ``A_ab`` that couples the second half to
    the first is one matrix product (rows: ``r, a`` of the second half decayed from ``m``; columns:
    ``k, b`` of the first half decayed to ``m``). The blocks of the halves are found the same way,
    one level down. The recursion runs bottom-up, over blocks of 1, 2, 4, … tokens; each token
    carries its row vectors decayed from the start of its current block and its column vectors
    decayed to the block's end, each block its total decay. Merging two blocks costs one batched
    product for the coupling block, then the second half's rows are multiplied by the first
    half's total decay, the first half's columns by the second half's, and the totals multiply.
    After the last merge the rows and columns are ``r_start, a_start, k_end, b_end``.

    Every decay is therefore a product of factors ``e^{w_j} ≤ 1``, grouped by block: nothing is
    divided, no exponent is a difference of running sums, and nothing overflows for any
    ``w ≤ 0``. The diagonal is ``r_t·k_t`` and ``r_t·b_t`` (no decay), and ``A_ab``, ``A_ak`` have
    none. Without autograd the halves are rescaled where they lie (in place); with it, into new
    tensors, because autograd needs the old values.
    """
    lead, (C, K) = r.shape[:-2], r.shape[-2:]
    Cp = 1 << (C - 1).bit_length()                              # next power of two
    if Cp != C:  # tokens with w = 0 and r = k = a = b = 0 at the end change none of the real entries
        r, w, k, a, b = (torch.nn.functional.pad(x, (0, 0, 0, Cp - C)) for x in (r, w, k, a, b))
    N = math.prod(lead)
    in_place = not (torch.is_grad_enabled() and any(x.requires_grad for x in (r, w, k, a, b)))
    ew = w.exp()                                                # the decay of one token
    # blocks of one token: row r_t e^{w_t} (the read-out sees its own decay), a_t (the removal
    # reads S_{t-1}: no decay), columns k_i, b_i; rows and columns interleave their two kinds
    rows = torch.stack([r * ew, a], -2).view(N, Cp, 2, K)
    cols = torch.stack([k, b], -2)
    diag = (r.unsqueeze(-2) @ cols.transpose(-1, -2)).view(N, Cp, 2)   # r_t·k_t, r_t·b_t: no decay
    cols = cols.view(N, Cp, 2, K)
    G = ew.reshape(N, Cp, K)                                    # total decay of each block
    # M[n, t, x, y, i]: x ∈ {r, a} the row kind, y ∈ {k, b} the column kind
    M = torch.zeros(N, Cp, 2, 2, Cp, dtype=r.dtype, device=r.device)
    M.as_strided((N, Cp, 2), (4 * Cp * Cp, 4 * Cp + 1, Cp)).copy_(diag)      # M[n, t, r, y, t]
    s = 1
    while s < Cp:                                               # merge pairs of blocks of s tokens
        P = Cp // (2 * s)
        rows_v, cols_v = rows.view(N, P, 2, 2 * s, K), cols.view(N, P, 2, 2 * s, K)
        second, first = rows_v[:, :, 1], cols_v[:, :, 0]        # [N, P, 2s (token, kind), K]
        coupling = torch.bmm(second.reshape(N * P, 2 * s, K), first.reshape(N * P, 2 * s, K).transpose(-1, -2))
        # write it at rows t = 2ps + s + τ, columns i = 2ps + ι of M (one strided view for all pairs p)
        M.as_strided((N, P, s, 2, s, 2), (4 * Cp * Cp, 8 * s * Cp + 2 * s, 4 * Cp, 2 * Cp, 1, Cp),
                     4 * s * Cp).copy_(coupling.view(N, P, s, 2, s, 2))
        G_v = G.view(N, P, 2, 1, K)                             # totals of the first and second halves
        if in_place:
            second.mul_(G_v[:, :, 0])                           # rows: decay from the new block's start
            first.mul_(G_v[:, :, 1])                            # columns: decay to the new block's end
        else:
            one = torch.ones_like(G_v[:, :, :1])
            rows = (rows_v * torch.cat([one, G_v[:, :, :1]], 2)).view(N, Cp, 2, K)
            cols = (cols_v * torch.cat([G_v[:, :, 1:], one], 2)).view(N, Cp, 2, K)
        G = G_v[:, :, 0] * G_v[:, :, 1]
        s *= 2
    vec = lambda x: x.reshape(*lead, Cp, K)[..., :C, :]                  # noqa: E731
    mat = lambda x, y: M[:, :, x, y].reshape(*lead, Cp, Cp)[..., :C, :C]   # noqa: E731
    return {
        "A_ab": mat(1, 1), "A_ak": mat(1, 0), "A_rb": mat(0, 1), "A_rk": mat(0, 0),
        "r_start": vec(rows[:, :, 0]), "a_start": vec(rows[:, :, 1]),
        "k_end": vec(cols[:, :, 0]), "b_end": vec(cols[:, :, 1]),
        "gamma": G.reshape(*lead, K),
    }


#: the largest decay of a chunk (−Σ w over its tokens, in any channel) for which `chunked` takes
#: :func:`factored_matrices`: its factors stay ≤ e^{20}, and the running sums' rounding costs each
#: weight at most about (|c_t| + |c_i|)·2⁻²⁴ ≤ 2.4e-6 in float32. RWKV-7's decays (w ≥ −e^{−1/2})
#: keep a chunk of 32 below 19.5, so real inputs always qualify; a decay spike does not
CHUNK_FACTOR_SPAN = 20.0


def factored_matrices(r, w, k, a, b):
    """The pieces of :func:`intra_chunk_matrices` as products ``(x ⊙ e^{c}) (y ⊙ e^{−c})ᵀ``.

    Input ``r, w, k, a, b`` [..., C, K]. Valid, and exact to float32 rounding, only while every
    ``−c_C ≤`` :data:`CHUNK_FACTOR_SPAN` (``e^{−c}`` would overflow past ~88, and its rounding
    grows with |c|): ``chunked`` checks that before it calls this, and calls it only without
    autograd (differentiated, the products' ``+c``/``−c`` terms cancel in ``dw``). One batched
    product gives all four matrices (the rows ``r̃, ã`` stacked, against the columns ``k̂, b̂``
    stacked), where :func:`chunk_matrices` needs one per halving level. The rows and columns are
    written straight into their stacked buffers (``out=``), which autograd cannot follow: inputs
    that need grad raise.
    """
    C, K = r.shape[-2:]
    c = torch.cumsum(w, dim=-2)                                       # c_t
    e = c.exp()                                                       # e^{c_t} ≥ e^{-20}: no denormals,
    inv = e.reciprocal()                                              # and e^{-c_t} ≤ e^{20}
    # rows r̃ = r ⊙ e^{c_t}, ã = a ⊙ e^{c_{t-1}} and columns k̂ = k ⊙ e^{−c_i}, b̂ = b ⊙ e^{−c_i}, each
    # pair written straight into one [..., 2C, K] buffer (no concatenation: each is one pass)
    rows, cols = (r.new_empty(*r.shape[:-2], 2 * C, K) for _ in range(2))
    torch.mul(r, e, out=rows[..., :C, :])
    rows[..., C, :] = a[..., 0, :]                                    # c_0 = 0: ã_1 = a_1
    torch.mul(a[..., 1:, :], e[..., :-1, :], out=rows[..., C + 1:, :])
    torch.mul(k, inv, out=cols[..., :C, :])
    torch.mul(b, inv, out=cols[..., C:, :])
    A = rows @ cols.transpose(-1, -2)                                 # [..., 2C(x), 2C(y)]
    # keep i ≤ t in the read-out rows (A_rk, A_rb), i < t in the removal rows (A_ak, A_ab); the
    # entries dropped are e^{c_t − c_i} ≤ e^{20} times inputs, finite, so a product with 0/1 is exact
    keep = torch.ones(C, C, dtype=r.dtype, device=r.device).tril()
    A.mul_(torch.cat([keep, keep.tril(-1)]).repeat(1, 2))
    gamma = e[..., -1, :]
    ends = cols * gamma.unsqueeze(-2)                                 # k̂ e^{c_C} = k ⊙ e^{c_C − c_i}, b̂ likewise
    return {
        "A_rk": A[..., :C, :C], "A_rb": A[..., :C, C:], "A_ak": A[..., C:, :C], "A_ab": A[..., C:, C:],
        "r_start": rows[..., :C, :], "a_start": rows[..., C:, :],
        "k_end": ends[..., :C, :], "b_end": ends[..., C:, :],
        "gamma": gamma,
    }


def _chunked_one(r, w, k, v, a, b, S, scale, C):
    """``[B, T, H, *]`` inputs (accumulation dtype), state ``S`` [B, H, K, V] → (o, S_T)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    NC = -(-T // C)
    Cp = 1 << (C - 1).bit_length()                              # chunk_matrices' power of two
    N = NC * B * H

    def chunks(x):
        # [B, T, H, D] → [NC, B, H, Cp, D]: the sequence padded to NC chunks, each chunk to Cp
        # tokens; zeros are exact (w = 0, k = a = b = 0 leave the state untouched, and the padded
        # outputs are dropped). Chunk-major, so that chunk n of every head is one slice.
        if NC * C != T:
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, NC * C - T))
        x = x.reshape(B, NC, C, H, x.shape[-1])
        if Cp != C:
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, Cp - C))
        return x.permute(1, 0, 3, 2, 4)

    xs = [chunks(x) for x in (r, w, k, a, b)]
    # the chunk's pieces as two products when every chunk's decay is small (real RWKV-7 inputs)
    # and no gradient is taken, else by halving (chunk_matrices), whose decays are all products of
    # factors ≤ 1: autograd through e^{c}·e^{−c} would cancel O(1) terms in dw (chapter 10, §6)
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in xs)
    small = not grad and xs[1].numel() > 0 and float(-xs[1].sum(-2).min()) <= CHUNK_FACTOR_SPAN
    M = {n: x.reshape(N, *x.shape[3:]) for n, x in (factored_matrices if small else chunk_matrices)(*xs).items()}
    v = chunks(v).reshape(N, Cp, V)
    # the removal rows of every chunk are E = W S_0 + U with T = (I − A_ab)^{-1}, W = T ã and
    # U = T A_ak V (section 4 of chapter 10); everything below is E put into (3) and (4)
    eye = torch.eye(Cp, dtype=r.dtype, device=r.device)
    Tm = torch.linalg.solve_triangular(eye - M["A_ab"], eye.expand(N, Cp, Cp), upper=False, unitriangular=True)
    W = Tm @ M["a_start"]                                       # [N, Cp, K]
    TA = Tm @ M["A_ak"]                                         # U = TA V
    # hand-off S_C = P S_0 + Q: P = diag(γ) + B̂ᵀ W (K×K), Q = K̂ᵀ V + B̂ᵀ U = (K̂ + TAᵀ B̂)ᵀ V (K×V)
    P = M["b_end"].transpose(-1, -2) @ W
    P.diagonal(dim1=-2, dim2=-1).add_(M["gamma"])
    Q = torch.baddbmm(M["k_end"], TA.transpose(-1, -2), M["b_end"]).transpose(-1, -2) @ v
    # read-out O = scale · (R S_0 + M_loc V): R = R̃ + A_rb W, and M_loc = A_rk + A_rb TA is the
    # chunk's own block of the attention matrix (section 5 of chapter 10)
    R = torch.baddbmm(M["r_start"], M["A_rb"], W)
    O_local = torch.baddbmm(M["A_rk"], M["A_rb"], TA) @ v
    # the only sequential part: S ← Q + P S, one baddbmm per chunk, keeping every chunk's start state
    Ps, Qs = P.view(NC, B * H, K, K).unbind(0), Q.view(NC, B * H, K, V).unbind(0)
    if torch.is_grad_enabled() and any(x.requires_grad for x in (P, Q, S)):   # autograd cannot
        starts = [S.reshape(B * H, K, V)]                                       # follow out= writes
        for n in range(NC - 1):
            starts.append(torch.baddbmm(Qs[n], Ps[n], starts[n]))
        starts = torch.stack(starts)
    else:                                                       # written where they lie: no stack
        starts = S.new_empty(NC, B * H, K, V)
        starts[0] = S.reshape(B * H, K, V)
        Ss = starts.unbind(0)
        for n in range(NC - 1):
            torch.baddbmm(Qs[n], Ps[n], Ss[n], out=Ss[n + 1])
    S = torch.baddbmm(Qs[-1], Ps[-1], starts[-1])
    o = torch.baddbmm(O_local, R, starts.view(N, K, V), beta=scale, alpha=scale)
    o = o.view(NC, B, H, Cp, V)[:, :, :, :C].permute(1, 0, 3, 2, 4).reshape(B, NC * C, H, V)[:, :T]
    return o, S.view(B, H, K, V)


def chunked(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None,
            chunk_size=32):
    """RWKV-7 in chunkwise-parallel (WY / UT) form; same contract and result as :func:`naive`.

    Shapes as for :func:`naive`: ``r, w, k, a, b`` [B, T, H, K], ``v`` [B, T, H, V],
    ``initial_state`` [N, H, K, V]; returns ``(o [B, T, H, V], S_T [N, H, K, V] or None)``.
    For every chunk of ``C = chunk_size`` tokens at once (symbols of :func:`intra_chunk_matrices`,
    computed by :func:`chunk_matrices`)::

        T = (I − A_ab)^{-1}  (a batched triangular solve)     W = T ã     TA = T A_ak
        P = diag(γ) + B̂ᵀ W      Q = (K̂ + TAᵀ B̂)ᵀ V           (S_end = P S_start + Q)
        R = r̃ + A_rb W          O_local = (A_rk + A_rb TA) V

    then one chunk after another ``S ← P S + Q`` (the only sequential step: one batched K×K
    by K×V product per chunk), and for all chunks at once ``O = scale · (R S_start + O_local)``.
    "At once" means per segment of about ``SEGMENT`` token-heads (B·H·tokens), one segment after
    another, so that the intermediates of a segment are still in cache when they are used.
    Cost per head: O(T·C·(K + V)) for the chunk matrices, O(T·K·(K + V)) for the state pieces.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    scale, (B, T, H, K, V, N) = _validate(r, w, k, v, a, b, scale, initial_state, cu_seqlens)
    acc = _acc_dtype(r)
    r_, w_, k_, v_, a_, b_ = (x.to(acc) for x in (r, w, k, v, a, b))
    S0 = _initial(initial_state, N, H, K, V, acc, r.device)
    C = int(chunk_size)
    outs, finals = [], []
    for ns, bs, ts in _sequences(B, T, cu_seqlens):
        S = S0[ns]
        # segments of whole chunks, about SEGMENT token-heads each: a segment's intermediates stay
        # in cache while they are used; from one segment to the next only the state passes
        n_b = ns.stop - ns.start
        step = C * max(1, SEGMENT // (n_b * H * C))
        for lo in range(ts.start, ts.stop, step):
            seg = slice(lo, min(lo + step, ts.stop))
            o, S = _chunked_one(*(x[bs, seg] for x in (r_, w_, k_, v_, a_, b_)), S, scale, C)
            outs.append(o)
        finals.append(S)
    o = torch.cat(outs, dim=1).to(r.dtype)
    return o, (torch.cat(finals, dim=0) if output_final_state else None)


SEGMENT = 4096   # token-heads per segment of `chunked` (B·H·tokens); 2048-4096 were fastest on a 2-core CPU


# --------------------------------------------------------------------------- example inputs
def random_inputs(B, T, H, K, V, seed=0, dtype=torch.float32, decay=-RWKV7_LOWER_BOUND, w_const=None, key_scale=1.0,
                  model_like=True, with_state=False, N=None, device=None, requires_grad=False):
    """Seeded ``(r, w, k, v, a, b)`` shaped as an RWKV-7 model feeds the kernel: the one input
    generator of chapters, tests and exercises.

    r, w, k, a, b: [B, T, H, K]; v: [B, T, H, V]. r, k, v are standard normal (k times
    ``key_scale``); ``a = −κ̂`` and ``b = κ̂ ⊙ iclr`` with κ̂ a unit vector per head and iclr uniform
    in (0, 1) — or, with ``model_like=False``, a and b independent 0.5·N(0, 1) (the general
    recurrence, whose state may grow); the log decay is ``w = −decay · U(0, 1)``, by default in
    ``(−e^{−0.5}, 0)`` as in the paper's Eq. 12 (or the constant ``w_const`` everywhere, for stress
    tests). Drawn in float64, then cast to ``dtype``. ``with_state=True`` appends an
    ``initial_state`` [N, H, K, V] (N = B unless given), standard normal, float32 (float64 for
    float64 inputs). ``device`` moves everything there; ``requires_grad`` makes leaves that need grad.
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
    if model_like:
        a, b = -kappa_hat, kappa_hat * iclr
    else:
        a, b = (0.5 * torch.randn(B, T, H, K, generator=g, dtype=torch.float64) for _ in range(2))
    xs = [x.to(device=device, dtype=dtype) for x in (r, w, k * key_scale, v, a, b)]
    if with_state:
        s0 = torch.randn(B if N is None else N, H, K, V, generator=g, dtype=torch.float64)
        xs.append(s0.to(device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32))
    return [x.requires_grad_() for x in xs] if requires_grad else xs


# --------------------------------------------------------------------------- checking a rung
def _cpu64(x):
    return None if x is None else x.detach().double().cpu()


def naive64(r, w, k, v, a, b, initial_state=None, cu_seqlens=None, **kw):
    """``naive`` on float64 CPU copies of the inputs (and of ``cu_seqlens``): the answer every
    kernel is checked against. Returns ``(o, final_state | None)`` in float64 on the CPU."""
    return naive(*map(_cpu64, (r, w, k, v, a, b)), initial_state=_cpu64(initial_state),
                 cu_seqlens=None if cu_seqlens is None else cu_seqlens.cpu(), **kw)


def forward_check(impl, name, shapes, device=None, tol=1e-4):
    """Check ``impl``'s ``(o, final_state)`` against ``naive64`` on seeded inputs of each shape
    ``(B, T, H, K, V)`` (keys scaled by 1/√K, log decay in (−1, 0), scale 0.5, an initial state),
    then on a packed batch of three sequences of lengths 1, 17 and 22 (``cu_seqlens``). Prints
    one ``check`` line per case at tolerance ``tol``."""
    def draw(B, T, H, K, V, seed, N=None):
        return random_inputs(B, T, H, K, V, seed=seed, decay=1.0, key_scale=K ** -0.5, with_state=True, N=N,
                             device=device)

    for shape in shapes:
        *xs, s0 = draw(*shape, seed=sum(shape))
        check(f"{name} vs naive {tuple(shape)}", impl(*xs, scale=0.5, initial_state=s0, output_final_state=True),
              naive64(*xs, s0, scale=0.5, output_final_state=True), tol)
    *xs, s0 = draw(1, 40, 2, 16, 16, seed=1, N=3)
    cu = torch.tensor([0, 1, 18, 40], device=device)
    check(f"{name} varlen [1, 17, 22] vs naive", impl(*xs, initial_state=s0, output_final_state=True, cu_seqlens=cu),
          naive64(*xs, s0, output_final_state=True, cu_seqlens=cu), tol)

def grad_check(impl, xs, name, scale=0.7, cu_seqlens=None, tol=1e-4, seed=8, **kw) -> float:
    """Check the gradients of ``impl`` (a rung with the contract's signature) with respect to all
    seven tensor inputs ``xs = [r, w, k, v, a, b, initial_state]`` against autograd through
    ``naive`` on float64 CPU copies. Seeded upstream gradients reach both outputs, ``o`` and the final state; ``kw``
    goes to ``impl`` only (e.g. ``chunk_size``). Prints one ``check`` line at tolerance ``tol``
    and returns the largest relative error."""
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(*xs[3].shape, generator=gen).to(xs[3].device)
    dST = torch.randn(xs[6].shape, generator=gen).to(xs[6].device)
    x64 = [_cpu64(x).requires_grad_() for x in xs]
    o, S = naive(*x64[:6], scale=scale, initial_state=x64[6], output_final_state=True,
                 cu_seqlens=None if cu_seqlens is None else cu_seqlens.cpu())
    want = torch.autograd.grad((o * do.cpu().double()).sum() + (S * dST.cpu().double()).sum(), x64)
    xk = [x.detach().clone().requires_grad_() for x in xs]
    o, S = impl(*xk[:6], scale=scale, initial_state=xk[6], output_final_state=True, cu_seqlens=cu_seqlens, **kw)
    got = torch.autograd.grad((o * do).sum() + (S * dST).sum(), xk)
    check(f"{name}: grads of r, w, k, v, a, b, initial_state vs autograd(naive)", got, want, tol)
    return max(rel_err(g, w_) for g, w_ in zip(got, want))
