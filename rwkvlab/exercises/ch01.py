"""Checkers for chapter 01 (causal softmax attention, the online softmax, a flash kernel)."""
from __future__ import annotations

import functools
import math

import torch

from .. import attention, device
from . import call, compare, exercise, not_attempted_message


def _one_thread(checker):
    """Run a checker on one torch thread: its tensors are tiny, and on a busy CPU the thread pool's
    hand-offs cost more than the arithmetic (milliseconds per small op)."""
    @functools.wraps(checker)
    def run(fn):
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return checker(fn)
        finally:
            torch.set_num_threads(n)
    return run


def _inputs(B, T, H, K, V, seed, q_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g) * q_scale
    k = torch.randn(B, T, H, K, generator=g)
    v = torch.randn(B, T, H, V, generator=g)
    return q, k, v


def _masked_attention(q, k, v, scale, allowed):
    """Softmax attention in float64 where query t may read key i iff allowed[t, i] ([T, T] bool)."""
    s = torch.einsum("bthk,bihk->bhti", q.double(), k.double()) * scale
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.einsum("bhti,bihv->bthv", p, v.double())


def _nan_mistake(case, name, got, mistakes):
    """compare() gives a mistake's hint only for finite answers; this catches the mistakes whose
    output has NaN or Inf (a row with every score masked, 0 / 0): same non-finite places, rest close."""
    if not isinstance(got, torch.Tensor) or torch.isfinite(got).all():
        return
    g = got.detach().double().cpu()
    for hint, wrong in mistakes.items():
        if g.shape == wrong.shape and torch.allclose(g, wrong.double(), rtol=1e-3, atol=1e-6, equal_nan=True):
            bad = (~torch.isfinite(g)).nonzero()[0].tolist()
            raise AssertionError(f"case {case}: {name} contains NaN or Inf (first at index {tuple(bad)})\nhint: {hint}")


# ---------------------------------------------------------------------------------------------
# 01.6: causal softmax attention in matrix form
# ---------------------------------------------------------------------------------------------
# (B, T, H, K, V, scale): T = 1, odd T, several heads and batches, scores near 200 in the last case
_CASES_6 = [(1, 1, 1, 4, 4, 0.3), (2, 7, 3, 8, 5, 0.7), (1, 33, 2, 16, 16, 0.4), (2, 20, 1, 6, 3, 20.0)]


@exercise("01.6", "causal softmax attention with a mask", difficulty="easy", spec="""
    Write causal_attention(q, k, v, scale) -> o: causal softmax attention in matrix form, without
    a Python loop over positions. q, k are [B, T, H, K] and v is [B, T, H, V] float32 tensors,
    scale a float; o is [B, T, H, V] in float32 with o_t = sum_{i <= t} softmax_i(scale q_t . k_i) v_i
    for every batch and head. Form the T x T scores per head, mask the future (i > t) and take a
    softmax over the keys. Use the scale you are given (the checker does not use K^-1/2), and
    keep it stable: the last case has scores near 200.""")
