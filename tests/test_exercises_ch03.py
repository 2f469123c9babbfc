"""Wrong answers to chapter 03's exercises: each must fail its checker with the intended hint."""
from __future__ import annotations

import pytest
import torch

from rwkvlab import exercises


def _bonus_in_state(kt, vt, w, u, a, b, p):
    q = torch.maximum(p, u + kt)
    e1, e2 = torch.exp(p - q), torch.exp(u + kt - q)
    y = (e1 * a + e2 * vt) / (e1 * b + e2)
    q2 = torch.maximum(p - w, u + kt)
    f1, f2 = torch.exp(p - w - q2), torch.exp(u + kt - q2)
    return y, f1 * a + f2 * vt, f1 * b + f2, q2


def _decay_new_token(kt, vt, w, u, a, b, p):
    q = torch.maximum(p, u + kt)
    e1, e2 = torch.exp(p - q), torch.exp(u + kt - q)
    y = (e1 * a + e2 * vt) / (e1 * b + e2)
    q2 = torch.maximum(p, kt)
    f1, f2 = torch.exp(p - q2 - w), torch.exp(kt - q2 - w)
    return y, f1 * a + f2 * vt, f1 * b + f2, q2


def _unstable(kt, vt, w, u, a, b, p):
    y = (torch.exp(p) * a + torch.exp(u + kt) * vt) / (torch.exp(p) * b + torch.exp(u + kt))
    return y, torch.exp(-w) * a + torch.exp(kt) * vt, torch.exp(-w) * b + torch.exp(kt), torch.zeros_like(p)


WRONG = {
    "03.7": [(_bonus_in_state, "OUTPUT only"), (_decay_new_token, "decays BEFORE"), (_unstable, "NaN or Inf|q = max")],
}


@pytest.mark.parametrize("id_,fn,hint", [(i, f, h) for i, lst in WRONG.items() for f, h in lst],
                         ids=[f"{i}-{f.__name__}" for i, lst in WRONG.items() for f, _ in lst])
def test_wrong_answer_fails_with_its_hint(id_, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check(id_, fn)
