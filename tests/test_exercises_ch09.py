"""Wrong answers to chapter 09's exercises: each must fail its checker with the intended hint."""
from __future__ import annotations

import math

import pytest
import torch

from rwkvlab import exercises


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- 09.7
def _memory(keys, values, queries, lr, kind):
    kh = _unit(keys)
    S = torch.zeros(keys.shape[-1], values.shape[-1])
    for k_, v_ in zip(kh, values):
        if kind == "additive":
            S = S + lr * torch.outer(k_, v_)
        elif kind == "remove_after_write":
            S = S + lr * torch.outer(k_, v_)
            S = S - lr * torch.outer(k_, k_ @ S)
        else:
            S = S - lr * torch.outer(k_, k_ @ S - v_)
    q = queries if kind == "raw_queries" else _unit(queries)
    return q @ S


def _additive(keys, values, queries, lr):
    return _memory(keys, values, queries, lr, "additive")


def _remove_after_write(keys, values, queries, lr):
    return _memory(keys, values, queries, lr, "remove_after_write")


def _raw_queries(keys, values, queries, lr):
    return _memory(keys, values, queries, lr, "raw_queries")


def _one_query_only(keys, values, queries, lr):
    return _memory(keys, values, queries, lr, "delta")[:1]


# --------------------------------------------------------------------------- 09.8
def _tracker(word, n, kind):
    S, r, out = torch.eye(n), torch.arange(n, dtype=torch.float32), []
    for i, j in word:
        kh = torch.zeros(n)
        kh[i], kh[j] = 1.0, -1.0
        if kind != "unnormalised":
            kh = kh / math.sqrt(2)
        G = torch.eye(n) - (1.0 if kind == "projection" else 2.0) * torch.outer(kh, kh)
        S = S @ G if kind == "right" else G @ S
        out.append(S @ r if kind == "inverse" else S.T @ r)
    return torch.stack(out)


def _read_S_r(word, n):
    return _tracker(word, n, "inverse")


def _multiply_right(word, n):
    return _tracker(word, n, "right")


def _projection(word, n):
    return _tracker(word, n, "projection")


def _unnormalised(word, n):
    return _tracker(word, n, "unnormalised")


def _rounded_ints(word, n):
    return _tracker(word, n, "ok").round().long().tolist()            # a list, not a tensor


# --------------------------------------------------------------------------- 09.9
def _parity(bits, a_val=-1.0, b_val=2.0, write=False):
    x = bits.float()[..., None, None]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    if write:
        return dict(r=ones, w=zeros, k=x, v=ones, a=zeros, b=zeros)
    return dict(r=ones, w=zeros, k=zeros, v=zeros, a=a_val * ones, b=b_val * x)


def _eta_one(bits):
    return _parity(bits, b_val=1.0)


def _plus_sign(bits):
    return _parity(bits, a_val=1.0)


def _count_by_writing(bits):
    return _parity(bits, write=True)


def _cheating_readout(bits):
    args = _parity(bits, b_val=0.0)
    args["r"] = ((-1.0) ** bits.float().cumsum(1))[..., None, None]   # the read-out does the counting
    return args


def _missing_head_dim(bits):
    return {n: x[..., 0] for n, x in _parity(bits).items()}


WRONG = {
    "09.7": [(_additive, "additive memory"), (_remove_after_write, "BEFORE the write"),
             (_raw_queries, "normalise the queries"), (_one_query_only, "expected shape")],
    "09.8": [(_read_S_r, "inverse permutations.*S_t r"), (_multiply_right, "inverse permutations.*from the right"),
             (_projection, "projection"), (_unnormalised, "unit vector"),
             (_rounded_ints, "expected a torch.Tensor")],
    "09.9": [(_eta_one, "erases the state"), (_plus_sign, "check the sign"), (_count_by_writing, "k and v must be zero"),
             (_cheating_readout, "r must be the same"), (_missing_head_dim, r"\[B, T, 1, 1\]")],
}


@pytest.mark.parametrize("id_,fn,hint", [(i, f, h) for i, lst in WRONG.items() for f, h in lst],
                         ids=[f"{i}-{f.__name__}" for i, lst in WRONG.items() for f, _ in lst])
def test_wrong_answer_fails_with_its_hint(id_, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check(id_, fn)

