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
(e.g. 11 tokens of ``w = -8``). Three matmuls per chunk run on ``tl.dot``: ``q̃ S``, ``A V`` and
``k̃ᵀ V``.

Who owns what. One program instance per (sequence·head, block of BV value columns), as in the
recurrent kernel, walking the chunks in order and carrying its K×BV slice of the state in
registers between them: state passing and output in one kernel. (FLA splits this into a kernel
that writes every chunk's starting state to memory and an output kernel parallel over chunks;
that wins when B·H·V/BV is too small to fill the GPU, at the price of storing the states.)

Backward: the gradient is computed by the recurrent backward kernels of
:mod:`rwkvlab.wkv6.kernels_recurrent` (Triton, a forward-time pass that recomputes the states and
a reverse-time pass for ``dS``), not by chunked kernels. It is exact, but its sequential loop is
over tokens, not chunks, so training speed is that of the recurrent kernel.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import device
from . import kernels_recurrent as _rec
from .kernels_recurrent import _seq_bounds

__all__ = ["triton_chunked"]


@triton.jit
def wkv6_fwd_chunked_kernel(r, k, v, w, u, o, h0, ht, cu_seqlens, scale, T,
                            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                            USE_H0: tl.constexpr, STORE_HT: tl.constexpr, VARLEN: tl.constexpr,
                            LOW_PREC_DOT: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = _seq_bounds(cu_seqlens, i_n, T, VARLEN)

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
        o_t = t0 + o_i
        m_t = o_t < eos
        p_k = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        p_v = (o_t[:, None] * H + i_h) * V + o_v[None, :]
        m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
        b_q = tl.load(r + p_k, mask=m_tk, other=0.).to(tl.float32) * scale
        b_k = tl.load(k + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_tv, other=0.)
        # padded rows get w = 0 (no decay), so c at the last row is c_last of the real tokens
        b_w = tl.load(w + p_k, mask=m_tk, other=0.).to(tl.float32)
        b_c = tl.cumsum(b_w, axis=0)           # c_i, inclusive, relative to the chunk start
        b_cp = b_c - b_w                       # c_{i-1}
        b_clast = tl.sum(b_w, axis=0)          # c_last

        # intra-chunk weights A[i, j], one column at a time with the exact exponent c_{i-1} - c_j
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

        b_qg = b_q * tl.exp(b_cp)                              # q_i ⊙ exp(c_{i-1})
        b_kg = b_k * tl.exp(b_clast[None, :] - b_c)            # k_j ⊙ exp(c_last - c_j)
        if LOW_PREC_DOT:  # tensor cores in the input's 16-bit dtype; the state stays float32
            b_o = tl.dot(b_qg.to(b_v.dtype), b_h.to(b_v.dtype)) + tl.dot(b_A.to(b_v.dtype), b_v)
            b_h = b_h * tl.exp(b_clast)[:, None] + tl.dot(tl.trans(b_kg).to(b_v.dtype), b_v)
        else:             # float32 throughout (and always in the interpreter, where bf16 dots are wrong)
            b_vf = b_v.to(tl.float32)
            b_o = tl.dot(b_qg, b_h, input_precision="ieee") + tl.dot(b_A, b_vf, input_precision="ieee")
            b_h = b_h * tl.exp(b_clast)[:, None] + tl.dot(tl.trans(b_kg), b_vf, input_precision="ieee")
        tl.store(o + p_v, b_o.to(o.dtype.element_ty), mask=m_tv)

    if STORE_HT:
        tl.store(ht + p_state, b_h, mask=m_kv)


def fwd(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N, chunk_size):
    B, T, H, K = r.shape
    V = v.shape[-1]
    # tl.dot needs every tile side >= 16; smaller K or V are padded with masked lanes
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(triton.next_power_of_2(V), 64 if device.has_gpu() else 32))
    NV = triton.cdiv(V, BV)
    o = torch.empty_like(v)
    ht = torch.empty(N, H, K, V, dtype=torch.float32, device=r.device) if output_final_state else None
    varlen = cu_seqlens is not None
    low_prec = (r.dtype in (torch.float16, torch.bfloat16)) and not device.interpreting()
    wkv6_fwd_chunked_kernel[(NV, N * H)](
        r, k, v, w, u, o, initial_state if initial_state is not None else o, ht if ht is not None else o,
        _rec._cu(cu_seqlens, r.device), float(scale), B * T if varlen else T,
        H=H, K=K, V=V, BT=chunk_size, BK=BK, BV=BV, USE_H0=initial_state is not None,
        STORE_HT=output_final_state, VARLEN=varlen, LOW_PREC_DOT=low_prec)
    return o, ht


class _ChunkedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N, chunk_size):
        o, ht = fwd(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N, chunk_size)
        ctx.save_for_backward(r, k, v, w, u, initial_state, cu_seqlens)
        ctx.scale, ctx.N = scale, N
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        r, k, v, w, u, initial_state, cu_seqlens = ctx.saved_tensors
        # the recurrent backward kernels (see the module docstring)
        dr, dk, dv, dw, du, dh0 = _rec.bwd(r, k, v, w, u, ctx.scale, initial_state, cu_seqlens, ctx.N, do, dht)
        return dr, dk, dv, dw, du, None, dh0, None, None, None, None


def triton_chunked(r, k, v, w, u, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None,
                   chunk_size=16):
    """RWKV-6 with the chunked Triton kernel (forward); backward through the recurrent kernels.

    ``r, k, w``: [B, T, H, K]; ``v``: [B, T, H, V]; ``u``: [H, K]; ``w`` is the log decay (≤ 0);
    ``initial_state``: [N, H, K, V] float32 or None; ``cu_seqlens``: [N + 1] int, with B == 1;
    ``chunk_size``: 16, 32 or 64 tokens per chunk. Returns ``(o, final_state)`` as
    :func:`triton_recurrent` does; any T ≥ 1 (the last chunk is masked).

        o_t = scale · r_tᵀ (S_{t-1} + diag(u) k_t v_tᵀ),   S_t = diag(exp(w_t)) S_{t-1} + k_t v_tᵀ
    """
    B, T, H, K, V, N = _rec.check_inputs(r, k, v, w, u, scale, initial_state, cu_seqlens)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size not in (16, 32, 64):
        raise ValueError(f"chunk_size: expected 16, 32 or 64 (tl.dot needs tiles of at least 16), got {chunk_size!r}")
    r, k, v, w, u = (x.contiguous() for x in (r, k, v, w, u))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    return _ChunkedFunction.apply(r, k, v, w, u, float(scale), initial_state, bool(output_final_state),
                                  cu_seqlens, N, int(chunk_size))
