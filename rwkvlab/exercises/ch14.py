"""Checkers for chapter 14 (training: the loss, the schedule, the loop)."""
from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim.optimizer as _optimizer

from ..model import common, train
from ..model.x070 import RWKV7, Config as Config7
from . import call, compare, exercise
from .ch13 import compare_lazy, one_thread


# ---------------------------------------------------------------------------------------------
# 14.7: the next-token cross-entropy
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _no_ready_made_losses():
    """While the reader's loss runs, the library's cross-entropy and log-softmax refuse to work."""
    def refuse(name):
        def f(*a, **k):
            raise RuntimeError(f"{name} is the answer ready-made: write the log-softmax with logsumexp yourself")
        return f
    saved = [(torch.nn.functional, n, getattr(torch.nn.functional, n))
             for n in ("cross_entropy", "log_softmax", "nll_loss")]
    saved += [(torch, "log_softmax", torch.log_softmax), (torch.Tensor, "log_softmax", torch.Tensor.log_softmax),
              (torch.special, "log_softmax", torch.special.log_softmax)]
    try:
        for owner, name, _ in saved:
            setattr(owner, name, refuse(f"{getattr(owner, '__name__', 'torch')}.{name}"))
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def _ce(logits, targets, reduction="mean"):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)


# (B, T, V, logit scale): the shortest text (one prediction), odd T, several rows, logits so large
# that exp overflows float32 (a real model's logits are not, but a stable loss must not care)
_CASES_14_7 = [(1, 2, 3, 1.0), (2, 7, 11, 3.0), (3, 16, 50, 300.0), (1, 33, 5, 1.0)]


@exercise("14.7", "the next-token loss, shifted by one", difficulty="easy", spec="""
    Write next_token_loss(logits, idx) -> a 0-dim tensor: logits [B, T, V] float32 are what a
    language model returns for token ids idx [B, T] (int64, T >= 2). The logits at position t
    predict the token at t + 1, so there are T - 1 predictions per row and the last position
    predicts nothing; the loss is the mean over all B (T - 1) predictions of
    -log softmax(logits[b, t])[idx[b, t + 1]]. Write the log-softmax yourself with a logsumexp
    (torch.logsumexp, or the max-shifted form): the library's cross_entropy and log_softmax are
    switched off while the checker runs yours, and it uses logits up to about 1000, where
    exp overflows in float32. The loss must be differentiable: the checker also compares its
    gradient with respect to the logits.""")
def _check_14_7(fn):
    with one_thread():
        return _check_14_7_cases(fn)


def _check_14_7_cases(fn):
    for i, (B, T, V, scale) in enumerate(_CASES_14_7):
        g = torch.Generator().manual_seed(140 + i)
        logits = torch.randn(B, T, V, generator=g) * scale
        idx = torch.randint(0, V, (B, T), generator=g)
        case = f"{i} (B={B}, T={T}, V={V}, logits ~ N(0, {scale:g}^2))"
        x64 = logits.double().requires_grad_()
        want = _ce(x64[:, :-1], idx[:, 1:])
        (want_grad,) = torch.autograd.grad(want, x64)
        x = logits.clone().requires_grad_()
        with _no_ready_made_losses():
            got = call(fn, case, x, idx.clone())
        hint = ("take the logits of positions 0 .. T-2 and the targets idx[:, 1:]; log softmax = logit - "
                "logsumexp(logits), and logsumexp subtracts the largest logit before exp so that nothing overflows")

        def mistakes():
            with torch.no_grad():
                d = logits.double()
                return {
                    "off by one: the logits at position t predict the NEXT token, idx[:, t + 1]; comparing them "
                    "with idx[:, t] asks the model to copy its input": _ce(d, idx),
                    "shifted the wrong way: logits[:, :-1] go with idx[:, 1:] (the past predicts the future)":
                        _ce(d[:, 1:], idx[:, :-1]),
                    "the loss is the MEAN over the B (T - 1) predictions, not their sum":
                        _ce(d[:, :-1], idx[:, 1:], "sum"),
                    "there are T - 1 predictions per row: divide by B (T - 1), not B T":
                        _ce(d[:, :-1], idx[:, 1:], "sum") / (B * T),
                }
        if isinstance(got, torch.Tensor) and got.numel() == 1 and got.ndim > 0:
            raise AssertionError(f"case {case}: expected a 0-dim tensor (a scalar loss), got shape {tuple(got.shape)}")
        compare_lazy(case, got, want, tol=1e-6, name="loss", hint=hint, mistakes=mistakes)
        if not got.requires_grad:
            raise AssertionError(f"case {case}: the loss is detached from the logits (no gradient)\nhint: keep it a "
                                 "tensor computed from logits with torch operations: no .item(), .detach() or numpy")
        (grad,) = torch.autograd.grad(got, x)
        compare(case, grad, want_grad, tol=1e-5, name="gradient of the loss with respect to the logits", hint=(
            "the gradient is (softmax - one_hot(target)) / (B (T - 1)) at positions 0 .. T-2 and zero at the last"))
    return len(_CASES_14_7)


