"""RWKV-7 as a fused recurrent Triton kernel: forward and backward.

One program owns one (sequence·head, V-block) pair and walks through time with its state tile
``S[:, v-block]`` (all K rows, ``BV`` columns) in registers. The columns of the state never
mix (the transition acts on the left), so the V-blocks are independent programs.

Per step, in the book's K×V layout::

    sa_t = S_{t-1}^T a_t                      (a reduction over K, one number per column)
    S_t  = diag(exp(w_t)) S_{t-1} + b_t sa_t^T + k_t v_t^T
    o_t  = scale · S_t^T r_t                   (read-out of the updated state)

Backward (reverse time, dS_t the total gradient reaching S_t, starting from dS_T = d final_state)::

    dS_t    += scale · r_t do_t^T
    dr_t     = scale · S_t do_t
    dk_t     = dS_t v_t              dv_t = dS_t^T k_t
    dw_t     = exp(w_t) ⊙ rowsum(dS_t ⊙ S_{t-1})
    db_t     = dS_t sa_t             da_t = S_{t-1} (dS_t^T b_t)
    dS_{t-1} = diag(exp(w_t)) dS_t + a_t (b_t^T dS_t)          and  d initial_state = dS_0

The backward needs every ``S_{t-1}`` in reverse order. Storing all of them costs ``T·K·V``
floats per head; instead the forward stores a checkpoint every ``CHECKPOINT`` steps and the
backward recomputes each segment's states once (into a small per-program scratch buffer) before
walking it backwards: one extra forward's worth of arithmetic for a ``CHECKPOINT``-fold smaller
memory footprint. Chapter 11 tabulates the trade-off.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import device, validate
from ..kernels_common import checkpoint_layout, first_chunk, seq_bounds

__all__ = ["triton_recurrent", "CHECKPOINT"]

#: steps between two stored states; the backward recomputes the states inside a segment
CHECKPOINT = 16


# ----------------------------------------------------------------------------- kernels
@triton.jit
def wkv7_fwd_recurrent_kernel(r, w, k, v, a, b, o, h0, ht, ckpt, cu, ck_off, scale,
                              T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                              BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
                              USE_H0: tl.constexpr, STORE_HT: tl.constexpr, STORE_CKPT: tl.constexpr,
                              VARLEN: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    # where this sequence's tokens live: [bos, eos) of the (packed) time axis
    bos, eos = seq_bounds(cu, i_n, T, VARLEN)  # int64 rows of the flattened [B·T] time axis
    c0 = first_chunk(ck_off, i_n, T, C, VARLEN)
    L = eos - bos
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    # state tile S[:, v-block], float32 in registers; offsets into [N, H, K, V]
    p_kv = o_k[:, None] * V + o_v[None, :]
    p_s = i_nh.to(tl.int64) * K * V + p_kv
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        S += tl.load(h0 + p_s, mask=m_kv, other=0.).to(tl.float32)
    # pointers to token bos (the first row of sequence i_n), head i_h
    base_k = bos * H * K + i_h * K
    base_v = bos * H * V + i_h * V
    for t in range(0, L):
        if STORE_CKPT:
            # S_{t} before step t, every C steps: the backward restarts from these
            if t % C == 0:
                tl.store(ckpt + ((c0 + t // C) * H + i_h) * K * V + p_kv, S, mask=m_kv)
        off_k = base_k + t * H * K + o_k
        off_v = base_v + t * H * V + o_v
        b_r = tl.load(r + off_k, mask=m_k, other=0.).to(tl.float32)
        b_w = tl.load(w + off_k, mask=m_k, other=0.).to(tl.float32)
        b_k = tl.load(k + off_k, mask=m_k, other=0.).to(tl.float32)
        b_a = tl.load(a + off_k, mask=m_k, other=0.).to(tl.float32)
        b_b = tl.load(b + off_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + off_v, mask=m_v, other=0.).to(tl.float32)
        # sa = a^T S_{t-1}; S_t = e^w S + b sa^T + k v^T; o = scale S_t^T r
        sa = tl.sum(b_a[:, None] * S, 0)
        S = tl.exp(b_w)[:, None] * S + b_b[:, None] * sa[None, :] + b_k[:, None] * b_v[None, :]
        b_o = tl.sum(S * b_r[:, None], 0) * scale
        tl.store(o + off_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if STORE_HT:
        tl.store(ht + p_s, S, mask=m_kv)


@triton.jit
def _replay_segment(w, k, v, a, b, p_ckpt, p_scr, base_k, base_v, n_t, o_k, o_v, m_k, m_v, m_kv,
                    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """The forward again over one segment of n_t tokens, from its checkpoint: the states
    S_{t0}, ..., S_{t0+n_t} into this program's scratch, one [BK, BV] tile each."""
    S = tl.load(p_ckpt, mask=m_kv, other=0.)
    tl.store(p_scr, S)
    for j in range(0, n_t):
        off_k = base_k + j * H * K + o_k
        b_w = tl.load(w + off_k, mask=m_k, other=0.).to(tl.float32)
        b_k = tl.load(k + off_k, mask=m_k, other=0.).to(tl.float32)
        b_a = tl.load(a + off_k, mask=m_k, other=0.).to(tl.float32)
        b_b = tl.load(b + off_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + base_v + j * H * V + o_v, mask=m_v, other=0.).to(tl.float32)
        sa = tl.sum(b_a[:, None] * S, 0)
        S = tl.exp(b_w)[:, None] * S + b_b[:, None] * sa[None, :] + b_k[:, None] * b_v[None, :]
        tl.store(p_scr + (j + 1) * BK * BV, S)