@_one_thread
def _check_01_6(fn):
    for i, (B, T, H, K, V, scale) in enumerate(_CASES_6):
        q, k, v = _inputs(B, T, H, K, V, seed=61 + i)
        case = f"{i} (B={B}, T={T}, H={H}, K={K}, V={V}, scale={scale:g})"
        got = call(fn, case, q, k, v, scale)
        want = attention.naive(q.double(), k.double(), v.double(), scale=scale)
        idx = torch.arange(T)
        causal = idx[None, :] <= idx[:, None]
        mistakes = {
            "no causal mask: every output also reads the future; set the scores with i > t to -inf before the softmax":
                _masked_attention(q, k, v, scale, torch.ones(T, T, dtype=torch.bool)),
            "the mask is the wrong triangle: query t must keep keys i <= t (lower triangle) and drop i > t":
                _masked_attention(q, k, v, scale, causal.T),
            "the mask also drops the diagonal: query t reads key t itself (keep i <= t, not i < t)":
                _masked_attention(q, k, v, scale, idx[None, :] < idx[:, None]),
            "the softmax runs over the queries: normalise each query's row of scores over the keys (the last axis)":
                _wrong_axis(q, k, v, scale, causal),
            "the scores are missing the scale: multiply q . k by the scale argument":
                _masked_attention(q, k, v, 1.0, causal),
            "the scale is K^-1/2 instead of the scale argument: use the scale you are given":
                _masked_attention(q, k, v, K ** -0.5, causal),
        }
        _nan_mistake(case, "o", got, mistakes)
        compare(case, got, want, tol=1e-5, name="o", mistakes=mistakes, hint=(
            "scores s = scale * q k^T per (batch, head) are [B, H, T, T]; set s[t, i] = -inf where i > t, "
            "softmax over the last axis, multiply by v; torch.softmax subtracts the row max for you (an exp of "
            "your own needs that shift, or scores near 200 overflow)"))
    return len(_CASES_6)


def _wrong_axis(q, k, v, scale, allowed):
    s = torch.einsum("bthk,bihk->bhti", q.double(), k.double()) * scale
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-2)
    return torch.einsum("bhti,bihv->bthv", p, v.double())


# ---------------------------------------------------------------------------------------------
# 01.7: the online-softmax update
# ---------------------------------------------------------------------------------------------
# (T, K, V, key block S, query scale): T = 1, blocks of 1 and of odd sizes, blocks that do not
# divide T, and scores of several hundred where an unshifted exp overflows float32
_CASES_7 = [(1, 4, 3, 1, 1.0), (7, 8, 4, 3, 1.0), (33, 8, 5, 8, 2.0), (20, 8, 3, 5, 1.5), (24, 8, 4, 7, 120.0)]


def _drive(update, s, v, S, case=None):
    """Feed the rows of scores s [T, T] (−inf above the diagonal) key block by key block.

    Starts from m = −inf, ℓ = 0, a = 0 and returns the final (m, ℓ, a); ``case`` set means the
    update is the reader's (called through ``call``, its results checked for shape)."""
    T, Vd = v.shape
    m = torch.full((T,), float("-inf"), dtype=s.dtype)
    ell = torch.zeros(T, dtype=s.dtype)
    a = torch.zeros(T, Vd, dtype=s.dtype)
    for j0 in range(0, T, S):
        j1 = min(j0 + S, T)
        if case is None:
            m, ell, a = update(m, ell, a, s[:, j0:j1], v[j0:j1])
            continue
        out = call(update, case, m.clone(), ell.clone(), a.clone(), s[:, j0:j1].clone(), v[j0:j1].clone())
        if not (isinstance(out, tuple) and len(out) == 3):
            raise AssertionError(f"case {case}: expected a tuple (m, ell, a), got {type(out).__name__}")
        for name, x, shape in zip(("m", "ell", "a"), out, ((T,), (T,), (T, Vd))):
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise AssertionError(f"case {case}: after key block {j0}:{j1} expected {name} of shape {shape}, "
                                     f"got {got}")
        m, ell, a = out
    return m, ell, a


def _wrong_update(kind):
    def update(m, ell, a, s, v):
        m_new = torch.maximum(m, s.amax(-1))
        p = torch.exp(s - m_new[:, None])
        alpha = torch.exp(m - m_new)
        if kind == "no_rescale":
            return m_new, ell + p.sum(-1), a + p @ v
        if kind == "old_max":         # the max is computed but never carried to the next block
            return m, p.sum(-1), p @ v
        if kind == "ell_only":
            return m_new, alpha * ell + p.sum(-1), a + p @ v
        raise ValueError(kind)
    return update