# ---------------------------------------------------------------------------------------------
# 14.8: the learning-rate schedule of train.fit
# ---------------------------------------------------------------------------------------------
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(3, 3)

    def forward(self, idx):
        return (self.emb(idx),)


def _rates_fit_applies(steps, peak, warmup):
    """Run train.fit for ``steps`` steps on a tiny model and record the rate of every optimiser step."""
    torch.manual_seed(0)
    model, seen = _Tiny(), []
    handle = _optimizer.register_optimizer_step_pre_hook(lambda opt, *a: seen.append(opt.param_groups[0]["lr"]))
    batch = (torch.tensor([[0, 1]]), torch.tensor([[1, 2]]), None)
    try:
        train.fit(model, lambda: batch, steps, peak, warmup=warmup, progress=False)
    finally:
        handle.remove()
    return torch.tensor(seen, dtype=torch.float64)


def _schedule_variant(steps, peak, warmup, mistake):
    s = torch.arange(steps, dtype=torch.float64) + (1 if mistake == "ahead" else 0)   # scheduler steps before each
    warm = torch.clamp((s if mistake == "from_zero" else s + 1) / warmup, max=1.0)
    if mistake == "no_warmup":
        warm = torch.ones_like(s)
    cos = 0.5 * (1 + torch.cos(math.pi * s / steps))
    return peak * warm * (cos if mistake == "no_floor" else 0.1 + 0.9 * cos)


# (steps, peak rate, warm-up steps): one step, a warm-up longer than the run, the chapter's runs
_CASES_14_8 = [(1, 1e-2, 1), (7, 3e-3, 10), (40, 1e-2, 10), (90, 6e-3, 1)]


@exercise("14.8", "the learning rate at every step of train.fit", difficulty="easy", spec="""
    Write lr_schedule(steps, peak, warmup) -> a float64 tensor [steps]: entry i - 1 is the
    learning rate that train.fit(model, next_batch, steps, lr=peak, warmup=warmup) uses at its
    i-th optimiser step, i = 1 .. steps. fit wraps AdamW in torch.optim.lr_scheduler.LambdaLR
    with the factor f(s) = min(1, (s + 1) / warmup) * (0.1 + 0.9 * (1 + cos(pi s / steps)) / 2)
    and calls sched.step() after every opt.step(); LambdaLR sets the rate to peak * f(s) where
    s counts the sched.step() calls made so far (0 when it is built). Work out which s each
    optimiser step sees. The checker runs train.fit on a tiny model and records the rate of
    every step.""")
