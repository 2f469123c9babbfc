"""The token shift and all of an RWKV-7 block's mixes in one pass: ``fused_addcmul``.

An RWKV-7 time-mixing block starts by mixing each token with the one before it, once per
projection (paper Eq. 3; ``rwkvlab.rwkv7_ops.token_shift`` and ``addcmul_mix``)::

    x_prev[:, t] = x[:, t-1]   (x_prev[:, 0] = shift_state, zeros at a text's start)
    x_m = x + (x_prev − x) ⊙ μ_m        for m = r, w, k, v, a, g   (six mixes)

In eager torch that is a shifted copy, a difference and two elementwise kernels per mix, each
reading and writing whole ``[B, T, C]`` tensors. Here one program loads a block of rows of
``x`` and the rows just above them, and writes all the mixes: ``x`` is read once and each mix
written once. The backward is one kernel too::

    dx[t]        = Σ_m dx_m[t] ⊙ (1 − μ_m) + Σ_m dx_m[t+1] ⊙ μ_m     (t+1 in the same sequence)
    d shift      = Σ_m dx_m[0] ⊙ μ_m
    dμ_m         = Σ_{b,t} dx_m[t] ⊙ (x_prev[t] − x[t])
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import device, validate

__all__ = ["fused_addcmul", "fused_output"]


@triton.jit
def _mix_fwd_kernel(x, shift, mu, out, n_rows, T, C: tl.constexpr, M: tl.constexpr,
                    BR: tl.constexpr, BC: tl.constexpr, USE_SHIFT: tl.constexpr):
    i_r, i_c = tl.program_id(0), tl.program_id(1)
    rows = i_r * BR + tl.arange(0, BR)                 # flattened b*T + t
    cols = i_c * BC + tl.arange(0, BC)
    m_r = rows < n_rows
    m_c = cols < C
    m = m_r[:, None] & m_c[None, :]
    t = rows % T
    b_x = tl.load(x + rows[:, None] * C + cols[None, :], mask=m, other=0.).to(tl.float32)
    # the previous token: the row above, or the shift state at a sequence's first token
    m_prev = m & (t > 0)[:, None]
    b_xp = tl.load(x + (rows - 1)[:, None] * C + cols[None, :], mask=m_prev, other=0.).to(tl.float32)
    if USE_SHIFT:
        m_first = m & (t == 0)[:, None]
        b_xp += tl.load(shift + (rows // T)[:, None] * C + cols[None, :], mask=m_first, other=0.).to(tl.float32)
    xx = b_xp - b_x
    for i_m in tl.static_range(M):
        b_mu = tl.load(mu + i_m * C + cols, mask=m_c, other=0.).to(tl.float32)
        tl.store(out + (i_m * n_rows + rows[:, None]) * C + cols[None, :],
                 (b_x + xx * b_mu[None, :]).to(out.dtype.element_ty), mask=m)


@triton.jit
def _mix_bwd_kernel(x, shift, mu, dout, dx, dshift, dmu, n_rows, T, C: tl.constexpr, M: tl.constexpr,
                    BR: tl.constexpr, BC: tl.constexpr, USE_SHIFT: tl.constexpr):
    i_r, i_c = tl.program_id(0), tl.program_id(1)
    rows = i_r * BR + tl.arange(0, BR)
    cols = i_c * BC + tl.arange(0, BC)
    m_r = rows < n_rows
    m_c = cols < C
    m = m_r[:, None] & m_c[None, :]
    t = rows % T
    b_x = tl.load(x + rows[:, None] * C + cols[None, :], mask=m, other=0.).to(tl.float32)
    m_prev = m & (t > 0)[:, None]
    m_first = m & (t == 0)[:, None]
    b_xp = tl.load(x + (rows - 1)[:, None] * C + cols[None, :], mask=m_prev, other=0.).to(tl.float32)
    if USE_SHIFT:
        b_xp += tl.load(shift + (rows // T)[:, None] * C + cols[None, :], mask=m_first, other=0.).to(tl.float32)
    xx = b_xp - b_x
    # row t+1 uses x[t] as its previous token, unless it starts a new sequence
    m_next = m & ((t + 1) < T)[:, None] & ((rows + 1) < n_rows)[:, None]
    b_dx = tl.zeros([BR, BC], dtype=tl.float32)
    b_ds = tl.zeros([BR, BC], dtype=tl.float32)
    for i_m in tl.static_range(M):
        b_mu = tl.load(mu + i_m * C + cols, mask=m_c, other=0.).to(tl.float32)
        p = dout + (i_m * n_rows + rows[:, None]) * C + cols[None, :]
        d_here = tl.load(p, mask=m, other=0.).to(tl.float32)
        d_next = tl.load(p + C, mask=m_next, other=0.).to(tl.float32)
        b_dx += d_here * (1. - b_mu[None, :]) + d_next * b_mu[None, :]
        b_ds += tl.where(m_first, d_here * b_mu[None, :], 0.)
        # dμ: this block's partial sum over its rows, one slot per row-block
        tl.store(dmu + (i_r * M + i_m) * C + cols, tl.sum(d_here * xx, 0), mask=m_c)
    tl.store(dx + rows[:, None] * C + cols[None, :], b_dx.to(dx.dtype.element_ty), mask=m)
    if USE_SHIFT:
        tl.store(dshift + (rows // T)[:, None] * C + cols[None, :], b_ds, mask=m_first)


def _blocks(C):
    """(rows, channels) per program: small tiles in the interpreter, wider ones on a GPU."""
    BC = min(triton.next_power_of_2(C), 64 if device.interpreting() else 128)
    return (16 if device.interpreting() else 32), BC


class _FusedAddcmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shift, mu):
        B, T, C = x.shape
        M = mu.shape[0]
        BR, BC = _blocks(C)
        out = torch.empty(M, B, T, C, dtype=x.dtype, device=x.device)
        grid = (triton.cdiv(B * T, BR), triton.cdiv(C, BC))
        _mix_fwd_kernel[grid](x, shift, mu, out, B * T, T, C=C, M=M, BR=BR, BC=BC, USE_SHIFT=shift is not None)
        ctx.save_for_backward(x, shift, mu)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, shift, mu = ctx.saved_tensors
        B, T, C = x.shape
        M = mu.shape[0]
        BR, BC = _blocks(C)
        n_rb = triton.cdiv(B * T, BR)
        dx = torch.empty_like(x)
        dshift = torch.zeros(B, C, dtype=torch.float32, device=x.device) if shift is not None else None
        dmu = torch.empty(n_rb, M, C, dtype=torch.float32, device=x.device)
        _mix_bwd_kernel[(n_rb, triton.cdiv(C, BC))](x, shift, mu, dout.contiguous(), dx, dshift, dmu, B * T, T,
                                                    C=C, M=M, BR=BR, BC=BC, USE_SHIFT=shift is not None)
        return (dx, None if dshift is None else dshift.to(shift.dtype), dmu.sum(0).to(mu.dtype))


def fused_addcmul(x, *mus, shift_state=None):
    """Token shift and ``len(mus)`` mixes ``x + (x_prev − x) ⊙ μ`` in one Triton pass.

    ``x`` [B, T, C]; each ``μ`` has C elements (e.g. the checkpoints' [1, 1, C]);
    ``shift_state`` [B, C] is the last input of the previous segment (None: zeros).
    Returns a tuple of ``len(mus)`` tensors [B, T, C] in x's dtype, equal to
    ``rwkv7_ops.addcmul_mix(x, rwkv7_ops.token_shift(x, shift_state)[0], *mus)``; the shift state
    for the next segment is ``x[:, -1]``. Differentiable in ``x``, every ``μ`` and ``shift_state``.
    """
    # type, rank, dtype and shape only, as in rwkv7_ops: a NaN scan of x would be five extra
    # kernels and a host synchronization, more memory traffic than the fused kernel itself
    validate.tensor("x", x, ndim=3, dtypes=(torch.float32, torch.float16, torch.bfloat16), finite=False)
    B, T, C = x.shape
    if T < 1:
        raise ValueError(f"x: expected T >= 1, got shape {tuple(x.shape)}")
    if not mus:
        raise ValueError("mus: expected at least one mixing vector")
    for i, mu in enumerate(mus):
        validate.tensor(f"mus[{i}]", mu, finite=False)
        if mu.numel() != C:
            raise ValueError(f"mus[{i}]: expected {C} elements (one per channel), got shape {tuple(mu.shape)}")
    if shift_state is not None:
        validate.tensor("shift_state", shift_state, ndim=2, finite=False)
        if tuple(shift_state.shape) != (B, C):
            raise ValueError(f"shift_state: expected shape (B, C) = {(B, C)}, got {tuple(shift_state.shape)}")
        shift_state = shift_state.to(x.dtype).contiguous()
    validate.same_device({"x": x, "shift_state": shift_state, **{f"mus[{i}]": m for i, m in enumerate(mus)}})
    mu = torch.stack([m.reshape(C).to(x.dtype) for m in mus]).contiguous()
    return tuple(_FusedAddcmul.apply(x.contiguous(), shift_state, mu).unbind(0))


# ---------------------------------------------------------------------------------------------
# The block's tail: per-head GroupNorm, the bonus, the gate (paper Eqs. 20-21), in one pass.
#
#     y = GroupNorm_H(o) ⊙ γ + β,   z = y + (Σ_head r ⊙ ρ ⊙ k̃) v,   out = z ⊙ g
#
# Eager torch runs a group norm (stats, then the affine), three products and a sum for the bonus,
# an add and the gate: each a pass over [B, T, C]. One program here owns a block of rows and one
# head (the norm's group and the bonus's sum are both per head), reads o, r, k̃, v, g once and
# writes out once; the backward reads them and the gradient once and writes the five input
# gradients, with γ, β and ρ reduced per block of rows.


@triton.jit
def _tail_fwd_kernel(o, r, k, v, g, gamma, beta, rho, out, mean, rstd, n_rows, eps,
                     C: tl.constexpr, H: tl.constexpr, N: tl.constexpr, BR: tl.constexpr):
    i_r, i_h = tl.program_id(0), tl.program_id(1)
    rows = (i_r * BR + tl.arange(0, BR)).to(tl.int64)
    cols = i_h * N + tl.arange(0, N)
    m = (rows < n_rows)[:, None]
    off = rows[:, None] * C + cols[None, :]
    b_o = tl.load(o + off, mask=m, other=0.).to(tl.float32)
    mu = tl.sum(b_o, 1) / N
    d = b_o - mu[:, None]
    rs = 1. / tl.sqrt(tl.sum(d * d, 1) / N + eps)
    y = d * rs[:, None] * tl.load(gamma + cols).to(tl.float32)[None, :] + tl.load(beta + cols).to(tl.float32)[None, :]
    b_r = tl.load(r + off, mask=m, other=0.).to(tl.float32)
    b_k = tl.load(k + off, mask=m, other=0.).to(tl.float32)
    s = tl.sum(b_r * b_k * tl.load(rho + cols).to(tl.float32)[None, :], 1)            # the bonus's weight
    z = y + s[:, None] * tl.load(v + off, mask=m, other=0.).to(tl.float32)
    tl.store(out + off, (z * tl.load(g + off, mask=m, other=0.).to(tl.float32)).to(out.dtype.element_ty), mask=m)
    tl.store(mean + rows * H + i_h, mu, mask=rows < n_rows)
    tl.store(rstd + rows * H + i_h, rs, mask=rows < n_rows)


@triton.jit
def _tail_bwd_kernel(o, r, k, v, g, gamma, beta, rho, mean, rstd, dout, do, dr, dk, dv, dg,
                     dgamma, dbeta, drho, n_rows, C: tl.constexpr, H: tl.constexpr, N: tl.constexpr,
                     BR: tl.constexpr):
    i_r, i_h = tl.program_id(0), tl.program_id(1)
    rows = (i_r * BR + tl.arange(0, BR)).to(tl.int64)
    cols = i_h * N + tl.arange(0, N)
    m_r = rows < n_rows
    m = m_r[:, None]
    off = rows[:, None] * C + cols[None, :]
    b_o = tl.load(o + off, mask=m, other=0.).to(tl.float32)
    b_r = tl.load(r + off, mask=m, other=0.).to(tl.float32)
    b_k = tl.load(k + off, mask=m, other=0.).to(tl.float32)
    b_v = tl.load(v + off, mask=m, other=0.).to(tl.float32)
    b_g = tl.load(g + off, mask=m, other=0.).to(tl.float32)
    b_dout = tl.load(dout + off, mask=m, other=0.).to(tl.float32)
    w_g = tl.load(gamma + cols).to(tl.float32)
    w_r = tl.load(rho + cols).to(tl.float32)
    mu = tl.load(mean + rows * H + i_h, mask=m_r, other=0.)
    rs = tl.load(rstd + rows * H + i_h, mask=m_r, other=0.)
    xhat = (b_o - mu[:, None]) * rs[:, None]
    s = tl.sum(b_r * b_k * w_r[None, :], 1)
    z = xhat * w_g[None, :] + tl.load(beta + cols).to(tl.float32)[None, :] + s[:, None] * b_v
    dz = b_dout * b_g                                       # out = z ⊙ g
    tl.store(dg + off, (b_dout * z).to(dg.dtype.element_ty), mask=m)
    tl.store(dv + off, (dz * s[:, None]).to(dv.dtype.element_ty), mask=m)            # z ∋ s v
    ds = tl.sum(dz * b_v, 1)                                # s = Σ r ρ k̃
    tl.store(dr + off, (ds[:, None] * b_k * w_r[None, :]).to(dr.dtype.element_ty), mask=m)
    tl.store(dk + off, (ds[:, None] * b_r * w_r[None, :]).to(dk.dtype.element_ty), mask=m)
    # the group norm: dx = rstd (dx̂ − mean(dx̂) − x̂ mean(dx̂ ⊙ x̂)), with dx̂ = dz ⊙ γ (means over the head)
    dxh = dz * w_g[None, :]
    c1 = tl.sum(dxh * xhat, 1) / N
    c2 = tl.sum(dxh, 1) / N
    tl.store(do + off, (rs[:, None] * (dxh - c2[:, None] - xhat * c1[:, None])).to(do.dtype.element_ty), mask=m)
    # γ, β, ρ: this block's partial sums over its rows, one slot per row-block (summed by the caller)
    tl.store(dgamma + i_r * C + cols, tl.sum(dz * xhat, 0))
    tl.store(dbeta + i_r * C + cols, tl.sum(dz, 0))
    tl.store(drho + i_r * C + cols, tl.sum(ds[:, None] * b_r * b_k, 0))


def _tail_rows(backward=False):
    """Rows per program: 32 forward and 16 backward on a GPU (sm_90, 4 warps: 150 and 122 registers,
    no spill; 32 rows backward spill 144 B), 16 in the interpreter."""
    return 16 if device.interpreting() or backward else 32


class _FusedOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o, r, k, v, g, gamma, beta, rho, H, eps):
        B, T, C = o.shape
        n_rows, BR = B * T, _tail_rows()
        out = torch.empty_like(o)
        mean = torch.empty(n_rows, H, dtype=torch.float32, device=o.device)
        rstd = torch.empty_like(mean)
        _tail_fwd_kernel[(triton.cdiv(n_rows, BR), H)](o, r, k, v, g, gamma, beta, rho, out, mean, rstd, n_rows, eps,
                                                       C=C, H=H, N=C // H, BR=BR)
        ctx.save_for_backward(o, r, k, v, g, gamma, beta, rho, mean, rstd)
        ctx.H = H
        return out

    @staticmethod
    def backward(ctx, dout):
        o, r, k, v, g, gamma, beta, rho, mean, rstd = ctx.saved_tensors
        B, T, C = o.shape
        H, n_rows, BR = ctx.H, B * T, _tail_rows(backward=True)
        n_rb = triton.cdiv(n_rows, BR)
        do, dr, dk, dv, dg = (torch.empty_like(x) for x in (o, r, k, v, g))
        part = dict(dtype=torch.float32, device=o.device)
        dgamma, dbeta, drho = (torch.empty(n_rb, C, **part) for _ in range(3))
        _tail_bwd_kernel[(n_rb, H)](o, r, k, v, g, gamma, beta, rho, mean, rstd, dout.contiguous(), do, dr, dk, dv, dg,
                                    dgamma, dbeta, drho, n_rows, C=C, H=H, N=C // H, BR=BR)
        return (do, dr, dk, dv, dg, dgamma.sum(0).to(gamma.dtype), dbeta.sum(0).to(beta.dtype),
                drho.sum(0).to(rho.dtype), None, None)


def fused_output(o, r, k, v, g, weight, bias, r_k, n_head, eps):
    """The RWKV-7 block's tail in one Triton pass: ``(GroupNorm_H(o) + bonus) ⊙ g``.

    Equal to ``(group_norm(o, n_head, weight, bias, eps) + rwkv7_ops.output_correction(r, k, v,
    r_k, n_head)) * g`` on ``[B, T, C]`` tensors (``k`` the replacement key k̃; ``weight``,
    ``bias`` [C], ``r_k`` with C elements), in o's dtype with float32 inside; differentiable in
    all eight tensors. The head size C / n_head must be a power of two (16..128).
    """
    for name, t in (("o", o), ("r", r), ("k", k), ("v", v), ("g", g)):
        validate.tensor(name, t, ndim=3, dtypes=(torch.float32, torch.float16, torch.bfloat16), finite=False)
        if t.shape != o.shape:
            raise ValueError(f"{name}: expected the shape of o {tuple(o.shape)}, got {tuple(t.shape)}")
    B, T, C = o.shape
    if isinstance(n_head, bool) or not isinstance(n_head, int) or n_head < 1 or C % n_head:
        raise ValueError(f"n_head: expected a positive divisor of C = {C}, got {n_head!r}")
    N = C // n_head
    if N < 16 or N > 128 or N & (N - 1):
        raise ValueError(f"n_head: the head size C / n_head must be a power of two in 16..128, got {N}")
    for name, t in (("weight", weight), ("bias", bias), ("r_k", r_k)):
        validate.tensor(name, t, finite=False)
        if t.numel() != C:
            raise ValueError(f"{name}: expected {C} elements (one per channel), got shape {tuple(t.shape)}")
    eps = validate.real("eps", eps)
    if not eps > 0:
        raise ValueError(f"eps: expected a positive number, got {eps!r}")
    validate.same_device({"o": o, "r": r, "k": k, "v": v, "g": g, "weight": weight, "bias": bias, "r_k": r_k})
    flat = lambda t: t.reshape(C).contiguous()                      # noqa: E731
    return _FusedOutput.apply(o.contiguous(), r.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(),
                              flat(weight), flat(bias), flat(r_k), n_head, float(eps))
