"""Checkers for chapter 04 (the RWKV-4 block: token shift, time mixing, channel mixing, RNN mode)."""
from __future__ import annotations

import torch

from .. import rwkv4, wkv4
from . import call, compare, exercise


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _shift(x, last):
    """x_{t-1} at every position (float64 references): `last` (or zeros) in front of position 0."""
    first = torch.zeros_like(x[:, :1]) if last is None else last[:, None].to(x.dtype)
    return torch.cat([first, x[:, :-1]], 1)


# ---------------------------------------------------------------------------------------------
# 04.7: token shift and RWKV-4's mix
# ---------------------------------------------------------------------------------------------
# (B, T, C, with a `last` from a previous segment)
_SHIFT_CASES = [(2, 7, 3, False), (3, 10, 5, True), (1, 1, 4, True), (1, 16, 8, False)]


@exercise("04.7", "token shift and RWKV-4's mix", difficulty="easy", spec="""
    Write shift_mix(x, mu, last=None) -> (mixed, x_last): RWKV-4's token shift followed by its
    interpolation. x is [B, T, C] float32, mu is [C] with entries in [0, 1], last is a [B, C]
    tensor (the input just before this segment) or None (the start of a text: zeros). With
    x_prev[:, t] = x[:, t-1] and x_prev[:, 0] = last, return mixed = mu * x + (1 - mu) * x_prev
    ([B, T, C]: in RWKV-4 mu weights the CURRENT token) and x_last = x[:, -1] ([B, C]), the vector
    the next segment needs as its last. The checker compares with rwkv4.token_shift and rwkv4.mix
    in float64.""")
def _check_04_7(fn):
    for n, (B, T, C, with_last) in enumerate(_SHIFT_CASES):
        g = _gen(71 + n)
        x = torch.randn(B, T, C, generator=g)
        mu = torch.rand(C, generator=g)
        last = torch.randn(B, C, generator=g) if with_last else None
        case = f"{n} (B={B}, T={T}, C={C}, last {'given' if with_last else 'None'})"
        out = call(fn, case, x, mu, last)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise AssertionError(f"case {case}: expected (mixed, x_last), got {type(out).__name__}")
        xd, mud = x.double(), mu.double()
        lastd = None if last is None else last.double()
        x_prev, x_last = rwkv4.token_shift(xd, lastd)
        want = rwkv4.mix(xd, x_prev, mud)
        rolled = torch.roll(xd, 1, dims=1)
        compare(case, out[0], want, tol=1e-6, name="mixed", hint=(
            "x_prev is x moved one step later in time, with last (or zeros) at position 0; then "
            "mu * x + (1 - mu) * x_prev"), mistakes={
            "in RWKV-4 mu weights the CURRENT token: mu * x_t + (1 - mu) * x_{t-1} (the later papers' lerp "
            "flips it)": rwkv4.mix(x_prev, xd, mud),
            "the previous token is x_{t-1}, not x_{t+1}: shift the sequence one step LATER in time":
                rwkv4.mix(xd, torch.cat([xd[:, 1:], torch.zeros_like(xd[:, :1])], 1), mud),
            "position 0's previous token is last (zeros at the start of a text), not the segment's last token: "
            "torch.roll wraps around": rwkv4.mix(xd, rolled, mud),
            "when last is given it is position 0's previous token; zeros only when last is None":
                rwkv4.mix(xd, _shift(xd, None), mud),
        })
        compare(case, out[1], x_last, tol=0, name="x_last", hint=(
            "the state to hand on is the segment's LAST input, x[:, -1]"), mistakes={
            "the state to hand on is the segment's last input x[:, -1], not its first": xd[:, 0]})
    return len(_SHIFT_CASES)


