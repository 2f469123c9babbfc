"""RWKV-6 on tensor cores: chunks of 64 tokens, sub-chunks of 16, four kinds of launch.

Same contract as :func:`rwkvlab.wkv6.triton_recurrent`; reached as ``triton_chunked(...)`` (its
default schedule, ``"subchunk"``). With ``q = scale · r`` and, inside a chunk, the state ``S`` at
the chunk's start, one token's output splits into three parts (chapter 07 derives them):

    o_i = (q_i ⊙ e^{P_i}) S                                   inter: the chunk-start state
        + Σ_{j<i} Σ_κ q_iκ k_jκ e^{Σ_{m=j+1}^{i-1} w_mκ} v_j     intra: strictly earlier tokens
        + (q_iᵀ diag(u) k_i) v_i                                 bonus: the token itself
    S ← diag(e^{W}) S + Σ_j (k_j ⊙ e^{Q_j}) v_jᵀ                 hand-off to the next chunk

``P_i`` sums w from the chunk's start to i−1, ``Q_j`` from j+1 to the chunk's end, ``W`` the
whole chunk. The chunk is cut into sub-chunks of ``BC = 16``. For a key j in sub-chunk J and a
query i in a later sub-chunk I the intra exponent splits at I's first token into two parts that
are both ≤ 0:

    Σ_{m=j+1}^{i-1} w_m = [p_i: from I's start to i−1] + [s_j: from j+1 to J's end + the totals of
                                                         the sub-chunks strictly between J and I]

so that block is one ``tl.dot`` of ``q ⊙ e^{p}`` with ``k ⊙ e^{s+gap}``. The 16×16 blocks on the
diagonal are split once more, into quarters of ``QB = 4`` tokens, the same way (three small dots);
only the pairs inside one quarter are built elementwise, from a running sum of w.
Every exponent the kernels evaluate is ≤ 0 (no overflow for any w ≤ 0) and is a sum over its
own interval (a cumulative sum of shifted w, never the difference of two running sums), so a
decay spike of w = −1e4 costs no float32 accuracy. Exponents are taken base 2 (``exp2``) on
``w · log2(e)``.

Who owns what:

- ``wkv6_fwd_prep_kernel`` (prep): one light program per (sub-chunk, head) writes what needs a
  decay: ``q ⊙ e^{p}`` and ``k ⊙ e^{s}`` (in the input dtype), the sub-chunk's own 16×16 weights
  (bonus on the diagonal) and its total decay ``e^{W_I}``; it also checks the values of r, k, w, u.
- ``wkv6_fwd_h_kernel`` (state pass): one program per (BK key rows, BV value columns, sequence·
  head) walks the chunks in order doing only the hand-off (one ``tl.dot`` per chunk; the decay is
  diagonal, so key rows are independent) and writes each chunk-start state to ``hs``; it checks
  v and the initial state (through the final state).
- ``wkv6_fwd_o_kernel`` (output): one program per (chunk, V-block, head), all independent: reads
  its chunk's ``hs`` and the prep's factors, carries the state through the sub-chunks with only
  loads and products, writes ``o``.
- backward: ``wkv6_bwd_dh_kernel`` (the state pass in reverse time for dS, the gradient of each
  chunk-end state; the forward's ``hs`` and prep factors are kept for it), then three kernels of
  one program per (chunk, V-block, head): ``wkv6_bwd_dq_kernel`` (dq, du),
  ``wkv6_bwd_dv_kernel`` (dv: the output kernel run backwards on the prep's factors, loads and
  products only) and ``wkv6_bwd_dkw_kernel`` (dk, dw); the dq and dk kernels build their decays
  themselves. The ``dw`` uses the identity of the recurrent kernel
  (``dw_m = Σ_{i>m} q_i ⊙ dq'_i − Σ_{j≥m} k_j ⊙ dk'_j + rowsum(dS_end ⊙ S_end)`` inside a chunk,
  primes meaning the gradients without the bonus), so no per-token state is ever needed.

With 16-bit inputs the matmuls take 16-bit operands and accumulate in float32 (the intra
weights q̂k̂ᵀ in TF32, as FLA does); states and every exponent stay float32. float32 inputs use
exact float32 dots throughout (``input_precision="ieee"``), as does the interpreter.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import device
from . import kernels_recurrent as _rec
from ..kernels_common import FlagRead, chunk_of, chunk_table, cu_arg, dot16, first_chunk, seq_bounds

__all__ = ["fwd", "bwd", "triton_subchunk"]

LOG2E = tl.constexpr(1.4426950408889634)
# launch settings per kernel (num_warps, num_stages[, maxnreg]); benchmarks/NOTES.md records how they were chosen
# (v4 on an H200, benchmarks/results/h200_wkv6_v4_2026-12-01.txt: the prep kernel at 1 warp took
# 0.31 ms against 0.73 at 4; the state pass capped at 128 registers and the output kernel at 3
# stages were within 1 % of the next setting)
TUNE = {"fwd_prep": (1, 1), "fwd_h": (4, 2, 128), "fwd_o": (4, 3), "bwd_dh": (4, 2), "bwd_dq": (4, 1), "bwd_dv": (4, 3),
        "bwd_dkw": (4, 1), "quarters": "gather"}
BC = 16  # sub-chunk length: the smallest tile side tl.dot accepts
QB = 4  # quarter: the diagonal 16×16 blocks are split once more, into four quarters of 4 tokens


# ---------------------------------------------------------------------------------------------
# small pieces shared by every launch
# ---------------------------------------------------------------------------------------------
@triton.jit
def _rows(x, t0, eos, i_h, H: tl.constexpr, D: tl.constexpr, o_d, m_d, ROWS: tl.constexpr):
    """The [ROWS, D-tile] slab of x[t0 : t0 + ROWS, i_h, o_d] (float32; rows past eos are 0)."""
    o_t = t0 + tl.arange(0, ROWS)
    p = (o_t[:, None] * H + i_h) * D + o_d[None, :]
    return tl.load(x + p, mask=(o_t < eos)[:, None] & m_d[None, :], other=0.).to(tl.float32)


@triton.jit
def _decays(w, t0, eos, i_h, H: tl.constexpr, K: tl.constexpr, o_k, m_k, ROWS: tl.constexpr):
    """Log2 decays of the block w[t0 : t0 + ROWS]: (p, s, total), each a sum over its own interval.

    p_i = Σ_{t0 ≤ m < i} w_m (exclusive prefix), s_j = Σ_{j < m < t0+ROWS} w_m (exclusive suffix),
    total = Σ_m w_m. p and s come from cumulative sums of w shifted by one row, so no entry is the
    difference of two long sums.
    """
    o_t = t0 + tl.arange(0, ROWS)
    m_t = o_t < eos
    p_w = (o_t[:, None] * H + i_h) * K + o_k[None, :]
    b_w = tl.load(w + p_w, mask=m_t[:, None] & m_k[None, :], other=0.).to(tl.float32) * LOG2E
    m_dn = (o_t > t0) & m_t                       # row i holds w_{i-1}
    b_wd = tl.load(w + p_w - H * K, mask=m_dn[:, None] & m_k[None, :], other=0.).to(tl.float32) * LOG2E
    m_up = (o_t + 1 < t0 + ROWS) & (o_t + 1 < eos)  # row j holds w_{j+1}
    b_wu = tl.load(w + p_w + H * K, mask=m_up[:, None] & m_k[None, :], other=0.).to(tl.float32) * LOG2E
    return tl.cumsum(b_wd, axis=0), tl.cumsum(b_wu, axis=0, reverse=True), tl.sum(b_w, axis=0)


@triton.jit
def _mm(a, b, v, DOT16: tl.constexpr):
    """a @ b with float32 accumulation: 16-bit operands (v's dtype) on tensor cores, or exact float32."""
    if DOT16:
        return tl.dot(a.to(v.dtype.element_ty), b.to(v.dtype.element_ty))
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _mm_tf32(a, b, DOT16: tl.constexpr):
    """a @ b for the intra weights: TF32 when the inputs are 16-bit, exact float32 otherwise."""
    if DOT16:
        return tl.dot(a, b, input_precision="tf32")
    return tl.dot(a, b, input_precision="ieee")


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _bad(x):
    """1 where x is NaN or ±Inf, else 0: x − x is exactly 0 for every finite x, NaN otherwise."""
    return tl.where(x - x != 0, 1, 0)


@triton.jit
def _any(flags):
    """Largest entry of an integer tile (1 if any flag is set)."""
    return tl.max(tl.max(flags, axis=1), axis=0)


@triton.jit
def wkv6_fwd_h_kernel(k, v, w, h0, ht, hs, flags, cu_seqlens, chunk_offsets, T,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr,
                      VARLEN: tl.constexpr, DOT16: tl.constexpr, CHECK: tl.constexpr):
    """State pass: S ← diag(e^{W}) S + (k ⊙ e^{Q})ᵀ V per chunk; every chunk-start S to hs.

    With CHECK, one test of the final state checks the values this pass alone reads, v and
    initial_state: a NaN or Inf there reaches the state by itself (0 · Inf is NaN too), as does a
    state that overflows float32. flags[0] becomes 1 if anything is off, and the caller then finds
    out what (on that error path only). r, k, w and u are checked by the prep kernel.
    """
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = seq_bounds(cu_seqlens, i_n, T, VARLEN)
    boc = first_chunk(chunk_offsets, i_n, T, BT, VARLEN)
    o_k, o_v = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = o_k[:, None] * V + o_v[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_nh.to(tl.int64) * K * V + p_kv, mask=m_kv, other=0.)
    for t0 in range(bos, eos, BT):
        i_c = boc + (t0 - bos) // BT
        tl.store(hs + (i_c * H + i_h) * K * V + p_kv, b_h, mask=m_kv)
        b_k = _rows(k, t0, eos, i_h, H, K, o_k, m_k, BT)
        b_v = _rows(v, t0, eos, i_h, H, V, o_v, m_v, BT)
        b_p, b_s, b_tot = _decays(w, t0, eos, i_h, H, K, o_k, m_k, BT)
        b_h = b_h * tl.exp2(b_tot)[:, None] + _mm(tl.trans(b_k * tl.exp2(b_s)), b_v, v, DOT16)
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * K * V + p_kv, b_h, mask=m_kv)
    if CHECK:
        bad = _any(_bad(b_h))
        tl.atomic_max(flags, bad, mask=bad > 0)


