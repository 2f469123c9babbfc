"""RWKV-6 as a fused recurrent Triton kernel, with a Triton backward pass.

With the state ``S`` in K×V layout, ``q_t = scale · r_t`` and the log decay ``w_t ≤ 0``:

    o_t = q_tᵀ (S_{t-1} + diag(u) k_t v_tᵀ)              (read the state, add the bonus)
    S_t = diag(exp(w_t)) S_{t-1} + k_t v_tᵀ             (decay the rows, write k_t v_tᵀ)

Shapes (FLA layout): ``r, k, w`` [B, T, H, K], ``v`` [B, T, H, V], ``u`` [H, K], states
[N, H, K, V] float32 with ``N = B`` (or ``len(cu_seqlens) - 1`` when ``B == 1``).

Who owns what. One program instance per (sequence·head, block of BV value columns): it keeps
its K×BV slice of the state in registers and walks the sequence one token at a time. The whole
key dimension sits in one tile (``BK = K``, K ≤ 128 here): the output ``o_t`` is a sum over
K, so keeping K whole means no program ever needs another's partial sums in the forward pass.
Value columns are independent (``o_t[j]`` needs only column ``j`` of the state), so splitting V
across programs is free.

Backward (derived in chapter 07). With ``dS_t`` the gradient of the loss with respect to
``S_t`` (``dS_T`` = the gradient flowing into the final state):

    dS_{t-1} = diag(exp(w_t)) dS_t + q_t do_tᵀ               (reverse-time recurrence)
    dr_t = scale · (S_{t-1} do_t + u ⊙ k_t (v_t · do_t))
    dk_t = dS_t v_t + u ⊙ q_t (v_t · do_t)
    dv_t = dS_tᵀ k_t + (q_tᵀ diag(u) k_t) do_t
    du   = Σ_t q_t ⊙ k_t (v_t · do_t)
    d initial_state = dS_0
    dw_t = rowsum(dS_T ⊙ S_T) + Σ_{m>t} r_m ⊙ dr'_m − Σ_{m≥t} k_m ⊙ dk'_m

where ``dr'``/``dk'`` are ``dr``/``dk`` without their bonus terms. The last line replaces the
direct ``dw_t = exp(w_t) ⊙ rowsum(dS_t ⊙ S_{t-1})``, which needs every state ``S_{t-1}`` during
the reverse pass: with it, no state is stored or rebuilt backwards (rebuilding by dividing by
``exp(w_t)`` is unstable). The backward therefore runs two kernels: a forward-time pass that
recomputes the states and produces ``dr`` (and ``rowsum(dS_T ⊙ S_T)``), then a reverse-time pass
for ``dS`` that produces ``dk, dv, dw, du`` and ``d initial_state``. Both split V across
programs, so ``dr, dk, dw, du`` (sums over V) come back as one partial sum per V-block and are
added up in torch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import device, validate
from ..kernels_common import cu_arg, seq_bounds

__all__ = ["triton_recurrent"]


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------
@triton.jit
def wkv6_fwd_recurrent_kernel(r, k, v, w, u, o, h0, ht, cu_seqlens, scale, T,
                              H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                              BK: tl.constexpr, BV: tl.constexpr,
                              USE_H0: tl.constexpr, STORE_HT: tl.constexpr, VARLEN: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = seq_bounds(cu_seqlens, i_n, T, VARLEN)

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]

    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    # S: this program's K×BV slice of the state, float32, in registers for the whole sequence
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + p_state, mask=m_kv, other=0.)

    for t in range(bos, eos):
        p_k = (t * H + i_h) * K + o_k
        p_v = (t * H + i_h) * V + o_v
        b_q = tl.load(r + p_k, mask=m_k, other=0.).to(tl.float32) * scale
        b_k = tl.load(k + p_k, mask=m_k, other=0.).to(tl.float32)
        b_w = tl.load(w + p_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_v, other=0.).to(tl.float32)
        b_kv = b_k[:, None] * b_v[None, :]
        # o_t = q_tᵀ (S_{t-1} + diag(u) k_t v_tᵀ): a reduction over the K rows of the tile
        b_o = tl.sum((b_h + b_u[:, None] * b_kv) * b_q[:, None], axis=0)
        # S_t = diag(exp(w_t)) S_{t-1} + k_t v_tᵀ
        b_h = b_h * tl.exp(b_w)[:, None] + b_kv
        tl.store(o + p_v, b_o.to(o.dtype.element_ty), mask=m_v)

    if STORE_HT:
        tl.store(ht + p_state, b_h, mask=m_kv)


@triton.jit
def wkv6_bwd_dr_kernel(r, k, v, w, u, do, h0, dht, dr, dwT, cu_seqlens, scale, T, rows,
                       H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr,
                       USE_H0: tl.constexpr, USE_DHT: tl.constexpr, VARLEN: tl.constexpr):
    """Forward-time pass of the backward: recompute S_t, emit this V-block's share of dr_t."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = seq_bounds(cu_seqlens, i_n, T, VARLEN)
    NT = tl.num_programs(1)  # partial sums are laid out [NV, rows = B·T, H, K]

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]

    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + p_state, mask=m_kv, other=0.)

    for t in range(bos, eos):
        p_k = (t * H + i_h) * K + o_k
        p_v = (t * H + i_h) * V + o_v
        b_k = tl.load(k + p_k, mask=m_k, other=0.).to(tl.float32)
        b_w = tl.load(w + p_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_v, other=0.).to(tl.float32)
        b_do = tl.load(do + p_v, mask=m_v, other=0.).to(tl.float32)
        # dr_t = scale · (S_{t-1} do_t + u ⊙ k_t (v_t · do_t)), this V-block's share
        b_dr = tl.sum(b_h * b_do[None, :], axis=1) + b_u * b_k * tl.sum(b_v * b_do, axis=0)
        tl.store(dr + i_v.to(tl.int64) * rows * H * K + p_k, b_dr * scale, mask=m_k)
        b_h = b_h * tl.exp(b_w)[:, None] + b_k[:, None] * b_v[None, :]

    # rowsum(dS_T ⊙ S_T): the final state's direct pull on the total decay, seeds dw
    b_a = tl.zeros([BK], dtype=tl.float32)
    if USE_DHT:
        b_a = tl.sum(tl.load(dht + p_state, mask=m_kv, other=0.) * b_h, axis=1)
    tl.store(dwT + (i_v.to(tl.int64) * NT + i_nh) * K + o_k, b_a, mask=m_k)


