"""RWKV-7 in chunkwise-parallel (WY / UT) form on tl.dot: two forward launches, a backward on one of two schedules.

Per chunk of ``BT`` tokens (chapter 10's algebra; ``c_t = Σ_{j≤t} w_j`` the running log decay
inside the chunk)::

    A_ab[t,i] = Σ_κ a_tκ e^{c_{t-1,κ} − c_iκ} b_iκ   (i < t)     A_ak: the same with k_i
    A_rb[t,i] = Σ_κ r_tκ e^{c_tκ − c_iκ} b_iκ        (i ≤ t)     A_rk: the same with k_i
    T  = (I − A_ab)^{-1} = (I + A_ab)(I + A_ab²)(I + A_ab⁴)…   (A_ab is strictly lower: A_ab^BT = 0)
    W  = T (a ⊙ e^{c_{t-1}})            U = T A_ak V
    E  = W S + U                        (the rows a_t^T S_{t-1} of the chunk)
    O  = scale · ((r ⊙ e^{c_t}) S + A_rk V + A_rb E)
    S ← diag(e^{c_C}) S + (k ⊙ e^{c_C − c})^T V + (b ⊙ e^{c_C − c})^T E

``wkv7_fwd_prep_kernel`` (grid: chunks × heads) computes everything that does not depend on
the state, for all chunks at once — the four pairwise matrices, T, W, U — and stores every piece
the state pass needs in the form it uses it: W, U, A_rk V and A_rb in float32, the decayed rows
k ⊙ e^{c_C − c}, b ⊙ e^{c_C − c}, r ⊙ e^{c} (16-bit for 16-bit inputs) and the chunk's decay
e^{c_C}; it also checks every value it reads. ``wkv7_fwd_chunked_kernel`` (grid: V-blocks ×
sequence·heads) is the state pass: each program walks its sequence with its state tile in
registers and does only the five products that touch S, loading chunk i+1 while chunk i computes.

The pairwise matrices are formed one of two ways per chunk. If every channel's decay over the
chunk is at most ``FACTORED_SPAN``, as products (r ⊙ e^{c})(k ⊙ e^{−c})ᵀ on tl.dot; else
exactly, pair by pair, from a [BT, BT, BK] block of exponents each summed over its own interval
(≤ 0, so nothing overflows, and a decay spike costs no float32 accuracy). A caller that declares
``lower_bound`` (RWKV-7's own w ≥ −e^{−1/2}) gets kernels compiled without the exact path.

A forward that keeps no checkpoints can instead take the folded launches (``TUNE["fold"]``; by
default where the state pass alone would leave most multiprocessors idle, as at B=1, H=8):
``wkv7_fwd_fold_kernel`` composes the chunks of a 64-token step into one affine map of the step's
start state (S ← P̄ S + Q̄, outputs R̄ S + Ō), and ``wkv7_fwd_folded_kernel`` applies one map per
step: one product on the chain every 64 tokens instead of two every 16.

Backward (``wkv7_bwd_chunked_kernel``): the state pass's grid, walking the chunks from last to
first with ``dS`` in registers. Per chunk it reloads the forward's chunk-start state, recomputes
the pairwise matrices, ``T``, ``W``, ``U`` and ``E``, and runs the adjoint of every line above
(the triangular inverse's adjoint is ``dA_ab = Tᵀ dT Tᵀ``). The decay gradient collects, for each
``w_j``, the exponents whose interval contains ``j``; on the exact path it leaves out the
exponents that are 0 by construction, so no O(1) terms cancel and a strong decay's tiny gradient
survives in float32. The sums over t are products with 0/1 matrices. On a GPU the parallel
schedule runs instead (``bwd_schedule``; faster at every shape measured): a light dS pass
(``wkv7_bwd_dstate_kernel``) on the forward's saved pieces, then every chunk's gradients at once
(``wkv7_bwd_parallel_kernel``), with the same chunk body (``_chunk_grads``).
"""
from __future__ import annotations

import functools
import numbers

import torch
import triton
import triton.language as tl

from .. import device, validate
from . import kernels_recurrent as _rec
from ..kernels_common import FlagRead, checkpoint_layout, chunk_of, chunk_table, cu_arg, first_chunk, seq_bounds

__all__ = ["triton_chunked", "FACTORED_SPAN"]

#: the largest decay of a chunk (−Σ w over its tokens, in any channel) that takes the factored
#: path: its factors e^{−c} stay ≤ e^40 ≈ 2e17 (far from float32's 3e38), and the product
#: e^{c_t}·e^{−c_i} carries the rounding of both running sums, a relative error of about
#: (|c_t| + |c_i|)·2⁻²⁴ ≤ 5e-6 (RWKV-7's bound gives |c| ≤ 9.7 in a chunk of 16: ≤ 1.2e-6)
FACTORED_SPAN = 40.0


@triton.jit
def _prefixes(w, off_k, m_tk, m_up, o_t, row: tl.constexpr):
    """The per-token decays of one chunk, each exponent a sum of log decays over its own interval.

    Returns (b_w, b_wd, e_c, e_cp, to_end, c, c_last): b_w = w_t and b_wd = w_{t-1} (0 on the
    chunk's first row); c = c_t = w_1 + … + w_t from the chunk's start, e_c = e^{c_t} and
    e_cp = e^{c_{t-1}} (inclusive and exclusive prefixes, each from its own shifted load);
    to_end = e^{w_{t+1}+…+w_last}; c_last = the chunk's total per channel. ``row`` is the pointer
    stride of one token (H·K); ``m_up`` masks the rows whose next token is in the same chunk.
    """
    b_w = tl.load(w + off_k, mask=m_tk, other=0.).to(tl.float32)
    m_dn = (o_t > 0)[:, None] & m_tk                                   # row t holds w_{t-1}
    b_wd = tl.load(w + off_k - row, mask=m_dn, other=0.).to(tl.float32)
    b_wu = tl.load(w + off_k + row, mask=m_up, other=0.).to(tl.float32)
    c = tl.cumsum(b_w, 0)
    e_cp = tl.exp(tl.cumsum(b_wd, 0))
    to_end = tl.where(m_tk, tl.exp(tl.cumsum(b_wu, 0, reverse=True)), 0.)
    return b_w, b_wd, tl.exp(c), e_cp, to_end, c, tl.sum(b_w, 0)


@triton.jit
def _pair_decays(b_w, b_wd, o_t):
    """The exact path's pairwise factors as [BT, BT, BK] blocks (0 elsewhere):
    x_r[t, i] = e^{w_{i+1}+…+w_t} (t ≥ i) and x_a[t, i] = e^{w_{i+1}+…+w_{t-1}} (t > i).

    They are cumulative sums of w masked to the pair's interval, never differences c_t − c_i of
    running sums: after a decay spike (w = −1e4) such a difference keeps only ~1e-3 absolute
    accuracy, a 1e-3 error in every weight.
    """
    after = (o_t[:, None] > o_t[None, :])[:, :, None]                  # [m, i]: m > i
    X_r = tl.cumsum(tl.where(after, b_w[:, None, :], 0.), 0)           # Σ_{i<m≤t} w_m at [t, i]
    after2 = (o_t[:, None] > o_t[None, :] + 1)[:, :, None]             # [m, i]: m − 1 > i
    X_a = tl.cumsum(tl.where(after2, b_wd[:, None, :], 0.), 0)         # Σ_{i<m≤t−1} w_m at [t, i]
    incl = (o_t[:, None] >= o_t[None, :])[:, :, None]
    x_r = tl.where(incl, tl.exp(tl.where(incl, X_r, 0.)), 0.)
    x_a = tl.where(after, tl.exp(tl.where(after, X_a, 0.)), 0.)
    return x_r, x_a


@triton.jit
def _pairs_factored(r_dec, a_dec, k_inv, b_inv, incl, strict, PREC: tl.constexpr):
    """The four pairwise matrices as products on tl.dot: (r ⊙ e^{c}) (k ⊙ e^{−c})ᵀ is
    Σ_κ r_tκ e^{c_tκ − c_iκ} k_iκ; the same with b, and with a ⊙ e^{c_{t-1}} for the a-rows."""
    A_rk = tl.where(incl, tl.dot(r_dec, tl.trans(k_inv), input_precision=PREC), 0.)
    A_rb = tl.where(incl, tl.dot(r_dec, tl.trans(b_inv), input_precision=PREC), 0.)
    A_ak = tl.where(strict, tl.dot(a_dec, tl.trans(k_inv), input_precision=PREC), 0.)
    A_ab = tl.where(strict, tl.dot(a_dec, tl.trans(b_inv), input_precision=PREC), 0.)
    return A_rk, A_rb, A_ak, A_ab


