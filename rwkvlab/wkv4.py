"""RWKV-4's WKV operator, the ladder from the double sum to a Triton kernel.

Paper: Peng et al., "RWKV: Reinventing RNNs for the Transformer Era" (EMNLP Findings 2023,
arXiv 2305.13048). Equation numbers below are those of the final (EMNLP) version: WKV is Eq. 16
(Eq. 14 in arXiv v1), the RNN form is App. D, Eqs. 19–22, and its stable form Eqs. 23–28.

Shapes (one independent "head" per channel, as in the paper)::

    k, v : [B, T, C]      keys and values, after token shift and projection
    w, u : [C]            per-channel decay rate w >= 0 and bonus u (any sign)
    y    : [B, T, C]      wkv_t, in the dtype of k

For every channel and every t (tokens counted from 1)::

    wkv_t = (Σ_{i<t} e^{-(t-1-i)w + k_i} v_i + e^{u+k_t} v_t)
          / (Σ_{i<t} e^{-(t-1-i)w + k_i}     + e^{u+k_t})

Convention for w. This module takes the *paper's* w >= 0: one step of time multiplies a past
token's weight by e^{-w}. Official RWKV-4 code stores a parameter ``time_decay`` and hands its
CUDA kernel ``-exp(time_decay)``; the paper's w is therefore ``exp(time_decay)``. A negative w
would make old tokens *grow*, so it is rejected with a ValueError naming ``w``.

State. After t tokens the unnormalised sums are a_t = Σ_{i<=t} e^{-(t-i)w + k_i} v_i and
b_t = Σ_{i<=t} e^{-(t-i)w + k_i}. They overflow, so the stable forms keep (a', b', p) with
a_t = e^p a', b_t = e^p b' and p the largest log weight seen so far, p_t = max_i (k_i - (t-i)w).
The state is a :class:`State` (a named tuple of three [B, C] tensors, float32 — float64 when the
inputs are float64). The empty state is a' = b' = 0, p = -1e38 (as in the official kernel).

Every rung: ``f(k, v, w, u, initial_state=None, output_final_state=False) -> (y, State | None)``
except :func:`recurrent_unstable`, which returns ``y`` only (its state is the raw (a, b)).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import device, validate

EMPTY_P = -1e38  # "no token yet": e^{p - anything finite} is exactly 0, yet p stays finite


class State(NamedTuple):
    """The stable WKV state: a_t = e^p · a', b_t = e^p · b' (each [B, C])."""

    a: torch.Tensor
    b: torch.Tensor
    p: torch.Tensor


def empty_state(B: int, C: int, dtype=torch.float32, device=None) -> State:
    """The state before any token: a' = b' = 0 and p = -1e38."""
    z = torch.zeros(B, C, dtype=dtype, device=device)
    return State(z, z.clone(), torch.full((B, C), EMPTY_P, dtype=dtype, device=device))


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------

def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(k, v, w, u, initial_state=None):
    """Validate the WKV-4 contract and return (B, T, C).

    Structure (types, ranks, shapes, dtypes, devices) first; values (finiteness, signs) last."""
    validate.tensor("k", k, ndim=3, finite=False)
    B, T, C = k.shape
    if T < 1:
        raise ValueError(f"k: expected T >= 1, got shape {tuple(k.shape)}")
    validate.nonempty("k", k.shape, {"B": B, "C": C})
    validate.tensor("v", v, ndim=3, finite=False)
    validate.same_shape("v", v, (B, T, C), "k")
    if v.dtype != k.dtype:
        raise ValueError(f"v: expected the dtype of k ({k.dtype}), got {v.dtype}")
    validate.tensor("w", w, ndim=1, finite=False)
    validate.same_shape("w", w, (C,), "the channels of k")
    validate.tensor("u", u, ndim=1, finite=False)
    validate.same_shape("u", u, (C,), "the channels of k")
    named = {"k": k, "v": v, "w": w, "u": u}
    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 3:
            raise ValueError("initial_state: expected a State (a', b', p), three tensors of shape [B, C]")
        for name, s in zip(("a", "b", "p"), initial_state):
            validate.tensor(f"initial_state.{name}", s, ndim=2, finite=False)
            validate.same_shape(f"initial_state.{name}", s, (B, C), "(B, C) of k")
            named[f"initial_state.{name}"] = s
    validate.same_device(named)
    for name, x in named.items():
        validate.tensor(name, x)                          # finite (and not a meta tensor)
    if (w < 0).any():
        raise ValueError(f"w: is the paper's decay rate and must be >= 0 (per-step factor e^-w <= 1); "
                         f"got min {w.min().item():.3g}. Official checkpoints store time_decay; pass "
                         f"w = exp(time_decay)")
    if initial_state is not None and (initial_state[1] < 0).any():
        raise ValueError("initial_state.b: is a sum of positive weights and must be >= 0")
    return B, T, C


def _state_or_empty(initial_state, B, C, dtype, dev) -> State:
    if initial_state is None:
        return empty_state(B, C, dtype, dev)
    return State(*(s.to(dtype) for s in initial_state))


# ---------------------------------------------------------------------------------------------
# rung 1: the double sum, as written (Eq. 16)
# ---------------------------------------------------------------------------------------------

def naive(k, v, w, u, initial_state=None, output_final_state=False):
    """Eq. 16 as written: for each t, add up every past token's weight explicitly.

    O(T^2) work and no protection against overflow: e^{k} is computed as is, so in float32 it
    overflows once k exceeds about 88. Run it in float64 to use it as the reference.
    A given ``initial_state`` acts as one more "token" before the sequence with log weight p and
    value a'/b' (numerator a', denominator b').
    """
    B, T, C = _check(k, v, w, u, initial_state)
    cd = _compute_dtype(k)
    k, v, w, u = (x.to(cd) for x in (k, v, w, u))
    s0 = _state_or_empty(initial_state, B, C, cd, k.device)
    ys = []
    for t in range(T):
        # the current token, with the bonus u added to its log weight
        num = torch.exp(u + k[:, t]) * v[:, t]
        den = torch.exp(u + k[:, t])
        # each past token i < t, decayed (t-1-i) times: the newest past token is not decayed
        for i in range(t):
            weight = torch.exp(-(t - 1 - i) * w + k[:, i])
            num = num + weight * v[:, i]
            den = den + weight
        # whatever came before the sequence, decayed t times
        weight = torch.exp(s0.p - t * w)
        num = num + weight * s0.a
        den = den + weight * s0.b
        ys.append(num / den)
    y = torch.stack(ys, dim=1)
    final = None
    if output_final_state:
        # log weights of everything seen, as they stand after token T; p is their maximum
        logw = [k[:, i] - (T - 1 - i) * w for i in range(T)] + [s0.p - T * w]
        p = torch.stack(logw).amax(dim=0)
        a = sum(torch.exp(lw - p) * vi for lw, vi in zip(logw[:-1], v.unbind(1))) + torch.exp(logw[-1] - p) * s0.a
        b = sum(torch.exp(lw - p) for lw in logw[:-1]) + torch.exp(logw[-1] - p) * s0.b
        final = State(a, b, p)
    return y.to(v.dtype), final


# ---------------------------------------------------------------------------------------------
# rung 2: the RNN form, App. D Eqs. 19-22 (overflows) and Eqs. 23-28 (stable)
# ---------------------------------------------------------------------------------------------

def recurrent_unstable(k, v, w, u):
    """The RNN form of App. D, Eqs. 19–22, with the raw sums (a, b); returns y only.

        a_0 = b_0 = 0
        wkv_t = (a_{t-1} + e^{u+k_t} v_t) / (b_{t-1} + e^{u+k_t})
        a_t = e^{-w} a_{t-1} + e^{k_t} v_t,   b_t = e^{-w} b_{t-1} + e^{k_t}

    Exact in exact arithmetic, but a and b hold e^{k}: in float32, k > 88.7 gives inf and then
    inf/inf = nan. Kept to show the failure the stable form fixes.
    """
    B, T, C = _check(k, v, w, u)
    cd = _compute_dtype(k)
    k, v, w, u = (x.to(cd) for x in (k, v, w, u))
    a = torch.zeros(B, C, dtype=cd, device=k.device)
    b = torch.zeros_like(a)
    ys = []
    for t in range(T):
        ek = torch.exp(k[:, t])
        eu = torch.exp(u + k[:, t])
        ys.append((a + eu * v[:, t]) / (b + eu))
        a = torch.exp(-w) * a + ek * v[:, t]
        b = torch.exp(-w) * b + ek
    return torch.stack(ys, dim=1).to(v.dtype)


def step(kt, vt, w, u, state: State):
    """One token of the stable recurrence (App. D, Eqs. 23–28): the RNN mode's inner step.

    kt, vt: [B, C]; w, u: [C]; state: a :class:`State` of [B, C] tensors (use :func:`empty_state`
    for the first token). Returns (wkv_t [B, C], new State). No input checks: this runs once
    per token; :func:`recurrent` checks a whole sequence and loops over it.
    """
    a, b, p = state
    # output: rescale both terms by the larger exponent q so neither exp exceeds 1
    q = torch.maximum(p, u + kt)
    e1, e2 = torch.exp(p - q), torch.exp(u + kt - q)
    y = (e1 * a + e2 * vt) / (e1 * b + e2)
    # update: decay the old state, add the token, again relative to the larger exponent
    q2 = torch.maximum(p - w, kt)
    f1, f2 = torch.exp(p - w - q2), torch.exp(kt - q2)
    return y, State(f1 * a + f2 * vt, f1 * b + f2, q2)


def recurrent(k, v, w, u, initial_state=None, output_final_state=False):
    """The stable RNN form (App. D, Eqs. 23–28): state (a', b', p) with a = e^p a', b = e^p b'.

        q  = max(p, u + k_t)                 wkv_t = (e^{p-q} a' + e^{u+k_t-q} v_t) / (e^{p-q} b' + e^{u+k_t-q})
        q' = max(p - w, k_t)                 a' <- e^{p-w-q'} a' + e^{k_t-q'} v_t,  b' <- e^{p-w-q'} b' + e^{k_t-q'},  p <- q'

    Every exponent is <= 0, so nothing overflows. Starting from the empty state reproduces the
    paper's initialisation a'_1 = v_1, b'_1 = 1, p_1 = k_1. Differentiable by autograd.
    """
    B, T, C = _check(k, v, w, u, initial_state)
    cd = _compute_dtype(k)
    kc, vc, wc, uc = (x.to(cd) for x in (k, v, w, u))
    state = _state_or_empty(initial_state, B, C, cd, k.device)
    ys = []
    for t in range(T):
        y, state = step(kc[:, t], vc[:, t], wc, uc, state)
        ys.append(y)
    return torch.stack(ys, dim=1).to(v.dtype), (state if output_final_state else None)


# ---------------------------------------------------------------------------------------------
# rung 3: chunked (parallel inside a chunk, stable state across chunks)
# ---------------------------------------------------------------------------------------------

def chunked(k, v, w, u, initial_state=None, output_final_state=False, chunk_size=16):
    """Chunk-parallel WKV-4: an L×L log-weight matrix per chunk and channel, one state per chunk.

    Inside a chunk of L tokens (positions i, j = 0..L-1), with the state (a', b', p) carried in::

        Λ[i, j] = k_j - (i-1-j) w   (j < i),   u + k_i   (j = i),   -inf   (j > i)
        Λ[i, *] = p - i w            the state's column (value a', weight b')
        m_i = max_j Λ[i, j]          subtracted from the row before exponentiating
        wkv_i = (Σ_j e^{Λ[i,j]-m_i} v_j + e^{p-iw-m_i} a') / (Σ_j e^{Λ[i,j]-m_i} + e^{p-iw-m_i} b')

    and at the chunk's end p_new = max(p - Lw, max_j k_j - (L-1-j)w), with a', b' re-expressed
    relative to p_new. Memory O(B·L²·C) per chunk; any T (the last chunk may be shorter).
    Differentiable by autograd; this is the form the Triton backward is checked against.
    """
    B, T, C = _check(k, v, w, u, initial_state)
    chunk_size = validate.positive_int("chunk_size", chunk_size)
    cd = _compute_dtype(k)
    kc, vc, wc, uc = (x.to(cd) for x in (k, v, w, u))
    a, b, p = _state_or_empty(initial_state, B, C, cd, k.device)
    ys = []
    for start in range(0, T, chunk_size):
        kk, vv = kc[:, start:start + chunk_size], vc[:, start:start + chunk_size]  # [B, L, C]
        L = kk.shape[1]
        pos = torch.arange(L, device=k.device, dtype=cd)
        gap = (pos[:, None] - 1 - pos[None, :])  # i-1-j, [L, L]
        logw = kk[:, None, :, :] - gap[None, :, :, None] * wc  # [B, L(i), L(j), C]
        eye = torch.eye(L, dtype=torch.bool, device=k.device)[None, :, :, None]
        logw = torch.where(eye, (uc + kk)[:, :, None, :].expand_as(logw), logw)
        future = (pos[None, :] > pos[:, None])[None, :, :, None]
        logw = logw.masked_fill(future, float("-inf"))
        log_state = p[:, None, :] - pos[None, :, None] * wc  # [B, L, C]
        m = torch.maximum(logw.amax(dim=2), log_state)  # per-row max, [B, L, C]
        e = torch.exp(logw - m[:, :, None, :])
        es = torch.exp(log_state - m)
        num = (e * vv[:, None, :, :]).sum(dim=2) + es * a[:, None, :]
        den = e.sum(dim=2) + es * b[:, None, :]
        ys.append(num / den)
        # carry the state to the chunk's end: log weights as they stand after its last token
        end_logw = kk - (L - 1 - pos)[None, :, None] * wc  # [B, L, C]
        p_new = torch.maximum(end_logw.amax(dim=1), p - L * wc)
        f = torch.exp(end_logw - p_new[:, None, :])
        g = torch.exp(p - L * wc - p_new)
        a = g * a + (f * vv).sum(dim=1)
        b = g * b + f.sum(dim=1)
        p = p_new
    y = torch.cat(ys, dim=1).to(v.dtype)
    return y, (State(a, b, p) if output_final_state else None)


# ---------------------------------------------------------------------------------------------
# rung 4: Triton, one program per (batch, block of channels), a loop over T
# ---------------------------------------------------------------------------------------------

@triton.jit
def _wkv4_fwd_kernel(k_ptr, v_ptr, w_ptr, u_ptr, y_ptr,
                     a0_ptr, b0_ptr, p0_ptr, aT_ptr, bT_ptr, pT_ptr,
                     sa_ptr, sb_ptr, sp_ptr,
                     T, C, SAVE: tl.constexpr, BC: tl.constexpr):
    i_b = tl.program_id(0)
    i_c = tl.program_id(1)
    cols = i_c * BC + tl.arange(0, BC)
    mask = cols < C
    w = tl.load(w_ptr + cols, mask=mask, other=0.).to(tl.float32)
    u = tl.load(u_ptr + cols, mask=mask, other=0.).to(tl.float32)
    # the carried state (a', b', p) of this program's channels
    a = tl.load(a0_ptr + i_b * C + cols, mask=mask, other=0.).to(tl.float32)
    b = tl.load(b0_ptr + i_b * C + cols, mask=mask, other=0.).to(tl.float32)
    p = tl.load(p0_ptr + i_b * C + cols, mask=mask, other=0.).to(tl.float32)
    base = i_b.to(tl.int64) * T * C
    for t in range(T):
        off = base + t * C + cols
        kt = tl.load(k_ptr + off, mask=mask, other=0.).to(tl.float32)
        vt = tl.load(v_ptr + off, mask=mask, other=0.).to(tl.float32)
        if SAVE:  # the state *before* token t, which the backward pass re-reads
            tl.store(sa_ptr + off, a, mask=mask)
            tl.store(sb_ptr + off, b, mask=mask)
            tl.store(sp_ptr + off, p, mask=mask)
        # wkv_t relative to q = max(p, u + k_t)  (Eqs. 23-25)
        q = tl.maximum(p, u + kt)
        e1 = tl.exp(p - q)
        e2 = tl.exp(u + kt - q)
        tl.store(y_ptr + off, (e1 * a + e2 * vt) / (e1 * b + e2), mask=mask)
        # state update relative to q' = max(p - w, k_t)  (Eqs. 26-28)
        q2 = tl.maximum(p - w, kt)
        f1 = tl.exp(p - w - q2)
        f2 = tl.exp(kt - q2)
        a = f1 * a + f2 * vt
        b = f1 * b + f2
        p = q2
    tl.store(aT_ptr + i_b * C + cols, a, mask=mask)
    tl.store(bT_ptr + i_b * C + cols, b, mask=mask)
    tl.store(pT_ptr + i_b * C + cols, p, mask=mask)


@triton.jit
def _wkv4_bwd_kernel(k_ptr, v_ptr, w_ptr, u_ptr, gy_ptr,
                     sa_ptr, sb_ptr, sp_ptr, a0_ptr, b0_ptr,
                     aT_ptr, bT_ptr, gaT_ptr, gbT_ptr, gpT_ptr,
                     gk_ptr, gv_ptr, gw_ptr, gu_ptr, ga0_ptr, gb0_ptr, gp0_ptr,
                     T, C, BC: tl.constexpr):
    i_b = tl.program_id(0)
    i_c = tl.program_id(1)
    cols = i_c * BC + tl.arange(0, BC)
    mask = cols < C
    w = tl.load(w_ptr + cols, mask=mask, other=0.).to(tl.float32)
    u = tl.load(u_ptr + cols, mask=mask, other=0.).to(tl.float32)
    sc = i_b * C + cols
    # ga, gb: dL/da', dL/db' of the state after token t (= dL/da_t · e^{p_t}), which stays bounded
    ga = tl.load(gaT_ptr + sc, mask=mask, other=0.)
    gb = tl.load(gbT_ptr + sc, mask=mask, other=0.)
    # gp: the gradient reaching the running max p through its own path (p_t = max(p_{t-1}-w, k_t));
    # the final state's p also rescales a', b', hence the -ga·a' - gb·b'
    gp = tl.load(gpT_ptr + sc, mask=mask, other=0.) \
        - ga * tl.load(aT_ptr + sc, mask=mask, other=0.) - gb * tl.load(bT_ptr + sc, mask=mask, other=0.)
    gw = tl.zeros([BC], dtype=tl.float32)
    gu = tl.zeros([BC], dtype=tl.float32)
    base = i_b.to(tl.int64) * T * C
    for s in range(T):
        t = T - 1 - s
        off = base + t * C + cols
        kt = tl.load(k_ptr + off, mask=mask, other=0.).to(tl.float32)
        vt = tl.load(v_ptr + off, mask=mask, other=0.).to(tl.float32)
        gyt = tl.load(gy_ptr + off, mask=mask, other=0.).to(tl.float32)
        a = tl.load(sa_ptr + off, mask=mask, other=0.)
        b = tl.load(sb_ptr + off, mask=mask, other=0.)
        p = tl.load(sp_ptr + off, mask=mask, other=0.)
        # recompute the output step
        q = tl.maximum(p, u + kt)
        e1 = tl.exp(p - q)
        e2 = tl.exp(u + kt - q)
        den = e1 * b + e2
        y = (e1 * a + e2 * vt) / den
        g_cur = gyt * e2 * (vt - y) / den  # d/d(u + k_t) of the current token's term
        gu += g_cur
        gkt = g_cur
        gvt = gyt * e2 / den
        # recompute the state update and push the state's gradient through it
        q2 = tl.maximum(p - w, kt)
        f1 = tl.exp(p - w - q2)
        f2 = tl.exp(kt - q2)
        gvt += ga * f2
        gkt += f2 * (ga * vt + gb)
        gw -= f1 * (ga * a + gb * b)
        # the running max: its gradient goes to k_t if k_t won, else on to p_{t-1} (and -w)
        k_won = kt >= p - w
        gkt += tl.where(k_won, gp, 0.)
        gw -= tl.where(k_won, 0., gp)
        gp = tl.where(k_won, 0., gp)
        tl.store(gk_ptr + off, gkt, mask=mask)
        tl.store(gv_ptr + off, gvt, mask=mask)
        # gradient of the state before token t: decay, plus y_t's dependence on it
        ga = f1 * ga + gyt * e1 / den
        gb = f1 * gb - gyt * y * e1 / den
    a0 = tl.load(a0_ptr + sc, mask=mask, other=0.).to(tl.float32)
    b0 = tl.load(b0_ptr + sc, mask=mask, other=0.).to(tl.float32)
    tl.store(ga0_ptr + sc, ga, mask=mask)
    tl.store(gb0_ptr + sc, gb, mask=mask)
    tl.store(gp0_ptr + sc, gp + ga * a0 + gb * b0, mask=mask)
    tl.store(gw_ptr + sc, gw, mask=mask)
    tl.store(gu_ptr + sc, gu, mask=mask)


def _block(C: int) -> int:
    return min(triton.next_power_of_2(C), 64 if device.has_gpu() else 16)


class _WKV4Triton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k, v, w, u, a0, b0, p0):
        B, T, C = k.shape
        k, v = k.contiguous(), v.contiguous()
        w32, u32 = w.float().contiguous(), u.float().contiguous()
        a0, b0, p0 = (s.float().contiguous() for s in (a0, b0, p0))
        y = torch.empty(B, T, C, dtype=torch.float32, device=k.device)
        aT, bT, pT = (torch.empty(B, C, dtype=torch.float32, device=k.device) for _ in range(3))
        save = any(ctx.needs_input_grad)
        if save:
            sa, sb, sp = (torch.empty(B, T, C, dtype=torch.float32, device=k.device) for _ in range(3))
        else:
            sa = sb = sp = y  # never written: SAVE is off
        BC = _block(C)
        _wkv4_fwd_kernel[(B, triton.cdiv(C, BC))](k, v, w32, u32, y, a0, b0, p0, aT, bT, pT,
                                                  sa, sb, sp, T, C, SAVE=save, BC=BC)
        if save:
            ctx.save_for_backward(k, v, w32, u32, sa, sb, sp, a0, b0, aT, bT)
            ctx.dtypes = (k.dtype, v.dtype, w.dtype, u.dtype, a0.dtype)
        return y.to(v.dtype), aT, bT, pT

    @staticmethod
    def backward(ctx, gy, gaT, gbT, gpT):
        k, v, w, u, sa, sb, sp, a0, b0, aT, bT = ctx.saved_tensors
        B, T, C = k.shape
        gy = gy.contiguous()
        gaT, gbT, gpT = (g.float().contiguous() for g in (gaT, gbT, gpT))
        gk, gv = (torch.empty(B, T, C, dtype=torch.float32, device=k.device) for _ in range(2))
        gw, gu, ga0, gb0, gp0 = (torch.empty(B, C, dtype=torch.float32, device=k.device) for _ in range(5))
        BC = _block(C)
        _wkv4_bwd_kernel[(B, triton.cdiv(C, BC))](k, v, w, u, gy, sa, sb, sp, a0, b0, aT, bT, gaT, gbT, gpT,
                                                  gk, gv, gw, gu, ga0, gb0, gp0, T, C, BC=BC)
        kd, vd, wd, ud, sd = ctx.dtypes
        # w and u are shared by the batch: their gradients add up over it
        return (gk.to(kd), gv.to(vd), gw.sum(0).to(wd), gu.sum(0).to(ud),
                ga0.to(sd), gb0.to(sd), gp0.to(sd))


def triton_recurrent(k, v, w, u, initial_state=None, output_final_state=False):
    """The stable recurrence (Eqs. 23–28) as a Triton kernel, with a Triton backward kernel.

    Grid: one program per (batch row, block of BC channels); each walks t = 0..T-1 keeping
    (a', b', p) in registers. Channels never interact, so this is all the parallelism there is
    in RWKV-4's WKV besides the batch. Computes in float32; ``y`` comes back in the dtype of v,
    the state in float32.

    Backward: a second kernel walks t = T-1..0 with the states the forward pass saved, carrying
    dL/da', dL/db' (bounded, because they are the raw gradients times e^{p}) and the gradient
    of the running max p. Gradients reach k, v, w, u and the initial state; the final state's
    gradient is taken into account. Checked against autograd through :func:`naive` in tests.
    """
    B, T, C = _check(k, v, w, u, initial_state)
    validate.kernel_device("k", k)
    s0 = empty_state(B, C, torch.float32, k.device) if initial_state is None else initial_state
    y, aT, bT, pT = _WKV4Triton.apply(k, v, w, u, *s0)
    return y, (State(aT, bT, pT) if output_final_state else None)


IMPLEMENTATIONS = {
    "naive": naive,
    "recurrent": recurrent,
    "chunked": chunked,
    "triton_recurrent": triton_recurrent,
}