@triton.jit
def wkv6_bwd_dkvw_kernel(r, k, v, w, u, do, dr, dwT, dht, dk, dv, dw, du, dh0, cu_seqlens, scale, T, rows,
                         H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                         BK: tl.constexpr, BV: tl.constexpr,
                         USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, VARLEN: tl.constexpr):
    """Reverse-time pass: carry dS_t backwards, emit dk, dv, dw, du and dS_0."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = seq_bounds(cu_seqlens, i_n, T, VARLEN)
    NT = tl.num_programs(1)

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    p_part = i_v.to(tl.int64) * rows * H * K  # this V-block's slab of the partial-sum buffers

    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0.).to(tl.float32)
    # dS_T: the gradient that flows in through the final state
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(dht + p_state, mask=m_kv, other=0.)
    # running sum for dw, seeded with rowsum(dS_T ⊙ S_T) from the forward-time pass
    b_acc = tl.load(dwT + (i_v.to(tl.int64) * NT + i_nh) * K + o_k, mask=m_k, other=0.)
    b_du = tl.zeros([BK], dtype=tl.float32)

    for i in range(0, eos - bos):
        t = eos - 1 - i
        p_k = (t * H + i_h) * K + o_k
        p_v = (t * H + i_h) * V + o_v
        b_r = tl.load(r + p_k, mask=m_k, other=0.).to(tl.float32)
        b_q = b_r * scale
        b_k = tl.load(k + p_k, mask=m_k, other=0.).to(tl.float32)
        b_w = tl.load(w + p_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_v, other=0.).to(tl.float32)
        b_do = tl.load(do + p_v, mask=m_v, other=0.).to(tl.float32)
        b_vdo = tl.sum(b_v * b_do, axis=0)
        # here b_dh holds dS_t
        b_dk_state = tl.sum(b_dh * b_v[None, :], axis=1)                     # dS_t v_t
        b_dk = b_dk_state + b_u * b_q * b_vdo
        b_dv = tl.sum(b_dh * b_k[:, None], axis=0) + tl.sum(b_q * b_u * b_k, axis=0) * b_do
        b_du += b_q * b_k * b_vdo
        # dw_t = (seed + Σ_{m>t} r_m ⊙ dr'_m) − Σ_{m≥t} k_m ⊙ dk'_m
        b_acc -= b_k * b_dk_state
        tl.store(dw + p_part + p_k, b_acc, mask=m_k)
        b_dr = tl.load(dr + p_part + p_k, mask=m_k, other=0.)
        b_acc += b_r * (b_dr - scale * b_u * b_k * b_vdo)                    # r_t ⊙ dr'_t
        tl.store(dk + p_part + p_k, b_dk, mask=m_k)
        tl.store(dv + p_v, b_dv.to(dv.dtype.element_ty), mask=m_v)
        # dS_{t-1} = diag(exp(w_t)) dS_t + q_t do_tᵀ
        b_dh = b_dh * tl.exp(b_w)[:, None] + b_q[:, None] * b_do[None, :]

    tl.store(du + (i_v.to(tl.int64) * NT + i_nh) * K + o_k, b_du, mask=m_k)
    if STORE_DH0:
        tl.store(dh0 + p_state, b_dh, mask=m_kv)


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------
def check_inputs(r, k, v, w, u, scale, initial_state, cu_seqlens, check_values=True):
    """Validate the RWKV-6 contract (before any launch) and return (B, T, H, K, V, N).

    ``check_values=False`` checks structure only and leaves NaN/Inf and the sign of w to a kernel
    that checks them as it reads (the subchunk prep kernel and state pass), so no extra pass and no wait here.
    """
    B, T, H, K, V, N = validate.linear_attention(
        keys={"r": r, "k": k, "w": w}, values={"v": v}, extra={"u": u, "initial_state": initial_state},
        initial_state=initial_state, cu_seqlens_=cu_seqlens, log_decay="w", check_values=check_values)
    validate.tensor("u", u, ndim=2, finite=check_values)
    if tuple(u.shape) != (H, K):
        raise ValueError(f"u: expected shape (H, K) = {(H, K)}, got {tuple(u.shape)}")
    validate.real("scale", scale)
    if K > 128 or V > 256:
        raise ValueError(f"k: the kernels keep the whole key dimension in one tile and need K <= 128 and V <= 256, "
                         f"got K = {K}, V = {V}")
    validate.kernel_device("r", r)
    if r.dtype == torch.float64:
        raise ValueError("r: float64 is not supported by the Triton kernels; use float32, float16 or bfloat16")
    return B, T, H, K, V, N


def _blocks(K, V, BV_max):
    BK = triton.next_power_of_2(K)
    BV = min(triton.next_power_of_2(V), BV_max)
    return BK, BV, triton.cdiv(V, BV)


def fwd(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N):
    B, T, H, K = r.shape
    V = v.shape[-1]
    BK, BV, NV = _blocks(K, V, 64 if device.has_gpu() else 32)
    o = torch.empty_like(v)
    ht = torch.empty(N, H, K, V, dtype=torch.float32, device=r.device) if output_final_state else None
    varlen = cu_seqlens is not None
    wkv6_fwd_recurrent_kernel[(NV, N * H)](
        r, k, v, w, u, o, initial_state,
        ht, cu_arg(cu_seqlens, r.device), float(scale),
        B * T if varlen else T, H=H, K=K, V=V, BK=BK, BV=BV,
        USE_H0=initial_state is not None, STORE_HT=output_final_state, VARLEN=varlen)
    return o, ht


def bwd(r, k, v, w, u, scale, initial_state, cu_seqlens, N, do, dht):
    B, T, H, K = r.shape
    V = v.shape[-1]
    # narrower V-blocks than the forward's: twice the programs for the two sequential sweeps, at
    # the price of twice the float32 partial-sum buffers (chapter 07, Section 4)
    BK, BV, NV = _blocks(K, V, 32)
    dev, f32 = r.device, torch.float32
    varlen = cu_seqlens is not None
    T_arg = B * T if varlen else T
    cu = cu_arg(cu_seqlens, dev)
    do = do.contiguous()
    dht = dht.contiguous() if dht is not None else None
    dr = torch.empty(NV, B, T, H, K, dtype=f32, device=dev)
    dwT = torch.empty(NV, N, H, K, dtype=f32, device=dev)
    grid = (NV, N * H)
    wkv6_bwd_dr_kernel[grid](
        r, k, v, w, u, do, initial_state,
        dht, dr, dwT, cu, float(scale), T_arg, B * T,
        H=H, K=K, V=V, BK=BK, BV=BV, USE_H0=initial_state is not None, USE_DHT=dht is not None,
        VARLEN=varlen)
    dk = torch.empty(NV, B, T, H, K, dtype=f32, device=dev)
    dw = torch.empty(NV, B, T, H, K, dtype=f32, device=dev)
    du = torch.empty(NV, N, H, K, dtype=f32, device=dev)
    dv = torch.empty_like(v)
    dh0 = torch.empty(N, H, K, V, dtype=f32, device=dev) if initial_state is not None else None
    wkv6_bwd_dkvw_kernel[grid](
        r, k, v, w, u, do, dr, dwT, dht, dk, dv, dw, du,
        dh0, cu, float(scale), T_arg, B * T,
        H=H, K=K, V=V, BK=BK, BV=BV, USE_DHT=dht is not None, STORE_DH0=dh0 is not None,
        VARLEN=varlen)
    # add up the per-V-block partial sums (a no-op view when V fits one block)
    dr, dk, dw = (x.sum(0) if NV > 1 else x[0] for x in (dr, dk, dw))
    du = du.sum((0, 1))
    return dr.to(r.dtype), dk.to(k.dtype), dv, dw.to(w.dtype), du.to(u.dtype), dh0


class _RecurrentFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N):
        o, ht = fwd(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens, N)
        ctx.save_for_backward(r, k, v, w, u, initial_state, cu_seqlens)
        ctx.scale, ctx.N = scale, N
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        r, k, v, w, u, initial_state, cu_seqlens = ctx.saved_tensors
        dr, dk, dv, dw, du, dh0 = bwd(r, k, v, w, u, ctx.scale, initial_state, cu_seqlens, ctx.N, do, dht)
        return dr, dk, dv, dw, du, None, dh0, None, None, None


def triton_recurrent(r, k, v, w, u, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None):
    """RWKV-6 with the fused recurrent Triton kernel (forward and backward).

    ``r, k, w``: [B, T, H, K]; ``v``: [B, T, H, V]; ``u``: [H, K]; ``w`` is the log decay (≤ 0);
    ``initial_state``: [N, H, K, V], any float dtype (cast to float32), or None; ``cu_seqlens``:
    [N + 1] int, with B == 1; ``scale``: a finite real number. Returns ``(o, final_state)``: ``o`` [B, T, H, V] in the input dtype (float32 accumulation),
    ``final_state`` [N, H, K, V] float32, or None unless ``output_final_state``.

        o_t = scale · r_tᵀ (S_{t-1} + diag(u) k_t v_tᵀ),   S_t = diag(exp(w_t)) S_{t-1} + k_t v_tᵀ
    """
    B, T, H, K, V, N = check_inputs(r, k, v, w, u, scale, initial_state, cu_seqlens)
    r, k, v, w, u = (x.contiguous() for x in (r, k, v, w, u))
    if initial_state is not None:
        initial_state = initial_state.float().contiguous()   # any float dtype; the kernels keep float32
    return _RecurrentFunction.apply(r, k, v, w, u, float(scale), initial_state, bool(output_final_state),
                                    cu_seqlens, N)
