"""Wrong answers to chapter 02's exercises: each must fail its checker with the intended hint."""
from __future__ import annotations

import pytest
import torch

from rwkvlab import aft, exercises


# ---- 02.6: causal AFT-full --------------------------------------------------------------------
def _aft(q, k, v, w, causal=True, gate=torch.sigmoid, stable=True):
    T = q.shape[1]
    z = k[:, None, :, :] + w[None, :, :, None]
    if stable:
        z = z - z.amax(dim=2, keepdim=True)      # max over all t' (before the mask): still a valid shift
    e = torch.exp(z)
    if causal:
        e = e.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1)[None, :, :, None], 0.0)
    avg = torch.einsum("btsd,bsd->btd", e, v) / e.sum(2)
    return avg if gate is None else gate(q) * avg


def _no_mask(q, k, v, w):
    return _aft(q, k, v, w, causal=False)


def _bias_transposed(q, k, v, w):
    return _aft(q, k, v, w.T)


def _no_gate(q, k, v, w):
    return _aft(q, k, v, w, gate=None)


def _raw_gate(q, k, v, w):
    return _aft(q, k, v, w, gate=lambda x: x)


def _unshifted(q, k, v, w):
    return _aft(q, k, v, w, stable=False)


# ---- 02.7: the decay recurrence ---------------------------------------------------------------
def _scan(q, k, v, lam, factor=lambda lam: torch.exp(-lam), rescale=True, read_first=False):
    """A stable scan with a switchable mistake; factor(lam) is the per-step decay multiplier."""
    B, T, D = q.shape
    log_f = torch.log(factor(lam))
    num, den = torch.zeros(B, D), torch.zeros(B, D)
    p = torch.full((B, D), float("-inf"))
    ys = []
    for t in range(T):
        if read_first:
            ys.append(torch.sigmoid(q[:, t]) * num / den)
        p_new = torch.maximum(p + log_f, k[:, t])
        a = torch.exp(p + log_f - p_new) if rescale else torch.ones_like(p)
        num, den, p = a * num + torch.exp(k[:, t] - p_new) * v[:, t], a * den + torch.exp(k[:, t] - p_new), p_new
        if not read_first:
            ys.append(torch.sigmoid(q[:, t]) * num / den)
    return torch.stack(ys, 1)


def _growing(q, k, v, lam):
    return _scan(q, k, v, lam, factor=torch.exp)


def _rate_as_factor(q, k, v, lam):
    return _scan(q, k, v, lam, factor=lambda lam: lam)


def _stale_state(q, k, v, lam):
    return _scan(q, k, v, lam, rescale=False)


def _read_first(q, k, v, lam):
    return _scan(q, k, v, lam, read_first=True)


def _unstable_scan(q, k, v, lam):
    B, T, D = q.shape
    num, den, ys = torch.zeros(B, D), torch.zeros(B, D), []
    for t in range(T):
        num = torch.exp(-lam) * num + torch.exp(k[:, t]) * v[:, t]
        den = torch.exp(-lam) * den + torch.exp(k[:, t])
        ys.append(torch.sigmoid(q[:, t]) * num / den)
    return torch.stack(ys, 1)


# ---- 02.8: AFT-local --------------------------------------------------------------------------
def _window(T, s, wide=False):
    idx = torch.arange(T)
    d = (idx[:, None] - idx[None, :]).abs()
    return d <= s if wide else d < s


def _hard_window(q, k, v, w, s):   # a bias of -1e4 is a hard window in float32 (e^-1e4 = 0), as in §6
    return aft.parallel(q, k, v, torch.where(_window(q.shape[1], s), w, torch.full_like(w, -1e4)))


def _window_too_wide(q, k, v, w, s):
    return aft.parallel(q, k, v, torch.where(_window(q.shape[1], s, wide=True), w, torch.zeros_like(w)))


def _inside_out(q, k, v, w, s):
    return aft.parallel(q, k, v, torch.where(_window(q.shape[1], s), torch.zeros_like(w), w))


def _no_window(q, k, v, w, s):
    return aft.parallel(q, k, v, w)


def _drops_batch(q, k, v, w, s):
    return aft.local(q, k, v, w, s)[0]


WRONG = {
    "02.6": [(_no_mask, "no causal mask"), (_bias_transposed, "bias is transposed"), (_no_gate, "gate is missing"),
             (_raw_gate, "gate is q itself"), (_unshifted, "NaN or Inf.*\nhint: z\\[b, t, t', d\\]")],
    "02.7": [(_growing, "wrong sign"), (_rate_as_factor, "used as the factor"), (_stale_state, "not rescaled"),
             (_read_first, "before the token is added"), (_unstable_scan, "NaN or Inf.*\nhint: per step")],
    "02.8": [(_hard_window, "not -inf"), (_window_too_wide, "one too wide"), (_inside_out, "swapped"),
             (_no_window, "not applied"), (_drops_batch, "expected shape")],
}


@pytest.mark.parametrize("id_,fn,hint", [(i, f, h) for i, lst in WRONG.items() for f, h in lst],
                         ids=[f"{i}-{f.__name__}" for i, lst in WRONG.items() for f, _ in lst])
def test_wrong_answer_fails_with_its_hint(id_, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check(id_, fn)
