"""RWKV-7 in chunkwise-parallel (WY / UT) form as one Triton kernel, the state hand-off on tl.dot.

One program owns one (sequence·head, V-block) pair and walks the sequence chunk by chunk, its
state tile ``S[:, v-block]`` in registers. Per chunk of ``BT`` tokens (chapter 10's algebra;
``c_t = Σ_{j≤t} w_j`` the running log decay inside the chunk)::

    A_ab[t,i] = Σ_κ a_tκ e^{c_{t-1,κ} − c_iκ} b_iκ   (i < t)     A_ak: the same with k_i
    A_rb[t,i] = Σ_κ r_tκ e^{c_tκ − c_iκ} b_iκ        (i ≤ t)     A_rk: the same with k_i
    T  = (I − A_ab)^{-1}                (forward substitution, in the kernel)
    W  = T (a ⊙ e^{c_{t-1}})            U = T A_ak V
    E  = W S + U                        (the rows a_t^T S_{t-1} of the chunk)
    O  = scale · ((r ⊙ e^{c_t}) S + A_rk V + A_rb E)
    S ← diag(e^{c_C}) S + (k ⊙ e^{c_C − c})^T V + (b ⊙ e^{c_C − c})^T E

Every exponent is a log decay summed over a forward interval, so it is ≤ 0 and nothing
overflows for any ``w ≤ 0``; the four pairwise matrices are formed pair by pair from a
[BT, BT, BK] block of exponents instead of as a product ``e^{c_t} e^{−c_i}`` (which overflows
once −c passes ~88). The products with the state and with V run on ``tl.dot``.

Backward: not a chunked kernel. The forward stores the state at every chunk start, which is
exactly the checkpoint the fused recurrent backward (:mod:`.kernels_recurrent`) restarts from,
so gradients go through that kernel (one recomputed forward per chunk, then a reverse walk).
"""
from __future__ import annotations

import numbers

import torch
import triton
import triton.language as tl

from .. import device
from . import kernels_recurrent as _rec

__all__ = ["triton_chunked"]


