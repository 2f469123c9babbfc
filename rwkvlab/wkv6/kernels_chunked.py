"""RWKV-6 as a chunked Triton kernel built on ``tl.dot``.

Same contract as :func:`rwkvlab.wkv6.triton_recurrent`. Split each sequence into chunks of
``BT`` tokens; inside a chunk, with ``c_i`` the inclusive running sum of the log decays from the
chunk's start (``c_{-1} = 0``, so ``c_{i-1} - c_j ≤ 0`` whenever ``j < i``):

    o_i = (q_i ⊙ exp(c_{i-1}))ᵀ S                             (inter: the state at the chunk start)
        + Σ_{j<i} [Σ_k q_ik k_jk exp(c_{i-1,k} - c_{j,k})] v_j   (intra: strictly causal, relative decay)
        + (q_iᵀ diag(u) k_i) v_i                                 (the bonus on the diagonal)
    S ← diag(exp(c_last)) S + (k ⊙ exp(c_last - c))ᵀ V          (state passing to the next chunk)

Every exponent above is ≤ 0, so nothing overflows for any ``w ≤ 0``: the intra-chunk weights are
computed column by column with the exact exponent ``c_{i-1} - c_j`` rather than as a product
``(q ⊙ e^{c})(k ⊙ e^{-c})ᵀ``, whose factor ``e^{-c_j}`` overflows float32 once ``-c_j > 88``
(e.g. 12 tokens of ``w = -8``). Three matmuls per chunk run on ``tl.dot``: ``q̃ S``, ``A V`` and
``k̃ᵀ V``.

Who owns what: two schedules (``schedule=``), the same equations and the same float32 state.

- ``"sequential"`` (the first rung; ``triton_chunked``'s default is now ``"subchunk"``, in
  :mod:`rwkvlab.wkv6.kernels_subchunk`). One program instance per
  (sequence·head, block of BV value columns), as in the recurrent kernel, walking the chunks in
  order and carrying its K×BV slice of the state in registers between them: state passing and
  output in one kernel (``wkv6_fwd_chunked_kernel``), and no state ever touches memory. Only
  ``N·H·⌈V/BV⌉`` programs, each a long loop that also does all the intra-chunk work.
- ``"parallel"`` (opt-in; FLA's split). Two launches. ``wkv6_state_pass_kernel``: one program
  per (sequence·head, K-block, V-block) walks the chunks in order doing only the state line above
  (one ``tl.dot`` per chunk; the decay is diagonal, so key rows are independent and K is split
  too) and writes every chunk-start state to ``hs`` [n_chunks, H, K, V] float32 (and the final
  state). ``wkv6_output_kernel``: one program per (chunk, V-block, head), all independent, reads
  its chunk's starting state from ``hs`` and adds the intra-chunk and bonus terms. The per-chunk
  pieces (decays, intra weights, output, state update) are the same ``@triton.jit`` helpers in
  both schedules.

The trade-off: in the forward the parallel schedule writes (and reads back) ``n_chunks·H·K·V``
float32 states, 8× the bytes of a bf16 ``k`` at C = 16 and K = V = 64 (512 MiB at B = 4,
T = 4096, H = 32; the backward stores the same ``hs`` with either schedule), but its output
kernel has a program for every chunk, so it fills the GPU even when ``B·H`` is small (long
single sequences, few heads), and its sequential loop is light. The parallel schedule has been checked in the Triton
interpreter only (tests/test_wkv6_triton.py, chapter 07); it has not been timed on a GPU yet
(``python -m rwkvlab bench`` has a row for it).

Backward (chapter 07 derives it). Two launches: the state at every chunk start again
(``[chunks, H, K, V]`` float32: recomputed rather than kept from the forward, so nothing but the
inputs is saved for autograd) — the forward kernel with its output switched off for
``"sequential"``, the state pass for ``"parallel"`` — then a kernel that walks the chunks in reverse
with ``dS`` (the gradient of the state at the chunk's end) in registers. Per chunk, with
``Q~ = q ⊙ exp(c_{i-1})``, ``K~ = k ⊙ exp(c_last - c)`` and ``dA = dO Vᵀ`` (causal, diagonal kept):

    dq = (dO Sᵀ) ⊙ exp(c_{i-1}) + Σ_{j<i} dA_ij k_j ⊙ exp(c_{i-1} - c_j) + dA_ii u ⊙ k_i
    dk = (V dSᵀ) ⊙ exp(c_last - c) + Σ_{i>j} dA_ij q_i ⊙ exp(c_{i-1} - c_j) + dA_jj u ⊙ q_j
    dv = Aᵀ dO + K~ dS,    du = Σ_i dA_ii q_i ⊙ k_i,    dS ← diag(exp(c_last)) dS + Q~ᵀ dO

and ``dw`` from the gradients of the cumulative decays ``c_i``, ``c_{i-1}`` and ``c_last`` by
reverse cumulative sums inside the chunk. As in the forward, every exponent is ≤ 0. ``dq, dk,
dw, du`` are sums over V and come back as one partial sum per V-block, added up in torch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import device
from . import kernels_recurrent as _rec
from . import kernels_subchunk as _sub
from .kernels_subchunk import _mm
from ..kernels_common import chunk_of, chunk_table, cu_arg, dot16, first_chunk, seq_bounds

__all__ = ["triton_chunked"]


@triton.jit
def _chunk_decays(w, p_k, m_tk):
    """c_i (inclusive), c_{i-1} and c_last of one chunk's log decays, relative to the chunk start."""
    # padded rows get w = 0 (no decay), so c at the last row is c_last of the real tokens
    b_w = tl.load(w + p_k, mask=m_tk, other=0.).to(tl.float32)
    b_c = tl.cumsum(b_w, axis=0)           # c_i, inclusive, relative to the chunk start
    b_cp = b_c - b_w                       # c_{i-1}
    b_clast = tl.sum(b_w, axis=0)          # c_last
    return b_c, b_cp, b_clast