@triton.jit
def _pairs(b_r, b_k, b_a, b_b, b_w, b_wd, r_dec, a_dec, c, c_last, o_t, incl, strict,
           SPAN: tl.constexpr, BOUNDED: tl.constexpr, PREC: tl.constexpr):
    """A_rk, A_rb (t ≥ i) and A_ak, A_ab (t > i) of one chunk.

    Factored (two tl.dots per matrix) when every channel's decay over the chunk is at most SPAN
    (always, when the caller declared a bound); else exact, pair by pair from [BT, BT, BK] blocks.
    """
    if BOUNDED:
        inv = tl.exp(-c)
        A_rk, A_rb, A_ak, A_ab = _pairs_factored(r_dec, a_dec, b_k * inv, b_b * inv, incl, strict, PREC)
    else:
        if tl.min(c_last, 0) >= -SPAN:
            inv = tl.exp(-c)
            A_rk, A_rb, A_ak, A_ab = _pairs_factored(r_dec, a_dec, b_k * inv, b_b * inv, incl, strict, PREC)
        else:
            x_r, x_a = _pair_decays(b_w, b_wd, o_t)
            A_rk = tl.sum(b_r[:, None, :] * x_r * b_k[None, :, :], 2)
            A_rb = tl.sum(b_r[:, None, :] * x_r * b_b[None, :, :], 2)
            A_ak = tl.sum(b_a[:, None, :] * x_a * b_k[None, :, :], 2)
            A_ab = tl.sum(b_a[:, None, :] * x_a * b_b[None, :, :], 2)
    return A_rk, A_rb, A_ak, A_ab


@triton.jit
def _unit_lower_inverse(N, eye, NSQ: tl.constexpr, PREC: tl.constexpr):
    """(I − N)⁻¹ = I + N + N² + … for a strictly lower N (N^BT = 0), as the product
    (I + N)(I + N²)(I + N⁴)…: 2·NSQ small dots instead of BT dependent substitution steps."""
    Tm = eye + N
    P = N
    for _ in tl.static_range(NSQ):
        P = tl.dot(P, P, input_precision=PREC)
        Tm = Tm + tl.dot(Tm, P, input_precision=PREC)
    return Tm


@triton.jit
def _invalid(b_r, b_k, b_a, b_b, b_v, b_w, lower):
    """1 if a value of the chunk is NaN or ±Inf, or a log decay lies outside [lower, 0], else 0
    (x·0 is 0 exactly for every finite x and NaN otherwise; comparisons with NaN are false)."""
    z = b_r * 0. + b_k * 0. + b_a * 0. + b_b * 0.
    w_ok = (b_w <= 0.) & (b_w >= lower)
    bad = (z != 0.) | (w_ok == 0)
    bad_v = b_v * 0. != 0.
    return tl.maximum(tl.max(tl.max(bad.to(tl.int32), 1), 0), tl.max(tl.max(bad_v.to(tl.int32), 1), 0))


@triton.jit
def _prep_tiles(r, w, k, v, a, b, flags, lower, t0, eos, i_h, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                BT: tl.constexpr, NSQ: tl.constexpr, SPAN: tl.constexpr, BOUNDED: tl.constexpr,
                CHECK: tl.constexpr, DOT_PREC: tl.constexpr, INV_PREC: tl.constexpr):
    """The state-free pieces of the chunk of ``BT`` tokens starting at row ``t0`` (rows from ``eos``
    on masked: a chunk past its sequence's end gives zeros and the decay e^0 = 1), in registers:
    (W, U, k ⊙ e^{c_C − c}, b ⊙ e^{c_C − c}, r ⊙ e^{c}, A_rk V, A_rb, c_C, v) in float32, plus the
    chunk's masks and offsets (m_t, off_k, off_v). With CHECK it flags bad values as it reads them."""
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, K)
    o_v = tl.arange(0, V)
    m_t = t0 + o_t < eos
    m_tk = m_t[:, None]
    m_tv = m_t[:, None]
    off_k = (t0 + o_t)[:, None] * H * K + i_h * K + o_k[None, :]
    off_v = (t0 + o_t)[:, None] * H * V + i_h * V + o_v[None, :]
    b_r = tl.load(r + off_k, mask=m_tk, other=0.).to(tl.float32)
    b_k = tl.load(k + off_k, mask=m_tk, other=0.).to(tl.float32)
    b_a = tl.load(a + off_k, mask=m_tk, other=0.).to(tl.float32)
    b_b = tl.load(b + off_k, mask=m_tk, other=0.).to(tl.float32)
    b_v = tl.load(v + off_v, mask=m_tv, other=0.).to(tl.float32)
    m_up = ((o_t + 1 < BT) & (t0 + o_t + 1 < eos))[:, None] & (o_k < K)[None, :]
    b_w, b_wd, e_c, e_cp, to_end, c, c_last = _prefixes(w, off_k, m_tk & (o_k < K)[None, :], m_up, o_t, H * K)
    if CHECK:  # the values are checked here, where they are read anyway (no pass of their own)
        bad = _invalid(b_r, b_k, b_a, b_b, b_v, b_w, lower)
        tl.atomic_max(flags, bad, mask=bad > 0)     # only a bad chunk touches the flag: no contention
    incl = o_t[:, None] >= o_t[None, :]
    strict = o_t[:, None] > o_t[None, :]
    eye = tl.where(o_t[:, None] == o_t[None, :], 1., 0.)
    r_dec = b_r * e_c
    a_dec = b_a * e_cp
    A_rk, A_rb, A_ak, A_ab = _pairs(b_r, b_k, b_a, b_b, b_w, b_wd, r_dec, a_dec, c, c_last,
                                    o_t, incl, strict, SPAN, BOUNDED, DOT_PREC)
    Tm = _unit_lower_inverse(A_ab, eye, NSQ, INV_PREC)                   # T = (I − A_ab)⁻¹
    W = tl.dot(Tm, a_dec, input_precision=DOT_PREC)
    U = tl.dot(Tm, tl.dot(A_ak, b_v, input_precision=DOT_PREC), input_precision=DOT_PREC)
    Op = tl.dot(A_rk, b_v, input_precision=DOT_PREC)
    return W, U, b_k * to_end, b_b * to_end, r_dec, Op, A_rb, c_last, b_v, m_t, off_k, off_v