def _check_14_8(fn):
    with one_thread():
        for i, (steps, peak, warmup) in enumerate(_CASES_14_8):
            case = f"{i} (steps={steps}, peak={peak:g}, warmup={warmup})"
            want = _rates_fit_applies(steps, peak, warmup)
            got = call(fn, case, steps, peak, warmup)
            if isinstance(got, (list, tuple)):
                got = torch.tensor([float(x) for x in got], dtype=torch.float64)
            compare_lazy(case, got, want, tol=1e-9, name="learning rates", hint=(
                "step i uses peak * f(i - 1): LambdaLR applies f(0) when it is built, before the first step"),
                mistakes=lambda: {
                    "one step ahead: the first optimiser step runs at f(0), because sched.step() comes AFTER "
                    "opt.step()": _schedule_variant(steps, peak, warmup, "ahead"),
                    "the warm-up factor is min(1, (s + 1) / warmup): the first step already has peak / warmup, "
                    "not 0": _schedule_variant(steps, peak, warmup, "from_zero"),
                    "the cosine ends at a tenth of the peak, not at 0: 0.1 + 0.9 * (1 + cos(pi s / steps)) / 2":
                        _schedule_variant(steps, peak, warmup, "no_floor"),
                    "fit starts with a linear warm-up: min(1, (s + 1) / warmup)":
                        _schedule_variant(steps, peak, warmup, "no_warmup"),
                })
    return len(_CASES_14_8)


# ---------------------------------------------------------------------------------------------
# 14.9: a training loop over one long text, with the state carried (truncated BPTT)
# ---------------------------------------------------------------------------------------------
V_14_9 = 16


def _tiny_lm(seed):
    cfg = Config7.make(V_14_9, 32, 1, head_size=16, d_decay=8, d_aaa=8, d_mv=8, d_gate=8, dim_ffn=64)
    return RWKV7(cfg).init_weights("random", seed=seed)


def _cycle_stream(B, L, seed, phase_seed):
    """B rows of one cycle through a permutation of the vocabulary (fixed by ``seed``), each row
    from its own starting point (drawn with ``phase_seed``)."""
    perm = torch.randperm(V_14_9, generator=torch.Generator().manual_seed(seed))
    phase = torch.randint(0, V_14_9, (B, 1), generator=torch.Generator().manual_seed(phase_seed))
    return perm[(torch.arange(L)[None] + phase) % V_14_9]