# ---------------------------------------------------------------------------------------------
# 04.8: channel mixing
# ---------------------------------------------------------------------------------------------
# (B, T, C, hidden H, with last, input scale): T = 1, odd T, H < C to catch a transposed weight
_CM_CASES = [(1, 1, 4, 16, True, 1.0), (2, 7, 3, 12, False, 1.0), (3, 10, 8, 5, True, 1.0),
             (2, 9, 6, 24, True, 4.0)]


def _cm_params(C, H, seed):
    g = _gen(seed)
    return (torch.rand(C, generator=g), torch.rand(C, generator=g),
            torch.randn(H, C, generator=g) / C ** 0.5, torch.randn(C, H, generator=g) / H ** 0.5,
            torch.randn(C, C, generator=g) / C ** 0.5)


def _cm_mistake(x, x_prev, mu_k, mu_r, Wk, Wv, Wr, kind):
    xk = rwkv4.mix(x, x_prev, mu_k)
    xr = rwkv4.mix(x, x_prev, mu_r)
    h = xk @ Wk.T
    h = {"no_square": torch.relu(h), "no_relu": h.square()}.get(kind, torch.relu(h).square())
    r = xr @ Wr.T
    return (r if kind == "no_sigmoid" else torch.sigmoid(r)) * (h @ Wv.T)


@exercise("04.8", "channel mixing: a gated squared-ReLU MLP", difficulty="easy", spec="""
    Write channel_mix(x, last, mu_k, mu_r, Wk, Wv, Wr) -> (o, x_last): RWKV-4's channel-mixing
    sub-block in parallel mode (Eqs. 14-15, 18). x is [B, T, C] float32, last is [B, C] or None
    (zeros), mu_k and mu_r are [C], and the weights are stored as nn.Linear stores them, [out, in]:
    Wk is [H, C], Wv is [C, H], Wr is [C, C] (so a projection is x @ W.T). With the token shift of
    exercise 04.7, k' = (mix with mu_k) @ Wk.T, r' = (mix with mu_r) @ Wr.T and
    o = sigmoid(r') * (max(k', 0)^2 @ Wv.T), [B, T, C]; x_last = x[:, -1]. The checker compares
    with rwkv4.ChannelMix in float64, with hidden sizes H both wider and narrower than C.""")
def _check_04_8(fn):
    for n, (B, T, C, H, with_last, scale) in enumerate(_CM_CASES):
        g = _gen(81 + n)
        x = torch.randn(B, T, C, generator=g) * scale
        last = torch.randn(B, C, generator=g) * scale if with_last else None
        params = _cm_params(C, H, seed=181 + n)
        case = f"{n} (B={B}, T={T}, C={C}, H={H}, last {'given' if with_last else 'None'})"
        out = call(fn, case, x, last, *params)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise AssertionError(f"case {case}: expected (o, x_last), got {type(out).__name__}")
        cm = rwkv4.ChannelMix(C, hidden=H)
        with torch.no_grad():
            for prm, val in zip((cm.time_mix_k, cm.time_mix_r, cm.key.weight, cm.value.weight,
                                 cm.receptance.weight), params):
                prm.copy_(val)
            cm = cm.double()
            xd = x.double()
            lastd = None if last is None else last.double()
            want, want_last = cm(xd, lastd)
            pd = [q.double() for q in params]
            x_prev = _shift(xd, lastd)
            mistakes = {
                "the ReLU's output is squared: max(k', 0)^2": _cm_mistake(xd, x_prev, *pd, "no_square"),
                "square max(k', 0), not k' itself: the negative pre-activations must be cut off first":
                    _cm_mistake(xd, x_prev, *pd, "no_relu"),
                "the gate is sigmoid(r'), a number in (0, 1) per channel, not r' itself":
                    _cm_mistake(xd, x_prev, *pd, "no_sigmoid"),
                "in RWKV-4 mu weights the CURRENT token: mu * x_t + (1 - mu) * x_{t-1}":
                    _cm_mistake(x_prev, xd, *pd, "ok"),
                "when last is given it is position 0's previous token": _cm_mistake(xd, _shift(xd, None), *pd, "ok"),
            }
        compare(case, out[0], want, tol=1e-5, name="o", mistakes=mistakes, hint=(
            "token shift, the two mixes, k' = xk @ Wk.T ([.., H]), o = sigmoid(xr @ Wr.T) * (relu(k')^2 @ Wv.T)"))
        compare(case, out[1], want_last, tol=0, name="x_last", hint="hand on the segment's last input, x[:, -1]")
    return len(_CM_CASES)