@triton.jit
def wkv7_fwd_prep_kernel(r, w, k, v, a, b, flags, cu, idx, lower, Wp, Up, Kd, Bd, Rd, Op, Arb, G, T,
                         H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                         NSQ: tl.constexpr, SPAN: tl.constexpr, BOUNDED: tl.constexpr, CHECK: tl.constexpr,
                         VARLEN: tl.constexpr, DOT_PREC: tl.constexpr, INV_PREC: tl.constexpr):
    """Everything of one chunk that does not depend on the state, for all chunks at once (grid:
    chunks × heads), stored at the chunk's token rows: W = T ã and U = T A_ak V (float32), the
    decayed rows k ⊙ e^{c_C − c}, b ⊙ e^{c_C − c}, r ⊙ e^{c}, the state-free part of the output
    A_rk V, the read-out matrix A_rb, and per chunk the decay e^{c_C}: the state pass only loads
    and multiplies. With CHECK it also checks every value it reads (the state pass checks the
    initial state, which it reads)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    bos, eos, t0 = chunk_of(cu, idx, i_c, T, BT, VARLEN)
    W, U, k_end, b_end, r_dec, O_p, A_rb, c_last, _, m_t, off_k, off_v = _prep_tiles(
        r, w, k, v, a, b, flags, lower, t0, eos, i_h, H, K, V, BT, NSQ, SPAN, BOUNDED, CHECK, DOT_PREC, INV_PREC)
    m_tk = m_t[:, None]
    tl.store(Wp + off_k, W.to(Wp.dtype.element_ty), mask=m_tk)
    tl.store(Up + off_v, U.to(Up.dtype.element_ty), mask=m_tk)
    piece = Kd.dtype.element_ty                     # the decayed rows: float32, or the 16-bit input type
    tl.store(Kd + off_k, k_end.to(piece), mask=m_tk)
    tl.store(Bd + off_k, b_end.to(piece), mask=m_tk)
    tl.store(Rd + off_k, r_dec.to(piece), mask=m_tk)
    tl.store(Op + off_v, O_p.to(Op.dtype.element_ty), mask=m_tk)
    o_t = tl.arange(0, BT)
    off_a = (t0 + o_t)[:, None] * H * BT + i_h * BT + o_t[None, :]
    tl.store(Arb + off_a, A_rb, mask=m_tk)
    tl.store(G + (i_c.to(tl.int64) * H + i_h) * K + tl.arange(0, K), tl.exp(c_last))


@triton.jit
def wkv7_fwd_fold_kernel(r, w, k, v, a, b, flags, cu, idx, lower, Rf, Of, Pf, Gf, Qf, T,
                         H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, FOLD: tl.constexpr,
                         NSQ: tl.constexpr, SPAN: tl.constexpr, BOUNDED: tl.constexpr, CHECK: tl.constexpr,
                         VARLEN: tl.constexpr, DOT_PREC: tl.constexpr, INV_PREC: tl.constexpr):
    """The folded prep (grid: steps of FOLD·BT tokens × heads): the ``FOLD`` chunks of one step,
    each made as :func:`_prep_tiles` makes it, folded into one affine map of the step's start state.

    Chunk j hands on S_{j+1} = P_j S_j + Q_j (P_j = diag(g_j) + b̂_jᵀ W_j with g_j = e^{c_C},
    Q_j = k̂ᵀ V + b̂ᵀ U) and reads out O_j = R_j S_j + L_j (R_j = r̃ + A_rb W, L_j = A_rk V + A_rb U).
    With S_j = P̄ S + Q̄ in terms of the step's start state S, the step's rows are R_j P̄ and
    R_j Q̄ + L_j (stored per token: Rf, Of), and (P̄, Q̄) ← (P_j P̄, P_j Q̄ + Q_j).

    P̄ is kept as diag(G) + N (G = Π g of the chunks so far, N the rest), and the product P_j P̄
    is never formed as K×K times K×K: P_j is the identity's scaling plus a rank-BT term, so
      R_j P̄ = R_j ⊙ G + R_j N,    N ← g_j ⊙ N + b̂ᵀ (W_j ⊙ G + W_j N),    G ← g_j G,
      Q̄ ← g_j ⊙ Q̄ + k̂ᵀ V + b̂ᵀ (W_j Q̄ + U):
    products of BT×K by K×K and K×BT by BT×K, a quarter of the work of a K×K×K product each.
    Per step it stores the total decay G (Gf, exact: a sum of logs, kept out of the product so
    that the state pass applies it in full precision), N = P̄ − diag(G) (Pf) and Q̄ (Qf)."""
    i_s, i_h = tl.program_id(0), tl.program_id(1)
    bos, eos, s0 = chunk_of(cu, idx, i_s, T, FOLD * BT, VARLEN)
    o_k = tl.arange(0, K)
    o_v = tl.arange(0, V)
    N = tl.zeros([K, K], dtype=tl.float32)         # P̄ − diag(G)
    Q = tl.zeros([K, V], dtype=tl.float32)         # Q̄
    g_tot = tl.zeros([K], dtype=tl.float32)        # log G: Σ c_C of the chunks so far
    for j in tl.static_range(FOLD):
        W, U, k_end, b_end, r_dec, O_p, A_rb, c_last, b_v, m_t, off_k, off_v = _prep_tiles(
            r, w, k, v, a, b, flags, lower, s0 + j * BT, eos, i_h, H, K, V, BT, NSQ, SPAN, BOUNDED, CHECK,
            DOT_PREC, INV_PREC)
        R_j = tl.dot(A_rb, W, acc=r_dec, input_precision=DOT_PREC)              # r̃ + A_rb W
        L_j = tl.dot(A_rb, U, acc=O_p, input_precision=DOT_PREC)                # A_rk V + A_rb U
        G = tl.exp(g_tot)[None, :]
        if j == 0:                                 # P̄ = I, Q̄ = 0 before the first chunk
            R_out, WP, WQ, O_out = R_j, W, U, L_j
        else:
            R_out = tl.dot(R_j, N, acc=R_j * G, input_precision=DOT_PREC)        # R_j P̄
            WP = tl.dot(W, N, acc=W * G, input_precision=DOT_PREC)               # W_j P̄
            WQ = tl.dot(W, Q, acc=U, input_precision=DOT_PREC)                   # W_j Q̄ + U
            O_out = tl.dot(R_j, Q, acc=L_j, input_precision=DOT_PREC)            # R_j Q̄ + L_j
        tl.store(Rf + off_k, R_out.to(Rf.dtype.element_ty), mask=m_t[:, None])
        tl.store(Of + off_v, O_out.to(Of.dtype.element_ty), mask=m_t[:, None])
        g_j = tl.exp(c_last)[:, None]
        N = tl.dot(tl.trans(b_end), WP, acc=N * g_j, input_precision=DOT_PREC)
        Q = tl.dot(tl.trans(b_end), WQ, acc=tl.dot(tl.trans(k_end), b_v, acc=Q * g_j, input_precision=DOT_PREC),
                   input_precision=DOT_PREC)
        g_tot += c_last
    p_step = (i_s.to(tl.int64) * H + i_h)
    tl.store(Gf + p_step * K + o_k, tl.exp(g_tot))
    tl.store(Pf + p_step * K * K + o_k[:, None] * K + o_k[None, :], N)
    tl.store(Qf + p_step * K * V + o_k[:, None] * V + o_v[None, :], Q)


@triton.jit
def wkv7_fwd_folded_kernel(o, h0, ht, Rf, Of, Pf, Gf, Qf, flags, cu, ck_off, scale, T,
                           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BS: tl.constexpr,
                           BK: tl.constexpr, BV: tl.constexpr, CHECK: tl.constexpr, USE_H0: tl.constexpr,
                           STORE_HT: tl.constexpr, VARLEN: tl.constexpr, DOT_PREC: tl.constexpr):
    """The state pass on folded steps of BS tokens: per step one product on the chain,
    S ← e^{Σc} ⊙ S + (P̄ − diag e^{Σc}) S + Q̄, and the output R̄ S + Ō beside it (off the chain).
    No checkpoints: this pass serves forwards that need no backward."""
    i_h, c0, L, bos, o_t, o_k, o_v, m_k, m_v, m_kv, p_kv, p_s = _state_tile(cu, ck_off, T, H, K, V, BS, BK, BV,
                                                                             VARLEN)
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        S += tl.load(h0 + p_s, mask=m_kv, other=0.).to(tl.float32)
        if CHECK:
            bad = tl.max(tl.max((S * 0. != 0.).to(tl.int32), 1), 0)
            tl.atomic_max(flags, bad, mask=bad > 0)
    base_k = bos * H * K + i_h * K
    base_v = bos * H * V + i_h * V
    p_kk = o_k[:, None] * K + o_k[None, :]
    for i_s in range(0, tl.cdiv(L, BS)):
        m_t = (i_s * BS + o_t) < L
        off_k = base_k + (i_s * BS + o_t)[:, None] * H * K + o_k[None, :]
        off_v = base_v + (i_s * BS + o_t)[:, None] * H * V + o_v[None, :]
        p_step = ((c0 + i_s) * H + i_h).to(tl.int64)
        b_R = tl.load(Rf + off_k, mask=m_t[:, None] & m_k[None, :], other=0.)
        b_O = tl.load(Of + off_v, mask=m_t[:, None] & m_v[None, :], other=0.)
        b_P = tl.load(Pf + p_step * K * K + p_kk, mask=m_k[:, None] & m_k[None, :], other=0.)
        b_g = tl.load(Gf + p_step * K + o_k, mask=m_k, other=1.)
        b_Q = tl.load(Qf + p_step * K * V + p_kv, mask=m_kv, other=0.)
        b_o = tl.dot(b_R.to(tl.float32), S, acc=b_O.to(tl.float32), input_precision=DOT_PREC)
        tl.store(o + off_v, (scale * b_o).to(o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])
        S = tl.dot(b_P, S, acc=b_g[:, None] * S + b_Q, input_precision=DOT_PREC)
    if STORE_HT:
        tl.store(ht + p_s, S, mask=m_kv)


@triton.jit
def _state_tile(cu, ck_off, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr, VARLEN: tl.constexpr):
    """What a program of the (V-block, sequence·head) grid owns, as in *Triton I*'s recurrent
    kernel: its head, the sequence's first chunk and length (from its first row bos, int64),
    the tile's index ranges and masks, and the tile's offsets into [K, V] and into [N, H, K, V]."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = seq_bounds(cu, i_n, T, VARLEN)       # int64 rows of the flattened [B·T] time axis
    c0 = first_chunk(ck_off, i_n, T, BT, VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    p_kv = o_k[:, None] * V + o_v[None, :]
    return (i_h, c0, eos - bos, bos, tl.arange(0, BT), o_k, o_v, m_k, m_v, m_k[:, None] & m_v[None, :], p_kv,
            i_nh.to(tl.int64) * K * V + p_kv)


@triton.jit
def _chunk_pieces(Wp, Kd, Bd, Rd, Up, Op, v, Arb, G, base_k, base_v, base_a, ck, i_c, L,
                  o_t, o_k, o_v, m_k, m_v, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                  BT: tl.constexpr):
    """The prepared pieces of chunk ``i_c`` for one state-pass program, as stored (16-bit ones stay
    16-bit until used: fewer registers while prefetched); zeros past the sequence's end (so a
    chunk that does not exist changes nothing: its decay e^{c_C} loads as 1)."""
    m_t = (i_c * BT + o_t) < L
    off_k = base_k + (i_c * BT + o_t)[:, None] * H * K + o_k[None, :]
    off_v = base_v + (i_c * BT + o_t)[:, None] * H * V + o_v[None, :]
    off_a = base_a + (i_c * BT + o_t)[:, None] * H * BT + o_t[None, :]
    m_tk = m_t[:, None] & m_k[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    b_W = tl.load(Wp + off_k, mask=m_tk, other=0.)
    b_kd = tl.load(Kd + off_k, mask=m_tk, other=0.)
    b_bd = tl.load(Bd + off_k, mask=m_tk, other=0.)
    b_rd = tl.load(Rd + off_k, mask=m_tk, other=0.)
    b_U = tl.load(Up + off_v, mask=m_tv, other=0.)
    b_Op = tl.load(Op + off_v, mask=m_tv, other=0.)
    b_v = tl.load(v + off_v, mask=m_tv, other=0.)
    A_rb = tl.load(Arb + off_a, mask=m_t[:, None], other=0.)
    b_g = tl.load(G + ((ck + i_c) * H) * K + o_k, mask=m_k & (i_c * BT + o_k * 0 < L), other=1.)
    return b_W, b_kd, b_bd, b_rd, b_U, b_Op, b_v, A_rb, b_g


@triton.jit
def wkv7_fwd_chunked_kernel(v, o, h0, ht, ckpt, Wp, Up, Kd, Bd, Rd, Op, Arb, G, flags, cu, ck_off, scale,
                            T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, CHECK: tl.constexpr,
                            USE_H0: tl.constexpr, STORE_HT: tl.constexpr, STORE_CKPT: tl.constexpr,
                            VARLEN: tl.constexpr, PREFETCH: tl.constexpr, DOT_PREC: tl.constexpr):
    """The state pass: walks one (sequence·head, V-block) through its chunks, state in registers,
    and writes the output. Five products per chunk, nothing else: the prep kernel made the rest.
    With PREFETCH the next chunk's pieces are loaded while this chunk computes (the loop is a
    chain of dependent products, so waiting for each load would stall it every chunk)."""
    i_h, c0, L, bos, o_t, o_k, o_v, m_k, m_v, m_kv, p_kv, p_s = _state_tile(cu, ck_off, T, H, K, V, BT, BK, BV,
                                                                             VARLEN)
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        S += tl.load(h0 + p_s, mask=m_kv, other=0.).to(tl.float32)
        if CHECK:  # every program reads its tile of the initial state, empty sequences' included
            bad = tl.max(tl.max((S * 0. != 0.).to(tl.int32), 1), 0)
            tl.atomic_max(flags, bad, mask=bad > 0)
    base_k = bos * H * K + i_h * K
    base_v = bos * H * V + i_h * V
    base_a = bos * H * BT + i_h * BT
    n_W, n_kd, n_bd, n_rd, n_U, n_Op, n_v, n_A, n_g = _chunk_pieces(
        Wp, Kd, Bd, Rd, Up, Op, v, Arb, G + i_h * K, base_k, base_v, base_a, c0, 0, L, o_t, o_k, o_v, m_k, m_v, H, K, V, BT)
    for i_c in range(0, tl.cdiv(L, BT)):
        if STORE_CKPT:
            # the state at the chunk's start: the backward restarts from it
            tl.store(ckpt + ((c0 + i_c) * H + i_h) * K * V + p_kv, S, mask=m_kv)
        if PREFETCH:
            b_W, b_kd, b_bd, b_rd, b_U, b_Op, b_v, A_rb, b_g = n_W, n_kd, n_bd, n_rd, n_U, n_Op, n_v, n_A, n_g
            n_W, n_kd, n_bd, n_rd, n_U, n_Op, n_v, n_A, n_g = _chunk_pieces(
                Wp, Kd, Bd, Rd, Up, Op, v, Arb, G + i_h * K, base_k, base_v, base_a, c0, i_c + 1, L,
                o_t, o_k, o_v, m_k, m_v, H, K, V, BT)
        else:
            b_W, b_kd, b_bd, b_rd, b_U, b_Op, b_v, A_rb, b_g = _chunk_pieces(
                Wp, Kd, Bd, Rd, Up, Op, v, Arb, G + i_h * K, base_k, base_v, base_a, c0, i_c, L,
                o_t, o_k, o_v, m_k, m_v, H, K, V, BT)
        # the removal rows E = W S + U, the output, and the state handed to the next chunk
        # (each product accumulates into the last: one [BK, BV] tile of registers, not three)
        E = tl.dot(b_W.to(tl.float32), S, acc=b_U.to(tl.float32), input_precision=DOT_PREC)
        b_o = tl.dot(A_rb, E, acc=tl.dot(b_rd.to(tl.float32), S, acc=b_Op.to(tl.float32), input_precision=DOT_PREC),
                     input_precision=DOT_PREC)
        off_v = base_v + (i_c * BT + o_t)[:, None] * H * V + o_v[None, :]
        tl.store(o + off_v, (scale * b_o).to(o.dtype.element_ty), mask=((i_c * BT + o_t) < L)[:, None] & m_v[None, :])
        S = tl.dot(tl.trans(b_kd.to(tl.float32)), b_v.to(tl.float32), acc=b_g[:, None] * S, input_precision=DOT_PREC)
        S = tl.dot(tl.trans(b_bd.to(tl.float32)), E, acc=S, input_precision=DOT_PREC)
    if STORE_HT:
        tl.store(ht + p_s, S, mask=m_kv)


@triton.jit
def _pair_grads(dA_rk, dA_rb, dA_ak, dA_ab, b_r, b_k, b_a, b_b, b_w, b_wd, r_dec, a_dec, e_c, e_cp,
                c, c_last, o_t, SPAN: tl.constexpr, BOUNDED: tl.constexpr, PREC: tl.constexpr):
    """The adjoint of ``_pairs``: from the four matrices' gradients, the parts of dr, da, dk, db
    and of ∂/∂c_t, ∂/∂c_{t-1} that flow through them (same path as the forward took)."""
    if BOUNDED:
        dr, da, dk, db, dc, dcp = _pair_grads_factored(dA_rk, dA_rb, dA_ak, dA_ab, r_dec, a_dec,
                                                       b_k, b_b, e_c, e_cp, c, PREC)
    else:
        if tl.min(c_last, 0) >= -SPAN:
            dr, da, dk, db, dc, dcp = _pair_grads_factored(dA_rk, dA_rb, dA_ak, dA_ab, r_dec, a_dec,
                                                           b_k, b_b, e_c, e_cp, c, PREC)
        else:
            # one [t, i, κ] block per exponent family. dw_j collects the terms whose interval
            # contains j; summing "+ at t, − at i" over terms that are 0 by construction (the
            # diagonal e^0 = 1) would cancel O(1) numbers and bury a strong decay's tiny
            # gradient, so those are left out: every ± term left carries a factor e^w or smaller
            x_r, x_a = _pair_decays(b_w, b_wd, o_t)
            g_r = x_r * (dA_rb[:, :, None] * b_b[None, :, :] + dA_rk[:, :, None] * b_k[None, :, :])
            g_a = x_a * (dA_ab[:, :, None] * b_b[None, :, :] + dA_ak[:, :, None] * b_k[None, :, :])
            h_r = x_r * b_r[:, None, :]
            h_a = x_a * b_a[:, None, :]
            dr = tl.sum(g_r, 1)
            da = tl.sum(g_a, 1)
            dk = tl.sum(dA_rk[:, :, None] * h_r, 0) + tl.sum(dA_ak[:, :, None] * h_a, 0)
            db = tl.sum(dA_rb[:, :, None] * h_r, 0) + tl.sum(dA_ab[:, :, None] * h_a, 0)
            P_r = tl.where((o_t[:, None] > o_t[None, :])[:, :, None], b_r[:, None, :] * g_r, 0.)
            P_a = tl.where((o_t[:, None] > o_t[None, :] + 1)[:, :, None], b_a[:, None, :] * g_a, 0.)
            dc = tl.sum(P_r, 1) - tl.sum(P_r, 0) - tl.sum(P_a, 0)       # exponents c_t − c_i, c_{t-1} − c_i
            dcp = tl.sum(P_a, 1)
    return dr, da, dk, db, dc, dcp


@triton.jit
def _pair_grads_factored(dA_rk, dA_rb, dA_ak, dA_ab, r_dec, a_dec, b_k, b_b, e_c, e_cp, c,
                         PREC: tl.constexpr):
    """The adjoint of ``_pairs_factored``: eight tl.dots, then each factor x ⊙ e^{±c} hands
    x̃ ⊙ dx̃ (with its sign) to the exponent it carries."""
    inv = tl.exp(-c)
    k_inv = b_k * inv
    b_inv = b_b * inv
    d_r = tl.dot(dA_rk, k_inv, input_precision=PREC) + tl.dot(dA_rb, b_inv, input_precision=PREC)
    d_a = tl.dot(dA_ak, k_inv, input_precision=PREC) + tl.dot(dA_ab, b_inv, input_precision=PREC)
    d_k = tl.dot(tl.trans(dA_rk), r_dec, input_precision=PREC) + tl.dot(tl.trans(dA_ak), a_dec, input_precision=PREC)
    d_b = tl.dot(tl.trans(dA_rb), r_dec, input_precision=PREC) + tl.dot(tl.trans(dA_ab), a_dec, input_precision=PREC)
    dc = d_r * r_dec - d_k * k_inv - d_b * b_inv
    return d_r * e_c, d_a * e_cp, d_k * inv, d_b * inv, dc, d_a * a_dec


@triton.jit
def _dstate_pieces(Wp, Rd, Bd, Arb, G, do, base_k, base_v, base_a, c0, i_c, L, scale,
                   o_t, o_k, o_v, m_k, m_v, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                   BT: tl.constexpr):
    """What the dS pass reads of chunk ``i_c``, as the forward's prep stored it (zeros, and a
    decay of 1, for a chunk index outside the sequence: ``i_c = -1`` past its first chunk)."""
    m_t = ((i_c * BT + o_t) < L) & (i_c * BT + o_t >= 0)
    off_k = base_k + (i_c * BT + o_t)[:, None] * H * K + o_k[None, :]
    off_v = base_v + (i_c * BT + o_t)[:, None] * H * V + o_v[None, :]
    off_a = base_a + (i_c * BT + o_t)[:, None] * H * BT + o_t[None, :]
    m_tk = m_t[:, None] & m_k[None, :]
    b_W = tl.load(Wp + off_k, mask=m_tk, other=0.)
    b_rd = tl.load(Rd + off_k, mask=m_tk, other=0.)
    b_bd = tl.load(Bd + off_k, mask=m_tk, other=0.)
    A_rb = tl.load(Arb + off_a, mask=m_t[:, None], other=0.)
    b_do = tl.load(do + off_v, mask=m_t[:, None] & m_v[None, :], other=0.)
    b_g = tl.load(G + ((c0 + i_c) * H) * K + o_k, mask=m_k & (i_c * BT + o_k * 0 < L) & (i_c + o_k * 0 >= 0), other=1.)
    return b_W, b_rd, b_bd, A_rb, b_do, b_g


@triton.jit
def wkv7_bwd_dstate_kernel(do, dht, Wp, Rd, Bd, Arb, G, dsk, dh0, cu, ck_off, scale,
                           T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                           BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                           USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, VARLEN: tl.constexpr,
                           DOT_PREC: tl.constexpr):
    """The backward's only sequential part (grid: V-blocks × sequence·heads, the state pass's):
    walks the chunks from last to first with dS in registers, the forward's pieces loaded one
    chunk ahead, and stores at every chunk the gradient of its end state, dS'. Two lines:
    dE = A_rbᵀ dO + b̄ dS',  dS = e^{c_C} dS' + r̃ᵀ dO + Wᵀ dE."""
    i_h, c0, L, bos, o_t, o_k, o_v, m_k, m_v, m_kv, p_kv, p_s = _state_tile(cu, ck_off, T, H, K, V, BT, BK, BV,
                                                                             VARLEN)
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        dS += tl.load(dht + p_s, mask=m_kv, other=0.).to(tl.float32)
    base_k = bos * H * K + i_h * K
    base_v = bos * H * V + i_h * V
    base_a = bos * H * BT + i_h * BT
    g_h = G + i_h * K
    n_c = tl.cdiv(L, BT)
    n_W, n_rd, n_bd, n_A, n_do, n_g = _dstate_pieces(Wp, Rd, Bd, Arb, g_h, do, base_k, base_v, base_a, c0,
                                                     n_c - 1, L, scale, o_t, o_k, o_v, m_k, m_v, H, K, V, BT)
    for i_rev in range(0, n_c):
        i_c = n_c - 1 - i_rev
        tl.store(dsk + ((c0 + i_c) * H + i_h) * K * V + p_kv, dS, mask=m_kv)
        b_W, b_rd, b_bd, A_rb, b_do, b_g = n_W, n_rd, n_bd, n_A, n_do, n_g
        n_W, n_rd, n_bd, n_A, n_do, n_g = _dstate_pieces(Wp, Rd, Bd, Arb, g_h, do, base_k, base_v, base_a, c0,
                                                         i_c - 1, L, scale, o_t, o_k, o_v, m_k, m_v, H, K, V, BT)
        b_do = b_do.to(tl.float32) * scale
        dE = tl.dot(b_bd.to(tl.float32), dS, acc=tl.dot(tl.trans(A_rb), b_do, input_precision=DOT_PREC),
                    input_precision=DOT_PREC)
        dS = tl.dot(tl.trans(b_rd.to(tl.float32)), b_do, acc=b_g[:, None] * dS, input_precision=DOT_PREC)
        dS = tl.dot(tl.trans(b_W.to(tl.float32)), dE, acc=dS, input_precision=DOT_PREC)
    if STORE_DH0:
        tl.store(dh0 + p_s, dS, mask=m_kv)


@triton.jit
def _row_grads(p_dr, p_da, p_dk, p_db, p_dc, p_dcp, d_rdec, d_adec, d_kend, d_bend, d_gam,
               r_dec, a_dec, k_end, b_end, e_c, e_cp, to_end, gamma, incl, strict, DOT_PREC: tl.constexpr):
    """The rows' gradients dr, dw, dk, da, db of one chunk from the pairwise matrices' share (p_*)
    and the decayed rows' adjoints (d_*: of r̃, ã, k̄, b̄, and of γ = e^{c_C} through d_gam)."""
    b_dr = p_dr + d_rdec * e_c
    b_da = p_da + d_adec * e_cp
    b_dk = p_dk + d_kend * to_end
    b_db = p_db + d_bend * to_end
    # gradients of the log decays: c_t = Σ_{j≤t} w_j, c_{t-1} = Σ_{j<t} w_j, and the exponent
    # to the chunk's end Σ_{j>t} w_j; the sums over t are products with 0/1 matrices
    d_c = p_dc + d_rdec * r_dec                                               # ∂/∂c_t
    d_cp = p_dcp + d_adec * a_dec                                             # ∂/∂c_{t-1}
    q = d_kend * k_end + d_bend * b_end                                       # exponent c_C − c_t
    f_incl = tl.where(incl, 1., 0.)
    f_strict = tl.where(strict, 1., 0.)
    b_dw = tl.dot(tl.trans(f_incl), d_c, input_precision=DOT_PREC) \
        + tl.dot(tl.trans(f_strict), d_cp, input_precision=DOT_PREC) \
        + tl.dot(f_strict, q, input_precision=DOT_PREC) + (d_gam * gamma)[None, :]
    return b_dr, b_dw, b_dk, b_da, b_db


@triton.jit
def _chunk_grads(r, w, k, v, a, b, do, dr, dw, dk, dv, da, db, S, dS, off_k, off_v, off_p, m_t, m_up,
                 m_k, m_v, o_t, incl, strict, eye, scale, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                 NSQ: tl.constexpr, SPAN: tl.constexpr, BOUNDED: tl.constexpr, DOT_PREC: tl.constexpr):
    """Every gradient of one chunk, from its start state S and the gradient of its end state dS':
    recompute the chunk's forward quantities, run the adjoint of each line, store the six
    gradients' rows; return the gradient of the start state."""
    m_tk = m_t[:, None] & m_k[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    b_r = tl.load(r + off_k, mask=m_tk, other=0.).to(tl.float32)
    b_k = tl.load(k + off_k, mask=m_tk, other=0.).to(tl.float32)
    b_a = tl.load(a + off_k, mask=m_tk, other=0.).to(tl.float32)
    b_b = tl.load(b + off_k, mask=m_tk, other=0.).to(tl.float32)
    b_v = tl.load(v + off_v, mask=m_tv, other=0.).to(tl.float32)
    b_do = tl.load(do + off_v, mask=m_tv, other=0.).to(tl.float32) * scale
    b_w, b_wd, e_c, e_cp, to_end, c, c_last = _prefixes(w, off_k, m_tk, m_up, o_t, H * K)
    gamma = tl.exp(c_last)
    r_dec = b_r * e_c                            # r̃ = r ⊙ e^{c_t}
    a_dec = b_a * e_cp                           # ã = a ⊙ e^{c_{t-1}}
    k_end = b_k * to_end                         # k̄, b̄: decayed to the chunk's end
    b_end = b_b * to_end
    A_rk, A_rb, A_ak, A_ab = _pairs(b_r, b_k, b_a, b_b, b_w, b_wd, r_dec, a_dec, c, c_last,
                                    o_t, incl, strict, SPAN, BOUNDED, DOT_PREC)
    Tm = _unit_lower_inverse(A_ab, eye, NSQ, "ieee")
    W = tl.dot(Tm, a_dec, input_precision=DOT_PREC)
    AkV = tl.dot(A_ak, b_v, input_precision=DOT_PREC)
    E = tl.dot(W, S, input_precision=DOT_PREC) + tl.dot(Tm, AkV, input_precision=DOT_PREC)
    # ---- adjoints of O = r̃ S + A_rk V + A_rb E and S' = γ S + k̄ᵀ V + b̄ᵀ E (dS holds dS')
    dE = tl.dot(tl.trans(A_rb), b_do, input_precision=DOT_PREC) \
        + tl.dot(b_end, dS, input_precision=DOT_PREC)
    dA_rb = tl.where(incl, tl.dot(b_do, tl.trans(E), input_precision=DOT_PREC), 0.)
    dA_rk = tl.where(incl, tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PREC), 0.)
    d_rdec = tl.dot(b_do, tl.trans(S), input_precision=DOT_PREC)
    d_kend = tl.dot(b_v, tl.trans(dS), input_precision=DOT_PREC)
    d_bend = tl.dot(E, tl.trans(dS), input_precision=DOT_PREC)
    d_gam = tl.sum(S * dS, 1)
    # ---- through E = W S + T A_ak V with W = T ã, and T = (I - A_ab)^{-1}
    dW = tl.dot(dE, tl.trans(S), input_precision=DOT_PREC)
    dAkV = tl.dot(tl.trans(Tm), dE, input_precision=DOT_PREC)
    b_dv = tl.dot(tl.trans(A_rk), b_do, input_precision=DOT_PREC) \
        + tl.dot(k_end, dS, input_precision=DOT_PREC) \
        + tl.dot(tl.trans(A_ak), dAkV, input_precision=DOT_PREC)
    tl.store(dv + off_v, b_dv.to(dv.dtype.element_ty), mask=m_tv)
    d_adec = tl.dot(tl.trans(Tm), dW, input_precision=DOT_PREC)
    dTm = tl.dot(dW, tl.trans(a_dec), input_precision=DOT_PREC) \
        + tl.dot(dE, tl.trans(AkV), input_precision=DOT_PREC)
    dA_ak = tl.where(strict, tl.dot(dAkV, tl.trans(b_v), input_precision=DOT_PREC), 0.)
    dA_ab = tl.where(strict, tl.dot(tl.dot(tl.trans(Tm), dTm, input_precision=DOT_PREC), tl.trans(Tm),
                                    input_precision=DOT_PREC), 0.)
    # ---- through the pairwise matrices, then the rows' own decay factors
    p_dr, p_da, p_dk, p_db, p_dc, p_dcp = _pair_grads(dA_rk, dA_rb, dA_ak, dA_ab, b_r, b_k, b_a, b_b,
                                                      b_w, b_wd, r_dec, a_dec, e_c, e_cp, c, c_last,
                                                      o_t, SPAN, BOUNDED, DOT_PREC)
    b_dr, b_dw, b_dk, b_da, b_db = _row_grads(p_dr, p_da, p_dk, p_db, p_dc, p_dcp, d_rdec, d_adec, d_kend,
                                              d_bend, d_gam, r_dec, a_dec, k_end, b_end, e_c, e_cp, to_end,
                                              gamma, incl, strict, DOT_PREC)
    tl.store(dr + off_p, b_dr.to(dr.dtype.element_ty), mask=m_tk)
    tl.store(dw + off_p, b_dw.to(dw.dtype.element_ty), mask=m_tk)
    tl.store(dk + off_p, b_dk.to(dk.dtype.element_ty), mask=m_tk)
    tl.store(da + off_p, b_da.to(da.dtype.element_ty), mask=m_tk)
    tl.store(db + off_p, b_db.to(db.dtype.element_ty), mask=m_tk)
    # the gradient of the chunk's start state, for the previous chunk: dS = γ dS' + r̃ᵀ dO + Wᵀ dE
    # (unused, and so not computed, by the parallel schedule, whose dS pass did it)
    return tl.dot(tl.trans(W), dE, acc=tl.dot(tl.trans(r_dec), b_do, acc=gamma[:, None] * dS, input_precision=DOT_PREC),
                  input_precision=DOT_PREC)


@triton.jit
def wkv7_bwd_chunked_kernel(r, w, k, v, a, b, do, dht, ckpt, cu, ck_off,
                            dr, dw, dk, dv, da, db, dh0, scale, part_stride,
                            T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NSQ: tl.constexpr,
                            SPAN: tl.constexpr, BOUNDED: tl.constexpr,
                            USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, VARLEN: tl.constexpr,
                            DOT_PREC: tl.constexpr):
    """The sequential schedule (grid: V-blocks × sequence·heads, the state pass's): walks the
    chunks from last to first with dS in registers, each chunk restarted from its checkpoint.
    One launch; enough programs when B·H fills the GPU."""
    i_v = tl.program_id(0)
    i_h, c0, L, bos, o_t, o_k, o_v, m_k, m_v, m_kv, p_kv, p_s = _state_tile(cu, ck_off, T, H, K, V, BT, BK, BV,
                                                                             VARLEN)
    incl = o_t[:, None] >= o_t[None, :]
    strict = o_t[:, None] > o_t[None, :]
    eye = tl.where(o_t[:, None] == o_t[None, :], 1., 0.)
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        dS += tl.load(dht + p_s, mask=m_kv, other=0.).to(tl.float32)
    base_k = bos * H * K + i_h * K
    base_v = bos * H * V + i_h * V
    n_c = tl.cdiv(L, BT)
    for i_rev in range(0, n_c):
        i_c = n_c - 1 - i_rev
        S = tl.load(ckpt + ((c0 + i_c) * H + i_h) * K * V + p_kv, mask=m_kv, other=0.)
        m_t = (i_c * BT + o_t) < L
        off_k = base_k + (i_c * BT + o_t)[:, None] * H * K + o_k[None, :]
        off_v = base_v + (i_c * BT + o_t)[:, None] * H * V + o_v[None, :]
        m_up = ((o_t + 1 < BT) & (i_c * BT + o_t + 1 < L))[:, None] & m_k[None, :]
        dS = _chunk_grads(r, w, k, v, a, b, do, dr, dw, dk, dv, da, db, S, dS, off_k, off_v,
                          i_v * part_stride + off_k, m_t, m_up, m_k, m_v, o_t, incl, strict, eye, scale,
                          H, K, BT, NSQ, SPAN, BOUNDED, DOT_PREC)
    if STORE_DH0:
        tl.store(dh0 + p_s, dS, mask=m_kv)


@triton.jit
def wkv7_bwd_parallel_kernel(r, w, k, v, a, b, do, ckpt, dsk, cu, idx,
                             dr, dw, dk, dv, da, db, scale, part_stride,
                             T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                             BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NSQ: tl.constexpr,
                             SPAN: tl.constexpr, BOUNDED: tl.constexpr, VARLEN: tl.constexpr,
                             DOT_PREC: tl.constexpr):
    """The parallel schedule's gradient launch (grid: V-blocks × chunks × heads): every chunk at
    once, from its checkpoint S and the dS pass's dS'. Nothing here depends on another chunk."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, t0 = chunk_of(cu, idx, i_c, T, BT, VARLEN)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    p_c = (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    S = tl.load(ckpt + p_c, mask=m_kv, other=0.)
    dS = tl.load(dsk + p_c, mask=m_kv, other=0.)
    m_t = t0 + o_t < eos
    off_k = (t0 + o_t)[:, None] * H * K + i_h * K + o_k[None, :]
    off_v = (t0 + o_t)[:, None] * H * V + i_h * V + o_v[None, :]
    m_up = ((o_t + 1 < BT) & (t0 + o_t + 1 < eos))[:, None] & m_k[None, :]
    incl = o_t[:, None] >= o_t[None, :]
    strict = o_t[:, None] > o_t[None, :]
    eye = tl.where(o_t[:, None] == o_t[None, :], 1., 0.)
    _chunk_grads(r, w, k, v, a, b, do, dr, dw, dk, dv, da, db, S, dS, off_k, off_v, i_v * part_stride + off_k,
                 m_t, m_up, m_k, m_v, o_t, incl, strict, eye, scale, H, K, BT, NSQ, SPAN, BOUNDED, DOT_PREC)


#: launch settings per kernel: (num_warps, num_stages[, largest V-block]), measured on an H200
#: (benchmarks/NOTES.md, "wkv7 chunked"): at B=4, H=32 a whole V per program beat 16- and
#: 32-column blocks in both directions, and 8 warps won only in the backward. "prefetch": the state
#: pass loads chunk i+1 while chunk i computes (−17 % there, −12 % at B=4, H=32); "pieces": the
#: dtype of the decayed rows the prep kernel writes ("input": 16 bits for 16-bit inputs, −10 %
#: at B=1, H=8; float32 inputs keep float32 either way). The prep kernel on 2 warps: 0.776 → 0.642 ms
#: at B=4, H=32, T=4096 (more of its small programs resident per multiprocessor; 1 warp: 0.640).
#: The parallel backward's kernel on 4 warps ("bwd_parallel"), and that schedule everywhere on a
#: GPU: at B=4, H=32, T=4096 it took 3.36 ms against the sequential one's 3.57 (8 warps) and its
#: own 4.13 on 8 warps; at B=1, H=8, T=65536 7.27 against 8.10 (8 warps) and 56.2 sequential
#: (benchmarks/results/h200_wkv7_v6_breakdown_2026-12-01.txt).
#: "fold": "auto" folds a forward that keeps no checkpoints when its state pass would leave most
#: multiprocessors idle (B=1, H=8, T=65536: 5.40 → 4.44 ms; at B=4, H=32 the folded prep's
#: 2.0 ms costs more than the chain saves: 1.11 → 2.28), True / False force it. The fold's prep
#: on 8 warps: 1.92 → 1.86 ms, forward 4.36 → 4.29 at B=1, H=8, T=65536, one process
#: (benchmarks/results/h200_wkv7_v7_breakdown_2026-12-01.txt).
TUNE = {"prep": (2, 1), "fwd": (4, 1, 64), "dstate": (4, 1), "bwd": (8, 1, 64), "bwd_parallel": (4, 1),
        "prefetch": True, "pieces": "input", "wu": "float32", "bwd_schedule": "auto", "inverse": "ieee",
        # the folded forward (steps of FOLD_TOKENS, one product a step on the chain)
        "fold": "auto", "fold_prep": (8, 1), "fold_state": (8, 1, 64)}

#: tokens per step of the folded state pass (chunks of 16 or 32 folded 4 or 2 at a time)
FOLD_TOKENS = 64


def block_v(V, name="fwd", programs=None):
    """Value columns per program of the state pass (``name="fwd"``) or the backward, on this
    machine (the whole V in the interpreter, where fewer programs run faster)."""
    if device.interpreting():
        return V
    return gpu_block_v(V, name, programs, _multiprocessors())


def gpu_block_v(V, name="fwd", programs=None, sms=132):
    """The V-block a GPU with ``sms`` multiprocessors gets: ``TUNE``'s largest; given the number of
    (sequence·head) ``programs``, the state pass halves it (down to 32 columns) while twice the
    programs would still fit on the multiprocessors at one each. A program's time is a chain of dependent products, so at
    B=1, H=8 more programs of half the width finish sooner (9.4 → 6.6 ms at T=65536, H200)."""
    bv = min(V, TUNE[name][2])
    if programs is not None:
        while bv > 32 and 2 * programs * triton.cdiv(V, bv) <= sms:
            bv //= 2
    return bv


@functools.lru_cache(maxsize=None)
def _multiprocessors():
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count


def _launch(name):
    warps, stages = TUNE[name][:2]
    return dict(num_warps=warps, num_stages=stages)


def _squarings(chunk_size):
    return chunk_size.bit_length() - 2          # (I + N)(I + N²)…(I + N^{BT/2}): log2(BT) − 1 squarings


def bwd_schedule(N, H, V):
    """``"sequential"`` (one launch: each (sequence·head, V-block) walks its chunks backwards)
    or ``"parallel"`` (a light dS pass on that grid, then every chunk's gradients at once), per
    ``TUNE["bwd_schedule"]``; ``"auto"`` takes the parallel one on a GPU (faster at every shape
    measured: B=1, H=8, where the sequential grid leaves 124 of 132 multiprocessors idle, by 7×;
    B=4, H=32 by 6 %), the sequential one in the interpreter, where fewer programs run faster."""
    choice = TUNE["bwd_schedule"]
    if choice != "auto":
        return choice
    return "sequential" if device.interpreting() else "parallel"


def bwd(r, w, k, v, a, b, do, dht, ckpt, pieces, scale, cu_seqlens, need_dh0, chunk_size, lower_bound=None):
    """Launch the chunked backward on the schedule :func:`bwd_schedule` picks (``pieces``: the
    forward's prep outputs, which the parallel schedule's dS pass reads; None for the
    sequential one). Returns (dr, dw, dk, dv, da, db, dh0)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    N, n_ck, cu, ck_off = checkpoint_layout(B, T, cu_seqlens, chunk_size, r.device)
    varlen = cu_seqlens is not None
    prec = "ieee" if r.dtype == torch.float32 else "tf32"
    dh0 = torch.empty(N, H, K, V, dtype=torch.float32, device=r.device) if need_dh0 else None
    BV = block_v(V, "bwd")
    NV = triton.cdiv(V, BV)
    # K-sized gradients: one float32 partial sum per V-block when V is split, else written directly
    part = dict(dtype=torch.float32 if NV > 1 else r.dtype, device=r.device)
    dr, dw, dk, da, db = (torch.empty(NV, B, T, H, K, **part) for _ in range(5))
    dv = torch.empty_like(v)
    consts = dict(H=H, K=K, V=V, BT=chunk_size, BK=K, NSQ=_squarings(chunk_size), SPAN=FACTORED_SPAN,
                  BOUNDED=lower_bound is not None, VARLEN=varlen, DOT_PREC=prec)
    if pieces is None:
        wkv7_bwd_chunked_kernel[(NV, N * H)](
            r, w, k, v, a, b, do, dht, ckpt, cu, ck_off, dr, dw, dk, dv, da, db, dh0, scale, B * T * H * K,
            T, BV=BV, USE_DHT=dht is not None, STORE_DH0=need_dh0, **consts, **_launch("bwd"))
    else:
        _, idx, n_chunks = chunk_table(cu_seqlens, B, T, chunk_size, r.device)
        dsk = torch.empty(n_ck, H, K, V, dtype=torch.float32, device=r.device)
        BVs = block_v(V, programs=N * H)
        wkv7_bwd_dstate_kernel[(triton.cdiv(V, BVs), N * H)](
            do, dht, pieces["W"], pieces["Rd"], pieces["Bd"], pieces["Arb"], pieces["G"], dsk, dh0, cu, ck_off,
            scale, T, H=H, K=K, V=V, BT=chunk_size, BK=K, BV=BVs, USE_DHT=dht is not None, STORE_DH0=need_dh0,
            VARLEN=varlen, DOT_PREC=prec, **_launch("dstate"))
        wkv7_bwd_parallel_kernel[(NV, n_chunks, H)](
            r, w, k, v, a, b, do, ckpt, dsk, cu_arg(cu_seqlens, r.device), idx, dr, dw, dk, dv, da, db, scale,
            B * T * H * K, B * T if varlen else T, BV=BV, **consts, **_launch("bwd_parallel"))
    dr, dw, dk, da, db = (x.sum(0).to(r.dtype) if NV > 1 else x[0] for x in (dr, dw, dk, da, db))
    return dr, dw, dk, dv, da, db, dh0


def folds(store_ckpt, N, H, V):
    """Whether a forward takes the folded launches: only one that keeps no checkpoints (the
    backward restarts from the state at every chunk, which the folded pass does not stop at), and
    then as ``TUNE["fold"]`` says: True, False, or "auto": on a GPU where the state pass's grid
    (N·H sequence·heads times its V-blocks) would fill under half the multiprocessors."""
    choice = TUNE["fold"]
    if store_ckpt or not choice:
        return False
    if choice != "auto":
        return True
    if device.interpreting():
        return False
    return 2 * N * H * triton.cdiv(V, block_v(V, programs=N * H)) <= _multiprocessors()


def _forward_args(r, T, cu_seqlens, lower_bound, check):
    """What both forwards (plain and folded) pass their prep kernel besides the tensors: the value
    flag (zeroed; None without ``check``), the dot precisions (float32 inputs get full-precision
    dots; on a GPU 16-bit inputs may use tf32 tensor cores; T's squarings per ``TUNE["inverse"]``),
    the lower bound as the kernel reads it, the varlen switch, the row count and ``cu_seqlens``."""
    flags = torch.zeros(1, dtype=torch.int32, device=r.device) if check else None
    prec = "ieee" if r.dtype == torch.float32 else "tf32"
    inv_prec = "ieee" if TUNE["inverse"] == "ieee" else prec
    lower = -3.0e38 if lower_bound is None else float(lower_bound)
    varlen = cu_seqlens is not None
    return (flags, prec, inv_prec, lower, varlen, r.shape[0] * T if varlen else T,
            cu_arg(cu_seqlens, r.device))


def fold_launches(r, w, k, v, a, b, scale, h0, store_ht, cu_seqlens, chunk_size, lower_bound=None, check=True,
                  step=None):
    """The folded forward's buffers and two launches, as :func:`fwd_launches` returns them (no
    checkpoints, no pieces): ``wkv7_fwd_fold_kernel`` over steps of ``step`` tokens (a multiple of
    ``chunk_size``; :data:`FOLD_TOKENS` unless given), then ``wkv7_fwd_folded_kernel``."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    step = FOLD_TOKENS if step is None else step
    N, _, cu, st_off = checkpoint_layout(B, T, cu_seqlens, step, r.device)
    _, idx, n_steps = chunk_table(cu_seqlens, B, T, step, r.device)
    BV = block_v(V, "fold_state", programs=N * H)  # few programs: split V, as the state pass does
    f32 = dict(dtype=torch.float32, device=r.device)
    Rf = torch.empty(B, T, H, K, dtype=r.dtype if TUNE["pieces"] == "input" else torch.float32, device=r.device)
    Of = torch.empty(B, T, H, V, dtype=r.dtype if TUNE["wu"] == "input" else torch.float32, device=r.device)
    Pf, Gf, Qf = torch.empty(n_steps, H, K, K, **f32), torch.empty(n_steps, H, K, **f32), torch.empty(n_steps, H, K, V, **f32)
    o = torch.empty_like(v)
    ht = torch.empty(N, H, K, V, **f32) if store_ht else None
    flags, prec, inv_prec, lower, varlen, rows, cu_p = _forward_args(r, T, cu_seqlens, lower_bound, check)
    warps, stages = TUNE["fold_prep"][:2]

    def prep():
        wkv7_fwd_fold_kernel[(n_steps, H)](
            r, w, k, v, a, b, flags, cu_p, idx, lower, Rf, Of, Pf, Gf, Qf, rows,
            H=H, K=K, V=V, BT=chunk_size, FOLD=step // chunk_size, NSQ=_squarings(chunk_size), SPAN=FACTORED_SPAN,
            BOUNDED=lower_bound is not None, CHECK=check, VARLEN=varlen, DOT_PREC=prec,
            INV_PREC=inv_prec, num_warps=warps, num_stages=stages)

    def state():
        wkv7_fwd_folded_kernel[(triton.cdiv(V, BV), N * H)](
            o, h0, ht, Rf, Of, Pf, Gf, Qf, flags, cu, st_off, scale, T, H=H, K=K, V=V, BS=step, BK=K, BV=BV,
            CHECK=check, USE_H0=h0 is not None, STORE_HT=store_ht, VARLEN=varlen, DOT_PREC=prec,
            num_warps=TUNE["fold_state"][0], num_stages=TUNE["fold_state"][1])

    return prep, state, (o, ht, None, flags, None)


def fwd_launches(r, w, k, v, a, b, scale, h0, store_ht, cu_seqlens, store_ckpt, chunk_size,
                 lower_bound=None, check=True):
    """The forward's buffers and its two launches, not yet run: ``(prep, state, (o, ht, ckpt,
    flags, pieces))``. :func:`fwd` calls ``prep()`` then ``state()``; a benchmark can time each
    alone. ``pieces`` are the prep's outputs the backward reads again (W, the decayed r and b,
    A_rb, the chunk decays)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    N, n_ck, cu, ck_off = checkpoint_layout(B, T, cu_seqlens, chunk_size, r.device)
    _, idx, n_chunks = chunk_table(cu_seqlens, B, T, chunk_size, r.device)
    BV = block_v(V, programs=N * H)
    f32 = dict(dtype=torch.float32, device=r.device)
    # the decayed rows in the input's own type when it is 16-bit (TUNE["pieces"] == "input"): they
    # are products of one input with a decay in (0, 1], so 16 bits lose little beyond the input's
    piece = dict(dtype=r.dtype if TUNE["pieces"] == "input" else torch.float32, device=r.device)
    # W, U and A_rk V likewise with TUNE["wu"] == "input" (an option to measure: they carry the
    # state's products, so float32 is the default)
    wu = dict(dtype=r.dtype if TUNE["wu"] == "input" else torch.float32, device=r.device)
    Wp, Up, Op = torch.empty(B, T, H, K, **wu), torch.empty(B, T, H, V, **wu), torch.empty(B, T, H, V, **wu)
    Kd, Bd, Rd = (torch.empty(B, T, H, K, **piece) for _ in range(3))
    Arb = torch.empty(B, T, H, chunk_size, **f32)
    G = torch.empty(n_chunks, H, K, **f32)
    o = torch.empty_like(v)
    ht = torch.empty(N, H, K, V, **f32) if store_ht else None
    ckpt = torch.empty(n_ck, H, K, V, **f32) if store_ckpt else None
    flags, prec, inv_prec, lower, varlen, rows, cu_p = _forward_args(r, T, cu_seqlens, lower_bound, check)

    def prep():
        wkv7_fwd_prep_kernel[(n_chunks, H)](
            r, w, k, v, a, b, flags, cu_p, idx, lower, Wp, Up, Kd, Bd, Rd, Op, Arb, G, rows,
            H=H, K=K, V=V, BT=chunk_size, NSQ=_squarings(chunk_size), SPAN=FACTORED_SPAN,
            BOUNDED=lower_bound is not None, CHECK=check, VARLEN=varlen, DOT_PREC=prec,
            INV_PREC=inv_prec, **_launch("prep"))

    def state():
        wkv7_fwd_chunked_kernel[(triton.cdiv(V, BV), N * H)](
            v, o, h0, ht, ckpt, Wp, Up, Kd, Bd, Rd, Op, Arb, G, flags, cu, ck_off, scale,
            T, H=H, K=K, V=V, BT=chunk_size, BK=K, BV=BV, CHECK=check, USE_H0=h0 is not None,
            STORE_HT=store_ht, STORE_CKPT=store_ckpt, VARLEN=varlen, PREFETCH=TUNE["prefetch"],
            DOT_PREC=prec, **_launch("fwd"))

    pieces = dict(W=Wp, Rd=Rd, Bd=Bd, Arb=Arb, G=G)     # what the backward's dS pass reads again
    return prep, state, (o, ht, ckpt, flags, pieces)