def _scores(T, K, V, q_scale, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(T, K, generator=g) * q_scale
    k = torch.randn(T, K, generator=g)
    v = torch.randn(T, V, generator=g)
    scale = K ** -0.5
    s = (q @ k.T * scale).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return q, k, v, scale, s


@exercise("01.7", "the online-softmax update", difficulty="medium", spec="""
    Write online_update(m, ell, a, s, v) -> (m, ell, a): fold one block of keys into the running
    softmax of R query rows. m and ell are [R], a is [R, V], s is [R, S] (the scaled scores of the
    rows against the block's S keys, -inf where a key is masked) and v is [S, V], all float32.
    Before the update m is the largest score seen so far, ell = sum exp(s_i - m) and
    a = sum exp(s_i - m) v_i over the keys seen so far; after it the same must hold with the block
    included. The checker starts every row from m = -inf, ell = 0, a = 0, feeds causal blocks
    (a row's first block always has a finite score; later blocks may be all -inf for it) and
    compares a / ell with softmax attention, then m and ell themselves. Scores reach several
    hundred, so every exponent you evaluate must be <= 0.""")
@_one_thread
def _check_01_7(fn):
    for i, (T, K, V, S, q_scale) in enumerate(_CASES_7):
        q, k, v, scale, s = _scores(T, K, V, q_scale, seed=71 + i)
        case = f"{i} (R=T={T}, V={V}, key blocks of {S}, scores up to {s[torch.isfinite(s)].abs().max():.3g})"
        m, ell, a = _drive(fn, s, v, S, case)
        want = attention.naive(q.double()[None, :, None], k.double()[None, :, None], v.double()[None, :, None],
                               scale=scale)[0, :, 0]
        s64 = (q.double() @ k.double().T * scale).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1),
                                                              float("-inf"))
        wrong = {hint: _drive(_wrong_update(kind), s64, v.double(), S) for hint, kind in (
            ("the old sums are not rescaled: multiply ell and a by alpha = exp(m - m_new) before adding the block",
             "no_rescale"),
            ("the new max is not returned: the m you hand back must be m_new = max(m, max_i s_i), or the next "
             "block discards what came before", "old_max"),
            ("only ell is rescaled: a = alpha * a + p @ v needs the same alpha = exp(m - m_new)", "ell_only"))}
        mistakes = {h: w[2] / w[1][:, None] for h, w in wrong.items()}
        _nan_mistake(case, "a / ell", a / ell[:, None], mistakes)
        compare(case, a / ell[:, None], want, tol=1e-5, name="a / ell", mistakes=mistakes, hint=(
            "m_new = max(m, row max of s); alpha = exp(m - m_new); p = exp(s - m_new[:, None]); "
            "ell = alpha * ell + p.sum(-1); a = alpha[:, None] * a + p @ v"))
        m_want = s64.amax(-1)
        compare(case, m, m_want, tol=1e-6, name="m", hint=(
            "m must be the largest score each row has seen so far: return m_new = max(m, max_i s_i)"))
        compare(case, ell, torch.exp(s64 - m_want[:, None]).sum(-1), tol=1e-5, name="ell",
                hint="ell must be sum exp(s_i - m) with the m you return (every weight relative to the max, "
                     "so the largest is exp(0) = 1)")
    return len(_CASES_7)


# ---------------------------------------------------------------------------------------------
# 01.8: the key-block loop of a Triton flash-attention forward kernel
# ---------------------------------------------------------------------------------------------
# (B, T, H, K, V, q scale): T = 1, one full block, odd T over three blocks, K and V below 16
# (padded with masks), scores of ~1e2 in the last case. Interpreter: tiny shapes only.
_CASES_8 = [(1, 1, 1, 16, 16, 1.0), (1, 16, 2, 16, 16, 1.0), (1, 37, 1, 16, 8, 1.0), (2, 21, 1, 8, 16, 12.0)]
_BLOCK = 16