# ---------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------
@triton.jit
def wkv6_bwd_dh_kernel(r, w, do, dht, dh0, dhs, cu_seqlens, chunk_offsets, scale, T,
                       H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
                       VARLEN: tl.constexpr, DOT16: tl.constexpr):
    """Reverse state pass: dS ← diag(e^{W}) dS + (q ⊙ e^{P})ᵀ dO; each chunk-END dS to dhs."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = seq_bounds(cu_seqlens, i_n, T, VARLEN)
    boc = first_chunk(chunk_offsets, i_n, T, BT, VARLEN)
    o_k, o_v = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = o_k[:, None] * V + o_v[None, :]

    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(dht + i_nh.to(tl.int64) * K * V + p_kv, mask=m_kv, other=0.)
    n_chunks = tl.cdiv(eos - bos, BT)
    for i in range(0, n_chunks):
        i_t = n_chunks - 1 - i
        t0 = bos + i_t * BT
        tl.store(dhs + ((boc + i_t) * H + i_h) * K * V + p_kv, b_dh, mask=m_kv)
        b_q = _rows(r, t0, eos, i_h, H, K, o_k, m_k, BT) * scale
        b_do = _rows(do, t0, eos, i_h, H, V, o_v, m_v, BT)
        b_p, b_s, b_tot = _decays(w, t0, eos, i_h, H, K, o_k, m_k, BT)
        b_dh = b_dh * tl.exp2(b_tot)[:, None] + _mm(tl.trans(b_q * tl.exp2(b_p)), b_do, do, DOT16)
    if STORE_DH0:
        tl.store(dh0 + i_nh.to(tl.int64) * K * V + p_kv, b_dh, mask=m_kv)


# ---------------------------------------------------------------------------------------------
# the diagonal 16×16 block, split once more into quarters of QB = 4 tokens
# ---------------------------------------------------------------------------------------------
@triton.jit
def _gather(x, t, m, i_h, H: tl.constexpr, D: tl.constexpr, o_d, m_d):
    """Row t[i] of x for every i (float32; rows where m is False are 0): [len(t), D-tile]."""
    return tl.load(x + (t[:, None] * H + i_h) * D + o_d[None, :], mask=m[:, None] & m_d[None, :],
                   other=0.).to(tl.float32)


@triton.jit
def _quarter_decays(w, s0, eos, i_h, H: tl.constexpr, K: tl.constexpr, o_k, m_k,
                    BC: tl.constexpr, QB: tl.constexpr, QSCAN: tl.constexpr = False):
    """Log2 decays of the sub-chunk w[s0 : s0 + BC], built from quarters of QB tokens.

    Returns (pq, sq, qt1, qt2, p, s, total): pq_i sums w from i's quarter start to i − 1, sq_j
    from j + 1 to j's quarter end (each at most QB − 1 terms, read as shifted rows), qtL is
    quarter L's total; p_i sums w from the sub-chunk's start to i − 1, s_j from j + 1 to its end,
    total all of it. Every one is pq or sq plus whole quarter totals: a sum of a few non-positive
    terms, never a difference. pq and sq come from QB − 1 shifted reads each, or with QSCAN from
    one shifted read each and a cumulative sum inside every quarter (the same sums, in another
    order; ``TUNE["quarters"]``).
    """
    o_i = tl.arange(0, BC)
    t = s0 + o_i
    r4 = o_i % QB
    m_t = t < eos
    if QSCAN:   # row i holds w_{i-1} (w_{i+1}) inside its quarter; sum forwards (backwards) per quarter
        b_wd = _gather(w, t - 1, m_t & (r4 >= 1), i_h, H, K, o_k, m_k)
        b_wu = _gather(w, t + 1, (t + 1 < eos) & (r4 + 1 < QB), i_h, H, K, o_k, m_k)
        shape4: tl.constexpr = [BC // QB, QB, o_k.shape[0]]
        b_pq = tl.reshape(tl.cumsum(tl.reshape(b_wd, shape4), axis=1), [BC, o_k.shape[0]])
        b_sq = tl.reshape(tl.cumsum(tl.reshape(b_wu, shape4), axis=1, reverse=True), [BC, o_k.shape[0]])
    else:
        b_pq = tl.zeros([BC, o_k.shape[0]], dtype=tl.float32)
        b_sq = tl.zeros([BC, o_k.shape[0]], dtype=tl.float32)
        for d in tl.static_range(1, QB):
            b_pq += _gather(w, t - d, m_t & (r4 >= d), i_h, H, K, o_k, m_k)
            b_sq += _gather(w, t + d, (t + d < eos) & (r4 + d < QB), i_h, H, K, o_k, m_k)
    b_pq, b_sq = b_pq * LOG2E, b_sq * LOG2E
    b_w = _gather(w, t, m_t, i_h, H, K, o_k, m_k) * LOG2E
    q4 = (o_i // QB)[:, None]
    qt0 = tl.sum(tl.where(q4 == 0, b_w, 0.), axis=0)
    qt1 = tl.sum(tl.where(q4 == 1, b_w, 0.), axis=0)
    qt2 = tl.sum(tl.where(q4 == 2, b_w, 0.), axis=0)
    qt3 = tl.sum(tl.where(q4 == 3, b_w, 0.), axis=0)
    b_p = b_pq + tl.where(q4 > 0, qt0[None, :], 0.) + tl.where(q4 > 1, qt1[None, :], 0.) \
        + tl.where(q4 > 2, qt2[None, :], 0.)
    b_s = b_sq + tl.where(q4 < 3, qt3[None, :], 0.) + tl.where(q4 < 2, qt2[None, :], 0.) \
        + tl.where(q4 < 1, qt1[None, :], 0.)
    return b_pq, b_sq, qt1, qt2, b_p, b_s, qt0 + qt1 + qt2 + qt3


@triton.jit
def _key_exp(b_sq, qt1, qt2, R: tl.constexpr, BC: tl.constexpr, QB: tl.constexpr):
    """Log2 decay from key j + 1 to the start of query quarter R (for keys in quarters < R)."""
    q4 = (tl.arange(0, BC) // QB)[:, None]
    b_e = b_sq
    if R > 1:
        b_e += tl.where(q4 < 1, qt1[None, :], 0.)
    if R > 2:
        b_e += tl.where(q4 < 2, qt2[None, :], 0.)
    return tl.where(q4 < R, b_e, float("-inf"))


@triton.jit
def _diag_weights(k, w, b_q, b_k, b_u, b_pq, b_sq, qt1, qt2, s0, eos, i_h, H: tl.constexpr, K: tl.constexpr,
                  o_k, m_k, BC: tl.constexpr, QB: tl.constexpr, DOT16: tl.constexpr):
    """The sub-chunk's own 16×16 weights A_ij = Σ_κ q_iκ k_jκ e^{w_{j+1}+…+w_{i-1}} (j < i), u-bonus on i = j.

    Keys in an earlier quarter than the query: three tl.dots, one per query quarter R, factored at
    R's start (q ⊙ e^{pq}, k ⊙ e^{sq + whole quarters between}). Keys in the query's own quarter:
    QB − 1 steps, each reading for every row i the key j = (i's quarter start) + jj, with the decay
    e^{w_{j+1}+…+w_{i-1}} grown one factor per step from the right.
    """
    o_i = tl.arange(0, BC)
    q4, r4 = o_i // QB, o_i % QB
    b_qe = b_q * tl.exp2(b_pq)
    b_A = tl.zeros([BC, BC], dtype=tl.float32)
    for R in tl.static_range(1, BC // QB):
        b_kR = b_k * tl.exp2(_key_exp(b_sq, qt1, qt2, R, BC, QB))
        b_A += _mm_tf32(tl.where(q4[:, None] == R, b_qe, 0.), tl.trans(b_kR), DOT16)
    b_L = tl.zeros([BC, o_k.shape[0]], dtype=tl.float32)      # Σ w_{j+1..i-1} for the current j
    for step in tl.static_range(1, QB):
        jj = QB - 1 - step
        m_j = r4 > jj
        t_j = s0 + q4 * QB + jj
        b_kj = _gather(k, t_j, m_j & (t_j < eos), i_h, H, K, o_k, m_k)
        b_a = tl.sum(b_q * b_kj * tl.exp2(b_L), axis=1)
        b_A = tl.where((o_i[None, :] == (q4 * QB + jj)[:, None]) & m_j[:, None], b_a[:, None], b_A)
        b_L += tl.where(m_j[:, None], _gather(w, t_j, m_j & (t_j < eos), i_h, H, K, o_k, m_k) * LOG2E, 0.)
    b_bonus = tl.sum(b_q * b_u[None, :] * b_k, axis=1)
    return tl.where(o_i[None, :] == o_i[:, None], b_bonus[:, None], b_A)


@triton.jit
def wkv6_fwd_prep_kernel(r, k, w, u, qe, ke, A, eW, flags, cu_seqlens, chunk_indices, scale, T,
                         H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                         QB: tl.constexpr, BK: tl.constexpr, VARLEN: tl.constexpr, DOT16: tl.constexpr,
                         CHECK: tl.constexpr, QSCAN: tl.constexpr):
    """Everything of one sub-chunk that needs a decay, written once for the output kernel to load.

    With p, s the exclusive prefix and suffix of w inside the sub-chunk and W its total:
    qe = q ⊙ e^{p} and ke = k ⊙ e^{s} (input dtype, as r), A the sub-chunk's own 16×16 weights,
    bonus on the diagonal (input dtype: the output's tl.dot takes it in that dtype anyway), and
    e^{W} (float32). With CHECK it also checks the values it reads: NaN or Inf in r, k, w, u, and
    w > 0; flags[0] becomes 1 if anything is off.
    """
    i_s, i_h = tl.program_id(0), tl.program_id(1)
    bos, eos, t0 = chunk_of(cu_seqlens, chunk_indices, i_s // (BT // BC), T, BT, VARLEN)
    s0 = t0 + (i_s % (BT // BC)) * BC          # rows past eos (a short last chunk) are masked out
    o_i, o_k = tl.arange(0, BC), tl.arange(0, BK)
    m_k = o_k < K
    o_t = s0 + o_i

    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_r = _rows(r, s0, eos, i_h, H, K, o_k, m_k, BC)
    b_q = b_r * scale
    b_k = _rows(k, s0, eos, i_h, H, K, o_k, m_k, BC)
    b_pq, b_sq, qt1, qt2, b_p, b_s, b_tot = _quarter_decays(w, s0, eos, i_h, H, K, o_k, m_k, BC, QB, QSCAN)
    b_A = _diag_weights(k, w, b_q, b_k, b_u, b_pq, b_sq, qt1, qt2, s0, eos, i_h, H, K, o_k, m_k,
                        BC, QB, DOT16)
    p_k = (o_t[:, None] * H + i_h) * K + o_k[None, :]
    m_tk = (o_t < eos)[:, None] & m_k[None, :]
    tl.store(qe + p_k, (b_q * tl.exp2(b_p)).to(qe.dtype.element_ty), mask=m_tk)
    tl.store(ke + p_k, (b_k * tl.exp2(b_s)).to(ke.dtype.element_ty), mask=m_tk)
    tl.store(A + (i_s.to(tl.int64) * H + i_h) * BC * BC + o_i[:, None] * BC + o_i[None, :],
             b_A.to(A.dtype.element_ty))
    tl.store(eW + (i_s.to(tl.int64) * H + i_h) * K + o_k, tl.exp2(b_tot), mask=m_k)
    if CHECK:  # rows past eos read as 0, which passes
        b_w = _rows(w, s0, eos, i_h, H, K, o_k, m_k, BC)
        b_bad = tl.maximum(tl.maximum(_bad(b_r), _bad(b_k)), tl.maximum(_bad(b_w), tl.where(b_w > 0, 1, 0)))
        bad = tl.maximum(_any(b_bad), tl.max(_bad(b_u), axis=0))
        tl.atomic_max(flags, bad, mask=bad > 0)


@triton.jit
def wkv6_fwd_o_kernel(qe, ke, v, A, eW, o, hs, cu_seqlens, chunk_indices, T,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                      BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      VARLEN: tl.constexpr, DOT16: tl.constexpr):
    """One chunk's output, sub-chunk by sub-chunk, carrying the state across its sub-chunks.

    For sub-chunk I with state S at its start: o_I = (q ⊙ e^{p}) S + A_I V_I, then
    S ← diag(e^{W_I}) S + (k ⊙ e^{s})ᵀ V_I. S starts as the chunk-start state from hs, so the
    chunk-start state and every earlier sub-chunk reach the output through one tl.dot. Every
    decayed factor comes from the prep kernel: this one only loads and multiplies.
    """
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, t0 = chunk_of(cu_seqlens, chunk_indices, i_c, T, BT, VARLEN)
    o_i = tl.arange(0, BC)
    o_k, o_v = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V

    b_h = tl.load(hs + (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
                  mask=m_k[:, None] & m_v[None, :], other=0.)
    for I in range(0, tl.cdiv(tl.minimum(BT, eos - t0), BC)):
        s_i = t0 + I * BC
        p_s = (i_c.to(tl.int64) * (BT // BC) + I) * H + i_h      # this sub-chunk's row of A and eW
        b_qe = _rows(qe, s_i, eos, i_h, H, K, o_k, m_k, BC)
        b_ke = _rows(ke, s_i, eos, i_h, H, K, o_k, m_k, BC)
        b_v = _rows(v, s_i, eos, i_h, H, V, o_v, m_v, BC)
        b_A = tl.load(A + p_s * BC * BC + o_i[:, None] * BC + o_i[None, :]).to(tl.float32)
        b_o = _mm(b_qe, b_h, v, DOT16) + _mm(b_A, b_v, v, DOT16)
        o_t = s_i + o_i
        tl.store(o + (o_t[:, None] * H + i_h) * V + o_v[None, :], b_o.to(o.dtype.element_ty),
                 mask=(o_t < eos)[:, None] & m_v[None, :])
        b_eW = tl.load(eW + p_s * K + o_k, mask=m_k, other=0.)
        b_h = b_h * b_eW[:, None] + _mm(tl.trans(b_ke), b_v, v, DOT16)


@triton.jit
def wkv6_bwd_dq_kernel(r, k, v, w, u, do, hs, dhs, dr, du, xs, acc, cu_seqlens, chunk_indices, scale, T,
                       rows, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                       BC: tl.constexpr, QB: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       VARLEN: tl.constexpr, DOT16: tl.constexpr, QSCAN: tl.constexpr):
    """Gradients, part 1: one chunk's dq and du (this V-block's share), sub-chunks first to last.

    Carrying S, the state at each sub-chunk's start (from hs), through the chunk:
      dq'_I = e^{p} ⊙ dO_I Sᵀ + (the sub-chunk's own block: dA = dO Vᵀ, as in the forward)
    It also leaves what part 2 needs for dw: x = q ⊙ dq' (the float32 scratch xs; the prime marks
    the gradient without the bonus) and rowsum(dS_end ⊙ S_end) of the chunk (acc).
    """
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, t0 = chunk_of(cu_seqlens, chunk_indices, i_c, T, BT, VARLEN)
    o_i = tl.arange(0, BC)
    q4, r4 = o_i // QB, o_i % QB
    o_k, o_v = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    p_part = i_v.to(tl.int64) * rows * H * K  # this V-block's slab of the partial-sum buffers
    n_sub = tl.cdiv(tl.minimum(BT, eos - t0), BC)

    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    p_h = (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    b_h = tl.load(hs + p_h, mask=m_kv, other=0.)     # S at the chunk start
    b_du = tl.zeros([BK], dtype=tl.float32)

    # ---- forward sweep: dq (complete, bonus included) and x = q ⊙ dq' for dw
    for I in range(0, n_sub):
        s_i = t0 + I * BC
        o_t = s_i + o_i
        m_t = o_t < eos
        b_q = _rows(r, s_i, eos, i_h, H, K, o_k, m_k, BC) * scale
        b_k = _rows(k, s_i, eos, i_h, H, K, o_k, m_k, BC)
        b_v = _rows(v, s_i, eos, i_h, H, V, o_v, m_v, BC)
        b_do = _rows(do, s_i, eos, i_h, H, V, o_v, m_v, BC)
        b_pq, b_sq, qt1, qt2, b_p, b_s, b_tot = _quarter_decays(w, s_i, eos, i_h, H, K, o_k, m_k, BC, QB, QSCAN)
        b_dq = _mm(b_do, tl.trans(b_h), v, DOT16) * tl.exp2(b_p)
        # own block, keys in earlier quarters: dq_i += e^{pq_i} Σ_j dA_ij k_j e^{key_exp}
        b_dA = _mm(b_do, tl.trans(b_v), v, DOT16)
        b_dqo = tl.zeros([BC, BK], dtype=tl.float32)
        for R in tl.static_range(1, BC // QB):
            b_kR = b_k * tl.exp2(_key_exp(b_sq, qt1, qt2, R, BC, QB))
            b_dqo += _mm_tf32(tl.where(q4[:, None] == R, b_dA, 0.), b_kR, DOT16)
        b_dq += b_dqo * tl.exp2(b_pq)
        # own block, keys in the query's own quarter
        b_L = tl.zeros([BC, BK], dtype=tl.float32)
        for step in tl.static_range(1, QB):
            jj = QB - 1 - step
            m_j = r4 > jj
            t_j = s_i + q4 * QB + jj
            m_jt = m_j & (t_j < eos)
            b_kj = _gather(k, t_j, m_jt, i_h, H, K, o_k, m_k)
            b_dAj = tl.where(m_jt, tl.sum(tl.where(o_i[None, :] == (q4 * QB + jj)[:, None], b_dA, 0.), axis=1), 0.)
            b_dq += b_dAj[:, None] * b_kj * tl.exp2(b_L)
            b_L += tl.where(m_j[:, None], _gather(w, t_j, m_jt, i_h, H, K, o_k, m_k) * LOG2E, 0.)
        p_k = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        m_tk = m_t[:, None] & m_k[None, :]
        tl.store(xs + p_part + p_k, b_q * b_dq, mask=m_tk)
        b_dAd = tl.sum(tl.where(o_i[None, :] == o_i[:, None], b_dA, 0.), axis=1)   # dA_ii = do_i · v_i
        b_du += tl.sum(b_dAd[:, None] * b_q * b_k, axis=0)
        b_dq += b_dAd[:, None] * b_u[None, :] * b_k                         # the bonus (no decay)
        tl.store(dr + p_part + p_k, (b_dq * scale).to(dr.dtype.element_ty), mask=m_tk)
        b_h = b_h * tl.exp2(b_tot)[:, None] + _mm(tl.trans(b_k * tl.exp2(b_s)), b_v, v, DOT16)
    tl.store(du + ((i_v * tl.num_programs(0) + i_c).to(tl.int64) * H + i_h) * K + o_k, b_du, mask=m_k)

    b_dh = tl.load(dhs + p_h, mask=m_kv, other=0.)   # dS at the chunk end
    tl.store(acc + ((i_v * tl.num_programs(0) + i_c).to(tl.int64) * H + i_h) * K + o_k,
             tl.sum(b_dh * b_h, axis=1), mask=m_k)      # b_h is S at the chunk end now


@triton.jit
def wkv6_bwd_dv_kernel(qe, ke, do, A, eW, dhs, dv, cu_seqlens, chunk_indices, T,
                       H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                       BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       VARLEN: tl.constexpr, DOT16: tl.constexpr):
    """Gradients, part 2: one chunk's dv, sub-chunks last to first, from the forward's prep factors.

    The output kernel run backwards. With dS the gradient of sub-chunk I's END state (the
    chunk's from dhs to begin with):
      dv_I = (k ⊙ e^{s})_I dS + A_Iᵀ dO_I,   then   dS ← diag(e^{W_I}) dS + (q ⊙ e^{p})_Iᵀ dO_I
    A_I is the forward's own 16×16 block with the bonus on its diagonal, so this is all of dv;
    like the output kernel it only loads and multiplies.
    """
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, t0 = chunk_of(cu_seqlens, chunk_indices, i_c, T, BT, VARLEN)
    o_i = tl.arange(0, BC)
    o_k, o_v = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    n_sub = tl.cdiv(tl.minimum(BT, eos - t0), BC)

    b_dh = tl.load(dhs + (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
                   mask=m_k[:, None] & m_v[None, :], other=0.)
    for II in range(0, n_sub):
        I = n_sub - 1 - II
        s_i = t0 + I * BC
        o_t = s_i + o_i
        p_s = (i_c.to(tl.int64) * (BT // BC) + I) * H + i_h      # this sub-chunk's row of A and eW
        b_qe = _rows(qe, s_i, eos, i_h, H, K, o_k, m_k, BC)
        b_ke = _rows(ke, s_i, eos, i_h, H, K, o_k, m_k, BC)
        b_do = _rows(do, s_i, eos, i_h, H, V, o_v, m_v, BC)
        b_A = tl.load(A + p_s * BC * BC + o_i[:, None] * BC + o_i[None, :]).to(tl.float32)
        b_dv = _mm(b_ke, b_dh, do, DOT16) + _mm(tl.trans(b_A), b_do, do, DOT16)
        tl.store(dv + (o_t[:, None] * H + i_h) * V + o_v[None, :], b_dv.to(dv.dtype.element_ty),
                 mask=(o_t < eos)[:, None] & m_v[None, :])
        b_eW = tl.load(eW + p_s * K + o_k, mask=m_k, other=0.)
        b_dh = b_dh * b_eW[:, None] + _mm(tl.trans(b_qe), b_do, do, DOT16)


@triton.jit
def wkv6_bwd_dkw_kernel(r, k, v, w, u, do, dhs, dk, dw, xs, acc, cu_seqlens, chunk_indices, scale, T,
                        rows, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                        BC: tl.constexpr, QB: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                        VARLEN: tl.constexpr, DOT16: tl.constexpr, QSCAN: tl.constexpr):
    """Gradients, part 3: one chunk's dk and dw (this V-block's share), sub-chunks last to first.

    Carrying dS, the gradient of each sub-chunk's END state (from dhs), back through the chunk:
      dk'_I = e^{s} ⊙ V_I dSᵀ + (own block: dA = dO Vᵀ, keys' side)
      dw = Σ_{i>m} q ⊙ dq' − Σ_{j≥m} k ⊙ dk' + rowsum(dS_end ⊙ S_end), right to left
    with x = q ⊙ dq' and the rowsum from part 1.
    """
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, t0 = chunk_of(cu_seqlens, chunk_indices, i_c, T, BT, VARLEN)
    o_i = tl.arange(0, BC)
    q4, r4 = o_i // QB, o_i % QB
    o_k, o_v = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    p_part = i_v.to(tl.int64) * rows * H * K  # this V-block's slab of the partial-sum buffers
    n_sub = tl.cdiv(tl.minimum(BT, eos - t0), BC)

    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    p_h = (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    b_dh = tl.load(dhs + p_h, mask=m_kv, other=0.)   # dS at the chunk end
    b_acc = tl.load(acc + ((i_v * tl.num_programs(0) + i_c).to(tl.int64) * H + i_h) * K + o_k, mask=m_k, other=0.)

    # ---- backward sweep: dk, dw
    for II in range(0, n_sub):
        I = n_sub - 1 - II
        s_i = t0 + I * BC
        o_t = s_i + o_i
        m_t = o_t < eos
        b_q = _rows(r, s_i, eos, i_h, H, K, o_k, m_k, BC) * scale
        b_k = _rows(k, s_i, eos, i_h, H, K, o_k, m_k, BC)
        b_v = _rows(v, s_i, eos, i_h, H, V, o_v, m_v, BC)
        b_do = _rows(do, s_i, eos, i_h, H, V, o_v, m_v, BC)
        b_pq, b_sq, qt1, qt2, b_p, b_s, b_tot = _quarter_decays(w, s_i, eos, i_h, H, K, o_k, m_k, BC, QB, QSCAN)
        b_dk = _mm(b_v, tl.trans(b_dh), v, DOT16) * tl.exp2(b_s)
        # own block, queries in later quarters (one dot per query quarter R)
        b_dA = _mm(b_do, tl.trans(b_v), v, DOT16)
        b_qe = b_q * tl.exp2(b_pq)
        for R in tl.static_range(1, BC // QB):
            b_qR = tl.where(q4[:, None] == R, b_qe, 0.)
            b_dk += _mm_tf32(tl.trans(tl.where(q4[:, None] == R, b_dA, 0.)), b_qR, DOT16) \
                * tl.exp2(_key_exp(b_sq, qt1, qt2, R, BC, QB))
        # own block, queries in the key's own quarter: query i = j + d, decay e^{w_{j+1}+…+w_{i-1}}
        b_L = tl.zeros([BC, BK], dtype=tl.float32)
        for d in tl.static_range(1, QB):
            m_i = r4 + d < QB
            t_q = o_t + d
            m_it = m_i & (t_q < eos)
            b_qi = _gather(r, t_q, m_it, i_h, H, K, o_k, m_k) * scale
            b_dAi = tl.where(m_it, tl.sum(tl.where(o_i[:, None] == o_i[None, :] + d, b_dA, 0.), axis=0), 0.)  # dA[j+d, j]
            b_dk += b_dAi[:, None] * b_qi * tl.exp2(b_L)
            b_L += tl.where(m_i[:, None], _gather(w, t_q, m_it, i_h, H, K, o_k, m_k) * LOG2E, 0.)
        b_dAd = tl.sum(tl.where(o_i[None, :] == o_i[:, None], b_dA, 0.), axis=1)

        p_k = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        m_tk = m_t[:, None] & m_k[None, :]
        b_x = tl.load(xs + p_part + p_k, mask=m_tk, other=0.)
        b_y = b_k * b_dk
        b_dw = b_acc[None, :] + tl.cumsum(b_x, axis=0, reverse=True) - b_x - tl.cumsum(b_y, axis=0, reverse=True)
        b_acc += tl.sum(b_x - b_y, axis=0)
        b_dk += b_dAd[:, None] * b_u[None, :] * b_q
        tl.store(dk + p_part + p_k, b_dk.to(dk.dtype.element_ty), mask=m_tk)
        tl.store(dw + p_part + p_k, b_dw.to(dw.dtype.element_ty), mask=m_tk)
        b_dh = b_dh * tl.exp2(b_tot)[:, None] + _mm(tl.trans(b_q * tl.exp2(b_p)), b_do, do, DOT16)





# ---------------------------------------------------------------------------------------------
# launches
# ---------------------------------------------------------------------------------------------
def _state_tiles(N, H, K, V):
    """Tiles of the two state passes: split K and V until the launch has a few programs per SM."""
    BK, BV = min(triton.next_power_of_2(K), 32), min(triton.next_power_of_2(V), 32)
    sms = torch.cuda.get_device_properties(0).multi_processor_count if device.has_gpu() else 1
    while N * H * triton.cdiv(K, BK) * triton.cdiv(V, BV) < 2 * sms and min(BK, BV) > 16:
        BK, BV = max(16, BK // 2), max(16, BV // 2)
    return max(BK, 16), max(BV, 16)


def _out_tiles(K, V):
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(triton.next_power_of_2(V), 64))
    return BK, BV, triton.cdiv(V, BV)


def _launch(name):
    """Launch options of one kernel from TUNE: (num_warps, num_stages[, maxnreg])."""
    num_warps, num_stages, *maxnreg = TUNE[name]
    return dict(num_warps=num_warps, num_stages=num_stages, **({"maxnreg": maxnreg[0]} if maxnreg else {}))


def state_pass(k, v, w, initial_state, output_final_state, cu_seqlens, N, BT, flags=None):
    """Every chunk-start state ``hs`` [n_chunks, H, K, V] float32, and the final state when asked.

    Given an int32 ``flags`` tensor, the pass also checks the values of v and initial_state into it.
    """
    B, T, H, K = k.shape
    V = v.shape[-1]
    BK, BV = _state_tiles(N, H, K, V)
    offs, _, n_chunks = chunk_table(cu_seqlens, B, T, BT, k.device)
    varlen = cu_seqlens is not None
    hs = torch.empty(n_chunks, H, K, V, dtype=torch.float32, device=k.device)
    ht = torch.empty(N, H, K, V, dtype=torch.float32, device=k.device) if output_final_state else None
    wkv6_fwd_h_kernel[(triton.cdiv(K, BK), triton.cdiv(V, BV), N * H)](
        k, v, w, initial_state, ht, hs, flags, cu_arg(cu_seqlens, k.device), offs,
        B * T if varlen else T, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, USE_H0=initial_state is not None,
        STORE_HT=output_final_state, VARLEN=varlen, DOT16=dot16(k), CHECK=flags is not None, **_launch("fwd_h"))
    return hs, ht


def prep(r, k, w, u, scale, cu_seqlens, BT, flags=None):
    """The decayed factors of every sub-chunk: q ⊙ e^{p}, k ⊙ e^{s} ([B, T, H, K], input dtype), the
    own weights A ([n_chunks·BT/BC, H, BC, BC], input dtype) and e^{W} ([n_chunks·BT/BC, H, K] float32).

    Given an int32 ``flags`` tensor, the launch also checks the values of r, k, w and u into it.
    """
    B, T, H, K = r.shape
    _, idx, n_chunks = chunk_table(cu_seqlens, B, T, BT, r.device)
    varlen = cu_seqlens is not None
    n_sub = n_chunks * (BT // BC)
    qe, ke = torch.empty_like(r), torch.empty_like(k)
    A = torch.empty(n_sub, H, BC, BC, dtype=r.dtype, device=r.device)
    eW = torch.empty(n_sub, H, K, dtype=torch.float32, device=r.device)
    BK = max(16, triton.next_power_of_2(K))
    wkv6_fwd_prep_kernel[(n_sub, H)](
        r, k, w, u, qe, ke, A, eW, flags, cu_arg(cu_seqlens, r.device), idx, float(scale),
        B * T if varlen else T, H=H, K=K, BT=BT, BC=BC, QB=QB, BK=BK, VARLEN=varlen, DOT16=dot16(r),
        CHECK=flags is not None, QSCAN=TUNE["quarters"] == "scan", **_launch("fwd_prep"))
    return qe, ke, A, eW


def raise_flagged(flags, r, k, v, w, u, scale, initial_state, cu_seqlens):
    """After the forward: if a launch flagged a value, name the argument (the full host-side
    check, on this error path only); a flag with every input valid means the state overflowed."""
    if flags.item():
        _rec.check_inputs(r, k, v, w, u, scale, initial_state, cu_seqlens, check_values=True)
        raise ValueError("k: the state overflowed float32 (inputs are finite, but |k|·|v| summed over the "
                         "sequence exceeds 3.4e38); scale k or v down")


def output(qe, ke, v, A, eW, hs, cu_seqlens, BT):
    """o [B, T, H, V] in v's dtype: one program per (chunk, V-block, head), from prep's factors and hs."""
    B, T, H, K = qe.shape
    V = v.shape[-1]
    _, idx, n_chunks = chunk_table(cu_seqlens, B, T, BT, v.device)
    BK, BV, NV = _out_tiles(K, V)
    o = torch.empty_like(v)
    varlen = cu_seqlens is not None
    wkv6_fwd_o_kernel[(n_chunks, NV, H)](
        qe, ke, v, A, eW, o, hs, cu_arg(cu_seqlens, v.device), idx, B * T if varlen else T,
        H=H, K=K, V=V, BT=BT, BC=BC, BK=BK, BV=BV, VARLEN=varlen, DOT16=dot16(v), **_launch("fwd_o"))
    return o


def fwd(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N, BT=64, check=True,
        return_states=False):
    """Three launches: the sub-chunks' decayed factors, the state pass, then every chunk's output in
    parallel; with ``check``, the first two flag bad values as they read them, read after the third.
    Returns (o, final state); with ``return_states`` also the chunk-start states ``hs`` and the
    prep's factors (qe, ke, A, eW), which the backward reuses."""
    flags = torch.zeros(1, dtype=torch.int32, device=r.device) if check else None
    qe, ke, A, eW = prep(r, k, w, u, scale, cu_seqlens, BT, flags)
    hs, ht = state_pass(k, v, w, initial_state, output_final_state, cu_seqlens, N, BT, flags)
    early = FlagRead(flags) if check else None      # final now: the output pass runs through the wait
    o = output(qe, ke, v, A, eW, hs, cu_seqlens, BT)
    if check and early.value():
        raise_flagged(flags, r, k, v, w, u, scale, initial_state, cu_seqlens)
    return (o, ht, hs, (qe, ke, A, eW)) if return_states else (o, ht)