# ---------------------------------------------------------------------------------------------
# 04.9: the time-mixing sub-block in RNN mode
# ---------------------------------------------------------------------------------------------
# (B, T, C, input scale, time_decay range): T = 1, odd T, large inputs (keys past e^88), slow decay
_TM_CASES = [(1, 1, 4, 1.0, (-3.0, 1.0)), (2, 9, 5, 1.0, (-3.0, 1.0)), (3, 16, 3, 40.0, (-3.0, 1.0)),
             (1, 24, 6, 1.0, (-7.0, -4.0))]
_TM_KEYS = ("mu_r", "mu_k", "mu_v", "time_decay", "time_first", "Wr", "Wk", "Wv", "Wo")


def _tm_params(C, decay_range, seed):
    g = _gen(seed)
    lo, hi = decay_range
    return {"mu_r": torch.rand(C, generator=g), "mu_k": torch.rand(C, generator=g),
            "mu_v": torch.rand(C, generator=g), "time_decay": lo + (hi - lo) * torch.rand(C, generator=g),
            "time_first": torch.randn(C, generator=g),
            **{name: torch.randn(C, C, generator=g) / C ** 0.5 for name in ("Wr", "Wk", "Wv", "Wo")}}


def _tm_mistake(x, P, kind):
    """Drive a wrong time-mix step over x (float64) from the empty state; return the outputs."""
    B, T, C = x.shape
    last = torch.zeros(B, C, dtype=x.dtype)
    state = wkv4.empty_state(B, C, x.dtype)
    w = P["time_decay"] if kind == "no_exp" else torch.exp(P["time_decay"])
    outs = []
    for t in range(T):
        xt = x[:, t]
        a_, b_ = (last, xt) if kind == "mu_flipped" else (xt, last)
        r = rwkv4.mix(a_, b_, P["mu_r"]) @ P["Wr"].T
        k = rwkv4.mix(a_, b_, P["mu_k"]) @ P["Wk"].T
        v = rwkv4.mix(a_, b_, P["mu_v"]) @ P["Wv"].T
        y, state = wkv4.step(k, v, w, P["time_first"], state)
        if kind == "no_sigmoid":
            o = (r * y) @ P["Wo"].T
        elif kind == "gate_after_output":
            o = torch.sigmoid(r) * (y @ P["Wo"].T)
        else:
            o = (torch.sigmoid(r) * y) @ P["Wo"].T
        outs.append(o)
        last = last if kind == "stale_shift" else xt
    return torch.stack(outs, 1)


@exercise("04.9", "the time-mixing sub-block as an RNN step", difficulty="medium", spec="""
    Write time_mix_step(x, last, a, b, p, P) -> (o, x, a, b, p): one token of RWKV-4's time mixing
    in RNN mode. x (this token's input) and last (the previous token's; zeros at the start) are
    [B, C] float32, (a, b, p) is the WKV state of chapter 03 (empty: 0, 0, -1e38), and P is a dict of
    float32 tensors: mu_r, mu_k, mu_v, time_decay, time_first ([C] each) and Wr, Wk, Wv, Wo ([C, C],
    stored [out, in], so a projection is z @ W.T). Compute r, k, v from the token-shift mixes
    mu * x + (1 - mu) * last, then wkv with w = exp(time_decay) and u = time_first (you may call
    rwkvlab.wkv4.step(k, v, w, u, wkv4.State(a, b, p)), or your step of exercise 03.7), and
    o = (sigmoid(r) * wkv) @ Wo.T. Return o, the token-shift state for the next token, and the new
    (a, b, p). The checker runs your step over whole sequences and compares with the parallel mode,
    rwkv4.TimeMix with the double-sum WKV, in float64 (outputs and final state).""")
