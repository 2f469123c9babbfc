"""Wrong answers to chapter 08's exercises: each must fail its checker with the intended hint."""
from __future__ import annotations

import pytest
import torch

from rwkvlab import exercises


# ---------------------------------------------------------------------------- 08.7: one SGD step
def _unit(k):
    return k / k.norm(dim=-1, keepdim=True)


def _step_raw_key(S, k, v, lr, w):
    res = torch.einsum("bhkv,bhk->bhv", S, k) - v
    return torch.exp(w)[..., None] * S - lr[..., None] * k[..., :, None] * res[..., None, :]


def _step_ascent(S, k, v, lr, w):
    kh = _unit(k)
    res = v - torch.einsum("bhkv,bhk->bhv", S, kh)
    return torch.exp(w)[..., None] * S - lr[..., None] * kh[..., :, None] * res[..., None, :]


def _step_decay_after(S, k, v, lr, w):
    kh = _unit(k)
    res = torch.einsum("bhkv,bhk->bhv", S, kh) - v
    return torch.exp(w)[..., None] * (S - lr[..., None] * kh[..., :, None] * res[..., None, :])


def _step_transposed_read(S, k, v, lr, w):
    kh = _unit(k)
    res = S @ kh[..., None]                             # S k̂: right shape only when K = V
    return torch.exp(w)[..., None] * S - lr[..., None] * kh[..., :, None] * (res[..., 0] - v)[..., None, :]


# ---------------------------------------------------------------------------- 08.8: one RWKV-7 step
def _aS(a, S):
    return torch.einsum("bhk,bhkv->bhv", a, S)


def _wkv7_removal_after_write(r, w, k, v, a, b, S):
    S1 = torch.exp(w)[..., None] * S + k[..., None] * v[..., None, :]
    S_new = S1 + b[..., None] * _aS(a, S1)[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", r, S_new), S_new


def _wkv7_read_before(r, w, k, v, a, b, S):
    S_new = torch.exp(w)[..., None] * S + b[..., None] * _aS(a, S)[..., None, :] + k[..., None] * v[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", r, S), S_new


def _wkv7_no_exp(r, w, k, v, a, b, S):
    S_new = w[..., None] * S + b[..., None] * _aS(a, S)[..., None, :] + k[..., None] * v[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", r, S_new), S_new


def _wkv7_vk_layout(r, w, k, v, a, b, S):
    """The paper's V x K state read into the book's K x V tensor: transition on the right."""
    S_new = S * torch.exp(w)[..., None, :] + (S @ a[..., None]) * b[..., None, :] + v[..., :, None] * k[..., None, :]
    return (S_new @ r[..., None])[..., 0], S_new


def _wkv7_in_place(r, w, k, v, a, b, S):
    """Right formula, but the state is updated in place and the OLD one is gone when a^T S is read."""
    S.mul_(torch.exp(w)[..., None]).add_(k[..., None] * v[..., None, :])
    S.add_(b[..., None] * _aS(a, S)[..., None, :])
    return torch.einsum("bhk,bhkv->bhv", r, S), S


# ---------------------------------------------------------------------------- 08.9: the spectrum
def _sym(w, z):
    return torch.diag_embed(torch.exp(w)) - z[..., :, None] * z[..., None, :]


def _spec_no_sqrt(w, k, iclr):
    return torch.linalg.eigvalsh(_sym(w, iclr * _unit(k)))


def _spec_eigvalsh_of_G(w, k, iclr):
    kh = _unit(k)
    return torch.linalg.eigvalsh(torch.diag_embed(torch.exp(w)) - (iclr * kh)[..., :, None] * kh[..., None, :])


def _spec_raw_key(w, k, iclr):
    return torch.linalg.eigvalsh(_sym(w, iclr.sqrt() * k))


def _spec_unsorted(w, k, iclr):
    return torch.linalg.eigvalsh(_sym(w, iclr.sqrt() * _unit(k))).flip(-1)


WRONG = {
    "08.7": [(_step_raw_key, "normalise the key"), (_step_ascent, "climbs the loss"),
             (_step_decay_after, "multiplies the old state only"), (_step_transposed_read, "not S k_hat")],
    "08.8": [(_wkv7_removal_after_write, "BEFORE this token's decay and write"), (_wkv7_read_before, "UPDATED state"),
             (_wkv7_no_exp, "LOG decay"), (_wkv7_vk_layout, "K and V are swapped"),
             (_wkv7_in_place, "BEFORE this token's decay and write")],
    "08.9": [(_spec_no_sqrt, "splits iclr as sqrt"), (_spec_eigvalsh_of_G, "not symmetric"),
             (_spec_raw_key, "normalise the key"), (_spec_unsorted, "ascending order")],
}


@pytest.mark.parametrize("id_,fn,hint", [(i, f, h) for i, lst in WRONG.items() for f, h in lst],
                         ids=[f"{i}-{f.__name__}" for i, lst in WRONG.items() for f, _ in lst])
def test_wrong_answer_fails_with_its_hint(id_, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check(id_, fn)