@triton.jit
def _step_adjoint(dS, S_prev, S_t, b_r, b_w, b_k, b_a, b_b, b_v, b_do, scale):
    """One token of the adjoint, Section 3's equations: from dS (the gradient of S_t that the later
    tokens handed back) and the states S_{t-1}, S_t around the token, the gradients of r_t, k_t,
    v_t, w_t, a_t, b_t, and dS_{t-1} for the token before."""
    # the read-out o_t = scale S_t^T r_t feeds dS_t and dr_t
    dS += scale * b_r[:, None] * b_do[None, :]
    b_dr = scale * tl.sum(S_t * b_do[None, :], 1)
    # the write k v^T
    b_dk = tl.sum(dS * b_v[None, :], 1)
    b_dv = tl.sum(dS * b_k[:, None], 0)
    # the decay and the rank-one correction b (a^T S_{t-1})
    e_w = tl.exp(b_w)
    b_dw = e_w * tl.sum(dS * S_prev, 1)
    sa = tl.sum(b_a[:, None] * S_prev, 0)
    b_db = tl.sum(dS * sa[None, :], 1)
    u = tl.sum(b_b[:, None] * dS, 0)
    b_da = tl.sum(S_prev * u[None, :], 1)
    # hand dS back through the transition: dS_{t-1} = e^w dS + a (b^T dS)
    return e_w[:, None] * dS + b_a[:, None] * u[None, :], b_dr, b_dk, b_dv, b_dw, b_da, b_db


