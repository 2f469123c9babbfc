"""Wrong answers to chapter 06's exercises: each must fail its checker with the intended hint."""
from __future__ import annotations

import math

import pytest
import torch

from rwkvlab import exercises


def _mask(C, diagonal=-1):
    i, j = torch.arange(C)[:, None], torch.arange(C)[None, :]
    return j <= i + diagonal


# 06.7: the intra-chunk decay matrix
def _pair(w, q_shift=True, k_shift=False, diagonal=-1):
    c = w.cumsum(-2)
    e = (c - w if q_shift else c)[..., :, None, :] - (c - w if k_shift else c)[..., None, :, :]
    return e.masked_fill(~_mask(w.shape[-2], diagonal)[:, :, None], -math.inf).exp()


def _diagonal_kept(w):
    return _pair(w, diagonal=0)


def _query_own_decay(w):
    return _pair(w, q_shift=False)


def _key_own_decay(w):
    return _pair(w, k_shift=True)


def _mask_after_exp(w):            # right values, but e^{positive} in the discarded entries: NaN gradient
    c = w.cumsum(-2)
    e = (c - w)[..., :, None, :] - c[..., None, :, :]
    return torch.where(_mask(w.shape[-2])[:, :, None], e.exp(), torch.zeros((), dtype=w.dtype))


def _factorised(w):                # e^{c_i - w_i} · e^{-c_j}: overflows once -c_j > 88.7
    c = w.cumsum(-2)
    D = torch.exp(c - w)[..., :, None, :] * torch.exp(-c)[..., None, :, :]
    return D * _mask(w.shape[-2])[:, :, None]


# 06.8: the hand-off
def _hand_off_own_decay(S, k, v, w):
    c = w.cumsum(-2)
    c_last = c[..., -1:, :]
    return torch.exp(c_last).transpose(-1, -2) * S + (k * torch.exp(c_last - c + w)).transpose(-1, -2) @ v


def _hand_off_exclusive(S, k, v, w):
    c = w.cumsum(-2) - w
    c_last = c[..., -1:, :]
    return torch.exp(c_last).transpose(-1, -2) * S + (k * torch.exp(c_last - c)).transpose(-1, -2) @ v


def _hand_off_state_kept(S, k, v, w):
    c = w.cumsum(-2)
    return S + (k * torch.exp(c[..., -1:, :] - c)).transpose(-1, -2) @ v


def _hand_off_factorised(S, k, v, w):
    c = w.cumsum(-2)
    c_last = c[..., -1:, :]
    return torch.exp(c_last).transpose(-1, -2) * S + (k * torch.exp(-c) * torch.exp(c_last)).transpose(-1, -2) @ v


# 06.9: one chunk's output
def _out(r, k, v, w, u, S, inter_shift=True, q_shift=True, diagonal=-1, bonus=True, factorised=False):
    C = r.shape[-2]
    c = w.cumsum(-2)
    q = c - w if q_shift else c
    o = (r * torch.exp(c - w if inter_shift else c)) @ S
    if factorised:
        P = ((r * torch.exp(q)) @ (k * torch.exp(-c)).transpose(-1, -2)) * _mask(C, diagonal)
    else:
        e = q[..., :, None, :] - c[..., None, :, :]
        D = e.masked_fill(~_mask(C, diagonal)[:, :, None], -math.inf).exp()
        P = torch.einsum("bhik,bhjk,bhijk->bhij", r, k, D)
    if bonus:
        P = P + torch.diag_embed((r * u[None, :, None, :] * k).sum(-1))
    return o + P @ v


def _out_inter_own_decay(r, k, v, w, u, S):
    return _out(r, k, v, w, u, S, inter_shift=False)


def _out_diagonal_kept(r, k, v, w, u, S):
    return _out(r, k, v, w, u, S, diagonal=0)


def _out_no_bonus(r, k, v, w, u, S):
    return _out(r, k, v, w, u, S, bonus=False)


def _out_factorised(r, k, v, w, u, S):
    return _out(r, k, v, w, u, S, factorised=True)


WRONG = {
    "06.7": [(_diagonal_kept, "diagonal must be 0"), (_query_own_decay, "BEFORE its own decay"),
             (_key_own_decay, "own decay never touches"), (_mask_after_exp, "NaN or Inf.*mask it to -inf"),
             (_factorised, "NaN or Inf")],
    "06.8": [(_hand_off_own_decay, "off by one: token j's write"),
             (_hand_off_exclusive, "off by one: c must be the INCLUSIVE"),
             (_hand_off_state_kept, "start state decays across"), (_hand_off_factorised, "NaN or Inf")],
    "06.9": [(_out_inter_own_decay, "off by one in the inter-chunk"), (_out_diagonal_kept, "STRICTLY lower"),
             (_out_no_bonus, "current token is missing"), (_out_factorised, "NaN or Inf")],
}


@pytest.mark.parametrize("id_,fn,hint", [(i, f, h) for i, lst in WRONG.items() for f, h in lst],
                         ids=[f"{i}-{f.__name__}" for i, lst in WRONG.items() for f, _ in lst])
def test_wrong_answer_fails_with_its_hint(id_, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check(id_, fn)


def test_detached_decay_matrix_is_refused():
    from rwkvlab.exercises.ch06 import _pair_loop

    with pytest.raises(AssertionError, match="does not depend on w"):
        exercises.check("06.7", lambda w: _pair_loop(w.detach().double()).float())


def test_transposed_and_query_decay_get_their_hints():
    with pytest.raises(AssertionError, match="built its transpose"):
        exercises.check("06.7", lambda w: _pair(w).transpose(-3, -2))
    with pytest.raises(AssertionError, match="both the state and the earlier tokens"):
        exercises.check("06.9", lambda r, k, v, w, u, S: _out(r, k, v, w, u, S, inter_shift=False, q_shift=False))
