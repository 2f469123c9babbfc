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


# --- 03.8: w = 0 as a softmax -----------------------------------------------------------------
def _softmax(k, v, u, *, mask=True, bonus=True, dim=2, everywhere=False):
    T = k.shape[1]
    logits = k[:, None, :, :].expand(-1, T, -1, -1)
    eye = torch.eye(T, dtype=torch.bool)[None, :, :, None]
    if everywhere:
        logits = logits + u
    elif bonus:
        logits = torch.where(eye, logits + u, logits)
    if mask:
        logits = logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1)[None, :, :, None], float("-inf"))
    return (torch.softmax(logits, dim=dim) * v[:, None]).sum(2)


def _softmax_no_mask(k, v, u):
    return _softmax(k, v, u, mask=False)


def _softmax_u_everywhere(k, v, u):
    return _softmax(k, v, u, everywhere=True)


def _softmax_wrong_axis(k, v, u):
    return _softmax(k, v, u, dim=1)


def _softmax_by_hand(k, v, u):  # exponentiates without the max: overflows for the large keys
    T = k.shape[1]
    logits = k[:, None, :, :].expand(-1, T, -1, -1)
    eye = torch.eye(T, dtype=torch.bool)[None, :, :, None]
    e = torch.exp(torch.where(eye, logits + u, logits))
    e = e.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1)[None, :, :, None], 0.0)
    return (e * v[:, None]).sum(2) / e.sum(2)


def _softmax_no_batch(k, v, u):  # drops the batch dimension
    return _softmax(k, v, u)[0]


# --- 03.9: one chunk ----------------------------------------------------------------------------
def _chunk(k, v, w, u, a, b, p, *, age_off=1, state_age=True, end_off=1, old_age=0, whole_row=True):
    L = k.shape[1]
    pos = torch.arange(L, dtype=k.dtype)
    age = pos[:, None] - age_off - pos[None, :]
    logw = k[:, None, :, :] - age[None, :, :, None] * w
    eye = torch.eye(L, dtype=torch.bool)[None, :, :, None]
    logw = torch.where(eye, (u + k)[:, :, None, :], logw)
    logw = logw.masked_fill((pos[None, :] > pos[:, None])[None, :, :, None], float("-inf"))
    log_state = p[:, None, :] - (pos[None, :, None] * w if state_age else 0)
    m = torch.maximum(logw.amax(2), log_state) if whole_row else logw.amax(2)
    e, es = torch.exp(logw - m[:, :, None, :]), torch.exp(log_state - m)
    y = ((e * v[:, None]).sum(2) + es * a[:, None]) / (e.sum(2) + es * b[:, None])
    end = k - (L - end_off - pos)[None, :, None] * w
    old = p - (L - old_age) * w
    p_new = torch.maximum(end.amax(1), old)
    f, g = torch.exp(end - p_new[:, None]), torch.exp(old - p_new)
    return y, g * a + (f * v).sum(1), g * b + f.sum(1), p_new


def _chunk_in_chunk_max(k, v, w, u, a, b, p):
    return _chunk(k, v, w, u, a, b, p, whole_row=False)


def _chunk_decay_one_late(k, v, w, u, a, b, p):
    return _chunk(k, v, w, u, a, b, p, age_off=0)


def _chunk_state_not_decayed(k, v, w, u, a, b, p):
    return _chunk(k, v, w, u, a, b, p, state_age=False)


def _chunk_handoff_tokens(k, v, w, u, a, b, p):
    return _chunk(k, v, w, u, a, b, p, end_off=0)


def _chunk_handoff_state(k, v, w, u, a, b, p):
    return _chunk(k, v, w, u, a, b, p, old_age=1)


def _chunk_no_state(k, v, w, u, a, b, p):  # returns y only
    return _chunk(k, v, w, u, a, b, p)[0]


# --- 03.10: the backward pass -------------------------------------------------------------------
def _bwd_parts(k, v, w, u, gy):
    T = k.shape[1]
    pos = torch.arange(T, dtype=k.dtype)
    age = (pos[:, None] - 1 - pos[None, :])[None, :, :, None]
    eye = torch.eye(T, dtype=torch.bool)[None, :, :, None]
    lam = torch.where(eye, (u + k)[:, :, None, :], k[:, None, :, :] - age * w).masked_fill(age < -1, float("-inf"))
    alpha = torch.softmax(lam, dim=2)
    y = (alpha * v[:, None]).sum(2)
    G = gy[:, :, None] * alpha * (v[:, None] - y[:, :, None])
    return age, eye, alpha, G