def _grid_size(r, v, cu_seqlens):
    """(sequences, heads, V) of a call: what the state pass's grid is made of."""
    return (r.shape[0] if cu_seqlens is None else len(cu_seqlens) - 1), r.shape[2], v.shape[-1]


def fwd(r, w, k, v, a, b, scale, h0, store_ht, cu_seqlens, store_ckpt, chunk_size, lower_bound=None,
        check=True):
    """Two launches on contiguous tensors: every chunk's state-free pieces in parallel, then the
    state pass. Returns (o, final_state, checkpoints, flags, pieces): the checkpoints are the
    state at every chunk start, ``pieces`` what the backward reads of the prep's outputs; ``flags`` (with ``check``) is one int32 that either launch sets if a
    value it read was NaN/Inf or a log decay lay outside [lower_bound, 0] (see raise_flagged).
    A forward without checkpoints takes the folded launches instead when :func:`folds` says so."""
    fold = folds(store_ckpt, *_grid_size(r, v, cu_seqlens))
    launches = fold_launches if fold else fwd_launches
    extra = () if fold else (store_ckpt,)
    prep, state, out = launches(r, w, k, v, a, b, scale, h0, store_ht, cu_seqlens, *extra,
                                chunk_size, lower_bound, check)
    prep()
    state()
    return out


