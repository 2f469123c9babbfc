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

import math

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

def _pairwise_decay(w: torch.Tensor) -> torch.Tensor:
    """D[..., i, j, :] = exp(w_{j+1} + … + w_{i-1}) for j < i, and 0 elsewhere.

    w is the log decay of a block of tokens ([..., C, K]). Each exponent is formed as a sum over
    its own interval: row i keeps w_m for m < i, and a running sum from the right end adds
    w_{i-1}, w_{i-2}, …, w_{j+1} — never the difference of two long running sums, which would
    carry the rounding error of the whole prefix into a short interval. All terms are ≤ 0, so every
    entry lies in [0, 1]. The entries with j ≥ i are masked to −inf *before* the exponential, so
    no positive exponent is ever evaluated (an inf there would turn into NaN in the backward pass).
    Costs C²K: for pictures and short checks.
    """
    C = w.shape[-2]
    idx = torch.arange(C, device=w.device)
    # E[..., i, j, :] = Σ_{m > j} w_m [m < i]: the reverse running sum of the masked row, shifted by one
    rows = w[..., None, :, :] * (idx[None, :] < idx[:, None]).to(w.dtype)[:, :, None]       # [..., i, m, K]
    tail = rows.flip(-2).cumsum(-2).flip(-2)                                                 # Σ_{m' ≥ m}
    E = torch.nn.functional.pad(tail[..., 1:, :], (0, 0, 0, 1))                              # Σ_{m' > j}
    below = idx[None, :] < idx[:, None]                                                      # j < i
    return E.masked_fill(~below[:, :, None], float("-inf")).exp()


def attention_matrix(r, k, w, u, scale=1.0):
    """The T×T matrix one WKV-6 head applies to its values when it starts from a zero state.

    r, k, w: [B, T, H, K]; u: [H, K]. Returns A [B, H, T, T] (accumulation dtype) with
    ``o = A v`` per head, where for j < t

        A[t, j] = scale · Σ_κ r_t[κ] k_j[κ] exp(w_{j+1}[κ] + … + w_{t-1}[κ]),   A[t, t] = scale · Σ_κ r_t[κ] u[κ] k_t[κ]

    and A[t, j] = 0 for j > t (causal). Costs T²K: for pictures and short checks, not for training.
    """
    acc = _acc_dtype(r)
    r_, k_, w_ = (x.to(acc).transpose(1, 2) for x in (r, k, w))              # [B, H, T, K]
    A = torch.einsum("bhik,bhjk,bhijk->bhij", r_, k_, _pairwise_decay(w_))
    bonus = (r_ * u.to(acc)[None, :, None, :] * k_).sum(-1)                  # [B, H, T]
    return scale * (A + torch.diag_embed(bonus))


LOG2E = 1.4426950408889634   # the stable form takes its exponentials base 2: e^x = 2^{x·log2(e)}


def _flush_floor(dtype: torch.dtype) -> float:
    """The smallest base-2 exponent the stable form keeps: log2(tiny) / 3 (−42 in float32, −340.7 in float64).

    A product of three kept factors is still a normal float. Subnormal numbers cost x86 CPUs about a
    hundred times more per operation (a matmul slows down ~50×), and a factor below 2^{floor}
    (2·10⁻¹³ in float32) weighs a term far below the rounding of the sum it enters, so it is set to 0.
    """
    return math.log2(torch.finfo(dtype).tiny) / 3


_FLOORS = {dt: _flush_floor(dt) for dt in (torch.float32, torch.float64)}


def _decay(x: torch.Tensor) -> torch.Tensor:
    """2^x for base-2 log decays x ≤ 0, exactly 0 below 2^{floor} (see :func:`_flush_floor`).

    Exponents below the floor become −inf *before* the exponential, whose result is then exactly 0
    (``exp2`` of −inf is as fast as any other; its slow path is for subnormal results only).
    """
    return torch.threshold(x, _FLOORS[x.dtype], -math.inf).exp2_()


def _flush(f: torch.Tensor) -> torch.Tensor:
    """A product of two decay factors, cut back to one kept factor (0 below 2^{floor})."""
    return torch.threshold(f, 2.0 ** _FLOORS[f.dtype], 0.0)


_EDGE_MATRICES: dict = {}