@triton.jit
def _intra_weights(k, b_q, b_k, b_u, b_c, b_cp, t0, eos, i_h, o_i, o_k, m_k,
                   H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr):
    """The chunk's [BT, BT] weights: A[i, j<i] with exact exponents, the bonus on the diagonal."""
    # one column at a time with the exact exponent c_{i-1} - c_j (never positive, even when masked)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for j in range(0, BT):
        t_j = t0 + j + 0 * o_k  # row j as a vector, so the mask below is a plain [BK] tensor
        b_kj = tl.load(k + (t_j * H + i_h) * K + o_k, mask=m_k & (t_j < eos), other=0.).to(tl.float32)
        b_cj = tl.sum(tl.where(o_i[:, None] == j, b_c, 0.), axis=0)
        b_e = tl.where(o_i[:, None] > j, b_cp - b_cj[None, :], float("-inf"))
        b_a = tl.sum(b_q * b_kj[None, :] * tl.exp(b_e), axis=1)
        b_A = tl.where(o_i[None, :] == j, b_a[:, None], b_A)
    # the bonus sits on the diagonal: A[i, i] = q_iᵀ diag(u) k_i
    b_A = tl.where(o_i[:, None] == o_i[None, :], tl.sum(b_q * b_u[None, :] * b_k, axis=1)[:, None], b_A)
    return b_A


@triton.jit
def _chunk_output(b_q, b_cp, b_h, b_A, b_v, DOT16: tl.constexpr):
    """O = (q ⊙ exp(c_{i-1})) S + A V for one chunk, S its K×BV starting state (float32)."""
    b_qg = b_q * tl.exp(b_cp)                              # q_i ⊙ exp(c_{i-1})
    if DOT16:  # tensor cores in the input's 16-bit dtype; the state stays float32
        b_o = tl.dot(b_qg.to(b_v.dtype), b_h.to(b_v.dtype)) + tl.dot(b_A.to(b_v.dtype), b_v)
    else:             # float32 throughout (and always in the interpreter, where bf16 dots are wrong)
        b_vf = b_v.to(tl.float32)
        b_o = tl.dot(b_qg, b_h, input_precision="ieee") + tl.dot(b_A, b_vf, input_precision="ieee")
    return b_o


