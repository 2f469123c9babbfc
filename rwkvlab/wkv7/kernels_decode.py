"""One RWKV-7 decode step's elementwise work as Triton kernels: ``fused_wkv_decode`` (the WKV part),
``token_mix_decode`` (LayerNorm and token-shift mixes), ``lora_act_decode`` and ``relu_square_decode``.

In RNN mode (``rwkvlab.model.x070.Decoder``) everything between the projections and the output
map is elementwise work on one token per sequence, or reductions over one head's ``N`` channels.
In torch that is some two dozen small kernels per block (about thirty in bf16, with the casts to
float32 and back), each costing a few microseconds even when a CUDA graph replays them, against
well under a microsecond of arithmetic. Here one program owns one (sequence, head) pair, holds
that head's state ``S`` [N, N] (key rows κ, value columns j) in registers, and computes, in
float32, with the symbols of ``rwkvlab.model.x070``::

    v      ← v + (v_first − v) ⊙ σ_v                  value residual (not in block 0)
    κ̂      = normalize(k ⊙ k_k)                       removal key, unit length per head
    k̃      = k ⊙ (1 + (a − 1) ⊙ k_a)                  replacement key
    log w  = −e^{−1/2} σ(d)
    S      ← diag(e^{log w}) S − (κ̂ ⊙ a)(κ̂ᵀ S) + k̃ vᵀ     wkv7 with a = −κ̂, b = κ̂ ⊙ a; in place
    y      = Sᵀ r                                     read-out of the updated state
    p      = GroupNorm(y) ⊙ γ + β + ((r ⊙ k̃ ⊙ r_k) summed over κ) v
    out    = p ⊙ g                                    the output gate

The group norm is over one head's ``N`` outputs, so one program must see them all: the grid is
B·H programs and never splits the value columns (the recurrent kernel's V-blocks would need a
second pass for the norm). At N = 64 a program's state tile is 16 KB of float32, read once and
written once. The launch does nothing on the host but allocate ``out`` and launch: no checks, no
reads back, so a CUDA graph captures it (the decoder checks its inputs once, where it packs them).
Given ``gate_bias`` (v0, w0, a0), the kernel also applies the three gates' σ(· + bias) itself.

The other three kernels take the small operations around the matrix products (which stay in
cuBLAS): ``token_mix_decode`` is a block's LayerNorm, its token-shift mixes x + (x_prev − x) ⊙ μ
(six in the time mix, one in the channel mix) and the new shift, one program per sequence;
``lora_act_decode`` applies tanh and σ to the decay's and the gate's LoRA activations between
their two products; ``relu_square_decode`` is the channel mix's relu(·)². With them a block is
eleven launches: these five, five products and the output map's ``addmm``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["fused_wkv_decode", "token_mix_decode", "lora_act_decode", "relu_square_decode"]

#: −e^{−1/2}: log w = DECAY_SCALE · σ(d) (``x070.TimeMix.log_decay``; ``wkv7.RWKV7_LOWER_BOUND``)
DECAY_SCALE = -0.6065306597126334


# ----------------------------------------------------------------------------- the kernel
@triton.jit
def wkv7_fwd_decode_kernel(S, r, k, v, v_first, v_gate, w_sig, a, g, k_k, k_a, r_k, ln_w, ln_b, gate_bias, out,
                           eps, decay_scale, H: tl.constexpr, N: tl.constexpr, BN: tl.constexpr,
                           MIX_V: tl.constexpr, GATE_BIAS: tl.constexpr):
    i_bh = tl.program_id(0)
    i_b, i_h = i_bh // H, i_bh % H
    o_n = tl.arange(0, BN)
    m_n = o_n < N
    # this head's N channels in a [B, C] row (C = H·N) and in the [H, N] / [C] parameters
    p_x = i_b.to(tl.int64) * (H * N) + i_h * N + o_n
    p_h = i_h * N + o_n
    b_r = tl.load(r + p_x, mask=m_n, other=0.).to(tl.float32)
    b_k = tl.load(k + p_x, mask=m_n, other=0.).to(tl.float32)
    b_a = tl.load(a + p_x, mask=m_n, other=0.).to(tl.float32)
    b_ws = tl.load(w_sig + p_x, mask=m_n, other=0.).to(tl.float32)
    if GATE_BIAS:
        # pre-activations given: a = σ(a0 + ·) and σ(d) = σ(w0 + ·), biases [3, C] in order v0, w0, a0
        b_ws = tl.sigmoid(b_ws + tl.load(gate_bias + H * N + p_h, mask=m_n, other=0.).to(tl.float32))
        b_a = tl.sigmoid(b_a + tl.load(gate_bias + 2 * H * N + p_h, mask=m_n, other=0.).to(tl.float32))
    b_v = tl.load(v + p_x, mask=m_n, other=0.).to(tl.float32)
    if MIX_V:
        # the value residual v + (v_first − v) ⊙ σ_v (block 0 sets v_first = v instead)
        b_vf = tl.load(v_first + p_x, mask=m_n, other=0.).to(tl.float32)
        b_vg = tl.load(v_gate + p_x, mask=m_n, other=0.).to(tl.float32)
        if GATE_BIAS:
            b_vg = tl.sigmoid(b_vg + tl.load(gate_bias + p_h, mask=m_n, other=0.).to(tl.float32))
        b_v = b_v + (b_vf - b_v) * b_vg
    # removal key κ̂ = normalize(k ⊙ k_k) and replacement key k̃ = k ⊙ ((1 − k_a) + a ⊙ k_a)
    b_kk = b_k * tl.load(k_k + p_h, mask=m_n, other=0.).to(tl.float32)
    b_kk = b_kk / tl.maximum(tl.sqrt(tl.sum(b_kk * b_kk, 0)), 1e-12)
    b_ka = tl.load(k_a + p_h, mask=m_n, other=0.).to(tl.float32)
    b_kt = b_k * ((1. - b_ka) + b_a * b_ka)
    # the decay of every key row: e^{log w} with log w = −e^{−1/2} σ(d)
    b_decay = tl.exp(b_ws * decay_scale)
    # S ← diag(e^{log w}) S + b (aᵀ S) + k̃ vᵀ with a = −κ̂ and b = κ̂ ⊙ a, in place in [B, H, N, N]
    p_s = i_bh.to(tl.int64) * N * N + o_n[:, None] * N + o_n[None, :]
    m_s = m_n[:, None] & m_n[None, :]
    b_S = tl.load(S + p_s, mask=m_s, other=0.)
    sa = tl.sum(-b_kk[:, None] * b_S, 0)                         # aᵀ S: one number per column
    b_S = b_decay[:, None] * b_S + (b_kk * b_a)[:, None] * sa[None, :] + b_kt[:, None] * b_v[None, :]
    tl.store(S + p_s, b_S, mask=m_s)
    # read-out y = Sᵀ r of the updated state, then the head's GroupNorm (biased variance, eps)
    b_y = tl.sum(b_r[:, None] * b_S, 0)
    mean = tl.sum(b_y, 0) / N
    diff = tl.where(m_n, b_y - mean, 0.)
    rstd = 1. / tl.sqrt(tl.sum(diff * diff, 0) / N + eps)
    b_lw = tl.load(ln_w + p_h, mask=m_n, other=0.).to(tl.float32)
    b_lb = tl.load(ln_b + p_h, mask=m_n, other=0.).to(tl.float32)
    # the bonus (r · (r_k ⊙ k̃)) v after the norm, and the output gate g
    bonus = tl.sum(b_r * b_kt * tl.load(r_k + p_h, mask=m_n, other=0.).to(tl.float32), 0)
    b_p = diff * rstd * b_lw + b_lb + bonus * b_v
    b_g = tl.load(g + p_x, mask=m_n, other=0.).to(tl.float32)
    tl.store(out + p_x, (b_p * b_g).to(out.dtype.element_ty), mask=m_n)


# ----------------------------------------------------------------------------- the launcher
def fused_wkv_decode(S, r, k, v, w_sig, a, g, k_k, k_a, r_k, ln_w, ln_b, eps, v_first=None, v_gate=None,
                     gate_bias=None):
    """The WKV part of one RWKV-7 decode step in one launch; ``S`` is updated in place.

    Shapes: ``r, k, v, w_sig, a`` and ``v_first, v_gate`` [B, H, N] and ``g`` [B, C] (C = H·N),
    each contiguous over its last dims with rows C apart (views of the decoder's stacked
    activations are); ``k_k, k_a, r_k`` [H, N]; ``ln_w, ln_b`` [C] (the heads' GroupNorm);
    ``S`` [B, H, N, N] float32, contiguous (key rows, value columns). ``w_sig`` is σ(d), whose
    log decay is −e^{−1/2} σ(d); ``v_first, v_gate`` (both or neither) mix the value residual
    in first. With ``gate_bias`` [3, C] contiguous (v0, w0, a0; the decoder's [3, 1, C] is),
    ``v_gate, w_sig, a`` are the pre-activations instead and the kernel takes σ(· + bias) of each.
    Activations in any of float32/float16/bfloat16, math in float32.

    Returns ``out`` [B, C] in ``r``'s dtype: ``(GroupNorm(Sᵀ r) + (r·(r_k ⊙ k̃)) v) ⊙ g``. Nothing
    is checked (the decoder packs the inputs once); nothing is allocated but ``out``.
    """
    B, H, N = r.shape
    out = torch.empty(B, H * N, dtype=r.dtype, device=r.device)
    wkv7_fwd_decode_kernel[(B * H,)](
        S, r, k, v, v_first, v_gate, w_sig, a, g, k_k, k_a, r_k, ln_w, ln_b, gate_bias, out, float(eps), DECAY_SCALE,
        H=H, N=N, BN=triton.next_power_of_2(N), MIX_V=v_first is not None, GATE_BIAS=gate_bias is not None,
        # a 64 × 64 float32 tile is 32 registers a thread at 4 warps
        num_warps=4 if N <= 64 else 8)
    return out


# ----------------------------------------------------------------------------- around the products
@triton.jit
def token_mix_decode_kernel(x, shift, mu, ln_w, ln_b, mixes, eps, B, C, M: tl.constexpr, BC: tl.constexpr):
    i_b = tl.program_id(0)
    o_c = tl.arange(0, BC)
    m_c = o_c < C
    p_x = i_b.to(tl.int64) * C + o_c
    # x' = LayerNorm(x) over the row's C channels (biased variance, as torch.layer_norm)
    b_x = tl.load(x + p_x, mask=m_c, other=0.).to(tl.float32)
    mean = tl.sum(b_x, 0) / C
    diff = tl.where(m_c, b_x - mean, 0.)
    rstd = 1. / tl.sqrt(tl.sum(diff * diff, 0) / C + eps)
    b_xa = diff * rstd * tl.load(ln_w + o_c, mask=m_c, other=0.).to(tl.float32) \
        + tl.load(ln_b + o_c, mask=m_c, other=0.).to(tl.float32)
    # the M mixes x' + (x'_prev − x') ⊙ μ_i into [M, B, C], then x' becomes the next token's x'_prev
    b_xp = tl.load(shift + p_x, mask=m_c, other=0.).to(tl.float32)
    for i in tl.static_range(M):
        b_mu = tl.load(mu + i * C + o_c, mask=m_c, other=0.).to(tl.float32)
        tl.store(mixes + i * B * C + p_x, (b_xa + (b_xp - b_xa) * b_mu).to(mixes.dtype.element_ty), mask=m_c)
    tl.store(shift + p_x, b_xa.to(shift.dtype.element_ty), mask=m_c)


@triton.jit
def lora_act_decode_kernel(h, BD, BLOCK: tl.constexpr):
    # h [4, B, D]: slice 1 (decay) ← tanh, slice 3 (gate) ← σ; program axis 1 picks the slice
    i_blk, i_s = tl.program_id(0), tl.program_id(1)
    o = i_blk * BLOCK + tl.arange(0, BLOCK)
    m = o < BD
    p = (1 + 2 * i_s) * BD + o
    b_h = tl.load(h + p, mask=m, other=0.).to(tl.float32)
    if i_s == 0:
        e = tl.exp(-2. * tl.abs(b_h))                            # tanh from e^{−2|h|} ≤ 1: no overflow
        b_h = tl.where(b_h < 0, -1., 1.) * (1. - e) / (1. + e)
    else:
        b_h = tl.sigmoid(b_h)
    tl.store(h + p, b_h.to(h.dtype.element_ty), mask=m)


@triton.jit
def relu_square_decode_kernel(u, n, BLOCK: tl.constexpr):
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    b_u = tl.maximum(tl.load(u + o, mask=m, other=0.).to(tl.float32), 0.)
    tl.store(u + o, (b_u * b_u).to(u.dtype.element_ty), mask=m)


def token_mix_decode(x, shift, mu, ln_w, ln_b, eps=1e-5):
    """LayerNorm and token-shift mixes of one decode step; ``shift`` is overwritten.

    Shapes: ``x, shift`` [B, C] contiguous; ``mu`` [M, C] (or [M, 1, C], [C] for M = 1),
    contiguous; ``ln_w, ln_b`` [C]. With x' = LayerNorm(x) (biased variance, ``eps``), returns
    ``mixes`` [M, B, C] in ``x``'s dtype, ``mixes[i] = x' + (shift − x') ⊙ mu[i]``, and sets
    ``shift ← x'``: ``torch.lerp(x', shift, mu)`` and ``shift.copy_(x')`` in one launch, math in
    float32. Nothing is checked; nothing is allocated but ``mixes``.
    """
    B, C = x.shape
    M = mu.numel() // C
    mixes = torch.empty(M, B, C, dtype=x.dtype, device=x.device)
    BC = triton.next_power_of_2(C)
    token_mix_decode_kernel[(B,)](x, shift, mu, ln_w, ln_b, mixes, float(eps), B, C, M=M, BC=BC,
                                  num_warps=4 if BC <= 1024 else 8)
    return mixes


def lora_act_decode(h):
    """``h[1].tanh_()`` and ``h[3].sigmoid_()`` in one launch, in place, for ``h`` [4, B, D]
    contiguous (the decoder's LoRA down-products of v, w, a, g); math in float32. Returns ``h``."""
    BD = h[0].numel()
    BLOCK = min(1024, triton.next_power_of_2(BD))
    lora_act_decode_kernel[(triton.cdiv(BD, BLOCK), 2)](h, BD, BLOCK=BLOCK)
    return h


def relu_square_decode(u):
    """``u.relu_().square_()`` in one launch, in place, for a contiguous ``u``; math in float32."""
    n = u.numel()
    BLOCK = min(1024, triton.next_power_of_2(n))
    relu_square_decode_kernel[(triton.cdiv(n, BLOCK),)](u, n, BLOCK=BLOCK)
    return u