def _edge_sums(x: torch.Tensor, b: int):
    """Exclusive prefix and suffix sums inside blocks of ``b`` rows, and the blocks' totals.

    x: [..., m, K] with m a multiple of b. Returns (ps, t): ps[..., 0, i, :] = Σ x_m over the rows
    m < i of i's block and ps[..., 1, j, :] = Σ x_m over the rows m > j of j's block ([..., 2, m, K]),
    and each block's total t ([..., m/b, K]). One matmul with a constant 0/1 matrix: every entry is
    a sum over its own interval (the zero terms add nothing), never a difference of running sums.
    """
    m = x.shape[-2]
    key = (m, b, x.dtype, x.device)
    if key not in _EDGE_MATRICES:
        i = torch.arange(m)
        same = (i[:, None] // b) == (i[None, :] // b)
        rows = [same & (i[None, :] < i[:, None]), same & (i[None, :] > i[:, None]),
                (i[None, :] // b) == torch.arange(m // b)[:, None]]
        _EDGE_MATRICES[key] = torch.cat(rows).to(device=x.device, dtype=x.dtype)     # [2m + m/b, m]
    E = _EDGE_MATRICES[key] @ x
    return E[..., :2 * m, :].unflatten(-2, (2, m)), E[..., 2 * m:, :]


def _block_sizes(C: int, L: int) -> list[int]:
    """The nested block sizes of the stable form: C, then L, L/f, L/f², … with f = C/L, ending at 1.

    (64, 16) gives [64, 16, 4, 1]. If L does not divide C, or L ≥ C, the chunk goes straight to
    single tokens ([C, 1]); a size that f does not divide goes to 1 next ((48, 16): [48, 16, 1]).
    """
    sizes = [C]
    if 1 < L < C and C % L == 0:
        f = C // L
        while L > 1 and sizes[-1] % L == 0:
            sizes.append(L)
            if L % f:
                break
            L //= f
    return sizes if sizes[-1] == 1 else sizes + [1]


def _lower_blocks(A, q, kt, tot):
    """Write the scores of every sub-block pair J < I of a block into A.

    A: a view [..., NS, L, NS, L] of the score matrix (query sub-block, row, key sub-block, column).
    q [..., NS, L, K]: queries decayed from the start of their sub-block, r_i ⊙ 2^{p_i}.
    kt [..., NS, L, K]: keys decayed to the end of their sub-block, k_j ⊙ 2^{s_j}.
    tot [..., NS, K]: each sub-block's total log decay. All log decays here are base 2 (w · log2 e).

    Pair (I, J) needs the decay across the sub-blocks strictly between them, gap = Σ_{J<M<I} tot_M,
    so the block is q_I (kt_J ⊙ 2^{gap})ᵀ. Taken by lag I − J, and the gap grows one total at a time.
    Each lag is one matmul of all its query rows by all its key rows, of which the diagonal blocks
    are kept (small matmuls are slow on a CPU, so the extra products are cheaper than a batch of
    L × L ones); single-token sub-blocks take one elementwise product instead.
    """
    NS, L = q.shape[-3], q.shape[-2]
    gap = None
    for lag in range(1, NS):
        keys = kt[..., :NS - lag, :, :]                                  # key sub-blocks J = 0 … NS−1−lag
        if lag > 1:                                                      # gap_J = tot_{J+1} + … + tot_{J+lag−1}
            nxt = tot[..., lag - 1:NS - 1, :]
            gap = nxt if gap is None else gap[..., :NS - lag, :] + nxt
            keys = keys * _decay(gap)[..., None, :]
        if L == 1:
            s = (q[..., lag:, 0, :] * keys[..., 0, :]).sum(-1)[..., None, None].movedim(-3, -1)
        else:
            s = q[..., lag:, :, :].flatten(-3, -2) @ keys.flatten(-3, -2).transpose(-1, -2)
            s = s.unflatten(-1, (NS - lag, L)).unflatten(-3, (NS - lag, L)).diagonal(0, -4, -2)
        A.diagonal(-lag, -4, -2).copy_(s)                                # [..., L, L, NS−lag]


def _chunk_intra_stable(r, k, w, u, sizes):
    """The stable intra-chunk matrix and the per-token decays the chunk's edges need.

    r, k, w: [B, H, n, C, K] (chunks along dim 2), u: [H, K], sizes from :func:`_block_sizes`.
    Returns (A, q_in, k_out, total): A [B, H, n, C, C] with A[i, j] = Σ_κ r_iκ k_jκ e^{w_{j+1}+…+w_{i−1}}
    for j < i and the bonus on the diagonal; q_in = r ⊙ e^{c_{i−1}} (decayed from the chunk's start)
    and k_out = k ⊙ e^{w_{j+1}+…+w_{C−1}} (decayed to its end), [B, H, n, C, K]; the chunk's log
    decay ``total`` [B, H, n, K] comes back in base 2 (total · log2 e).
    """
    lead, C, K = r.shape[:3], r.shape[3], r.shape[4]
    A = r.new_zeros(*lead, C, C)
    tot = w * LOG2E                                                     # base-2 log decays from here on
    q, kt = r.view(*lead, C, 1, K), k.view(*lead, C, 1, K)              # single tokens: factors 1
    fq = fk = None                                                      # e^{p}, e^{s} of the current sub-blocks
    L = 1
    for bb, sub in reversed(list(zip(sizes[:-1], sizes[1:]))):          # finest level first: (4, 1), (16, 4), (64, 16)
        if sub > 1:
            # sub-blocks of `sub` tokens, each made of sub/L blocks of the previous level (tot: their
            # totals); the 0/1 matmul takes one bb-block of this level at a time
            ps, tot = _edge_sums(tot.reshape(*lead, C // bb, bb // L, K), sub // L)
            tot = tot.reshape(*lead, C // sub, K)
            f = _decay(ps)                                               # 2^{p}, 2^{s}: [..., 2, bb/L, K]
            fq_new = f[..., 0, :, :].reshape(*lead, C // sub, sub // L, 1, K)
            fk_new = f[..., 1, :, :].reshape(*lead, C // sub, sub // L, 1, K)
            if fq is None:                                               # previous level: single tokens
                fq, fk = fq_new, fk_new
            else:                                                        # 2^{P + p} = 2^{P} · 2^{p}, cut back
                fq = _flush(fq.view(*lead, C // sub, sub // L, L, K) * fq_new)
                fk = _flush(fk.view(*lead, C // sub, sub // L, L, K) * fk_new)
            fq, fk = fq.reshape(*lead, C // sub, sub, K), fk.reshape(*lead, C // sub, sub, K)
            q, kt, L = r.view(fq.shape) * fq, k.view(fk.shape) * fk, sub
        nb, NS = C // bb, bb // sub
        blocks = A.view(*lead, nb, bb, nb, bb).diagonal(0, -4, -2).movedim(-1, -3)  # diagonal bb-blocks
        _lower_blocks(blocks.unflatten(-1, (NS, sub)).unflatten(-3, (NS, sub)),
                      q.view(*lead, nb, NS, sub, K), kt.view(*lead, nb, NS, sub, K), tot.reshape(*lead, nb, NS, K))
    # the chunk's edges: the top sub-blocks' factors times the decay across the sub-blocks before / after
    ps, total = _edge_sums(tot.reshape(*lead, C // L, K), C // L)
    f = _decay(ps)[..., None, :]                                         # [..., 2, C/L, 1, K]
    q_in = (q.view(*lead, C // L, L, K) * f[..., 0, :, :, :]).view(*lead, C, K)
    k_out = (kt.view(*lead, C // L, L, K) * f[..., 1, :, :, :]).view(*lead, C, K)
    A.diagonal(0, -2, -1).copy_(((r * k) @ u[:, None, :, None]).squeeze(-1))   # bonus: r_iᵀ diag(u) k_i
    return A, q_in, k_out, total[..., 0, :]


def _chunk_intra_textbook(r, k, w, u):
    """The GLA-style form through e^{−c_j} (one matmul, overflows under strong decay); same returns."""
    c = w.cumsum(-2)                       # inclusive cumulative log decay inside each chunk, ≤ 0
    c_last = c[..., -1:, :]
    C = r.shape[-2]
    below = torch.ones(C, C, dtype=torch.bool, device=r.device).tril(-1)
    # e^{c_i − w_i − c_j} = e^{c_i − w_i} · e^{−c_j}: e^{−c_j} overflows float32 once −c_j > 88.7
    A = ((r * torch.exp(c - w)) @ (k * torch.exp(-c)).transpose(-1, -2)) * below
    A = A + torch.diag_embed((r * u[None, :, None, None, :] * k).sum(-1))
    k_out = k * torch.exp(-c) * torch.exp(c_last)                    # e^{c_last − c_j}, via 1/b_j
    return A, r * torch.exp(c - w), k_out, c_last[..., 0, :]


# The stable form streams a dozen tensors of the input's size through memory; in segments of about
# this many elements per tensor (1 MiB of float32) they stay in a CPU core's cache (measured on 2
# cores: segments of 2^18 beat both 2^17 and 2^20 by 10–40 %).
_SEGMENT_ELEMENTS = 1 << 18


def _chunked_one(r, k, v, w, u, S0, scale, C, L, stable):
    """Chunked forward for [B, T, H, ·] tensors already in the accumulation dtype; S0 [B, H, K, V].

    The stable form runs over segments of whole chunks, a few hundred thousand elements each, the
    state passing from one segment to the next exactly as from chunk to chunk.
    """
    B, T, H, K = r.shape
    V = v.shape[-1]
    n = -(-T // C)
    seg = max(1, _SEGMENT_ELEMENTS // (B * H * max(K, V) * C)) * C if stable else n * C
    o = r.new_empty(B, n, C, H, V)                     # the output, chunk by chunk
    S = S0
    for s in range(0, T, seg):
        o_seg, S = _chunked_segment(r[:, s:s + seg], k[:, s:s + seg], v[:, s:s + seg], w[:, s:s + seg],
                                    u, S, scale, C, L, stable)
        o[:, s // C:s // C + o_seg.shape[2]] = o_seg.permute(0, 2, 3, 1, 4)     # [B, H, n, C, V] -> [B, n, C, H, V]
    return o.view(B, n * C, H, V)[:, :T], S


def _chunked_segment(r, k, v, w, u, S0, scale, C, L, stable):
    """The chunked form over one stretch of tokens: [B, T, H, ·] in, (o [B, H, n, C, V], final state) out."""
    B, T, H, K = r.shape
    n = -(-T // C)
    pad = n * C - T
    if pad:
        # padded tokens have k = v = r = 0 and w = 0 (decay factor 1): they change neither o nor S
        r, k, v, w = (torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)) for x in (r, k, v, w))
    if scale != 1.0:
        r = r * scale                      # scale multiplies every read-out and no state update
    # [B, T, H, ·] -> [B, H, n, C, ·]: one row of chunks per head, contiguous for the matmuls
    r, k, v, w = (x.reshape(B, n, C, H, x.shape[-1]).permute(0, 3, 1, 2, 4).contiguous() for x in (r, k, v, w))
    if stable:
        A, q_in, k_out, total = _chunk_intra_stable(r, k, w, u, _block_sizes(C, L))
        decay = _decay(total)[..., None]                                  # [B, H, n, K, 1]
    else:
        A, q_in, k_out, total = _chunk_intra_textbook(r, k, w, u)
        decay = torch.exp(total)[..., None]
    o = A @ v                                                             # intra-chunk and bonus
    dS = k_out.transpose(-1, -2) @ v                                      # what each chunk adds to S
    # the only sequential part: n hand-offs S ← e^{total} S + ΔS (no in-place writes, for autograd)
    S, starts = S0, []
    for i in range(n):
        starts.append(S)
        S = torch.addcmul(dS[:, :, i], decay[:, :, i], S)
    return o + q_in @ torch.stack(starts, 2), S                           # plus the inter-chunk read-out


def chunked(r, k, v, w, u, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None,
            chunk_size=64, sub_chunk_size=16, stable=True):
    """Chunkwise-parallel RWKV-6: exact (up to rounding) equal of :func:`naive`.

    Same shapes and returns as :func:`naive`, plus ``chunk_size`` C and ``sub_chunk_size`` L
    (positive ints; T need not be a multiple of C). Per chunk, with c_{i−1} = w_0 + … + w_{i−1}
    the log decay from the chunk's start to just before token i (per channel) and S the state
    at the chunk's start::

        o_i = scale · [ (r_i ⊙ e^{c_{i−1}})ᵀ S                                       inter-chunk
                        + Σ_{j<i} (Σ_κ r_iκ k_jκ e^{w_{j+1,κ} + … + w_{i−1,κ}}) v_j   intra-chunk
                        + (r_iᵀ diag(u) k_i) v_i ]                                    bonus
        S ← diag(e^{c_{C−1}}) S + (k ⊙ e^{w_{j+1} + … + w_{C−1}})ᵀ V                  hand-off

    ``stable=True`` (default): the chunk is cut into sub-chunks of L tokens. For a query i in
    sub-chunk I and a key j in an earlier sub-chunk J the intra exponent splits at I's first token:

        w_{j+1} + … + w_{i−1} = p_i + gap_JI + s_j,    p_i: from I's start to i−1,
                                                       s_j: from j+1 to J's end,
                                                       gap_JI: the sub-chunks strictly between,

    three sums of log decays, so the (I, J) block is one matmul of (r ⊙ e^{p}) by (k ⊙ e^{s+gap})
    with every factor in [0, 1]. The diagonal L×L blocks are split the same way, by the factor C/L
    (64 → 16 → 4 → 1, see :func:`_block_sizes`); at single tokens p = s = 0 and the exponent is the
    pairwise interval sum itself. Every exponent is ≤ 0 and formed over its own interval (a 0/1
    matmul or a sum of whole sub-chunk totals, never a difference of running sums), so nothing
    overflows for any w ≤ 0 and a decay spike (w = −1e4) costs no accuracy elsewhere. Exponentials
    are taken base 2, and factors below 2^{log2(tiny)/3} ≈ 2·10⁻¹³ (float32) are set to exactly 0
    so that no product of factors is a subnormal number (:func:`_flush_floor`). Long inputs run in
    segments of whole chunks (about 2^18 elements each, to stay in cache), the state passing from
    segment to segment exactly as from chunk to chunk.

    ``stable=False`` keeps the textbook factorisation e^{c_{i−1} − c_j} = e^{c_{i−1}} · e^{−c_j}
    (one matmul per chunk, no sub-chunks) that overflows in float32 once C·|w| > 88.7; it is here
    to be shown failing, not to be used.
    """
    B, T, H, K, V, N = _check(r, k, v, w, u, initial_state, cu_seqlens, scale)
    chunk_size = validate.positive_int("chunk_size", chunk_size)
    sub_chunk_size = validate.positive_int("sub_chunk_size", sub_chunk_size)
    acc = _acc_dtype(r)
    r_, k_, v_, w_, u_ = (x.to(acc) for x in (r, k, v, w, u))
    S0 = (initial_state.to(acc) if initial_state is not None
          else torch.zeros(N, H, K, V, dtype=acc, device=r.device))
    args = (scale, chunk_size, sub_chunk_size, stable)
    if cu_seqlens is None:
        o, S = _chunked_one(r_, k_, v_, w_, u_, S0, *args)
    else:
        # chunks never straddle two sequences: run each packed sequence on its own
        outs, finals = [], []
        for n, (_, s, e) in enumerate(_segments(B, T, cu_seqlens)):
            o_n, S_n = _chunked_one(r_[:, s:e], k_[:, s:e], v_[:, s:e], w_[:, s:e], u_, S0[n:n + 1], *args)
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


def random_inputs(B, T, H, K, V, seed=0, dtype=torch.float32, decay=1.0, with_state=False, N=None, device=None,
                  requires_grad=False):
    """Seeded ``(r, k, v, w, u)`` in the book's layout: the one input generator of chapters, tests
    and exercises.

    r, k, w: [B, T, H, K]; v: [B, T, H, V]; u: [H, K]; all standard normal except the log decay
    ``w = −decay · exp(N(0, 1)) ≤ 0``, which spreads memory lengths from a fraction of a token to
    tens of tokens (``decay`` scales them all). Drawn in float32, then cast to ``dtype``.
    ``with_state=True`` appends an ``initial_state`` [N, H, K, V] (N = B unless given), standard
    normal, float32 (float64 for float64 inputs), drawn after the others from the same generator.
    ``device`` moves everything there; ``requires_grad`` makes every tensor a leaf that needs grad.
    """
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, T, H, K, generator=g)
    k = torch.randn(B, T, H, K, generator=g)
    v = torch.randn(B, T, H, V, generator=g)
    w = -decay * torch.exp(torch.randn(B, T, H, K, generator=g))
    u = torch.randn(H, K, generator=g)
    xs = [x.to(device=device, dtype=dtype) for x in (r, k, v, w, u)]
    if with_state:
        s0 = torch.randn(B if N is None else N, H, K, V, generator=g)
        xs.append(s0.to(device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32))
    return [x.requires_grad_() for x in xs] if requires_grad else xs