@triton.jit
def _state_update(b_h, b_k, b_c, b_clast, b_v, DOT16: tl.constexpr):
    """S ← diag(exp(c_last)) S + (k ⊙ exp(c_last - c))ᵀ V: the state at the next chunk's start."""
    b_kg = b_k * tl.exp(b_clast[None, :] - b_c)            # k_j ⊙ exp(c_last - c_j)
    if DOT16:
        b_h = b_h * tl.exp(b_clast)[:, None] + tl.dot(tl.trans(b_kg).to(b_v.dtype), b_v)
    else:
        b_h = b_h * tl.exp(b_clast)[:, None] + tl.dot(tl.trans(b_kg), b_v.to(tl.float32), input_precision="ieee")
    return b_h


@triton.jit
def wkv6_fwd_chunked_kernel(r, k, v, w, u, o, h0, ht, hs, cu_seqlens, chunk_offsets, scale, T,
                            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                            USE_H0: tl.constexpr, STORE_HT: tl.constexpr, VARLEN: tl.constexpr,
                            DOT16: tl.constexpr, STORE_O: tl.constexpr, STORE_STATES: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = seq_bounds(cu_seqlens, i_n, T, VARLEN)
    boc = first_chunk(chunk_offsets, i_n, T, BT, VARLEN)

    o_i = tl.arange(0, BT)  # token index inside a chunk (rows of A)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]

    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + p_state, mask=m_kv, other=0.)

    for t0 in range(bos, eos, BT):
        if STORE_STATES:  # the backward's forward-time pass: keep the state at every chunk start
            p_hs = ((boc + (t0 - bos) // BT) * H + i_h).to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
            tl.store(hs + p_hs, b_h, mask=m_kv)
        o_t = t0 + o_i
        m_t = o_t < eos
        p_k = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        p_v = (o_t[:, None] * H + i_h) * V + o_v[None, :]
        m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
        b_q = tl.load(r + p_k, mask=m_tk, other=0.).to(tl.float32) * scale
        b_k = tl.load(k + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_tv, other=0.)
        b_c, b_cp, b_clast = _chunk_decays(w, p_k, m_tk)
        b_A = _intra_weights(k, b_q, b_k, b_u, b_c, b_cp, t0, eos, i_h, o_i, o_k, m_k, H, K, BT)
        b_o = _chunk_output(b_q, b_cp, b_h, b_A, b_v, DOT16)
        b_h = _state_update(b_h, b_k, b_c, b_clast, b_v, DOT16)
        if STORE_O:
            tl.store(o + p_v, b_o.to(o.dtype.element_ty), mask=m_tv)

    if STORE_HT:
        tl.store(ht + p_state, b_h, mask=m_kv)


@triton.jit
def wkv6_state_pass_kernel(k, v, w, h0, ht, hs, cu_seqlens, chunk_offsets, T,
                           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                           BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                           USE_H0: tl.constexpr, STORE_HT: tl.constexpr, VARLEN: tl.constexpr,
                           DOT16: tl.constexpr):
    """Parallel schedule, pass 1: only the state recurrence, every chunk-start state to ``hs``.

    The key rows of S are independent too (the decay is diagonal), so a program owns a BK×BV tile.
    """
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = seq_bounds(cu_seqlens, i_n, T, VARLEN)
    boc = first_chunk(chunk_offsets, i_n, T, BT, VARLEN)

    o_i = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + p_state, mask=m_kv, other=0.)
    for t0 in range(bos, eos, BT):
        p_hs = ((boc + (t0 - bos) // BT) * H + i_h).to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
        tl.store(hs + p_hs, b_h, mask=m_kv)
        o_t = t0 + o_i
        m_t = o_t < eos
        p_k = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        p_v = (o_t[:, None] * H + i_h) * V + o_v[None, :]
        m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
        b_k = tl.load(k + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_tv, other=0.)
        b_c, b_cp, b_clast = _chunk_decays(w, p_k, m_tk)
        b_h = _state_update(b_h, b_k, b_c, b_clast, b_v, DOT16)
    if STORE_HT:
        tl.store(ht + p_state, b_h, mask=m_kv)


@triton.jit
def wkv6_output_kernel(r, k, v, w, u, o, hs, cu_seqlens, chunk_indices, scale, T,
                       H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                       BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       VARLEN: tl.constexpr, DOT16: tl.constexpr):
    """Parallel schedule, pass 2: one chunk's output from its starting state ``hs[chunk]``.

    Programs are independent: grid (all chunks of the batch, V-blocks, heads).
    """
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, t0 = chunk_of(cu_seqlens, chunk_indices, i_c, T, BT, VARLEN)

    o_i = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_t = t0 + o_i
    m_t = o_t < eos
    p_k = (o_t[:, None] * H + i_h) * K + o_k[None, :]
    p_v = (o_t[:, None] * H + i_h) * V + o_v[None, :]
    m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]

    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_q = tl.load(r + p_k, mask=m_tk, other=0.).to(tl.float32) * scale
    b_k = tl.load(k + p_k, mask=m_tk, other=0.).to(tl.float32)
    b_v = tl.load(v + p_v, mask=m_tv, other=0.)
    b_c, b_cp, b_clast = _chunk_decays(w, p_k, m_tk)
    b_A = _intra_weights(k, b_q, b_k, b_u, b_c, b_cp, t0, eos, i_h, o_i, o_k, m_k, H, K, BT)
    p_hs = (i_c * H + i_h).to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    b_h = tl.load(hs + p_hs, mask=m_kv, other=0.)
    b_o = _chunk_output(b_q, b_cp, b_h, b_A, b_v, DOT16)
    tl.store(o + p_v, b_o.to(o.dtype.element_ty), mask=m_tv)


@triton.jit
def _chunk_adjoint_dots(b_do, b_v, b_h, b_dh, b_kg, v, DOT16: tl.constexpr):
    """The chunk's four adjoint products: dA = dO Vᵀ, dQ~ = dO Sᵀ, dK~ = V dSᵀ and K~ dS (the
    inter-chunk part of dV), on 16-bit operands (v's dtype) or exact float32 (``_mm``, the
    sub-chunk kernels' product)."""
    return (_mm(b_do, tl.trans(b_v), v, DOT16), _mm(b_do, tl.trans(b_h), v, DOT16),
            _mm(b_v, tl.trans(b_dh), v, DOT16), _mm(b_kg, b_dh, v, DOT16))


@triton.jit
def _intra_grads(k, b_q, b_k, b_u, b_v, b_do, b_c, b_cp, b_dA, t0, eos, i_h, o_i, o_k, m_k,
                 H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    """Inside the chunk: A rebuilt column by column with exact exponents (the bonus on its
    diagonal), dA's strictly lower part pushed into dq and dk, and dA's diagonal do_i · v_i."""
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    b_dq_in = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk_in = tl.zeros([BT, BK], dtype=tl.float32)
    for j in range(0, BT):
        t_j = t0 + j + 0 * o_k
        b_kj = tl.load(k + (t_j * H + i_h) * K + o_k, mask=m_k & (t_j < eos), other=0.).to(tl.float32)
        b_cj = tl.sum(tl.where(o_i[:, None] == j, b_c, 0.), axis=0)
        b_e = tl.exp(tl.where(o_i[:, None] > j, b_cp - b_cj[None, :], float("-inf")))
        b_A = tl.where(o_i[None, :] == j, tl.sum(b_q * b_kj[None, :] * b_e, axis=1)[:, None], b_A)
        b_dAj = tl.sum(tl.where(o_i[None, :] == j, b_dA, 0.), axis=1)       # column j of dA
        b_dq_in += b_dAj[:, None] * b_kj[None, :] * b_e
        b_dk_in = tl.where(o_i[:, None] == j, tl.sum(b_dAj[:, None] * b_q * b_e, axis=0)[None, :], b_dk_in)
    b_dAd = tl.sum(b_do * b_v, axis=1)                                      # dA[i, i] = do_i · v_i
    b_A = tl.where(o_i[:, None] == o_i[None, :], tl.sum(b_q * b_u[None, :] * b_k, axis=1)[:, None], b_A)
    return b_A, b_dq_in, b_dk_in, b_dAd


@triton.jit
def _decay_grads(b_q, b_k, b_qg, b_kg, b_dqg, b_dkg, b_dq_in, b_dk_in, b_dh, b_h, b_clast):
    """dw of one chunk: the gradients of the cumulative decays c_i, c_{i-1} and c_last, each
    pushed back to the w_m it sums (c_i for i >= m, c_{i-1} for i > m, c_last for all)."""
    b_dcp = b_qg * b_dqg + b_q * b_dq_in
    b_dc = -b_k * b_dk_in - b_kg * b_dkg
    b_dclast = tl.sum(b_kg * b_dkg, axis=0) + tl.exp(b_clast) * tl.sum(b_dh * b_h, axis=1)
    # two reverse cumulative sums over the chunk's rows
    return (tl.sum(b_dc, axis=0)[None, :] - tl.cumsum(b_dc, axis=0) + b_dc
            + tl.sum(b_dcp, axis=0)[None, :] - tl.cumsum(b_dcp, axis=0) + b_dclast[None, :])


@triton.jit
def wkv6_bwd_chunked_kernel(r, k, v, w, u, do, hs, dht, dr, dk, dv, dw, du, dh0, cu_seqlens, chunk_offsets,
                            scale, T, rows,
                            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                            USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, VARLEN: tl.constexpr,
                            DOT16: tl.constexpr):
    """Chunks in reverse order, dS (the gradient of the state at the chunk's end) in registers."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = seq_bounds(cu_seqlens, i_n, T, VARLEN)
    boc = first_chunk(chunk_offsets, i_n, T, BT, VARLEN)
    NT = tl.num_programs(1)

    o_i = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    p_part = i_v.to(tl.int64) * rows * H * K  # this V-block's slab of the partial-sum buffers
    m_low = o_i[:, None] >= o_i[None, :]      # causal, diagonal included (the bonus lives there)

    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(dht + p_state, mask=m_kv, other=0.)
    b_du = tl.zeros([BK], dtype=tl.float32)

    n_chunks = tl.cdiv(eos - bos, BT)
    for i in range(0, n_chunks):
        i_c = n_chunks - 1 - i
        t0 = bos + i_c * BT
        o_t = t0 + o_i
        m_t = o_t < eos
        p_k = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        p_v = (o_t[:, None] * H + i_h) * V + o_v[None, :]
        m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
        b_q = tl.load(r + p_k, mask=m_tk, other=0.).to(tl.float32) * scale
        b_k = tl.load(k + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_do = tl.load(do + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_c, b_cp, b_clast = _chunk_decays(w, p_k, m_tk)
        p_hs = ((boc + i_c) * H + i_h).to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
        b_h = tl.load(hs + p_hs, mask=m_kv, other=0.)        # S at the chunk start
        b_qg = b_q * tl.exp(b_cp)                              # Q~ = q ⊙ exp(c_{i-1})
        b_kg = b_k * tl.exp(b_clast[None, :] - b_c)            # K~ = k ⊙ exp(c_last - c_j)
        b_dA, b_dqg, b_dkg, b_dv = _chunk_adjoint_dots(b_do, b_v, b_h, b_dh, b_kg, v, DOT16)
        b_dA = tl.where(m_low, b_dA, 0.)
        b_A, b_dq_in, b_dk_in, b_dAd = _intra_grads(k, b_q, b_k, b_u, b_v, b_do, b_c, b_cp, b_dA, t0, eos, i_h,
                                                    o_i, o_k, m_k, H, K, BT, BK)
        # dq, dk (this V-block's share), dv, du
        b_dq = b_dqg * tl.exp(b_cp) + b_dq_in + b_dAd[:, None] * b_u[None, :] * b_k
        b_dk = b_dkg * tl.exp(b_clast[None, :] - b_c) + b_dk_in + b_dAd[:, None] * b_u[None, :] * b_q
        b_dv += _mm(tl.trans(b_A), b_do, v, DOT16)
        b_du += tl.sum(b_dAd[:, None] * b_q * b_k, axis=0)
        b_dw = _decay_grads(b_q, b_k, b_qg, b_kg, b_dqg, b_dkg, b_dq_in, b_dk_in, b_dh, b_h, b_clast)
        tl.store(dr + p_part + p_k, b_dq * scale, mask=m_tk)
        tl.store(dk + p_part + p_k, b_dk, mask=m_tk)
        tl.store(dw + p_part + p_k, b_dw, mask=m_tk)
        tl.store(dv + p_v, b_dv.to(dv.dtype.element_ty), mask=m_tv)
        # dS at the chunk start: diag(exp(c_last)) dS + Q~ᵀ dO
        b_dh = b_dh * tl.exp(b_clast)[:, None] + _mm(tl.trans(b_qg), b_do, v, DOT16)

    tl.store(du + (i_v.to(tl.int64) * NT + i_nh) * K + o_k, b_du, mask=m_k)
    if STORE_DH0:
        tl.store(dh0 + p_state, b_dh, mask=m_kv)


def _tiles(K, V):
    # tl.dot needs every tile side >= 16; smaller K or V are padded with masked lanes
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(triton.next_power_of_2(V), 64 if device.has_gpu() else 32))
    return BK, BV, triton.cdiv(V, BV)


def _state_tiles(K, V):
    # the state pass has no reduction over K, so it splits K as well as V: more programs, same work
    return max(16, min(triton.next_power_of_2(K), 32)), max(16, min(triton.next_power_of_2(V), 32))


def state_pass(k, v, w, initial_state, output_final_state, cu_seqlens, N, chunk_size):
    """Parallel schedule, pass 1: every chunk-start state ``hs`` [n_chunks, H, K, V] float32 (and ht)."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    BK, BV = _state_tiles(K, V)
    varlen = cu_seqlens is not None
    offs, _, n_chunks = chunk_table(cu_seqlens, B, T, chunk_size, k.device)
    ht = torch.empty(N, H, K, V, dtype=torch.float32, device=k.device) if output_final_state else None
    hs = torch.empty(n_chunks, H, K, V, dtype=torch.float32, device=k.device)
    wkv6_state_pass_kernel[(triton.cdiv(K, BK), triton.cdiv(V, BV), N * H)](
        k, v, w, initial_state, ht, hs,
        cu_arg(cu_seqlens, k.device), offs, B * T if varlen else T,
        H=H, K=K, V=V, BT=chunk_size, BK=BK, BV=BV, USE_H0=initial_state is not None,
        STORE_HT=output_final_state, VARLEN=varlen, DOT16=dot16(k))
    return ht, hs, offs


def fwd_parallel(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N, chunk_size):
    """Parallel schedule: the state pass, then one output program per (chunk, V-block, head)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    BK, BV, NV = _tiles(K, V)
    varlen = cu_seqlens is not None
    ht, hs, _ = state_pass(k, v, w, initial_state, output_final_state, cu_seqlens, N, chunk_size)
    _, idx, _ = chunk_table(cu_seqlens, B, T, chunk_size, r.device)
    o = torch.empty_like(v)
    wkv6_output_kernel[(hs.shape[0], NV, H)](  # hs.shape[0]: every chunk of the batch (T ≥ 1: at least one)
        r, k, v, w, u, o, hs, cu_arg(cu_seqlens, r.device), idx, float(scale), B * T if varlen else T,
        H=H, K=K, V=V, BT=chunk_size, BK=BK, BV=BV, VARLEN=varlen, DOT16=dot16(r))
    return o, ht


def fwd(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N, chunk_size,
        store_o=True, store_states=False):
    """Launch the chunked forward; with ``store_states`` also return every chunk's starting state."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    BK, BV, NV = _tiles(K, V)
    varlen = cu_seqlens is not None
    offs, _, n_chunks = chunk_table(cu_seqlens, B, T, chunk_size, r.device)
    o = torch.empty_like(v) if store_o else None
    ht = torch.empty(N, H, K, V, dtype=torch.float32, device=r.device) if output_final_state else None
    hs = torch.empty(n_chunks, H, K, V, dtype=torch.float32, device=r.device) if store_states else None
    wkv6_fwd_chunked_kernel[(NV, N * H)](
        r, k, v, w, u, o, initial_state,
        ht, hs, cu_arg(cu_seqlens, r.device), offs,
        float(scale), B * T if varlen else T,
        H=H, K=K, V=V, BT=chunk_size, BK=BK, BV=BV, USE_H0=initial_state is not None,
        STORE_HT=output_final_state, VARLEN=varlen, DOT16=dot16(r), STORE_O=store_o,
        STORE_STATES=store_states)
    return o, ht, hs, offs


def bwd(r, k, v, w, u, scale, initial_state, cu_seqlens, N, chunk_size, do, dht, schedule="sequential"):
    """Two launches: the chunk-start states again, then chunks in reverse.

    The states come from the forward kernel with its output switched off (``"sequential"``) or
    from the lighter state pass (``"parallel"``); the same float32 values either way.
    """
    B, T, H, K = r.shape
    V = v.shape[-1]
    BK, BV, NV = _tiles(K, V)
    dev, f32 = r.device, torch.float32
    varlen = cu_seqlens is not None
    if schedule == "parallel":
        _, hs, offs = state_pass(k, v, w, initial_state, False, cu_seqlens, N, chunk_size)
    else:
        _, _, hs, offs = fwd(r, k, v, w, u, scale, initial_state, False, cu_seqlens, N, chunk_size,
                             store_o=False, store_states=True)
    do = do.contiguous()
    dht = dht.contiguous() if dht is not None else None
    dr, dk, dw = (torch.empty(NV, B, T, H, K, dtype=f32, device=dev) for _ in range(3))
    du = torch.empty(NV, N, H, K, dtype=f32, device=dev)
    dv = torch.empty_like(v)
    dh0 = torch.empty(N, H, K, V, dtype=f32, device=dev) if initial_state is not None else None
    wkv6_bwd_chunked_kernel[(NV, N * H)](
        r, k, v, w, u, do, hs, dht, dr, dk, dv, dw, du,
        dh0, cu_arg(cu_seqlens, dev), offs, float(scale),
        B * T if varlen else T, B * T,
        H=H, K=K, V=V, BT=chunk_size, BK=BK, BV=BV, USE_DHT=dht is not None, STORE_DH0=dh0 is not None,
        VARLEN=varlen, DOT16=dot16(r))
    dr, dk, dw = (x.sum(0) if NV > 1 else x[0] for x in (dr, dk, dw))
    du = du.sum((0, 1))
    return dr.to(r.dtype), dk.to(k.dtype), dv, dw.to(w.dtype), du.to(u.dtype), dh0


class _ChunkedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N, chunk_size,
                schedule):
        if schedule == "parallel":
            o, ht = fwd_parallel(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N,
                                 chunk_size)
        else:
            o, ht, _, _ = fwd(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N, chunk_size)
        ctx.save_for_backward(r, k, v, w, u, initial_state, cu_seqlens)
        ctx.scale, ctx.N, ctx.chunk_size, ctx.schedule = scale, N, chunk_size, schedule
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        r, k, v, w, u, initial_state, cu_seqlens = ctx.saved_tensors
        dr, dk, dv, dw, du, dh0 = bwd(r, k, v, w, u, ctx.scale, initial_state, cu_seqlens, ctx.N,
                                      ctx.chunk_size, do, dht, ctx.schedule)
        return dr, dk, dv, dw, du, None, dh0, None, None, None, None, None


def triton_chunked(r, k, v, w, u, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None,
                   chunk_size=None, schedule="subchunk", check_values=True):
    """RWKV-6 with the chunked Triton kernels (forward and backward).

    ``r, k, w``: [B, T, H, K]; ``v``: [B, T, H, V]; ``u``: [H, K]; ``w`` is the log decay (≤ 0);
    ``initial_state``: [N, H, K, V], any float dtype (cast to float32), or None; ``scale``: a finite
    real number; ``cu_seqlens``: [N + 1] int, with B == 1;
    ``chunk_size``: 16, 32 or 64 tokens per chunk (default 64 for ``"subchunk"``, 16 otherwise);
    ``schedule``: ``"subchunk"`` (the fast design of :mod:`rwkvlab.wkv6.kernels_subchunk`: a prep
    kernel per sub-chunk and a state pass, then every chunk in parallel, on tensor cores),
    ``"sequential"`` (one kernel walking the chunks in order) or ``"parallel"`` (a state pass, then
    outputs parallel over chunks of 16, intra weights built column by column) — the two earlier
    rungs, kept for the chapter. Returns ``(o, final_state)`` as :func:`triton_recurrent` does; any
    T ≥ 1 (the last chunk is masked). ``check_values=False`` skips the check of the values (NaN/Inf,
    the sign of w) and with it the subchunk forward's one host–device sync; structure is still
    checked (NaN in is then NaN out, as in FLA's kernels, which check nothing).

        o_t = scale · r_tᵀ (S_{t-1} + diag(u) k_t v_tᵀ),   S_t = diag(exp(w_t)) S_{t-1} + k_t v_tᵀ
    """
    if not isinstance(schedule, str) or schedule not in ("subchunk", "sequential", "parallel"):
        raise ValueError(f"schedule: expected 'subchunk', 'sequential' or 'parallel', got {schedule!r}")
    if not isinstance(check_values, bool):
        raise ValueError(f"check_values: expected True or False, got {check_values!r}")
    # the subchunk launches check the values themselves, as they read them (no extra pass, one wait)
    B, T, H, K, V, N = _rec.check_inputs(r, k, v, w, u, scale, initial_state, cu_seqlens,
                                         check_values=check_values and schedule != "subchunk")
    if chunk_size is None:
        chunk_size = 64 if schedule == "subchunk" else 16
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size not in (16, 32, 64):
        raise ValueError(f"chunk_size: expected 16, 32 or 64 (tl.dot needs tiles of at least 16), got {chunk_size!r}")
    r, k, v, w, u = (x.contiguous() for x in (r, k, v, w, u))
    if initial_state is not None:
        initial_state = initial_state.float().contiguous()   # any float dtype; the kernels keep float32
    if schedule == "subchunk":
        return _sub.triton_subchunk(r, k, v, w, u, float(scale), initial_state, bool(output_final_state),
                                    cu_seqlens, N, int(chunk_size), check_values)
    return _ChunkedFunction.apply(r, k, v, w, u, float(scale), initial_state, bool(output_final_state),
                                  cu_seqlens, N, int(chunk_size), schedule)
