"""RWKV-6 on tensor cores: chunks of 64 tokens, sub-chunks of 16, three kinds of launch.

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

so that block is one ``tl.dot`` of ``q ⊙ e^{p}`` with ``k ⊙ e^{s+gap}``. Only the 16×16 blocks on
the diagonal are built elementwise, one column at a time, from a running product of e^{w}.
Every exponent the kernels evaluate is ≤ 0 (no overflow for any w ≤ 0) and is a sum over its
own interval (a cumulative sum of shifted w, never the difference of two running sums), so a
decay spike of w = −1e4 costs no float32 accuracy. Exponents are taken base 2 (``exp2``) on
``w · log2(e)``.

Who owns what:

- ``wkv6_fwd_h_kernel`` (state pass): one program per (BK key rows, BV value columns, sequence·
  head) walks the chunks in order doing only the hand-off (one ``tl.dot`` per chunk; the decay is
  diagonal, so key rows are independent) and writes each chunk-start state to ``hs``.
- ``wkv6_fwd_o_kernel`` (output): one program per (chunk, V-block, head), all independent: reads
  its chunk's ``hs``, builds the intra weights sub-chunk by sub-chunk, writes ``o``.
- backward: the state pass again (``hs``), ``wkv6_bwd_dh_kernel`` (the same pass in reverse time
  for dS, the gradient of each chunk-end state), and ``wkv6_bwd_kernel``: one program per (chunk,
  V-block, head) for dq, dk, dv, dw and du. Its ``dw`` uses the identity of the recurrent kernel
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
from ..kernels_common import chunk_of, chunk_table, cu_arg, first_chunk, seq_bounds

__all__ = ["fwd", "bwd", "SubchunkFunction"]

LOG2E = tl.constexpr(1.4426950408889634)
# launch settings per kernel (num_warps, num_stages); benchmarks/NOTES.md records how they were chosen
TUNE = {"fwd_h": (4, 2), "fwd_o": (4, 2), "bwd_dh": (4, 2), "bwd": (4, 2)}
BC = 16  # sub-chunk length: the smallest tile side tl.dot accepts


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


@triton.jit
def _sub_totals(w, t0, eos, i_h, H: tl.constexpr, K: tl.constexpr, o_k, m_k,
                BT: tl.constexpr, BC: tl.constexpr):
    """[NC, BK]: row L is the total log2 decay of sub-chunk L of the chunk starting at t0."""
    o_l = tl.arange(0, BT // BC)
    b_tot = tl.zeros([BT // BC, o_k.shape[0]], dtype=tl.float32)
    for L in tl.static_range(BT // BC):
        b_w = _rows(w, t0 + L * BC, eos, i_h, H, K, o_k, m_k, BC)
        b_tot = tl.where(o_l[:, None] == L, tl.sum(b_w, axis=0)[None, :] * LOG2E, b_tot)
    return b_tot


@triton.jit
def _between(b_tot, lo, hi):
    """Σ of the sub-chunk totals with lo < L < hi: a decay across whole sub-chunks (≤ 0)."""
    o_l = tl.arange(0, b_tot.shape[0])
    return tl.sum(tl.where((o_l[:, None] > lo) & (o_l[:, None] < hi), b_tot, 0.), axis=0)


@triton.jit
def _diag_out(k, v, w, b_q, b_k, b_v, b_u, s0, eos, i_h, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
              o_k, m_k, o_v, m_v, BC: tl.constexpr):
    """What the sub-chunk's own tokens add to its output: Σ_{j<i} A_ij v_j + (q_iᵀ diag(u) k_i) v_i.

    A_ij = Σ_κ q_iκ k_jκ e^{w_{j+1}+…+w_{i-1}}, one column j at a time, right to left, added to the
    output as the rank-1 update A[:, j] v_jᵀ (so A is never assembled). b_E[i] = e^{w_{j+1}+…+w_{i-1}}
    is a running product of the factors e^{w_m} ∈ [0, 1]: each exponent is a sum over its own
    interval, none is positive.
    """
    o_i = tl.arange(0, BC)
    b_E = tl.full([BC, o_k.shape[0]], 1.0, dtype=tl.float32)
    b_o = tl.sum(b_q * b_u[None, :] * b_k, axis=1)[:, None] * b_v            # the bonus
    for jj in range(0, BC):
        j = BC - 1 - jj
        t_k, t_v = s0 + j + 0 * o_k, s0 + j + 0 * o_v  # row j as vectors, so the masks are plain tensors
        b_kj = tl.load(k + (t_k * H + i_h) * K + o_k, mask=m_k & (t_k < eos), other=0.).to(tl.float32)
        b_vj = tl.load(v + (t_v * H + i_h) * V + o_v, mask=m_v & (t_v < eos), other=0.).to(tl.float32)
        b_wj = tl.load(w + (t_k * H + i_h) * K + o_k, mask=m_k & (t_k < eos), other=0.).to(tl.float32)
        b_a = tl.sum(tl.where(o_i[:, None] > j, b_q * b_E, 0.) * b_kj[None, :], axis=1)   # A[:, j]
        b_o += b_a[:, None] * b_vj[None, :]
        b_E = tl.where(o_i[:, None] > j, b_E * tl.exp2(b_wj * LOG2E)[None, :], 1.0)
    return b_o


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
@triton.jit
def wkv6_fwd_h_kernel(k, v, w, h0, ht, hs, cu_seqlens, chunk_offsets, T,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr,
                      VARLEN: tl.constexpr, DOT16: tl.constexpr):
    """State pass: S ← diag(e^{W}) S + (k ⊙ e^{Q})ᵀ V per chunk; every chunk-start S to hs."""
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


@triton.jit
def wkv6_fwd_o_kernel(r, k, v, w, u, o, hs, cu_seqlens, chunk_indices, scale, T,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                      BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      VARLEN: tl.constexpr, DOT16: tl.constexpr):
    """One chunk's output, sub-chunk I at a time: inter (from hs) + blocks J < I + the diagonal block."""
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, t0 = chunk_of(cu_seqlens, chunk_indices, i_c, T, BT, VARLEN)
    o_k, o_v = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V

    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_h = tl.load(hs + (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
                  mask=m_k[:, None] & m_v[None, :], other=0.)
    b_tot = _sub_totals(w, t0, eos, i_h, H, K, o_k, m_k, BT, BC)
    for I in range(0, BT // BC):  # runtime loops: unrolled, they keep more tiles live than registers hold
        s_i = t0 + I * BC
        b_q = _rows(r, s_i, eos, i_h, H, K, o_k, m_k, BC) * scale
        b_k = _rows(k, s_i, eos, i_h, H, K, o_k, m_k, BC)
        b_p, b_sI, b_tI = _decays(w, s_i, eos, i_h, H, K, o_k, m_k, BC)
        b_qg = b_q * tl.exp2(b_p)                                     # q̂ = q ⊙ e^{p}
        # inter: q ⊙ e^{P} with P = (totals of sub-chunks before I) + p
        b_o = _mm(b_qg * tl.exp2(_between(b_tot, -1, I))[None, :], b_h, v, DOT16)
        for JJ in range(0, I):                                        # key sub-chunks J < I
            J = I - 1 - JJ
            s_j = t0 + J * BC
            b_kj = _rows(k, s_j, eos, i_h, H, K, o_k, m_k, BC)
            b_pj, b_sj, b_tj = _decays(w, s_j, eos, i_h, H, K, o_k, m_k, BC)
            b_kg = b_kj * tl.exp2(b_sj + _between(b_tot, J, I)[None, :])   # k̂ = k ⊙ e^{s + gap}
            b_A = _mm_tf32(b_qg, tl.trans(b_kg), DOT16)
            b_o += _mm(b_A, _rows(v, s_j, eos, i_h, H, V, o_v, m_v, BC), v, DOT16)
        b_o += _diag_out(k, v, w, b_q, b_k, _rows(v, s_i, eos, i_h, H, V, o_v, m_v, BC), b_u, s_i, eos, i_h,
                         H, K, V, o_k, m_k, o_v, m_v, BC)
        o_t = s_i + tl.arange(0, BC)
        tl.store(o + (o_t[:, None] * H + i_h) * V + o_v[None, :], b_o.to(o.dtype.element_ty),
                 mask=(o_t < eos)[:, None] & m_v[None, :])


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


@triton.jit
def wkv6_bwd_kernel(r, k, v, w, u, do, hs, dhs, dr, dk, dv, dw, du, cu_seqlens, chunk_indices, scale, T, rows,
                    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                    BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                    VARLEN: tl.constexpr, DOT16: tl.constexpr):
    """dq, dk, dv, dw, du of one chunk (this V-block's share), sub-chunks last to first.

    Per sub-chunk I, with primes for gradients without the bonus:
      dq'_I = e^{P} ⊙ dO_I Sᵀ + Σ_{J≤I} (dA_IJ ⊙ decay) K_J       dA = dO Vᵀ
      dk'_I = e^{Q} ⊙ V_I dS_endᵀ + Σ_{I'≥I} (dA_I'I ⊙ decay)ᵀ Q_I'
      dv_I  = (k ⊙ e^{Q})_I dS_end + Σ_{I'≥I} A_I'Iᵀ dO_I'
    and dw from the running sums of q ⊙ dq' − k ⊙ dk' (right to left), seeded with rowsum(dS_end ⊙ S_end).
    """
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, t0 = chunk_of(cu_seqlens, chunk_indices, i_c, T, BT, VARLEN)
    o_i = tl.arange(0, BC)
    o_k, o_v = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    p_part = i_v.to(tl.int64) * rows * H * K  # this V-block's slab of the partial-sum buffers

    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    p_h = (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    b_h = tl.load(hs + p_h, mask=m_kv, other=0.)     # S at the chunk start
    b_dh = tl.load(dhs + p_h, mask=m_kv, other=0.)   # dS at the chunk end
    b_tot = _sub_totals(w, t0, eos, i_h, H, K, o_k, m_k, BT, BC)

    # rowsum(dS_end ⊙ S_end), S_end = e^{W} S + (k ⊙ e^{Q})ᵀ V: the chunk's pull on the later decays
    b_kc = _rows(k, t0, eos, i_h, H, K, o_k, m_k, BT)
    b_pc, b_sc, b_totc = _decays(w, t0, eos, i_h, H, K, o_k, m_k, BT)
    b_hend = b_h * tl.exp2(b_totc)[:, None] + _mm(tl.trans(b_kc * tl.exp2(b_sc)),
                                                  _rows(v, t0, eos, i_h, H, V, o_v, m_v, BT), v, DOT16)
    b_acc = tl.sum(b_dh * b_hend, axis=1)
    b_du = tl.zeros([BK], dtype=tl.float32)

    for II in range(0, BT // BC):  # right to left (runtime loops: fewer live registers than unrolled)
        I = BT // BC - 1 - II
        s_i = t0 + I * BC
        o_t = s_i + o_i
        m_t = o_t < eos
        b_q = _rows(r, s_i, eos, i_h, H, K, o_k, m_k, BC) * scale
        b_k = _rows(k, s_i, eos, i_h, H, K, o_k, m_k, BC)
        b_v = _rows(v, s_i, eos, i_h, H, V, o_v, m_v, BC)
        b_do = _rows(do, s_i, eos, i_h, H, V, o_v, m_v, BC)
        b_p, b_s, b_tI = _decays(w, s_i, eos, i_h, H, K, o_k, m_k, BC)
        b_eq = tl.exp2(b_p)                                    # query side, from I's start
        b_ek = tl.exp2(b_s)                                    # key side, to I's end

        # inter-chunk terms
        b_eP = b_eq * tl.exp2(_between(b_tot, -1, I))[None, :]          # e^{P}: chunk start → i−1
        b_eQ = b_ek * tl.exp2(_between(b_tot, I, BT // BC))[None, :]          # e^{Q}: j+1 → chunk end
        b_dq = _mm(b_do, tl.trans(b_h), v, DOT16) * b_eP
        b_dk = _mm(b_v, tl.trans(b_dh), v, DOT16) * b_eQ
        b_dv = _mm(b_k * b_eQ, b_dh, v, DOT16)

        # I as the query sub-chunk: blocks J < I, factored at I's start
        b_dqa = tl.zeros([BC, BK], dtype=tl.float32)
        for JJ in range(0, I):
            J = I - 1 - JJ
            s_j = t0 + J * BC
            b_kj = _rows(k, s_j, eos, i_h, H, K, o_k, m_k, BC)
            b_pj, b_sj, b_tj = _decays(w, s_j, eos, i_h, H, K, o_k, m_k, BC)
            b_dA = _mm(b_do, tl.trans(_rows(v, s_j, eos, i_h, H, V, o_v, m_v, BC)), v, DOT16)
            b_dqa += _mm_tf32(b_dA, b_kj * tl.exp2(b_sj + _between(b_tot, J, I)[None, :]), DOT16)
        b_dq += b_dqa * b_eq

        # I as the key sub-chunk: blocks I' > I, factored at I''s start
        b_kg = b_k * b_ek
        b_dka = tl.zeros([BC, BK], dtype=tl.float32)
        for I2 in range(I + 1, BT // BC):
            s_2 = t0 + I2 * BC
            b_p2, b_s2, b_t2 = _decays(w, s_2, eos, i_h, H, K, o_k, m_k, BC)
            b_q2 = _rows(r, s_2, eos, i_h, H, K, o_k, m_k, BC) * scale
            b_q2 = b_q2 * tl.exp2(b_p2 + _between(b_tot, I, I2)[None, :])
            b_do2 = _rows(do, s_2, eos, i_h, H, V, o_v, m_v, BC)
            b_dA = _mm(b_do2, tl.trans(b_v), v, DOT16)                       # dA_{I'I}
            b_A = _mm_tf32(b_q2, tl.trans(b_kg), DOT16)                      # A_{I'I}
            b_dka += _mm_tf32(tl.trans(b_dA), b_q2, DOT16)
            b_dv += _mm(tl.trans(b_A), b_do2, v, DOT16)
        b_dk += b_dka * b_ek

        # the diagonal block, column by column (exact interval products), never assembled
        b_E = tl.full([BC, BK], 1.0, dtype=tl.float32)
        for jj in range(0, BC):
            j = BC - 1 - jj
            t_k, t_v = s_i + j + 0 * o_k, s_i + j + 0 * o_v
            b_kr = tl.load(k + (t_k * H + i_h) * K + o_k, mask=m_k & (t_k < eos), other=0.).to(tl.float32)
            b_vr = tl.load(v + (t_v * H + i_h) * V + o_v, mask=m_v & (t_v < eos), other=0.).to(tl.float32)
            b_wr = tl.load(w + (t_k * H + i_h) * K + o_k, mask=m_k & (t_k < eos), other=0.).to(tl.float32)
            b_qE = tl.where(o_i[:, None] > j, b_q * b_E, 0.)
            b_a = tl.sum(b_qE * b_kr[None, :], axis=1)                                   # A[:, j]
            b_dAj = tl.where(o_i > j, tl.sum(b_do * b_vr[None, :], axis=1), 0.)            # dA[:, j]
            b_dq += b_dAj[:, None] * b_kr[None, :] * b_E
            b_dk = tl.where(o_i[:, None] == j, b_dk + tl.sum(b_dAj[:, None] * b_qE, axis=0)[None, :], b_dk)
            b_dv = tl.where(o_i[:, None] == j, b_dv + tl.sum(b_a[:, None] * b_do, axis=0)[None, :], b_dv)
            b_E = tl.where(o_i[:, None] > j, b_E * tl.exp2(b_wr * LOG2E)[None, :], 1.0)
        b_dAd = tl.sum(b_do * b_v, axis=1)                                           # dA_ii = do_i · v_i
        b_dv += tl.sum(b_q * b_u[None, :] * b_k, axis=1)[:, None] * b_do              # the bonus's share
        b_du += tl.sum(b_dAd[:, None] * b_q * b_k, axis=0)

        # dw: Σ_{i>m} q ⊙ dq' − Σ_{j≥m} k ⊙ dk' + (later sub-chunks and the chunk-end pull)
        b_x = b_q * b_dq
        b_y = b_k * b_dk
        b_dw = b_acc[None, :] + tl.cumsum(b_x, axis=0, reverse=True) - b_x - tl.cumsum(b_y, axis=0, reverse=True)
        b_acc += tl.sum(b_x - b_y, axis=0)

        # the bonus joins dq and dk only now (it has no decay, so it stays out of dw)
        b_dq += b_dAd[:, None] * b_u[None, :] * b_k
        b_dk += b_dAd[:, None] * b_u[None, :] * b_q
        p_k = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        m_tk = m_t[:, None] & m_k[None, :]
        tl.store(dr + p_part + p_k, (b_dq * scale).to(dr.dtype.element_ty), mask=m_tk)
        tl.store(dk + p_part + p_k, b_dk.to(dk.dtype.element_ty), mask=m_tk)
        tl.store(dw + p_part + p_k, b_dw.to(dw.dtype.element_ty), mask=m_tk)
        tl.store(dv + (o_t[:, None] * H + i_h) * V + o_v[None, :], b_dv.to(dv.dtype.element_ty),
                 mask=m_t[:, None] & m_v[None, :])
    tl.store(du + ((i_v * tl.num_programs(0) + i_c).to(tl.int64) * H + i_h) * K + o_k, b_du, mask=m_k)


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
    num_warps, num_stages = TUNE[name]
    return dict(num_warps=num_warps, num_stages=num_stages)


def _dot16(x):
    return x.dtype in (torch.float16, torch.bfloat16) and not device.interpreting()


def state_pass(k, v, w, initial_state, output_final_state, cu_seqlens, N, BT):
    """Every chunk-start state ``hs`` [n_chunks, H, K, V] float32, and the final state when asked."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    BK, BV = _state_tiles(N, H, K, V)
    offs, _, n_chunks = chunk_table(cu_seqlens, B, T, BT, k.device)
    varlen = cu_seqlens is not None
    hs = torch.empty(n_chunks, H, K, V, dtype=torch.float32, device=k.device)
    ht = torch.empty(N, H, K, V, dtype=torch.float32, device=k.device) if output_final_state else None
    wkv6_fwd_h_kernel[(triton.cdiv(K, BK), triton.cdiv(V, BV), N * H)](
        k, v, w, initial_state if initial_state is not None else hs, ht if ht is not None else hs, hs,
        cu_arg(cu_seqlens, k.device), offs, B * T if varlen else T,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, USE_H0=initial_state is not None,
        STORE_HT=output_final_state, VARLEN=varlen, DOT16=_dot16(k), **_launch("fwd_h"))
    return hs, ht


def fwd(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N, BT=64):
    """Two launches: the state pass, then every chunk's output in parallel."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    hs, ht = state_pass(k, v, w, initial_state, output_final_state, cu_seqlens, N, BT)
    _, idx, n_chunks = chunk_table(cu_seqlens, B, T, BT, r.device)
    BK, BV, NV = _out_tiles(K, V)
    o = torch.empty_like(v)
    varlen = cu_seqlens is not None
    wkv6_fwd_o_kernel[(n_chunks, NV, H)](
        r, k, v, w, u, o, hs, cu_arg(cu_seqlens, r.device), idx, float(scale), B * T if varlen else T,
        H=H, K=K, V=V, BT=BT, BC=BC, BK=BK, BV=BV, VARLEN=varlen, DOT16=_dot16(r), **_launch("fwd_o"))
    return o, ht


def bwd(r, k, v, w, u, scale, initial_state, cu_seqlens, N, do, dht, BT=64):
    """Three launches: chunk-start states again, chunk-end state gradients, then every chunk's gradients."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    dev, f32 = r.device, torch.float32
    varlen = cu_seqlens is not None
    TT = B * T if varlen else T
    do = do.contiguous()
    hs, _ = state_pass(k, v, w, initial_state, False, cu_seqlens, N, BT)
    offs, idx, n_chunks = chunk_table(cu_seqlens, B, T, BT, dev)
    BKs, BVs = _state_tiles(N, H, K, V)
    dhs = torch.empty_like(hs)
    dh0 = torch.empty(N, H, K, V, dtype=f32, device=dev) if initial_state is not None else None
    wkv6_bwd_dh_kernel[(triton.cdiv(K, BKs), triton.cdiv(V, BVs), N * H)](
        r, w, do, dht.contiguous() if dht is not None else hs, dh0 if dh0 is not None else hs, dhs,
        cu_arg(cu_seqlens, dev), offs, float(scale), TT,
        H=H, K=K, V=V, BT=BT, BK=BKs, BV=BVs, USE_DHT=dht is not None, STORE_DH0=dh0 is not None,
        VARLEN=varlen, DOT16=_dot16(r), **_launch("bwd_dh"))
    BK, BV, NV = _out_tiles(K, V)
    # with one V-block the gradients are complete in one program: store them in the input dtype
    part = f32 if NV > 1 else r.dtype
    dr, dk, dw = (torch.empty(NV, B, T, H, K, dtype=part, device=dev) for _ in range(3))
    dv = torch.empty_like(v)
    du = torch.empty(NV, n_chunks, H, K, dtype=f32, device=dev)
    wkv6_bwd_kernel[(n_chunks, NV, H)](
        r, k, v, w, u, do, hs, dhs, dr, dk, dv, dw, du, cu_arg(cu_seqlens, dev), idx, float(scale), TT, B * T,
        H=H, K=K, V=V, BT=BT, BC=BC, BK=BK, BV=BV, VARLEN=varlen, DOT16=_dot16(r), **_launch("bwd"))
    dr, dk, dw = (x.sum(0).to(r.dtype) if NV > 1 else x[0] for x in (dr, dk, dw))
    return dr, dk, dv, dw, du.sum((0, 1)).to(u.dtype), dh0


class SubchunkFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N, chunk_size):
        o, ht = fwd(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N, chunk_size)
        ctx.save_for_backward(r, k, v, w, u, initial_state, cu_seqlens)
        ctx.scale, ctx.N, ctx.chunk_size = scale, N, chunk_size
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        r, k, v, w, u, initial_state, cu_seqlens = ctx.saved_tensors
        dr, dk, dv, dw, du, dh0 = bwd(r, k, v, w, u, ctx.scale, initial_state, cu_seqlens, ctx.N, do, dht,
                                      ctx.chunk_size)
        return dr, dk, dv, dw, du, None, dh0, None, None, None, None