def bwd(r, k, v, w, u, scale, initial_state, cu_seqlens, N, do, dht, BT=64, hs=None, factors=None):
    """Four launches: chunk-end state gradients, then every chunk's gradients (three: dq and du;
    dv; dk and dw). Given no chunk-start states ``hs`` or no prep ``factors`` (qe, ke, A, eW: the
    forward's, which autograd keeps), the state pass or the prep recomputes them first."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    dev, f32 = r.device, torch.float32
    varlen = cu_seqlens is not None
    TT = B * T if varlen else T
    do = do.contiguous()
    if hs is None:
        hs, _ = state_pass(k, v, w, initial_state, False, cu_seqlens, N, BT)
    qe, ke, A, eW = prep(r, k, w, u, scale, cu_seqlens, BT) if factors is None else factors
    offs, idx, n_chunks = chunk_table(cu_seqlens, B, T, BT, dev)
    BKs, BVs = _state_tiles(N, H, K, V)
    dhs = torch.empty_like(hs)
    dh0 = torch.empty(N, H, K, V, dtype=f32, device=dev) if initial_state is not None else None
    wkv6_bwd_dh_kernel[(triton.cdiv(K, BKs), triton.cdiv(V, BVs), N * H)](
        r, w, do, None if dht is None else dht.contiguous(), dh0, dhs,
        cu_arg(cu_seqlens, dev), offs, float(scale), TT,
        H=H, K=K, V=V, BT=BT, BK=BKs, BV=BVs, USE_DHT=dht is not None, STORE_DH0=dh0 is not None,
        VARLEN=varlen, DOT16=dot16(r), **_launch("bwd_dh"))
    BK, BV, NV = _out_tiles(K, V)
    # with one V-block the gradients are complete in one program: store them in the input dtype
    part = f32 if NV > 1 else r.dtype
    dr, dk, dw = (torch.empty(NV, B, T, H, K, dtype=part, device=dev) for _ in range(3))
    dv = torch.empty_like(v)
    du = torch.empty(NV, n_chunks, H, K, dtype=f32, device=dev)
    xs = torch.empty(NV, B, T, H, K, dtype=f32, device=dev)  # q ⊙ dq' for dw, per V-block
    acc = torch.empty(NV, n_chunks, H, K, dtype=f32, device=dev)  # rowsum(dS_end ⊙ S_end) per chunk
    cu, grid = cu_arg(cu_seqlens, dev), (n_chunks, NV, H)
    consts = dict(H=H, K=K, V=V, BT=BT, BC=BC, QB=QB, BK=BK, BV=BV, VARLEN=varlen, DOT16=dot16(r),
                  QSCAN=TUNE["quarters"] == "scan")
    wkv6_bwd_dq_kernel[grid](r, k, v, w, u, do, hs, dhs, dr, du, xs, acc, cu, idx, float(scale), TT, B * T,
                             **consts, **_launch("bwd_dq"))
    wkv6_bwd_dv_kernel[grid](qe, ke, do, A, eW, dhs, dv, cu, idx, TT, H=H, K=K, V=V, BT=BT, BC=BC, BK=BK, BV=BV,
                             VARLEN=varlen, DOT16=dot16(r), **_launch("bwd_dv"))
    wkv6_bwd_dkw_kernel[grid](r, k, v, w, u, do, dhs, dk, dw, xs, acc, cu, idx, float(scale), TT, B * T,
                              **consts, **_launch("bwd_dkw"))
    dr, dk, dw = (x.sum(0).to(r.dtype) if NV > 1 else x[0] for x in (dr, dk, dw))
    return dr, dk, dv, dw, du.sum((0, 1)).to(u.dtype), dh0


class _SubchunkFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N, chunk_size, check):
        o, ht, hs, factors = fwd(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N,
                                 chunk_size, check, return_states=True)
        # the backward needs the chunk-start states and the prep's factors the forward just made:
        # keep them (a float32 [K, V] per chunk and head, 1/64 of a state per token; qe and ke as
        # large as r and k) rather than run the state pass and the prep again
        needs_grad = any(ctx.needs_input_grad[:5]) or ctx.needs_input_grad[6]
        keep = (hs, *factors) if needs_grad else (None,) * 5
        ctx.save_for_backward(r, k, v, w, u, initial_state, cu_seqlens, *keep)
        ctx.scale, ctx.N, ctx.chunk_size = scale, N, chunk_size
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        r, k, v, w, u, initial_state, cu_seqlens, hs, *factors = ctx.saved_tensors
        dr, dk, dv, dw, du, dh0 = bwd(r, k, v, w, u, ctx.scale, initial_state, cu_seqlens, ctx.N, do, dht,
                                      ctx.chunk_size, hs=hs, factors=factors)
        return dr, dk, dv, dw, du, None, dh0, None, None, None, None, None


def triton_subchunk(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N, chunk_size,
                    check=True):
    """The differentiable call behind ``triton_chunked(schedule="subchunk")``, on inputs it has checked
    (structure only: this design checks the values in its prep kernel and state pass) and made contiguous."""
    return _SubchunkFunction.apply(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N,
                                   chunk_size, check)