def _bwd(k, v, w, u, gy, *, gk="col", gw_age=0, gw_sign=-1, gw_diag=False, gu_v=False, gv_axis=1):
    age, eye, alpha, G = _bwd_parts(k, v, w, u, gy)
    if gk == "col":
        gk_ = G.sum(1)
    elif gk == "diag":
        gk_ = torch.where(eye, G, 0.0).sum(2)
    else:  # no (v - y): the normaliser forgotten
        gk_ = (gy[:, :, None] * alpha * v[:, None]).sum(1)
    keep = (age >= 0) | eye if gw_diag else age >= 0
    gw = gw_sign * torch.where(keep, G * (age + gw_age), 0.0).sum((0, 1, 2))
    gu = torch.where(eye, gy[:, :, None] * alpha * v[:, None] if gu_v else G, 0.0).sum((0, 1, 2))
    gv = (gy[:, :, None] * alpha).sum(gv_axis)
    return gk_, gv, gw, gu


def _bwd_gk_no_normaliser(k, v, w, u, gy):
    return _bwd(k, v, w, u, gy, gk="nonorm")


def _bwd_gk_diag_only(k, v, w, u, gy):
    return _bwd(k, v, w, u, gy, gk="diag")


def _bwd_gv_wrong_axis(k, v, w, u, gy):
    return _bwd(k, v, w, u, gy, gv_axis=2)


def _bwd_gw_age(k, v, w, u, gy):
    return _bwd(k, v, w, u, gy, gw_age=1)


def _bwd_gw_sign(k, v, w, u, gy):
    return _bwd(k, v, w, u, gy, gw_sign=1)


def _bwd_gw_diag(k, v, w, u, gy):
    return _bwd(k, v, w, u, gy, gw_diag=True)


def _bwd_gu_v(k, v, w, u, gy):
    return _bwd(k, v, w, u, gy, gu_v=True)


def _bwd_no_batch_sum(k, v, w, u, gy):
    gk, gv, gw, gu = _bwd(k, v, w, u, gy)
    age, eye, alpha, G = _bwd_parts(k, v, w, u, gy)
    return gk, gv, -torch.where(age >= 0, G * age, 0.0).sum((1, 2)), gu


WRONG = {
    "03.7": [(_bonus_in_state, "OUTPUT only"), (_decay_new_token, "decays BEFORE"), (_unstable, "NaN or Inf|q = max")],
    "03.8": [(_softmax_no_mask, "future is visible"), (_softmax_u_everywhere, "bonus is missing"),
             (_softmax_wrong_axis, "wrong axis"), (_softmax_by_hand, "NaN or Inf"),
             (_softmax_no_batch, r"expected shape \(1, 1, 3\)")],
    "03.9": [(_chunk_in_chunk_max, "NaN or Inf(.|\n)*AND the state's column"), (_chunk_decay_one_late, "aged i-1-j"),
             (_chunk_state_not_decayed, "p - i w"), (_chunk_handoff_tokens, "L-1-j steps"),
             (_chunk_handoff_state, "p - L w"), (_chunk_no_state, "expected \\(y, a, b, p\\)")],
    "03.10": [(_bwd_gk_no_normaliser, "gk is wrong(.|\n)*normaliser"), (_bwd_gk_diag_only, "EVERY row"),
              (_bwd_gv_wrong_axis, "gv is wrong(.|\n)*sum over t, not i"), (_bwd_gw_age, "t-1-i"),
              (_bwd_gw_sign, "minus sign"), (_bwd_gw_diag, "holds no w"), (_bwd_gu_v, "gu is wrong"),
              (_bwd_no_batch_sum, r"gw: expected shape \(4,\)")],
}


@pytest.mark.parametrize("id_,fn,hint", [(i, f, h) for i, lst in WRONG.items() for f, h in lst],
                         ids=[f"{i}-{f.__name__}" for i, lst in WRONG.items() for f, _ in lst])
def test_wrong_answer_fails_with_its_hint(id_, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check(id_, fn)
