"""Checkers for chapter 12 (a whole RWKV-7 block): token shift and mixes, the decay, the keys."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import rwkv7_ops as ops
from . import call, compare, exercise

_SHAPES = [(1, 1, 8), (2, 7, 16), (3, 33, 12)]   # (B, T, C): T = 1, odd T


def _g(seed):
    return torch.Generator().manual_seed(seed)


@exercise("12.7", "token shift and the lerp mixes", difficulty="easy", spec="""
    Write shift_and_mix(x, shift_state, mu) -> (xm, last). x is [B, T, C], shift_state [B, C] (the
    last input of the previous segment; zeros at the start of a text), mu [C]. The previous token's
    input is x_prev[:, t] = x[:, t-1] with x_prev[:, 0] = shift_state, and the mix weights the
    PREVIOUS token: xm = x + (x_prev - x) * mu. Return xm [B, T, C] and last = x[:, -1] [B, C], the
    shift state for the next segment.""")
def _check_12_7(fn):
    for i, (B, T, C) in enumerate(_SHAPES):
        g = _g(120 + i)
        x, s, mu = torch.randn(B, T, C, generator=g), torch.randn(B, C, generator=g), torch.rand(C, generator=g)
        case = f"{i} (B={B}, T={T}, C={C})"
        out = call(fn, case, x, s, mu)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise AssertionError(f"case {case}: expected (xm, last), got {type(out).__name__}")
        x_prev, last = ops.token_shift(x.double(), s.double())
        (want,) = ops.addcmul_mix(x.double(), x_prev, mu.double())
        x_next = torch.cat([x[:, 1:], s[:, None]], 1).double()
        compare(case, out[0], want, tol=1e-6, name="xm", hint="x_prev[:, t] is x[:, t-1], and x_prev[:, 0] is shift_state",
                mistakes={
                    "mu weights the PREVIOUS token: x + (x_prev - x) * mu, not x_prev + (x - x_prev) * mu":
                        x_prev + (x.double() - x_prev) * mu.double(),
                    "the shift goes the other way: x_prev[:, t] = x[:, t-1] (the past), not x[:, t+1]":
                        x.double() + (x_next - x.double()) * mu.double(),
                    "the first token's previous input is shift_state, not zeros":
                        ops.addcmul_mix(x.double(), ops.token_shift(x.double())[0], mu.double())[0],
                })
        compare(case, out[1], last, tol=0, name="last", hint="last is the final token's input, x[:, -1]")
    return len(_SHAPES)


@exercise("12.8", "RWKV-7's soft-clamped log decay", difficulty="easy", spec="""
    Write log_decay(xw, w0, w1, w2) -> log w. xw is [B, T, C] (the decay's mixed input), w0 [C],
    w1 [C, R], w2 [R, C] (a rank-R LoRA). With d = w0 + tanh(xw @ w1) @ w2, RWKV-7's log decay is
    log w = -exp(-softplus(-d) - 0.5), which lies in (-e^{-1/2}, 0): every channel keeps at least
    e^{-e^{-1/2}} ≈ 0.545 of its state per token.""")
def _check_12_8(fn):
    for i, (B, T, C) in enumerate(_SHAPES):
        g = _g(128 + i)
        R = 4
        xw = torch.randn(B, T, C, generator=g)
        w0, w1, w2 = torch.randn(C, generator=g) * 2, torch.randn(C, R, generator=g), torch.randn(R, C, generator=g)
        case = f"{i} (B={B}, T={T}, C={C}, R={R})"
        got = call(fn, case, xw, w0, w1, w2)
        d = (w0 + torch.tanh(xw @ w1) @ w2).double()
        want = -torch.exp(-F.softplus(-d) - 0.5)
        compare(case, got, want, tol=1e-6, name="log w", hint="log w = -exp(-softplus(-d) - 0.5) with d = w0 + tanh(xw w1) w2",
                mistakes={
                    "that is RWKV-6's decay -exp(d): RWKV-7 soft-clamps d first, -exp(-softplus(-d) - 0.5)": -torch.exp(d),
                    "the shift by -0.5 inside the exp is missing: the bound is -e^{-1/2}, not -1": -torch.exp(-F.softplus(-d)),
                    "you returned the decay factor w, not its log": torch.exp(want),
                })
    return len(_SHAPES)


@exercise("12.9", "the removal key and the replacement key", difficulty="medium", spec="""
    Write keys(k, a, k_k, k_a, n_head) -> (kk, k_new). k and a are [B, T, C] (a the in-context
    learning rate in (0, 1)), k_k and k_a are [C], and C = n_head * N. The removal key is
    kk = normalize(k * k_k) to unit L2 length PER HEAD (over each group of N channels); the
    replacement key is k_new = k * (1 + (a - 1) * k_a). Both [B, T, C].""")
def _check_12_9(fn):
    for i, ((B, T, C), H) in enumerate(zip(_SHAPES, (2, 4, 3))):
        g = _g(129 + i)
        k, a = torch.randn(B, T, C, generator=g), torch.rand(B, T, C, generator=g)
        k_k, k_a = torch.rand(C, generator=g) + 0.5, torch.rand(C, generator=g)
        case = f"{i} (B={B}, T={T}, C={C}, n_head={H})"
        out = call(fn, case, k, a, k_k, k_a, H)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise AssertionError(f"case {case}: expected (kk, k_new), got {type(out).__name__}")
        kd, ad = k.double(), a.double()
        want_kk = ops.removal_key(kd, k_k.double(), H)
        compare(case, out[0], want_kk, tol=1e-6, name="kk", hint="normalise k * k_k over each head's N channels",
                mistakes={
                    "normalise per head (groups of N = C / n_head channels), not over all C channels at once":
                        F.normalize(kd * k_k.double(), dim=-1),
                    "kk must have unit length per head: you did not normalise": kd * k_k.double(),
                })
        want_k = ops.k_update(kd, ad, k_a.double())
        compare(case, out[1], want_k, tol=1e-6, name="k_new", hint="k_new = k * (1 + (a - 1) * k_a)",
                mistakes={"the interpolation is between 1 and a: k * (1 + (a - 1) * k_a), not k * (1 + a * k_a)":
                          kd * (1 + ad * k_a.double()),
                          "k_a = 1 should scale the key by a, k_a = 0 leave it whole; you swapped the two ends":
                          kd * (1 + (ad - 1) * (1 - k_a.double()))})
    return len(_SHAPES)
