"""Wrong answers to chapter 14's exercises: each must fail its checker with the intended hint."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rwkvlab import exercises
from rwkvlab import model as M


# --- 14.7: the next-token loss -----------------------------------------------------------------
def _logp(pred, target):
    return pred.gather(-1, target[..., None])[..., 0] - torch.logsumexp(pred, -1)


def _not_shifted(logits, idx):
    return -_logp(logits, idx).mean()


def _shifted_backwards(logits, idx):
    return -_logp(logits[:, 1:], idx[:, :-1]).mean()


def _summed(logits, idx):
    return -_logp(logits[:, :-1], idx[:, 1:]).sum()


def _divided_by_T(logits, idx):
    return -_logp(logits[:, :-1], idx[:, 1:]).sum() / idx.numel()


def _unstable(logits, idx):
    p = torch.exp(logits[:, :-1])
    p = p / p.sum(-1, keepdim=True)
    return -torch.log(p.gather(-1, idx[:, 1:, None])).mean()


def _as_float(logits, idx):
    return torch.tensor(-_logp(logits[:, :-1], idx[:, 1:]).mean().item())


def _library(logits, idx):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))


# --- 14.8: the learning-rate schedule of train.fit -------------------------------------------
def _schedule(steps, peak, warmup, ahead=0, warm_from_zero=False, floor=0.1, warm=True):
    s = torch.arange(steps, dtype=torch.float64) + ahead
    w = torch.clamp((s if warm_from_zero else s + 1) / warmup, max=1.0) if warm else torch.ones_like(s)
    return peak * w * (floor + (1 - floor) * (1 + torch.cos(math.pi * s / steps)) / 2)


def _one_step_ahead(steps, peak, warmup):
    return _schedule(steps, peak, warmup, ahead=1)


def _warmup_from_zero(steps, peak, warmup):
    return _schedule(steps, peak, warmup, warm_from_zero=True)


def _cosine_to_zero(steps, peak, warmup):
    return _schedule(steps, peak, warmup, floor=0.0)


def _no_warmup(steps, peak, warmup):
    return _schedule(steps, peak, warmup, warm=False)


# --- 14.9: the training loop -------------------------------------------------------------------
def _loop(model, stream, T, lr, zero_grad=True, step=True, carry=True, detach=True, new_opt=False, shift=1,
          copy_model=False):
    if copy_model:
        import copy
        model = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    state, losses = None, []
    for i in range((stream.shape[1] - 1) // T):
        if new_opt:
            opt = torch.optim.Adam(model.parameters(), lr=lr)
        x, y = stream[:, i * T:(i + 1) * T], stream[:, i * T + shift:(i + 1) * T + shift]
        logits, state = model(x, state if carry else None)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        if zero_grad:
            opt.zero_grad()
        loss.backward()
        if step:
            opt.step()
        if detach:
            state = M.state_detach(state)
        losses.append(loss.item())
    return losses


WRONG = {
    "14.7": [(_not_shifted, "off by one"), (_shifted_backwards, "wrong way"), (_summed, "MEAN"),
             (_divided_by_T, "T - 1 predictions"), (_unstable, "NaN or Inf"), (_as_float, "detached"),
             (_library, "ready-made")],
    "14.8": [(_one_step_ahead, "one step ahead"), (_warmup_from_zero, "not 0"), (_cosine_to_zero, "tenth"),
             (_no_warmup, "linear warm-up")],
    "14.9": [(lambda *a: _loop(*a, zero_grad=False), "zero_grad"), (lambda *a: _loop(*a, step=False), "opt.step"),
             (lambda *a: _loop(*a, carry=False), "carry the state"),
             (lambda *a: _loop(*a, detach=False), "detach the carried state"),
             (lambda *a: _loop(*a, new_opt=True), "optimiser once"), (lambda *a: _loop(*a, shift=0), "shifted by one"),
             (lambda *a: _loop(*a, copy_model=True), "(?s)did not learn.*in place")],
}


@pytest.mark.parametrize("id_,fn,hint", [(i, f, h) for i, lst in WRONG.items() for f, h in lst],
                         ids=[f"{i}-{k}" for i, lst in WRONG.items() for k in range(len(lst))])
def test_wrong_answer_fails_with_its_hint(id_, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check(id_, fn)


def test_equivalent_answers_pass():
    """Other correct ways to write the loop pass too (the tolerance is not tuned to one order of operations)."""
    def loop(model, stream, T, lr):
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        state, losses = None, []
        for i in range(0, stream.shape[1] - 1, T):
            logits, state = model(stream[:, i:i + T], state)
            loss = F.cross_entropy(logits.transpose(1, 2), stream[:, i + 1:i + T + 1])
            opt.zero_grad(set_to_none=False)
            loss.backward()
            opt.step()
            state = [M.LayerState(*(t.detach() for t in layer)) for layer in state]
            losses.append(float(loss.detach()))
        return torch.tensor(losses)
    assert exercises.check("14.9", loop) == 3
