"""Checkers for chapter 02 (AFT: AFT-full, the causal decay recurrence, AFT-local)."""
from __future__ import annotations

import torch

from .. import aft
from . import call, compare, exercise
from .ch01 import _nan_mistake, _one_thread


def _inputs(B, T, D, seed, logit_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, D, generator=g)
    k = torch.randn(B, T, D, generator=g) * logit_scale
    v = torch.randn(B, T, D, generator=g)
    w = torch.randn(T, T, generator=g) * logit_scale
    return q, k, v, w


def _full(q, k, v, w, causal=True):
    """AFT-full in float64 straight from the formula, optionally without the causal limit."""
    T = q.shape[1]
    z = k.double()[:, None, :, :] + w.double()[None, :, :, None]             # [B, t, t', D]
    if causal:
        z = z.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1)[None, :, :, None], float("-inf"))
    return torch.sigmoid(q.double()) * torch.einsum("btsd,bsd->btd", torch.softmax(z, dim=2), v.double())


# ---------------------------------------------------------------------------------------------
# 02.6: causal AFT-full
# ---------------------------------------------------------------------------------------------
# (B, T, D, logit scale, zero bias): T = 1, odd T, w = 0 (AFT-simple), logits of several hundred
_CASES_6 = [(1, 1, 3, 1.0, False), (2, 7, 4, 1.0, False), (1, 33, 5, 1.0, False), (2, 12, 4, 1.0, True),
            (2, 20, 6, 150.0, False)]


@exercise("02.6", "causal AFT-full", difficulty="easy", spec="""
    Write aft_full(q, k, v, w) -> y: causal AFT-full without a Python loop over positions.
    q, k, v are [B, T, D] float32 tensors and w is the [T, T] position bias (w[t, t'] is the bias
    of output t towards input t'); y is [B, T, D] in float32 with
    y_t = sigmoid(q_t) * sum_{t' <= t} exp(k_t' + w[t, t']) v_t' / sum_{t' <= t} exp(k_t' + w[t, t'])
    per channel. One case has w = 0 (then it is causal AFT-simple); the last has keys and biases
    of a few hundred, so subtract the per-channel maximum before any exp.""")
@_one_thread
def _check_02_6(fn):
    for i, (B, T, D, scale, zero_bias) in enumerate(_CASES_6):
        q, k, v, w = _inputs(B, T, D, seed=261 + i, logit_scale=scale)
        if zero_bias:
            w = torch.zeros(T, T)
        case = f"{i} (B={B}, T={T}, D={D}, {'w = 0' if zero_bias else f'logits ~ N(0, {scale:g}^2)'})"
        got = call(fn, case, q, k, v, w)
        want = aft.naive(q.double(), k.double(), v.double(), w.double())
        ref = _full(q, k, v, w)
        mistakes = {
            "no causal mask: y_t also averages the future; give t' > t a logit of -inf":
                _full(q, k, v, w, causal=False),
            "the bias is transposed: output t uses row t of w, w[t, t'], with t' the input position":
                _full(q, k, v, w.T),
            "the gate is missing: multiply the average by sigmoid(q_t)": ref / torch.sigmoid(q.double()),
            "the gate is q itself: the query gates through sigmoid(q_t), not q_t":
                ref / torch.sigmoid(q.double()) * q.double(),
        }
        _nan_mistake(case, "y", got, mistakes)
        compare(case, got, want, tol=1e-5, name="y", mistakes=mistakes, hint=(
            "z[b, t, t', d] = k[b, t', d] + w[t, t'] is [B, T, T, D]; set t' > t to -inf, softmax over t' "
            "(dim 2; it subtracts the max, a plain exp of logits of a few hundred overflows), contract with v "
            "over t', multiply by sigmoid(q)"))
    return len(_CASES_6)


# ---------------------------------------------------------------------------------------------
# 02.7: causal AFT with a decay bias, as a recurrence
# ---------------------------------------------------------------------------------------------
# (B, T, D, key scale, lowest rate, highest rate): T = 1, odd T, slow decay over many steps,
# fast decay, keys of ~1e2 (an unshifted e^k overflows float32)
_CASES_7 = [(1, 1, 3, 1.0, 0.1, 1.0), (2, 9, 4, 1.0, 0.1, 1.0), (1, 48, 5, 1.0, 0.005, 0.05),
            (2, 25, 4, 1.0, 0.5, 3.0), (1, 30, 3, 80.0, 0.05, 2.0)]


def _decay_reference(q, k, v, rate):
    """float64 AFT-full channel by channel with w[t, t'] = -(t - t') rate_d (any sign of rate)."""
    T, D = q.shape[1], q.shape[2]
    idx = torch.arange(T, dtype=torch.float64)
    age = (idx[:, None] - idx[None, :]).tril()
    cols = [aft.naive(q[..., d:d + 1].double(), k[..., d:d + 1].double(), v[..., d:d + 1].double(),
                      -age * rate[d].item()) for d in range(D)]
    return torch.cat(cols, dim=-1)


def _stale_state(q, k, v, lam):
    """The scan with a running exponent p whose old sums are not rescaled when p changes."""
    q, k, v, lam = q.double(), k.double(), v.double(), lam.double()
    B, T, D = q.shape
    num, den = torch.zeros(B, D, dtype=torch.float64), torch.zeros(B, D, dtype=torch.float64)
    p = torch.full((B, D), float("-inf"), dtype=torch.float64)
    ys = []
    for t in range(T):
        p = torch.maximum(p - lam, k[:, t])
        e = torch.exp(k[:, t] - p)
        num, den = num + e * v[:, t], den + e
        ys.append(torch.sigmoid(q[:, t]) * num / den)
    return torch.stack(ys, 1)