def _call_kernel(fn, id_, case, *args):
    """Like ``call``, but a stub's NotImplementedError raised inside a kernel comes out as itself.

    The interpreter wraps exceptions raised inside a kernel (InterpreterError, cause set); a
    compiled kernel refuses the ``raise`` statement at compile time, with the stub's line in the
    message."""
    try:
        return call(fn, case, *args)
    except AssertionError as e:
        err = e.__cause__
        while err is not None:
            if isinstance(err, NotImplementedError):
                raise err from None
            err = err.__cause__ or err.__context__
        if not_attempted_message(id_) in str(e):
            raise NotImplementedError(not_attempted_message(id_)) from None
        raise


@exercise("01.8", "the key-block loop of a Triton flash-attention kernel", difficulty="hard", spec="""
    Complete the @triton.jit kernel flash_fwd: write the body of its loop over key blocks
    (s0 = 0, BS, 2 BS, ... up to hi). The cell gives the rest: one program per (batch * head,
    block of BT = 16 queries), the query tile b_q [BT, BK] already loaded, the running b_m, b_l
    [BT] and b_acc [BT, BV] in float32, and the final b_acc / b_l stored to o. For each block,
    load the [BS, BK] key and [BS, BV] value tiles (layout [B, T, H, K] and [B, T, H, V],
    contiguous; mask rows >= T and columns >= K or V), compute the scores
    scale * b_q b_k^T with tl.dot(..., input_precision="ieee"), set them to -inf where the key is
    after the query, and do the online-softmax update of 01.7. The wrapper flash_forward(q, k, v,
    scale) launches it; the checker calls that on float32 tensors with T = 1, ragged T and K or
    V below 16, in the Triton interpreter on CPU (compiled on a GPU).""")
@_one_thread
def _check_01_8(fn):
    dev = device.device()
    for i, (B, T, H, K, V, q_scale) in enumerate(_CASES_8):
        q, k, v = _inputs(B, T, H, K, V, seed=81 + i, q_scale=q_scale)
        scale = K ** -0.5
        case = f"{i} (B={B}, T={T}, H={H}, K={K}, V={V}, blocks of {_BLOCK})"
        got = _call_kernel(fn, "01.8", case, q.to(dev), k.to(dev), v.to(dev), scale)
        want = attention.naive(q.double(), k.double(), v.double(), scale=scale)
        idx = torch.arange(T)
        causal = idx[None, :] <= idx[:, None]
        block_end = torch.clamp((idx // _BLOCK + 1) * _BLOCK, max=T)
        wrong_scale = _masked_attention(q, k, v, 1.0, causal)
        no_rescale = torch.stack([torch.stack([_no_rescale(q[b, :, h], k[b, :, h], v[b, :, h], scale)
                                               for h in range(H)], 1) for b in range(B)])
        compare(case, got.cpu() if isinstance(got, torch.Tensor) else got, want, tol=1e-4, name="o", hint=(
            "per block: o_s = s0 + tl.arange(0, BS); load b_k, b_v with offsets ((i_b*T + o_s)*H + i_h)*K + o_k "
            "(V for values) and masks; b_s = tl.dot(b_q, tl.trans(b_k)) * scale; tl.where(o_s <= o_t, b_s, -inf); "
            "then m_new, alpha, b_p, b_l, b_acc, b_m as in 01.7"), mistakes={
            "the diagonal tile is not masked: a query also reads the later keys of its own block; keep a score only "
            "where o_s[None, :] <= o_t[:, None]":
                _masked_attention(q, k, v, scale, idx[None, :] < block_end[:, None]),
            "the old sums are not rescaled: multiply b_l and b_acc by alpha = tl.exp(b_m - m_new) before adding "
            "the block": no_rescale,
            "the scores are missing the scale: b_s = tl.dot(b_q, tl.trans(b_k)) * scale": wrong_scale,
        })
    return len(_CASES_8)


def _no_rescale(q, k, v, scale):
    """[T, K], [T, K], [T, V] -> [T, V]: the online softmax over blocks of _BLOCK keys without alpha."""
    T = q.shape[0]
    s = (q.double() @ k.double().T * scale).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
    _, ell, a = _drive(_wrong_update("no_rescale"), s, v.double(), _BLOCK)
    return a / ell[:, None]