def _loop(model, stream, T, lr, mistake=""):
    """The loop the spec describes, or one plausible mistake made on purpose (for the hints)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    state, losses = None, []
    for i in range((stream.shape[1] - 1) // T):
        x, y = stream[:, i * T:(i + 1) * T], stream[:, i * T + 1:(i + 1) * T + 1]
        if mistake == "new_opt":
            opt = torch.optim.Adam(model.parameters(), lr=lr)
        logits, state = model(x, None if mistake == "no_carry" else state)
        loss = _ce(logits, x if mistake == "unshifted" else y)
        if mistake != "no_zero_grad":
            opt.zero_grad()
        loss.backward()
        if mistake != "no_step":
            opt.step()
        state = common.state_detach(state)
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64)


def _held_out_loss(model, seed):
    """Mean next-token loss of ``model`` on fresh rows of the same cycle (read in one call)."""
    stream = _cycle_stream(4, 65, seed, phase_seed=7)
    with torch.no_grad():
        logits, _ = model(stream[:, :-1])
    return _ce(logits, stream[:, 1:]).item()


_GRAPH_ERRORS = ("backward through the graph a second time", "modified by an inplace operation")

# (B, T, windows): the run that must learn, windows of one token, an odd window length
_CASES_14_9 = [(4, 8, 6), (2, 1, 4), (3, 5, 3)]
LEARNED_BY = 1.0      # nats the held-out loss must fall by in the first case


@exercise("14.9", "a training loop that carries the state", difficulty="medium", spec="""
    Write train_stream(model, stream, T, lr) -> losses: train an RWKV language model in place
    on long texts cut into windows, carrying the recurrent state across windows (truncated
    back-propagation through time). stream is [B, W T + 1] int64; window i = 0 .. W-1 reads
    inputs stream[:, i T:(i+1) T] and predicts targets stream[:, i T + 1:(i+1) T + 1]. Make one
    torch.optim.Adam(model.parameters(), lr=lr) (default settings, no schedule, no clipping);
    for each window in order: logits, state = model(inputs, state), starting from None and
    then from the previous window's final state, cut from its graph with
    rwkvlab.model.state_detach; loss = F.cross_entropy over all B T positions (mean); clear the
    gradients, back-propagate, step. Return the W losses as Python floats (each before its
    step). The checker replays the loop on a copy of the model, then checks that your trained
    model learned: on a fresh stream of the same task its loss must fall by at least 1 nat.""")
def _check_14_9(fn):
    with one_thread():
        for i, (B, T, W) in enumerate(_CASES_14_9):
            case = f"{i} (B={B}, T={T}, {W} windows)"
            stream = _cycle_stream(B, W * T + 1, seed=141 + i, phase_seed=i)
            model = _tiny_lm(seed=14 + i)
            model.impl = "naive"        # the token loop: the fastest core at these sizes on a CPU
            before = _held_out_loss(model, seed=141 + i) if i == 0 else None
            want = _loop(copy.deepcopy(model), stream, T, 1e-2)
            try:
                got = fn(model, stream.clone(), T, 1e-2)
            except NotImplementedError:
                raise
            except RuntimeError as e:
                if any(s in str(e) for s in _GRAPH_ERRORS):
                    raise AssertionError(
                        f"case {case}: your function raised RuntimeError: {str(e).splitlines()[0]}\nhint: detach the "
                        "carried state between windows (rwkvlab.model.state_detach): otherwise the next backward "
                        "reaches into the previous window's graph, which is freed and whose weights the optimiser "
                        "has changed since") from e
                raise AssertionError(f"case {case}: your function raised RuntimeError: {e}") from e
            except Exception as e:  # noqa: BLE001 - the reader's code may raise anything
                raise AssertionError(f"case {case}: your function raised {type(e).__name__}: {e}") from e
            try:
                got = torch.tensor([float(x) for x in got], dtype=torch.float64)
            except (TypeError, ValueError) as e:
                raise AssertionError(f"case {case}: expected a list of {W} floats (loss.item() per window), "
                                     f"got {type(got).__name__}") from e

            def mistakes():
                fresh = _tiny_lm(seed=14 + i)
                fresh.impl = "naive"
                return {h: _loop(copy.deepcopy(fresh), stream, T, 1e-2, m) for h, m in {
                    "clear the gradients every window (opt.zero_grad()); otherwise they add up over the windows":
                        "no_zero_grad",
                    "call opt.step() after loss.backward(): without it the weights never change": "no_step",
                    "carry the state: each window starts from the previous window's final state (detached), not "
                    "from None": "no_carry",
                    "make the optimiser once, before the loop: Adam's running averages live in it": "new_opt",
                    "the targets are the inputs shifted by one token, stream[:, iT+1:(i+1)T+1]": "unshifted",
                }.items()}
            compare_lazy(case, got, want, tol=1e-4, name="losses per window", mistakes=mistakes, hint=(
                "one optimiser for the whole run; per window: forward from the carried state, loss, zero_grad, "
                "backward, step, then detach the state for the next window"))
            if i == 0:
                after = _held_out_loss(model, seed=141 + i)
                if not after < before - LEARNED_BY:
                    raise AssertionError(
                        f"case {case}: the model you trained did not learn: held-out loss {before:.3f} before, "
                        f"{after:.3f} after (must fall by {LEARNED_BY:g})\nhint: train the model you were given, in "
                        "place (not a copy), with opt.step() on its parameters")
    return len(_CASES_14_9)