@triton.jit
def _chunk_fwd_kernel(r, w, k, v, a, b, o, h0, ht, ckpt, cu, ck_off, scale,
                      T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                      BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      USE_H0: tl.constexpr, STORE_HT: tl.constexpr, STORE_CKPT: tl.constexpr,
                      VARLEN: tl.constexpr, DOT_PREC: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    if VARLEN:
        bos = tl.load(cu + i_n).to(tl.int32)
        eos = tl.load(cu + i_n + 1).to(tl.int32)
        i_b = 0
        c0 = tl.load(ck_off + i_n).to(tl.int32)
    else:
        bos = 0
        eos = T
        i_b = i_n
        c0 = i_n * tl.cdiv(T, BT)
    L = eos - bos
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = o_k[:, None] * V + o_v[None, :]
    p_s = i_nh * K * V + p_kv
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        S += tl.load(h0 + p_s, mask=m_kv, other=0.).to(tl.float32)
    # masks of the pairwise matrices: causal-inclusive (read-out) and strict (removal)
    incl = o_t[:, None] >= o_t[None, :]
    strict = o_t[:, None] > o_t[None, :]
    eye = tl.where(o_t[:, None] == o_t[None, :], 1., 0.)
    base_k = (i_b * T + bos) * H * K + i_h * K
    base_v = (i_b * T + bos) * H * V + i_h * V
    for i_c in range(0, tl.cdiv(L, BT)):
        if STORE_CKPT:
            # the state at the chunk's start: the recurrent backward restarts from it
            tl.store(ckpt + ((c0 + i_c) * H + i_h) * K * V + p_kv, S, mask=m_kv)
        # load one chunk; rows past the sequence's end are zeros (w = 0, k = a = b = 0: no effect)
        m_t = (i_c * BT + o_t) < L
        off_k = base_k + (i_c * BT + o_t)[:, None] * H * K + o_k[None, :]
        off_v = base_v + (i_c * BT + o_t)[:, None] * H * V + o_v[None, :]
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_r = tl.load(r + off_k, mask=m_tk, other=0.).to(tl.float32)
        b_w = tl.load(w + off_k, mask=m_tk, other=0.).to(tl.float32)
        b_k = tl.load(k + off_k, mask=m_tk, other=0.).to(tl.float32)
        b_a = tl.load(a + off_k, mask=m_tk, other=0.).to(tl.float32)
        b_b = tl.load(b + off_k, mask=m_tk, other=0.).to(tl.float32)
        b_v = tl.load(v + off_v, mask=m_tv, other=0.).to(tl.float32)
        # running log decays c_t (inclusive) and c_{t-1} (exclusive); c_C is the last row
        c = tl.cumsum(b_w, 0)
        c_prev = c - b_w
        c_last = tl.sum(tl.where(o_t[:, None] == BT - 1, c, 0.), 0)
        # pairwise exponents [t, i, κ], masked to -inf *before* exp so no masked entry overflows
        x_r = tl.exp(tl.where(incl[:, :, None], c[:, None, :] - c[None, :, :], float("-inf")))
        x_a = tl.exp(tl.where(strict[:, :, None], c_prev[:, None, :] - c[None, :, :], float("-inf")))
        A_rb = tl.sum(b_r[:, None, :] * x_r * b_b[None, :, :], 2)
        A_rk = tl.sum(b_r[:, None, :] * x_r * b_k[None, :, :], 2)
        A_ab = tl.sum(b_a[:, None, :] * x_a * b_b[None, :, :], 2)
        A_ak = tl.sum(b_a[:, None, :] * x_a * b_k[None, :, :], 2)
        # UT transform by forward substitution: row t of T is e_t + Σ_{i<t} A_ab[t, i] T_i
        Tm = eye
        for t in tl.static_range(1, BT):
            a_row = tl.sum(tl.where(o_t[:, None] == t, A_ab, 0.), 0)
            new = tl.sum(a_row[:, None] * Tm, 0)
            Tm = tl.where(o_t[:, None] == t, Tm + new[None, :], Tm)
        # WY pieces, then the removal rows E = W S + U given this chunk's start state
        W = tl.dot(Tm, b_a * tl.exp(c_prev), input_precision=DOT_PREC)
        U = tl.dot(Tm, tl.dot(A_ak, b_v, input_precision=DOT_PREC), input_precision=DOT_PREC)
        E = tl.dot(W, S, input_precision=DOT_PREC) + U
        b_o = tl.dot(b_r * tl.exp(c), S, input_precision=DOT_PREC) \
            + tl.dot(A_rk, b_v, input_precision=DOT_PREC) + tl.dot(A_rb, E, input_precision=DOT_PREC)
        tl.store(o + off_v, (scale * b_o).to(o.dtype.element_ty), mask=m_tv)
        # hand the state to the next chunk
        to_end = tl.where(m_tk, tl.exp(c_last[None, :] - c), 0.)
        S = tl.exp(c_last)[:, None] * S \
            + tl.dot(tl.trans(b_k * to_end), b_v, input_precision=DOT_PREC) \
            + tl.dot(tl.trans(b_b * to_end), E, input_precision=DOT_PREC)
    if STORE_HT:
        tl.store(ht + p_s, S, mask=m_kv)


def forward(r, w, k, v, a, b, scale, h0, store_ht, cu_seqlens, store_ckpt, chunk_size):
    """Launch the chunked forward on contiguous tensors. Returns (o, final_state, checkpoints),
    the checkpoints being the state at every chunk start (the recurrent backward's layout)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    N, n_ck, cu, ck_off = _rec._layout(B, T, cu_seqlens, chunk_size, r.device)
    BV = _rec._block_v(V)
    o = torch.empty_like(v)
    ht = torch.empty(N, H, K, V, dtype=torch.float32, device=r.device) if store_ht else None
    ckpt = torch.empty(n_ck, H, K, V, dtype=torch.float32, device=r.device) if store_ckpt else None
    # float32 inputs get full-precision dots; on a GPU, 16-bit inputs may use tf32 tensor cores
    prec = "ieee" if r.dtype == torch.float32 else "tf32"
    grid = (triton.cdiv(V, BV), N * H)
    _chunk_fwd_kernel[grid](r, w, k, v, a, b, o, h0, ht, ckpt, cu, ck_off, scale,
                            T, H=H, K=K, V=V, BT=chunk_size, BK=K, BV=BV,
                            USE_H0=h0 is not None, STORE_HT=store_ht, STORE_CKPT=store_ckpt,
                            VARLEN=cu_seqlens is not None, DOT_PREC=prec)
    return o, ht, ckpt


class _Chunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, w, k, v, a, b, scale, h0, output_final_state, cu_seqlens, chunk_size):
        needs_grad = any(ctx.needs_input_grad[:6]) or ctx.needs_input_grad[7]
        o, ht, ckpt = forward(r, w, k, v, a, b, scale, h0, output_final_state, cu_seqlens,
                              store_ckpt=needs_grad, chunk_size=chunk_size)
        ctx.save_for_backward(r, w, k, v, a, b, ckpt, cu_seqlens)
        ctx.scale, ctx.has_h0, ctx.chunk_size = scale, h0 is not None, chunk_size
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        r, w, k, v, a, b, ckpt, cu_seqlens = ctx.saved_tensors
        # the chunk-start states are the recurrent backward's checkpoints (segment = chunk)
        dr, dw, dk, dv, da, db, dh0 = _rec.backward(
            r, w, k, v, a, b, do.contiguous(), None if dht is None else dht.contiguous(), ckpt,
            ctx.scale, cu_seqlens, need_dh0=ctx.has_h0, C=ctx.chunk_size)
        return dr, dw, dk, dv, da, db, None, dh0, None, None, None


def triton_chunked(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False,
                   cu_seqlens=None, chunk_size=16):
    """RWKV-7 with the chunked (WY / UT) Triton kernel; differentiable in every tensor input.

    Shapes: ``r, w, k, a, b`` [B, T, H, K]; ``v`` [B, T, H, V]; ``initial_state`` [N, H, K, V]
    float32 (N = B, or ``len(cu_seqlens) - 1`` with B == 1). K and V: powers of two in 16..128;
    ``chunk_size`` 16, 32 or 64 (``tl.dot`` needs tiles of at least 16).
    Returns ``(o [B, T, H, V] in the input dtype, final_state [N, H, K, V] float32 or None)``.

        S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T,   o_t = scale · S_t^T r_t

    The backward runs the fused recurrent backward kernel from the chunk-start states.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) \
            or chunk_size not in (16, 32, 64):
        raise ValueError(f"chunk_size: expected 16, 32 or 64, got {chunk_size!r}")
    scale, *_ = _rec._check_inputs(r, w, k, v, a, b, scale, initial_state, cu_seqlens)
    r, w, k, v, a, b = (x.contiguous() for x in (r, w, k, v, a, b))
    h0 = None if initial_state is None else initial_state.float().contiguous()
    return _Chunked.apply(r, w, k, v, a, b, scale, h0, bool(output_final_state), cu_seqlens,
                          int(chunk_size))