def _check_04_9(fn):
    for n, (B, T, C, scale, decay_range) in enumerate(_TM_CASES):
        x = torch.randn(B, T, C, generator=_gen(91 + n)) * scale
        P = _tm_params(C, decay_range, seed=191 + n)
        case = (f"{n} (B={B}, T={T}, C={C}, inputs ~ N(0, {scale:g}^2), time_decay in "
                f"[{decay_range[0]:g}, {decay_range[1]:g}])")
        last = torch.zeros(B, C)
        a, b, p = wkv4.empty_state(B, C)
        outs = []
        for t in range(T):
            out = call(fn, case, x[:, t], last, a, b, p, {kk: vv.clone() for kk, vv in P.items()})
            if not (isinstance(out, tuple) and len(out) == 5):
                raise AssertionError(f"case {case}: expected (o, x, a, b, p), got {type(out).__name__}")
            o, last, a, b, p = out
            if not isinstance(o, torch.Tensor) or tuple(o.shape) != (B, C):
                raise AssertionError(f"case {case}: o at step {t}: expected a tensor of shape {(B, C)}, got "
                                     f"{tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__}")
            outs.append(o)
        tm = rwkv4.TimeMix(C)
        with torch.no_grad():
            for name, prm in (("mu_r", tm.time_mix_r), ("mu_k", tm.time_mix_k), ("mu_v", tm.time_mix_v),
                              ("time_decay", tm.time_decay), ("time_first", tm.time_first),
                              ("Wr", tm.receptance.weight), ("Wk", tm.key.weight), ("Wv", tm.value.weight),
                              ("Wo", tm.output.weight)):
                prm.copy_(P[name])
            tm = tm.double()
            xd = x.double()
            want, want_last, sT = tm(xd, impl="naive")
            Pd = {kk: vv.double() for kk, vv in P.items()}
            mistakes = {
                "WKV takes the paper's decay w = exp(time_decay) >= 0, not time_decay itself":
                    _tm_mistake(xd, Pd, "no_exp"),
                "the receptance gate is sigmoid(r), a number in (0, 1) per channel, not r itself":
                    _tm_mistake(xd, Pd, "no_sigmoid"),
                "the gate acts on wkv BEFORE the output projection: o = (sigmoid(r) * wkv) @ Wo.T":
                    _tm_mistake(xd, Pd, "gate_after_output"),
                "in RWKV-4 mu weights the CURRENT token: mu * x + (1 - mu) * last":
                    _tm_mistake(xd, Pd, "mu_flipped"),
                "the token-shift state to hand on is this token's x (the next token's last), not the old last":
                    _tm_mistake(xd, Pd, "stale_shift"),
            }
        compare(case, torch.stack(outs, 1), want, tol=1e-5, name="o over the sequence", mistakes=mistakes, hint=(
            "r, k, v from the three mixes of x and last; wkv by the stable step with w = exp(time_decay), "
            "u = time_first; o = (sigmoid(r) * wkv) @ Wo.T; hand on x and the new WKV state"))
        compare(case, last, want_last, tol=1e-5, name="final token-shift state", hint=(
            "the token-shift state to hand on is this token's x (the next token's last), not the old last"))
        for name, got_s, want_s in (("final a", a, sT.a), ("final b", b, sT.b), ("final p", p, sT.p)):
            compare(case, got_s, want_s, tol=1e-5, name=name, hint=(
                "return the WKV state after this token, (a, b, p) as the stable step leaves them"))
    return len(_TM_CASES)