def raise_flagged(flags, r, w, k, v, a, b, scale, initial_state, cu_seqlens, lower_bound):
    """After the forward: if the kernel flagged a value, name the argument (the full host-side
    check runs on this error path only), so bad input is a ValueError and never an answer."""
    if not flags.item():
        return
    _rec.check_inputs(r, w, k, v, a, b, scale, initial_state, cu_seqlens)
    if lower_bound is not None:
        lo = float(w.min())
        if lo < lower_bound:
            raise ValueError(f"w: below the declared lower_bound {lower_bound:.6g} (min {lo:.6g}); "
                             "drop lower_bound to take the exact path")
    raise ValueError("w, initial_state: the kernel flagged a value the host check passes (NaN/Inf "
                     "produced inside); check the inputs' magnitudes")


PIECES = ("W", "Rd", "Bd", "Arb", "G")


class _ChunkedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, w, k, v, a, b, scale, h0, output_final_state, cu_seqlens, chunk_size, lower_bound,
                check_values):
        needs_grad = any(ctx.needs_input_grad[:6]) or ctx.needs_input_grad[7]
        fold = folds(needs_grad, *_grid_size(r, v, cu_seqlens))
        launches = fold_launches if fold else fwd_launches
        extra = () if fold else (needs_grad,)
        prep, state, (o, ht, ckpt, flags, pieces) = launches(
            r, w, k, v, a, b, scale, h0, output_final_state, cu_seqlens, *extra, chunk_size, lower_bound,
            check_values)
        prep()
        # the prep checks every input value; the state pass checks only the initial state. Without
        # one, the flag is final after the prep: read it then, and the state pass keeps the GPU
        # busy through the wait and the host's next call (FlagRead)
        early = FlagRead(flags) if check_values and h0 is None else None
        state()
        if check_values and (early.value() if early is not None else flags.item()):
            raise_flagged(flags, r, w, k, v, a, b, scale, h0, cu_seqlens, lower_bound)   # names the argument
        N = _grid_size(r, v, cu_seqlens)[0]
        parallel = needs_grad and bwd_schedule(N, r.shape[2], v.shape[-1]) == "parallel"
        keep = [pieces[n] for n in PIECES] if parallel else [None] * len(PIECES)
        ctx.save_for_backward(r, w, k, v, a, b, ckpt, cu_seqlens, *keep)
        ctx.scale, ctx.has_h0, ctx.chunk_size, ctx.lower_bound = scale, h0 is not None, chunk_size, lower_bound
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        r, w, k, v, a, b, ckpt, cu_seqlens, *kept = ctx.saved_tensors
        # the chunk-start states saved by the forward are where each chunk's recomputation starts
        dr, dw, dk, dv, da, db, dh0 = bwd(
            r, w, k, v, a, b, do.contiguous(), None if dht is None else dht.contiguous(), ckpt,
            None if kept[0] is None else dict(zip(PIECES, kept)), ctx.scale, cu_seqlens, need_dh0=ctx.has_h0, chunk_size=ctx.chunk_size, lower_bound=ctx.lower_bound)
        return dr, dw, dk, dv, da, db, None, dh0, None, None, None, None, None


