"""Checkers for chapter 03 (RWKV-4's WKV)."""
from __future__ import annotations

import torch

from .. import wkv4
from . import call, compare, exercise

# (B, T, C, key scale): T = 1, odd T, several channels, keys large enough to overflow e^k in float32
_CASES = [(1, 1, 3, 1.0), (2, 7, 4, 3.0), (1, 33, 5, 40.0), (3, 20, 2, 100.0)]


def _inputs(B, T, C, scale, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, T, C, generator=g) * scale
    v = torch.randn(B, T, C, generator=g)
    w = torch.rand(C, generator=g) * 2
    u = torch.randn(C, generator=g)
    return k, v, w, u


def _run_steps(step_fn, k, v, w, u, case):
    """Drive a reader's one-token step over a sequence from the empty state; return y [B, T, C]."""
    B, T, C = k.shape
    a, b, p = wkv4.empty_state(B, C)
    ys = []
    for t in range(T):
        out = call(step_fn, case, k[:, t], v[:, t], w, u, a, b, p)
        if not (isinstance(out, tuple) and len(out) == 4):
            raise AssertionError(f"case {case}: expected (y, a, b, p), got {type(out).__name__}")
        y, a, b, p = out
        ys.append(y)
    return torch.stack(ys, 1)


def _mistake(k, v, w, u, kind):
    """The outputs of plausible wrong steps, for the hints."""
    B, T, C = k.shape
    a, b, p = wkv4.empty_state(B, C)
    ys = []
    for t in range(T):
        kt, vt = k[:, t], v[:, t]
        uu = 0.0 if kind == "no_bonus" else u
        q = torch.maximum(p, uu + kt)
        e1, e2 = torch.exp(p - q), torch.exp(uu + kt - q)
        ys.append((e1 * a + e2 * vt) / (e1 * b + e2))
        if kind == "decay_new_token":  # the new token decayed too: e^{-w} applied after adding it
            q2 = torch.maximum(p, kt)
            f1, f2 = torch.exp(p - q2 - w), torch.exp(kt - q2 - w)
        elif kind == "bonus_in_state":   # u added to the token's weight in the state as well
            q2 = torch.maximum(p - w, u + kt)
            f1, f2 = torch.exp(p - w - q2), torch.exp(u + kt - q2)
        else:
            q2 = torch.maximum(p - w, kt)
            f1, f2 = torch.exp(p - w - q2), torch.exp(kt - q2)
        a, b, p = f1 * a + f2 * vt, f1 * b + f2, q2
    return torch.stack(ys, 1)


@exercise("03.7", "the stable WKV-4 step", difficulty="medium", spec="""
    Write stable_step(kt, vt, w, u, a, b, p) -> (y, a, b, p): one token of RWKV-4's numerically
    stable recurrence. kt, vt, a, b, p are [B, C] float32 tensors, w (>= 0, the paper's decay rate)
    and u are [C]. (a, b, p) is the state with a_t = e^p a', b_t = e^p b' and p the largest log
    weight so far; the empty state is a = b = 0, p = -1e38. The output is
    wkv_t = (a_{t-1} + e^{u+k_t} v_t) / (b_{t-1} + e^{u+k_t}) and the update
    a_t = e^{-w} a_{t-1} + e^{k_t} v_t (b likewise with 1 for v). Every exponent you evaluate must
    be <= 0: the checker uses keys up to about 300 in float32.""")
def _check_03_7(fn):
    for i, (B, T, C, scale) in enumerate(_CASES):
        k, v, w, u = _inputs(B, T, C, scale, seed=31 + i)
        case = f"{i} (B={B}, T={T}, C={C}, keys ~ N(0, {scale:g}^2))"
        got = _run_steps(fn, k, v, w, u, case)
        want, _ = wkv4.naive(k.double(), v.double(), w.double(), u.double())
        compare(case, got, want, tol=1e-5, name="y", hint=(
            "compare the stable step of chapter 03: shift both exponents by q = max(p, u + k_t) for the output "
            "and q' = max(p - w, k_t) for the update"), mistakes={
            "the bonus u belongs to the current token's weight in the OUTPUT only; the state gets e^{k_t}":
                _mistake(k, v, w, u, "bonus_in_state"),
            "the output is missing the bonus: the current token's log weight is u + k_t":
                _mistake(k, v, w, u, "no_bonus"),
            "the state decays BEFORE the new token is added: e^{-w} multiplies the old a, b only":
                _mistake(k, v, w, u, "decay_new_token"),
        })
    return len(_CASES)
