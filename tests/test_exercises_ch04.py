"""Wrong answers to chapter 04's exercises: each must fail its checker with the intended hint."""
from __future__ import annotations

import pytest
import torch

from rwkvlab import exercises, wkv4


def _prev(x, last):
    first = torch.zeros_like(x[:, :1]) if last is None else last[:, None]
    return torch.cat([first, x[:, :-1]], dim=1)


# --- 04.7: token shift and mix ------------------------------------------------------------------
def _shift_mu_flipped(x, mu, last=None):
    return (1 - mu) * x + mu * _prev(x, last), x[:, -1]


def _shift_roll(x, mu, last=None):
    return mu * x + (1 - mu) * torch.roll(x, 1, dims=1), x[:, -1]


def _shift_ignores_last(x, mu, last=None):
    return mu * x + (1 - mu) * _prev(x, None), x[:, -1]


def _shift_wrong_direction(x, mu, last=None):
    nxt = torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)
    return mu * x + (1 - mu) * nxt, x[:, -1]


def _shift_first_as_last(x, mu, last=None):
    return mu * x + (1 - mu) * _prev(x, last), x[:, 0]


def _shift_mixed_only(x, mu, last=None):
    return mu * x + (1 - mu) * _prev(x, last)


# --- 04.8: channel mixing -----------------------------------------------------------------------
def _cm(x, last, mu_k, mu_r, Wk, Wv, Wr, act=lambda h: torch.relu(h).square(), gate=torch.sigmoid, flip=False):
    x_prev = _prev(x, last)
    a, b = (x_prev, x) if flip else (x, x_prev)
    xk, xr = mu_k * a + (1 - mu_k) * b, mu_r * a + (1 - mu_r) * b
    return gate(xr @ Wr.T) * (act(xk @ Wk.T) @ Wv.T), x[:, -1]


def _cm_relu_only(x, last, mu_k, mu_r, Wk, Wv, Wr):
    return _cm(x, last, mu_k, mu_r, Wk, Wv, Wr, act=torch.relu)


def _cm_square_only(x, last, mu_k, mu_r, Wk, Wv, Wr):
    return _cm(x, last, mu_k, mu_r, Wk, Wv, Wr, act=torch.square)


def _cm_no_sigmoid(x, last, mu_k, mu_r, Wk, Wv, Wr):
    return _cm(x, last, mu_k, mu_r, Wk, Wv, Wr, gate=lambda r: r)


def _cm_mu_flipped(x, last, mu_k, mu_r, Wk, Wv, Wr):
    return _cm(x, last, mu_k, mu_r, Wk, Wv, Wr, flip=True)


def _cm_transposed(x, last, mu_k, mu_r, Wk, Wv, Wr):  # x @ W instead of x @ W.T: shapes clash for H != C
    x_prev = _prev(x, last)
    xk, xr = mu_k * x + (1 - mu_k) * x_prev, mu_r * x + (1 - mu_r) * x_prev
    return torch.sigmoid(xr @ Wr) * (torch.relu(xk @ Wk).square() @ Wv), x[:, -1]


# --- 04.9: time mixing, RNN step ----------------------------------------------------------------
def _tm(x, last, a, b, p, P, *, exp=True, gate="sigmoid", flip=False, stale=False):
    cur, prev = (last, x) if flip else (x, last)
    r, k, v = ((P[f"mu_{n}"] * cur + (1 - P[f"mu_{n}"]) * prev) @ P[f"W{n}"].T for n in "rkv")
    w = torch.exp(P["time_decay"]) if exp else P["time_decay"]
    y, s = wkv4.step(k, v, w, P["time_first"], wkv4.State(a, b, p))
    if gate == "sigmoid":
        o = (torch.sigmoid(r) * y) @ P["Wo"].T
    elif gate == "none":
        o = (r * y) @ P["Wo"].T
    else:  # after the output projection
        o = torch.sigmoid(r) * (y @ P["Wo"].T)
    return o, (last if stale else x), s.a, s.b, s.p


def _tm_no_exp(x, last, a, b, p, P):
    return _tm(x, last, a, b, p, P, exp=False)


def _tm_no_sigmoid(x, last, a, b, p, P):
    return _tm(x, last, a, b, p, P, gate="none")


def _tm_gate_after_output(x, last, a, b, p, P):
    return _tm(x, last, a, b, p, P, gate="after")


def _tm_mu_flipped(x, last, a, b, p, P):
    return _tm(x, last, a, b, p, P, flip=True)


def _tm_stale_shift(x, last, a, b, p, P):
    return _tm(x, last, a, b, p, P, stale=True)


def _tm_no_state(x, last, a, b, p, P):
    return _tm(x, last, a, b, p, P)[:2]


WRONG = {
    "04.7": [(_shift_mu_flipped, "CURRENT token"), (_shift_roll, "torch.roll wraps"),
             (_shift_ignores_last, "when last is given"), (_shift_wrong_direction, "not x_{t\\+1}"),
             (_shift_first_as_last, "x_last is wrong(.|\n)*not its first"),
             (_shift_mixed_only, "expected \\(mixed, x_last\\)")],
    "04.8": [(_cm_relu_only, "output is squared"), (_cm_square_only, "cut off first"),
             (_cm_no_sigmoid, "the gate is sigmoid"), (_cm_mu_flipped, "CURRENT token"),
             (_cm_transposed, "case 0 .*raised RuntimeError")],
    "04.9": [(_tm_no_exp, "exp\\(time_decay\\) >= 0"), (_tm_no_sigmoid, "receptance gate is sigmoid"),
             (_tm_gate_after_output, "BEFORE the output projection"), (_tm_mu_flipped, "CURRENT token"),
             (_tm_stale_shift, "not the old last"), (_tm_no_state, "expected \\(o, x, a, b, p\\)")],
}


@pytest.mark.parametrize("id_,fn,hint", [(i, f, h) for i, lst in WRONG.items() for f, h in lst],
                         ids=[f"{i}-{f.__name__}" for i, lst in WRONG.items() for f, _ in lst])
def test_wrong_answer_fails_with_its_hint(id_, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check(id_, fn)