@triton.jit
def wkv7_bwd_recurrent_kernel(r, w, k, v, a, b, do, dht, ckpt, scratch, cu, ck_off,
                              dr, dw, dk, dv, da, db, dh0, scale, part_stride,
                              T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                              BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
                              USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, VARLEN: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = seq_bounds(cu, i_n, T, VARLEN)  # int64 rows of the flattened [B·T] time axis
    c0 = first_chunk(ck_off, i_n, T, C, VARLEN)
    L = eos - bos
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = o_k[:, None] * V + o_v[None, :]
    p_s = i_nh.to(tl.int64) * K * V + p_kv
    # this program's scratch: C + 1 states of one segment, [C + 1, BK, BV]
    p_scr = scratch + (i_v * tl.num_programs(1) + i_nh) * (C + 1) * BK * BV \
        + tl.arange(0, BK)[:, None] * BV + tl.arange(0, BV)[None, :]
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        dS += tl.load(dht + p_s, mask=m_kv, other=0.).to(tl.float32)
    base_k = bos * H * K + i_h * K
    base_v = bos * H * V + i_h * V
    # the K-sized gradients are partial sums over this V-block: slab i_v of [NV, B, T, H, K]
    base_p = i_v * part_stride + base_k
    n_seg = tl.cdiv(L, C)
    for i_seg in range(0, n_seg):
        seg = n_seg - 1 - i_seg
        t0 = seg * C
        n_t = tl.minimum(C, L - t0)
        # 1. recompute S_{t0}, ..., S_{t0+n_t} from the checkpoint into the scratch buffer
        _replay_segment(w, k, v, a, b, ckpt + ((c0 + seg) * H + i_h) * K * V + p_kv, p_scr,
                        base_k + t0 * H * K, base_v + t0 * H * V, n_t, o_k, o_v, m_k, m_v, m_kv, H, K, V, BK, BV)
        tl.debug_barrier()
        # 2. walk the segment backwards, carrying dS
        for jj in range(0, n_t):
            j = n_t - 1 - jj
            off_k = base_k + (t0 + j) * H * K + o_k
            off_v = base_v + (t0 + j) * H * V + o_v
            S_prev = tl.load(p_scr + j * BK * BV)
            S_t = tl.load(p_scr + (j + 1) * BK * BV)
            b_r = tl.load(r + off_k, mask=m_k, other=0.).to(tl.float32)
            b_w = tl.load(w + off_k, mask=m_k, other=0.).to(tl.float32)
            b_k = tl.load(k + off_k, mask=m_k, other=0.).to(tl.float32)
            b_a = tl.load(a + off_k, mask=m_k, other=0.).to(tl.float32)
            b_b = tl.load(b + off_k, mask=m_k, other=0.).to(tl.float32)
            b_v = tl.load(v + off_v, mask=m_v, other=0.).to(tl.float32)
            b_do = tl.load(do + off_v, mask=m_v, other=0.).to(tl.float32)
            dS, b_dr, b_dk, b_dv, b_dw, b_da, b_db = _step_adjoint(dS, S_prev, S_t, b_r, b_w, b_k, b_a, b_b,
                                                                   b_v, b_do, scale)
            off_p = base_p + (t0 + j) * H * K + o_k
            tl.store(dr + off_p, b_dr, mask=m_k)
            tl.store(dk + off_p, b_dk, mask=m_k)
            tl.store(dw + off_p, b_dw, mask=m_k)
            tl.store(da + off_p, b_da, mask=m_k)
            tl.store(db + off_p, b_db, mask=m_k)
            tl.store(dv + off_v, b_dv.to(dv.dtype.element_ty), mask=m_v)
        tl.debug_barrier()
    if STORE_DH0:
        tl.store(dh0 + p_s, dS, mask=m_kv)


# ----------------------------------------------------------------------------- launchers
def check_inputs(r, w, k, v, a, b, scale, initial_state, cu_seqlens, check_values=True):
    """Validate before anything is launched (bad input is a ValueError, never a kernel crash); returns (scale, B, T, H, K, V, N).

    ``check_values=False`` checks structure only and leaves NaN/Inf and the sign of w to a kernel
    that checks them while it reads the inputs (the chunked forward does)."""
    scale = validate.real("scale", scale)
    B, T, H, K, V, N = validate.linear_attention(
        keys={"r": r, "w": w, "k": k, "a": a, "b": b}, values={"v": v},
        extra={"initial_state": initial_state}, initial_state=initial_state,
        cu_seqlens_=cu_seqlens, log_decay="w", check_values=check_values)
    for name, n in (("K", K), ("V", V)):
        if n < 16 or n > 128 or n & (n - 1):
            raise ValueError(f"{'r' if name == 'K' else 'v'}: the Triton kernels need {name} a power of two "
                             f"in 16..128, got {name} = {n}")
    if r.dtype == torch.float64:
        raise ValueError("r: the Triton kernels take float32, float16 or bfloat16 (float64 is for references)")
    validate.kernel_device("r", r)
    return float(scale), B, T, H, K, V, N


def block_v(V):
    """Value columns per program (the chunked kernel uses the same split)."""
    # one V-block in the interpreter (fewer programs is faster there); smaller blocks on a GPU
    # give more programs to fill the SMs when B·H is small
    return V if device.interpreting() else min(V, 32)


def fwd(r, w, k, v, a, b, scale, h0, store_ht, cu_seqlens, store_ckpt, C=CHECKPOINT):
    """Launch the forward kernel on contiguous tensors. Returns (o, final_state, checkpoints)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    N, n_ck, cu, ck_off = checkpoint_layout(B, T, cu_seqlens, C, r.device)
    BV = block_v(V)
    o = torch.empty_like(v)
    ht = torch.empty(N, H, K, V, dtype=torch.float32, device=r.device) if store_ht else None
    ckpt = torch.empty(n_ck, H, K, V, dtype=torch.float32, device=r.device) if store_ckpt else None
    grid = (triton.cdiv(V, BV), N * H)
    wkv7_fwd_recurrent_kernel[grid](r, w, k, v, a, b, o, h0, ht, ckpt, cu, ck_off, scale,
                      T, H=H, K=K, V=V, BK=K, BV=BV, C=C,
                      USE_H0=h0 is not None, STORE_HT=store_ht, STORE_CKPT=store_ckpt,
                      VARLEN=cu_seqlens is not None)
    return o, ht, ckpt


def bwd(r, w, k, v, a, b, do, dht, ckpt, scale, cu_seqlens, need_dh0, C=CHECKPOINT):
    """Launch the backward kernel. Returns (dr, dw, dk, dv, da, db, dh0) in the input dtype
    (dh0 in float32). ``ckpt`` holds the state before every C-th step of every sequence."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    N, _, cu, ck_off = checkpoint_layout(B, T, cu_seqlens, C, r.device)
    BV = block_v(V)
    NV = triton.cdiv(V, BV)
    f32 = dict(dtype=torch.float32, device=r.device)
    # K-sized gradients: one float32 partial sum per V-block, added up below
    dr, dw, dk, da, db = (torch.empty(NV, B, T, H, K, **f32) for _ in range(5))
    dv = torch.empty_like(v)
    dh0 = torch.empty(N, H, K, V, **f32) if need_dh0 else None
    scratch = torch.empty(NV * N * H * (C + 1) * K * BV, **f32)
    grid = (NV, N * H)
    wkv7_bwd_recurrent_kernel[grid](r, w, k, v, a, b, do, dht, ckpt, scratch, cu, ck_off,
                      dr, dw, dk, dv, da, db, dh0, scale, B * T * H * K,
                      T, H=H, K=K, V=V, BK=K, BV=BV, C=C,
                      USE_DHT=dht is not None, STORE_DH0=need_dh0, VARLEN=cu_seqlens is not None)
    dr, dw, dk, da, db = (p.sum(0).to(r.dtype) for p in (dr, dw, dk, da, db))
    return dr, dw, dk, dv, da, db, dh0


class _RecurrentFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, w, k, v, a, b, scale, h0, output_final_state, cu_seqlens):
        needs_grad = any(ctx.needs_input_grad[:6]) or ctx.needs_input_grad[7]
        o, ht, ckpt = fwd(r, w, k, v, a, b, scale, h0, output_final_state, cu_seqlens,
                              store_ckpt=needs_grad)
        ctx.save_for_backward(r, w, k, v, a, b, ckpt, cu_seqlens)
        ctx.scale, ctx.has_h0 = scale, h0 is not None
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        r, w, k, v, a, b, ckpt, cu_seqlens = ctx.saved_tensors
        dr, dw, dk, dv, da, db, dh0 = bwd(
            r, w, k, v, a, b, do.contiguous(), None if dht is None else dht.contiguous(), ckpt,
            ctx.scale, cu_seqlens, need_dh0=ctx.has_h0)
        return dr, dw, dk, dv, da, db, None, dh0, None, None


def triton_recurrent(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False,
                     cu_seqlens=None):
    """RWKV-7 with the fused recurrent Triton kernel; differentiable in every tensor input.

    Shapes: ``r, w, k, a, b`` [B, T, H, K]; ``v`` [B, T, H, V]; ``initial_state`` [N, H, K, V]
    in any float dtype, cast to float32 (N = B, or ``len(cu_seqlens) - 1`` with B == 1). K and V:
    powers of two in 16..128; ``scale``: a finite real number.
    Returns ``(o [B, T, H, V] in the input dtype, final_state [N, H, K, V] float32 or None)``.

        S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T,   o_t = scale · S_t^T r_t
    """
    scale, *_ = check_inputs(r, w, k, v, a, b, scale, initial_state, cu_seqlens)
    r, w, k, v, a, b = (x.contiguous() for x in (r, w, k, v, a, b))
    h0 = None if initial_state is None else initial_state.float().contiguous()
    return _RecurrentFunction.apply(r, w, k, v, a, b, scale, h0, bool(output_final_state), cu_seqlens)
