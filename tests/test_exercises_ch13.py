"""Wrong answers to chapter 13's exercises: each must fail its checker with the intended hint."""
from __future__ import annotations

import math

import pytest
import torch

from rwkvlab import exercises, wkv7
from rwkvlab import rwkv7_ops as ops
from rwkvlab.model import LayerState


# --- 13.7: one block in RNN mode ---------------------------------------------------------------
def _block_step(block, x, layer, v_first, keep_shifts=False, residual_shifts=False, bonus_first=False,
                full_removal=False, swap_shifts=False):
    att, ffn = block.att, block.ffn
    B, _, C = x.shape
    H = att.n_head
    N = C // H
    if layer is None:
        layer = LayerState(x.new_zeros(B, C), torch.zeros(B, H, N, N), x.new_zeros(B, C))
    if block.layer_id == 0:
        x = block.ln0(x)
    x_in = x
    xa = block.ln1(x)
    p = att.projections(xa, (layer.ffn_shift if swap_shifts else layer.att_shift)[:, None], v_first)
    heads = lambda t: t.reshape(B, H, N)  # noqa: E731
    r, w, k, v, a, g, kk = (p[n] for n in ("r", "w", "k", "v", "a", "g", "kk"))
    o, S = wkv7.step(heads(r), heads(w), heads(k), heads(v), -heads(kk), heads(kk if full_removal else kk * a),
                     state=layer.wkv)
    bonus = ops.output_correction(r, k, v, att.r_k, H)
    if bonus_first:
        o = att.ln_x((o.reshape(B, 1, C) + bonus)[:, 0])[:, None]
    else:
        o = att.ln_x(o.reshape(B, C))[:, None] + bonus
    x = x + att.output(o * g)
    x_mid = x
    xf = block.ln2(x)
    x = x + ops.channel_mix(xf, (layer.att_shift if swap_shifts else layer.ffn_shift)[:, None], ffn.x_k,
                            ffn.key.weight, ffn.value.weight)
    if keep_shifts:
        return x, LayerState(layer.att_shift, S, layer.ffn_shift), p["v_first"]
    if residual_shifts:
        return x, LayerState(x_in[:, 0], S, x_mid[:, 0]), p["v_first"]
    return x, LayerState(xa[:, 0], S, xf[:, 0]), p["v_first"]


def _calls_the_block(block, x, layer, v_first):
    return block(x, layer, v_first, None)


# --- 13.8: bytes of the state and of a KV cache ------------------------------------------------
def _memory(C, L, N, T, db, group, shifts=True, wkv_bytes=4, shift_bytes=None, kv=2, use_group=True, cross=None):
    state = L * ((2 * C * (shift_bytes or db) if shifts else 0) + C * N * wkv_bytes)
    per_token = kv * L * (C // (group if use_group else 1)) * db
    if cross == "strict":
        t_star = state // per_token + 1
    elif cross == "floor":
        t_star = state // per_token
    elif cross == "float":
        t_star = state / per_token
    else:
        t_star = -(-state // per_token)
    return state, per_token * T, t_star


WRONG_MEMORY = {
    "no_shifts": dict(shifts=False), "wkv_in_model_dtype": dict(wkv_bytes=None),
    "shifts_in_float32": dict(shift_bytes=4), "keys_only": dict(kv=1), "group_ignored": dict(use_group=False), "strict": dict(cross="strict"),
    "floor": dict(cross="floor"), "float": dict(cross="float"),
}


def _wrong_memory(kind):
    kw = WRONG_MEMORY[kind]

    def fn(C, L, N, T, db, group):
        if kw.get("wkv_bytes", 4) is None:
            return _memory(C, L, N, T, db, group, **{**kw, "wkv_bytes": db})
        return _memory(C, L, N, T, db, group, **kw)
    fn.__name__ = kind
    return fn


# --- 13.9: greedy generation ------------------------------------------------------------------
def _greedy(model, prompt, n, restep=False, first_row=False, stateless=False, short=False, by_steps=False):
    with torch.no_grad():
        if by_steps:                                         # reads the prompt token by token
            state = None
            for t in range(prompt.shape[1]):
                logits, state = model.step(prompt[:, t], state)
        else:
            logits, state = model(prompt)
            logits = logits[:, 0] if first_row else logits[:, -1]
            if restep:
                logits, state = model.step(prompt[:, -1], state)
        toks = []
        for j in range(n):
            tok = logits.argmax(-1)
            toks.append(tok)
            if not (short and j == n - 1):
                logits, state = model.step(tok, None if stateless else state)
    return torch.stack(toks, 1), state


def _float_tokens(model, prompt, n):
    toks, state = _greedy(model, prompt, n)
    return toks.float(), state


WRONG = {
    "13.7": [(lambda *a: _block_step(*a, keep_shifts=True), "carry the token shift"),
             (lambda *a: _block_step(*a, residual_shifts=True), "INPUT of its mix"),
             (lambda *a: _block_step(*a, bonus_first=True), "AFTER the GroupNorm"),
             (lambda *a: _block_step(*a, full_removal=True), "b = kk \\* a"),
             (lambda *a: _block_step(*a, swap_shifts=True), "block's forward"),
             (_calls_the_block, "from its parts")],
    "13.8": [(_wrong_memory("no_shifts"), "two token-shift vectors"),
             (_wrong_memory("wkv_in_model_dtype"), "float32 whatever the model's dtype"),
             (_wrong_memory("shifts_in_float32"), "shift vectors are in the model's dtype"),
             (_wrong_memory("keys_only"), "keys AND values"),
             (_wrong_memory("group_ignored"), "grouped-query attention only"),
             (_wrong_memory("strict"), "includes equality"),
             (_wrong_memory("floor"), "round the ratio UP"),
             (_wrong_memory("float"), "whole number")],
    "13.9": [(lambda *a: _greedy(*a, restep=True), "reads it twice"),
             (lambda *a: _greedy(*a, first_row=True), "last row"),
             (lambda *a: _greedy(*a, stateless=True), "pass the state"),
             (lambda *a: _greedy(*a, short=True), "step the last new token too"),
             (lambda *a: _greedy(*a, by_steps=True), "prompt in parallel mode once"),
             (_float_tokens, "int64 token ids")],
}


@pytest.mark.parametrize("id_,fn,hint", [(i, f, h) for i, lst in WRONG.items() for f, h in lst],
                         ids=[f"{i}-{k}" for i, lst in WRONG.items() for k in range(len(lst))])
def test_wrong_answer_fails_with_its_hint(id_, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check(id_, fn)


def test_crossover_cases_cover_both_roundings():
    """13.8's cases include a whole ratio (where > vs >= matters) and a fractional one (where rounding does)."""
    from rwkvlab.exercises.ch13 import _CASES_13_8, _measured_bytes
    ratios = []
    for C, L, N, T, db, grp in _CASES_13_8:
        state, cache, _ = _measured_bytes(C, L, N, T, db, grp)
        ratios.append(state / (cache / T))
    assert any(r == math.floor(r) for r in ratios) and any(r != math.floor(r) for r in ratios)
