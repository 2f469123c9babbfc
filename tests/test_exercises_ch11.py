"""Wrong answers to chapter 11's exercises: each must fail its checker with the intended hint."""
from __future__ import annotations

import pytest
import torch

from rwkvlab import exercises, wkv7


def _transposed(G, w, a, b):
    return w.exp()[..., None] * G + b[..., None] * torch.einsum("bhk,bhkv->bhv", a, G)[..., None, :]


def _no_exp(G, w, a, b):
    return w[..., None] * G + a[..., None] * torch.einsum("bhk,bhkv->bhv", b, G)[..., None, :]


def _step_removal_after(S, r, w, k, v, a, b):
    S2 = w.exp()[..., None] * S + k[..., None] * v[..., None, :]
    S2 = S2 + b[..., None] * torch.einsum("bhk,bhkv->bhv", a, S2)[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", r, S2), S2


def _step_drops_tail(S, r, w, k, v, a, b):
    o, S2 = wkv7.step(r, w, k, v, a, b, S)
    cut = (S.shape[-1] // 16) * 16
    S2, o = S2.clone(), o.clone()
    S2[..., cut:] = 0
    o[..., cut:] = 0
    return o, S2


def _segment(r, w, a, b, do, dS_end, late):
    G = dS_end.clone()
    for t in reversed(range(r.shape[1])):
        ro = r[:, t, :, :, None] * do[:, t, :, None, :]
        if not late:
            G = G + ro
        G = w[:, t].exp()[..., None] * G + a[:, t, ..., None] * torch.einsum("bhk,bhkv->bhv", b[:, t], G)[..., None, :]
        if late:
            G = G + ro
    return G


def _segment_late(r, w, k, v, a, b, do, dS_end):
    return _segment(r, w, a, b, do, dS_end, late=True)


def _segment_no_readout(r, w, k, v, a, b, do, dS_end):
    return _segment(r, w, a, b, torch.zeros_like(do), dS_end, late=False)


def _fold_p_order(P1, Q1, R1, L1, P2, Q2, R2, L2):
    return torch.cat([R1, R2 @ P1], -2), torch.cat([L1, R2 @ Q1 + L2], -2), P1 @ P2, P2 @ Q1 + Q2


def _fold_no_q1(P1, Q1, R1, L1, P2, Q2, R2, L2):
    return torch.cat([R1, R2 @ P1], -2), torch.cat([L1, L2], -2), P2 @ P1, P2 @ Q1 + Q2


def _fold_rows_unmapped(P1, Q1, R1, L1, P2, Q2, R2, L2):
    return torch.cat([R1, R2], -2), torch.cat([L1, R2 @ Q1 + L2], -2), P2 @ P1, P2 @ Q1 + Q2


WRONG = {
    "11.9": [(_transposed, "transposed"), (_no_exp, "LOG decay")],
    "11.10": [(_step_removal_after, "BEFORE this token"), (_step_drops_tail, "last value block")],
    "11.11": [(_segment_late, "before pulling"), (_segment_no_readout, "read-outs are missing")],
    "11.12": [(_fold_p_order, "right to left"), (_fold_no_q1, "also sees Q1"), (_fold_rows_unmapped, "R2 P1: it reads")],
}


@pytest.mark.parametrize("id_,fn,hint", [(i, f, h) for i, lst in WRONG.items() for f, h in lst],
                         ids=[f"{i}-{f.__name__}" for i, lst in WRONG.items() for f, _ in lst])
def test_wrong_answer_fails_with_its_hint(id_, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check(id_, fn)

