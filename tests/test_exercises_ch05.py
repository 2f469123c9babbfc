"""Wrong answers to chapter 05's exercises: each must fail its checker with the intended hint."""
from __future__ import annotations

import pytest
import torch

from rwkvlab import exercises


def _outer(k, v):
    return k[..., :, None] * v[..., None, :]


# 05.7: the state update
def _decay_on_value_axis(S, k, v, w):
    return torch.exp(w)[..., None, :] * S + _outer(k, v)


def _outer_v_k(S, k, v, w):
    return torch.exp(w)[..., :, None] * S + _outer(v, k)


def _forgot_exp(S, k, v, w):
    return w[..., :, None] * S + _outer(k, v)


def _decays_new_token(S, k, v, w):
    return torch.exp(w)[..., :, None] * (S + _outer(k, v))


# 05.8: one token, read-out then update
def _read_h_t(r, k, v, w, u, S):
    kv = _outer(k, v)
    S = torch.exp(w)[..., :, None] * S + kv
    return torch.einsum("bhk,bhkv->bhv", r, S + u[None, :, :, None] * kv), S


def _no_bonus(r, k, v, w, u, S):
    kv = _outer(k, v)
    return torch.einsum("bhk,bhkv->bhv", r, S), torch.exp(w)[..., :, None] * S + kv


def _bonus_in_state_too(r, k, v, w, u, S):
    kv = u[None, :, :, None] * _outer(k, v)
    return torch.einsum("bhk,bhkv->bhv", r, S + kv), torch.exp(w)[..., :, None] * S + kv


def _step_state_decays_new_token(r, k, v, w, u, S):
    kv = _outer(k, v)
    return torch.einsum("bhk,bhkv->bhv", r, S + u[None, :, :, None] * kv), torch.exp(w)[..., :, None] * (S + kv)


# 05.9: Finch's log decay
def _factor_not_log(x, lam, A, B):
    return torch.exp(-torch.exp(lam + torch.tanh(x @ A) @ B))


def _returns_d(x, lam, A, B):
    return lam + torch.tanh(x @ A) @ B


def _no_tanh(x, lam, A, B):
    return -torch.exp(lam + (x @ A) @ B)


def _exp_minus_d(x, lam, A, B):
    return torch.exp(-(lam + torch.tanh(x @ A) @ B))


WRONG = {
    "05.7": [(_decay_on_value_axis, "KEY axis"), (_outer_v_k, "K and V are swapped"), (_forgot_exp, "LOG decay"),
             (_decays_new_token, "decay first, then add")],
    "05.8": [(_read_h_t, "AFTER the update .*counted twice"), (_no_bonus, "current token is missing"),
             (_bonus_in_state_too, "output only"), (_step_state_decays_new_token, "decay first, then add")],
    "05.9": [(_factor_not_log, "decay FACTOR"), (_returns_d, "model's parameter"), (_no_tanh, "tanh"),
             (_exp_minus_d, "not exp\\(-d\\)")],
}


@pytest.mark.parametrize("id_,fn,hint", [(i, f, h) for i, lst in WRONG.items() for f, h in lst],
                         ids=[f"{i}-{f.__name__}" for i, lst in WRONG.items() for f, _ in lst])
def test_wrong_answer_fails_with_its_hint(id_, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check(id_, fn)


def test_wrong_shape_names_the_case():
    with pytest.raises(AssertionError, match=r"case 0 .*expected shape \(1, 1, 4, 4\)"):
        exercises.check("05.7", lambda S, k, v, w: S[..., 0])
    with pytest.raises(AssertionError, match=r"case 0 .*expected a pair"):
        exercises.check("05.8", lambda r, k, v, w, u, S: S)