def triton_chunked(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False,
                   cu_seqlens=None, chunk_size=16, lower_bound=None, check_values=True):
    """RWKV-7 with the chunked (WY / UT) Triton kernel; differentiable in every tensor input.

    Shapes: ``r, w, k, a, b`` [B, T, H, K]; ``v`` [B, T, H, V]; ``initial_state`` [N, H, K, V]
    in any float dtype, cast to float32 (N = B, or ``len(cu_seqlens) - 1`` with B == 1); ``scale``:
    a finite real number. K and V: powers of two in 16..128; ``chunk_size`` 16 or 32.
    ``lower_bound``: optional; declares ``w ≥ lower_bound`` for every element (RWKV-7's own log
    decay satisfies ``w ≥ −e^{−1/2}``, :data:`rwkvlab.wkv7.RWKV7_LOWER_BOUND`), so every chunk takes the
    factored path and the exact path is not compiled; it must keep ``chunk_size·|lower_bound| ≤``
    :data:`FACTORED_SPAN`, and a ``w`` below it is a ValueError (checked in the kernel).
    Returns ``(o [B, T, H, V] in the input dtype, final_state [N, H, K, V] float32 or None)``.

        S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T,   o_t = scale · S_t^T r_t

    The backward is a chunked Triton kernel too, restarting each chunk from its saved start state.
    Values (NaN/Inf, the sign of w, the declared bound) are checked inside the forward kernel,
    which reads them anyway; reading its flag is the forward's one host–device sync.
    ``check_values=False`` skips that check and that sync (shapes, dtypes and devices are still
    checked): for a caller whose values come from its own code and that wants the GPU queue kept
    full, as FLA's kernels, which check nothing, do. NaN in is then NaN out.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) \
            or chunk_size not in (16, 32):
        # tl.dot needs tiles of at least 16; at 64 the backward's tiles outgrow an H200's shared
        # memory (352 KB asked, 227 KB there), and 32 already measured slower than 16
        raise ValueError(f"chunk_size: expected 16 or 32, got {chunk_size!r}")
    if lower_bound is not None:
        lower_bound = validate.real("lower_bound", lower_bound)
        lo = -FACTORED_SPAN / int(chunk_size)
        if not lo <= lower_bound <= 0:
            raise ValueError(f"lower_bound: expected a number in [{lo:g}, 0] for chunk_size {int(chunk_size)} "
                             f"(chunk_size·|lower_bound| ≤ {FACTORED_SPAN:g}), got {lower_bound!r}")
    if not isinstance(check_values, bool):
        raise ValueError(f"check_values: expected True or False, got {check_values!r}")
    scale, *_ = _rec.check_inputs(r, w, k, v, a, b, scale, initial_state, cu_seqlens, check_values=False)
    r, w, k, v, a, b = (x.contiguous() for x in (r, w, k, v, a, b))
    h0 = None if initial_state is None else initial_state.float().contiguous()
    return _ChunkedFunction.apply(r, w, k, v, a, b, scale, h0, bool(output_final_state), cu_seqlens,
                                  int(chunk_size), lower_bound, check_values)