def _read_before_update(q, want):
    """y_t from the state of step t - 1 (0 / 0 at t = 0), from the correct y of step t - 1."""
    sq = torch.sigmoid(q.double())
    prev = torch.cat([torch.full_like(want[:, :1], float("nan")), (want / sq)[:, :-1]], dim=1)
    return sq * prev


@exercise("02.7", "causal AFT with a decay bias, as a recurrence", difficulty="medium", spec="""
    Write aft_recurrent(q, k, v, lam) -> y: causal AFT with the bias w[t, t'] = -(t - t') lam_d,
    computed as a recurrence with a state of O(D) numbers per batch row (no T x T tensor).
    q, k, v are [B, T, D] float32 tensors and lam is [D] (decay rates > 0, one per channel);
    y is [B, T, D] with y_t = sigmoid(q_t) num_t / den_t, where
    num_t = exp(-lam) num_{t-1} + exp(k_t) v_t and den_t = exp(-lam) den_{t-1} + exp(k_t).
    Keep num and den divided by exp(p) for a running exponent p, as the chapter's aft.recurrent
    does (write your own, do not call it): the last case has keys of a few hundred.""")
@_one_thread
def _check_02_7(fn):
    for i, (B, T, D, scale, lo, hi) in enumerate(_CASES_7):
        q, k, v, _ = _inputs(B, T, D, seed=271 + i, logit_scale=scale)
        g = torch.Generator().manual_seed(1271 + i)
        lam = lo * (hi / lo) ** torch.rand(D, generator=g)                  # log-uniform in [lo, hi]
        case = f"{i} (B={B}, T={T}, D={D}, rates {lo:g}..{hi:g}, keys ~ N(0, {scale:g}^2))"
        got = call(fn, case, q, k, v, lam)
        want = _decay_reference(q, k, v, lam.double())
        mistakes = {
            "the decay has the wrong sign: the old state is multiplied by exp(-lam), so older tokens weigh less":
                _decay_reference(q, k, v, -lam.double()),
            "the rate is used as the factor: the old state decays by exp(-lam), not by lam":
                _decay_reference(q, k, v, -torch.log(lam.double())),
            "the old sums are not rescaled when the running exponent changes: multiply num and den by "
            "exp(p - lam - p_new) before adding exp(k_t - p_new) times the token":
                _stale_state(q, k, v, lam),
            "the output reads the state before the token is added: update num and den with token t first, "
            "then y_t = sigmoid(q_t) num_t / den_t": _read_before_update(q, want),
        }
        _nan_mistake(case, "y", got, mistakes)
        compare(case, got, want, tol=1e-5, name="y", mistakes=mistakes, hint=(
            "per step: p_new = max(p - lam, k_t); a = exp(p - lam - p_new); b = exp(k_t - p_new); "
            "num = a num + b v_t; den = a den + b; p = p_new; y_t = sigmoid(q_t) num / den; "
            "start from num = den = 0 and p = -inf"))
    return len(_CASES_7)


# ---------------------------------------------------------------------------------------------
# 02.8: AFT-local, the windowed bias
# ---------------------------------------------------------------------------------------------
# (B, T, D, window s): T = 1, windows of 1, 3 and 5 inside longer sequences, s = 0 (AFT-simple),
# s >= T (AFT-full)
_CASES_8 = [(1, 1, 3, 1), (2, 9, 4, 3), (1, 30, 5, 5), (1, 17, 3, 0), (2, 11, 4, 20)]


@exercise("02.8", "AFT-local: the windowed bias", difficulty="easy", spec="""
    Write aft_local(q, k, v, w, s) -> y: causal AFT-local. The bias is w[t, t'] inside the window
    |t - t'| < s and 0 outside it (0, not -inf: distant tokens still count with weight exp(k_t')).
    q, k, v are [B, T, D] float32 tensors, w is [T, T], s >= 0 an int; y is [B, T, D]. You may
    build the windowed bias and pass it to rwkvlab.aft.parallel (or to your aft_full of 02.6), but
    not call aft.local. s = 0 must give AFT-simple and s >= T AFT-full.""")
@_one_thread
def _check_02_8(fn):
    for i, (B, T, D, s) in enumerate(_CASES_8):
        q, k, v, w = _inputs(B, T, D, seed=281 + i)
        case = f"{i} (B={B}, T={T}, D={D}, s={s})"
        got = call(fn, case, q, k, v, w, s)
        want = aft.local(q.double(), k.double(), v.double(), w.double(), s)
        idx = torch.arange(T)
        inside = (idx[:, None] - idx[None, :]).abs() < s
        mistakes = {
            "outside the window the bias is 0, not -inf: AFT-local keeps every past token, with weight exp(k_t')":
                _full(q, k, v, torch.where(inside, w, torch.full_like(w, float("-inf")))),
            "the window is one too wide: the bias applies where |t - t'| < s, strictly":
                _full(q, k, v, torch.where((idx[:, None] - idx[None, :]).abs() <= s, w, torch.zeros_like(w))),
            "inside and outside are swapped: keep w[t, t'] where |t - t'| < s and use 0 elsewhere":
                _full(q, k, v, torch.where(inside, torch.zeros_like(w), w)),
            "the window is not applied: outside |t - t'| < s the bias must be 0": _full(q, k, v, w),
        }
        _nan_mistake(case, "y", got, mistakes)
        compare(case, got, want, tol=1e-5, name="y", mistakes=mistakes, hint=(
            "idx = torch.arange(T); inside = (idx[:, None] - idx[None, :]).abs() < s; "
            "bias = torch.where(inside, w, 0); then causal AFT-full with that bias"))
    return len(_CASES_8)
