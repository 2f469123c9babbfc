"""Wrong answers to chapter 12's exercises: each must fail its checker with the intended hint."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rwkvlab import exercises


def _mu_on_current(x, s, mu):
    x_prev = torch.cat([s[:, None], x[:, :-1]], 1)
    return x_prev + (x - x_prev) * mu, x[:, -1]


def _zeros_first(x, s, mu):
    x_prev = torch.cat([torch.zeros_like(s)[:, None], x[:, :-1]], 1)
    return x + (x_prev - x) * mu, x[:, -1]


def _rwkv6_decay(xw, w0, w1, w2):
    return -torch.exp(w0 + torch.tanh(xw @ w1) @ w2)


def _no_shift(xw, w0, w1, w2):
    return -torch.exp(-F.softplus(-(w0 + torch.tanh(xw @ w1) @ w2)))


def _global_norm(k, a, k_k, k_a, n_head):
    return F.normalize(k * k_k, dim=-1), k * (1 + (a - 1) * k_a)


def _wrong_interp(k, a, k_k, k_a, n_head):
    B, T, C = k.shape
    kk = F.normalize((k * k_k).reshape(B, T, n_head, C // n_head), dim=-1).reshape(B, T, C)
    return kk, k * (1 + a * k_a)


WRONG = {
    "12.7": [(_mu_on_current, "weights the PREVIOUS"), (_zeros_first, "not zeros")],
    "12.8": [(_rwkv6_decay, "RWKV-6"), (_no_shift, "-0.5")],
    "12.9": [(_global_norm, "per head"), (_wrong_interp, "between 1 and a")],
}


@pytest.mark.parametrize("id_,fn,hint", [(i, f, h) for i, lst in WRONG.items() for f, h in lst],
                         ids=[f"{i}-{f.__name__}" for i, lst in WRONG.items() for f, _ in lst])
def test_wrong_answer_fails_with_its_hint(id_, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check(id_, fn)
