"""Checkers for chapter 13 (two modes: parallel reading, RNN stepping, what the state costs)."""
from __future__ import annotations

import contextlib
import copy
import math
import numbers
import types

import torch

from .. import attention, rwkv7_ops as ops, wkv7
from ..model import common
from ..model import transformer as tf
from ..model.x060 import RWKV6, Config as Config6
from ..model.x070 import RWKV7, Config as Config7
from . import call, compare, exercise


@contextlib.contextmanager
def one_thread():
    """Run a checker on one CPU thread: its tensors are tiny, and on a busy CPU several threads per
    operation wait on each other far longer than they compute (chapter 13 measured 20x)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def compare_lazy(case, got, want, *, mistakes, **kw):
    """``compare``, but the mistakes' outputs (``mistakes()``) are computed only for a wrong answer."""
    try:
        compare(case, got, want, **kw)
        return
    except AssertionError:
        pass
    compare(case, got, want, mistakes=mistakes(), **kw)   # raises again, now with the matching hint


def _tiny7(seed: int, vocab: int = 40, C: int = 32, L: int = 2, N: int = 16) -> RWKV7:
    cfg = Config7.make(vocab, C, L, head_size=N, d_decay=8, d_aaa=8, d_mv=8, d_gate=8, dim_ffn=2 * C)
    return RWKV7(cfg).init_weights("random", seed=seed).eval()


def _tiny6(seed: int, vocab: int = 40, C: int = 32, L: int = 2, N: int = 16) -> RWKV6:
    cfg = Config6.make(vocab, C, L, head_size=N, d_mix=4, d_decay=8, dim_ffn=2 * C)
    return RWKV6(cfg).init_weights("random", seed=seed).eval()


def _flat(state) -> torch.Tensor:
    return torch.cat([t.detach().double().reshape(-1) for layer in state for t in layer])


# ---------------------------------------------------------------------------------------------
# 13.7: one block in RNN mode
# ---------------------------------------------------------------------------------------------
def _block_step_variant(block, x, layer, v_first, mistake: str = ""):
    """A one-token block step with one plausible mistake made on purpose (for the hints only)."""
    att, ffn = block.att, block.ffn
    B, _, C = x.shape
    H = att.n_head
    if layer is None:
        layer = common.LayerState(x.new_zeros(B, C), torch.zeros(B, H, C // H, C // H), x.new_zeros(B, C))
    if block.layer_id == 0:
        x = block.ln0(x)
    x_in = x
    xa = block.ln1(x)
    p = att.projections(xa, layer.att_shift[:, None], v_first)
    r, w, k, v, a, g, kk = (p[n] for n in ("r", "w", "k", "v", "a", "g", "kk"))
    hd = lambda t: t.reshape(B, H, C // H)  # noqa: E731
    b = hd(kk) if mistake == "b_without_a" else hd(kk * a)
    o, S = wkv7.step(hd(r), hd(w), hd(k), hd(v), -hd(kk), b, state=layer.wkv)
    o = o.reshape(B, 1, C)
    bonus = ops.output_correction(r, k, v, att.r_k, H)
    o = att.ln_x((o + bonus)[:, 0])[:, None] if mistake == "bonus_before_norm" else att.ln_x(o[:, 0])[:, None] + bonus
    x = x + att.output(o * g)
    x_mid = x
    xf = block.ln2(x)
    x = x + ops.channel_mix(xf, layer.ffn_shift[:, None], ffn.x_k, ffn.key.weight, ffn.value.weight)
    shifts = {"no_shift": (layer.att_shift, layer.ffn_shift),                    # the shifts never move
              "shift_residual": (x_in[:, 0], x_mid[:, 0])}.get(mistake, (xa[:, 0], xf[:, 0]))
    return x, common.LayerState(shifts[0], S, shifts[1]), p["v_first"]


def _drive(step, model, idx, state, case):
    """Run ``step`` block by block, token by token: logits [B, T, V] and the final state."""
    state = list(state) if state is not None else [None] * len(model.blocks)
    B, C = idx.shape[0], model.cfg.n_embd
    outs = []
    for t in range(idx.shape[1]):
        x = model.emb(idx[:, t:t + 1])
        v_first = None
        for i, block in enumerate(model.blocks):
            out = call(step, case, block, x, state[i], v_first)
            if not (isinstance(out, tuple) and len(out) == 3):
                raise AssertionError(f"case {case}: block {i} should return (x, layer_state, v_first), "
                                     f"got {type(out).__name__}")
            x, layer, v_first = out
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != (B, 1, C):
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise AssertionError(f"case {case}: block {i} returned x of shape {got}, expected {(B, 1, C)}")
            if not (isinstance(layer, tuple) and len(layer) == 3 and all(isinstance(s, torch.Tensor) for s in layer)):
                raise AssertionError(f"case {case}: block {i} returned a state that is not "
                                     "LayerState(att_shift, wkv, ffn_shift) of tensors")
            state[i] = common.LayerState(*layer)
        outs.append(model.head(model.ln_out(x)))
    return torch.cat(outs, 1), state


def _forbid_calls(model):
    """A copy of ``model`` whose block, time-mix and channel-mix ``forward`` refuse to run."""
    m = copy.deepcopy(model)

    def refuse(what):
        def f(*a, **k):
            raise RuntimeError(f"{what}(...) runs the whole piece for you: build the step from its parts")
        return f
    for blk in m.blocks:
        blk.forward, blk.att.forward, blk.ffn.forward = refuse("block"), refuse("block.att"), refuse("block.ffn")
    return m


# (B, prefix read in parallel mode first, T stepped): T = 1, odd T, several sequences, a state to continue from
_CASES_13_7 = [(1, 0, 1), (2, 0, 7), (3, 5, 6), (1, 9, 3)]


@exercise("13.7", "one RWKV-7 block in RNN mode", difficulty="medium", spec="""
    Write block_step(block, x, layer, v_first) -> (x, layer, v_first): one token through one block
    of an RWKV-7 model (block = model.blocks[i]), built from its parts: do not call block(...),
    block.att(...) or block.ffn(...). x is this token's residual stream [B, 1, C] (a sequence of
    length one, as in model.step); layer is the block's LayerState(att_shift [B, C], wkv
    [B, H, N, N] float32, ffn_shift [B, C]), or None at the start of a text (zeros); v_first is
    [B, 1, C], None in block 0, which creates it. In order: block.ln0 (block 0 only); xa = ln1(x);
    p = block.att.projections(xa, att_shift[:, None], v_first) gives r, w, k, v, a, g, kk (each
    [B, 1, C]) and p["v_first"]; wkv7.step on [B, H, N] heads (H = block.att.n_head) with
    a = -kk, b = kk * a; att.ln_x (a GroupNorm over [B, C]) of its output, plus
    ops.output_correction(r, k, v, att.r_k, H), times g, through att.output, added to x; then
    xf = ln2(x) and ops.channel_mix(xf, ffn_shift[:, None], ffn.x_k, ffn.key.weight,
    ffn.value.weight) added to x. The returned LayerState holds what the NEXT token needs. The
    checker runs a seeded two-block model token by token through your step (sometimes from a
    state read in parallel mode) and compares logits and final state with the parallel forward
    in float64.""")
def _check_13_7(fn):
    with one_thread():
        return _check_13_7_cases(fn)


def _check_13_7_cases(fn):
    model = _tiny7(seed=13)
    ref_model = copy.deepcopy(model).double()
    guarded = _forbid_calls(model)
    hint = ("follow the block's forward (rwkvlab.model.common.BlockBase, x070.TimeMix.forward) on a sequence "
            "of length one; the state must carry both shifts and the WKV matrix")
    mistakes = {
        "carry the token shift: the new att_shift and ffn_shift are THIS token's inputs to the two mixes "
        "(the next token's 'previous token'); returning the old ones leaves them at zero": "no_shift",
        "a shift state holds the INPUT of its mix, ln1(x) for the time mix and ln2(x) for the channel mix, "
        "not the residual stream x": "shift_residual",
        "RWKV-7 adds the bonus (ops.output_correction) AFTER the GroupNorm att.ln_x, not before": "bonus_before_norm",
        "b = kk * a: the in-context learning rate a scales the removal as well": "b_without_a",
    }
    for i, (B, P, T) in enumerate(_CASES_13_7):
        g = torch.Generator().manual_seed(70 + i)
        idx = torch.randint(0, model.cfg.vocab_size, (B, P + T), generator=g)
        case = (f"{i} (B={B}, {T} step{'s' * (T > 1)} "
                + (f"after {P} tokens read in parallel mode)" if P else "from the empty state)"))
        with torch.no_grad():
            want, want_state = ref_model(idx, impl="naive")
            start = model(idx[:, :P], impl="naive")[1] if P else None
            got, got_state = _drive(fn, guarded, idx[:, P:], start, case)
            outs = {}

            def wrong(which):
                if not outs:
                    with torch.no_grad():
                        for h, m in mistakes.items():
                            outs[h] = _drive(lambda *a, m=m: _block_step_variant(*a, m), model, idx[:, P:], start, case)
                return {h: (o[0] if which == 0 else _flat(o[1])) for h, o in outs.items()}
        compare_lazy(case, got, want[:, P:], tol=2e-6, name="logits", hint=hint, mistakes=lambda: wrong(0))
        compare_lazy(case, _flat(got_state), _flat(want_state), tol=2e-6, hint=hint,
                     name="final state (all blocks, flattened)", mistakes=lambda: wrong(1))
    return len(_CASES_13_7)


# ---------------------------------------------------------------------------------------------
# 13.8: bytes of the state against bytes of a KV cache
# ---------------------------------------------------------------------------------------------
_DTYPES = {1: torch.float8_e4m3fn, 2: torch.bfloat16, 4: torch.float32, 8: torch.float64}


def _measured_bytes(C, L, N, T, dtype_bytes, group):
    """State and cache bytes weighed on real (meta-device, so never allocated) tensors."""
    dt = _DTYPES[dtype_bytes]
    # the package's own empty_state, on a stand-in for the model that holds only what it reads
    # (building a real model on the meta device costs seconds of one-off start-up here)
    cfg = Config7.make(16, C, L, head_size=N, d_decay=8, d_aaa=8, d_mv=8, d_gate=8, dim_ffn=C)
    stand_in = types.SimpleNamespace(cfg=cfg, emb=types.SimpleNamespace(weight=torch.empty(0, dtype=dt, device="meta")))
    state = common.state_nbytes(common.LanguageModel.empty_state(stand_in, 1))

    def cache(t):
        kv = lambda: torch.empty(1, t, C // N // group, N, dtype=dt, device="meta")  # noqa: E731
        return tf.cache_nbytes([attention.KVCache(kv(), kv()) for _ in range(L)])
    per_token = cache(1)
    crossover = -(-state // per_token)                      # the first T with cache(T) >= state
    assert cache(crossover) >= state > cache(crossover - 1)
    return state, cache(T), crossover


def _as_count(case, name, x):
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise AssertionError(f"case {case}: {name}: expected a whole number (int), got {type(x).__name__}")
    if x != math.floor(x):
        raise AssertionError(f"case {case}: {name}: expected a whole number, got {x}"
                             + ("\nhint: a number of tokens is whole: the first T at which the cache is at least "
                                "as large, i.e. round the ratio UP" if name == "crossover" else ""))
    return torch.tensor(float(x), dtype=torch.float64)


# (C, L, N, T, bytes per number of the model's dtype, query heads per key/value head)
_CASES_13_8 = [(64, 2, 32, 10, 4, 1),          # the chapter's small model: crossover 1 + N/2 = 17
               (768, 12, 64, 4096, 2, 1),      # RWKV-7 0.1B shape, bfloat16 model and cache
               (2048, 24, 64, 1, 2, 4),        # 1.5B shape, grouped-query attention with 8 kv heads
               (30, 3, 15, 5, 4, 1),           # odd head size: 1 + N/2 is not whole
               (96, 1, 24, 3, 4, 2)]


@exercise("13.8", "the state against a KV cache, in bytes", difficulty="easy", spec="""
    Write memory_bytes(C, L, N, T, dtype_bytes, group) -> (state, cache, crossover), three whole
    numbers, for one sequence. state: bytes of an RWKV model's recurrent state with width C, L
    blocks and head size N, whose token-shift vectors are in the model's dtype (dtype_bytes bytes
    per number) while the WKV matrices are float32 whatever the model's dtype. cache: bytes of
    the KV cache of a softmax transformer of the same C, L and head size after T tokens, in the
    model's dtype, with grouped-query attention: every key/value head is shared by `group`
    query heads (group = 1 is ordinary attention; group divides H = C / N). crossover: the
    smallest T >= 1 at which that cache holds at least as many bytes as the state. The checker
    weighs real state and cache tensors (on PyTorch's meta device) of the same shapes.""")
def _check_13_8(fn):
    num = lambda x: torch.tensor(float(x), dtype=torch.float64)  # noqa: E731
    for i, (C, L, N, T, db, grp) in enumerate(_CASES_13_8):
        case = f"{i} (C={C}, L={L}, N={N}, T={T}, dtype_bytes={db}, group={grp})"
        out = call(fn, case, C, L, N, T, db, grp)
        if not (isinstance(out, (tuple, list)) and len(out) == 3):
            raise AssertionError(f"case {case}: expected (state, cache, crossover), got {type(out).__name__}")
        got = [_as_count(case, n, x) for n, x in zip(("state", "cache", "crossover"), out)]
        state, cache, cross = _measured_bytes(C, L, N, T, db, grp)
        ratio = state / (cache / T)                        # bytes of the state / bytes of the cache per token

        def wrong(ref, values):                            # the mistakes that change this case's answer
            return {h: num(v) for h, v in values.items() if v != ref}
        compare(case, got[0], num(state), tol=0, name="state bytes",
                hint="count every tensor of a LayerState, per block", mistakes=wrong(state, {
                    "the state also holds two token-shift vectors of C numbers per block, besides the H matrices "
                    "of N x N": L * C * N * 4,
                    "the WKV matrices are float32 whatever the model's dtype; only the two shift vectors use "
                    "dtype_bytes": L * (2 * C + C * N) * db,
                    "the token-shift vectors are in the model's dtype (dtype_bytes), not float32":
                        L * (2 * C + C * N) * 4}))
        compare(case, got[1], num(cache), tol=0, name="cache bytes",
                hint="count keys and values of every layer and token", mistakes=wrong(cache, {
                    "the cache holds keys AND values: 2 x (H / group) x N numbers per token per layer":
                        L * (C // grp) * T * db,
                    f"with grouped-query attention only H / group = {C // N // grp} key/value heads are cached":
                        2 * L * C * T * db}))
        compare(case, got[2], num(cross), tol=0, name="crossover (tokens)",
                hint="the crossover is the first T with cache(T) >= state: state / (cache bytes per token), rounded up",
                mistakes=wrong(cross, {
                    "'at least as many bytes' includes equality: the T with cache(T) == state is the crossover":
                        math.floor(ratio) + 1,
                    "round the ratio UP: at the rounded-down T the cache is still smaller than the state":
                        math.floor(ratio)}))
    return len(_CASES_13_8)


# ---------------------------------------------------------------------------------------------
# 13.9: greedy generation with a state
# ---------------------------------------------------------------------------------------------
class _Counted:
    """Counts a model's parallel calls and steps (the spec says how many there should be)."""

    def __init__(self, model):
        self.model, self.forward_lengths, self.steps = model, [], 0
        fwd, step = model.forward, model.step

        def forward(idx, *a, **k):
            self.forward_lengths.append(idx.shape[1])
            return fwd(idx, *a, **k)

        def counted_step(*a, **k):
            self.steps += 1
            return step(*a, **k)
        model.forward, model.step = forward, counted_step


def _greedy_variant(model, prompt, n, mistake=""):
    """Greedy decoding with one plausible mistake made on purpose (for the hints only)."""
    logits, state = model(prompt)
    last = logits[:, 0] if mistake == "first_row" else logits[:, -1]
    if mistake == "restep_last":                     # the prompt's last token read a second time
        last, state = model.step(prompt[:, -1], state)
    toks = []
    for j in range(n):
        tok = last.argmax(-1)
        toks.append(tok)
        if j < n - 1 or mistake != "state_short":
            last, state = model.step(tok, None if mistake == "no_state" else state)
    return torch.stack(toks, 1), state


def _greedy_reference(ref_model, prompt, n):
    """Greedy decoding by re-reading the whole text in float64 for every new token (no state)."""
    seq = prompt
    for _ in range(n):
        logits = ref_model(seq, impl="naive")[0][:, -1]
        top2 = logits.topk(2, -1).values
        assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-4, "checker: a near tie; choose another seed"
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    return seq[:, prompt.shape[1]:], ref_model(seq, impl="naive")[1]


# (version, B, prompt length, new tokens): one token from one, batches, an RWKV-6 model too
_CASES_13_9 = [(7, 1, 1, 1), (7, 2, 5, 6), (6, 3, 4, 5), (7, 1, 12, 8)]


@exercise("13.9", "greedy generation with a state", difficulty="easy", spec="""
    Write greedy(model, prompt, n) -> (tokens, state) for any rwkvlab.model language model:
    prompt is [B, T0] int64 token ids, read in ONE parallel call model(prompt) -> (logits
    [B, T0, V], state); then n new tokens, each the argmax of the current logits, every one of
    them read with model.step(token [B], state) -> (logits [B, V], state). Return tokens [B, n]
    int64 and the state after the prompt and all n new tokens, ready to continue the text (so
    the last new token is stepped too). The checker compares with greedy decoding that re-reads
    the whole text in float64 for every token, and counts your calls: one model(...) and n
    model.step(...).""")
def _check_13_9(fn):
    with one_thread(), torch.no_grad():
        for i, (ver, B, T0, n) in enumerate(_CASES_13_9):
            model = (_tiny7 if ver == 7 else _tiny6)(seed=90 + i)
            ref_model = copy.deepcopy(model).double()
            case = f"{i} (RWKV-{ver}, B={B}, T0={T0}, n={n})"
            prompt = torch.randint(0, model.cfg.vocab_size, (B, T0), generator=torch.Generator().manual_seed(9 + i))
            want, want_state = _greedy_reference(ref_model, prompt, n)
            counted = _Counted(copy.deepcopy(model))
            out = call(fn, case, counted.model, prompt.clone(), n)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise AssertionError(f"case {case}: expected (tokens, state), got {type(out).__name__}")
            tokens, state = out
            if isinstance(tokens, torch.Tensor) and (tokens.dtype.is_floating_point or tokens.dtype == torch.bool):
                raise AssertionError(f"case {case}: tokens: expected int64 token ids, got {tokens.dtype}")
            wrong = {}

            def mistakes(which):
                if not wrong:
                    wrong.update({h: _greedy_variant(copy.deepcopy(model), prompt, n, m) for h, m in {
                        "the parallel read already gives the first new token's logits (its LAST row); stepping the "
                        "prompt's last token again reads it twice": "restep_last",
                        "the next token after the prompt comes from the last row of the logits, logits[:, -1]":
                            "first_row",
                        "pass the state returned by each call on to the next call; without it every step starts a "
                        "new text": "no_state",
                        "step the last new token too, so that the returned state has read all n of them":
                            "state_short",
                    }.items()})
                return {h: (o[0].double() if which == 0 else _flat(o[1])) for h, o in wrong.items()}
            hint = "read the prompt once with model(prompt), then alternate argmax and model.step, carrying the state"
            compare_lazy(case, tokens.double() if isinstance(tokens, torch.Tensor) else tokens, want.double(), tol=0,
                         name="tokens", hint=hint, mistakes=lambda: mistakes(0))
            if not (isinstance(state, list) and all(isinstance(x, tuple) and len(x) == 3 for x in state)):
                raise AssertionError(f"case {case}: state: expected the list of LayerState that model.step returns")
            compare_lazy(case, _flat(state), _flat(want_state), tol=2e-6, name="state (flattened)", hint=hint,
                         mistakes=lambda: mistakes(1))
            if counted.forward_lengths != [T0] or counted.steps != n:
                raise AssertionError(
                    f"case {case}: expected one model(prompt) call of {T0} tokens and {n} model.step calls, got "
                    f"parallel calls of lengths {counted.forward_lengths} and {counted.steps} steps\nhint: read the "
                    "prompt in parallel mode once, and each new token with one step")
    return len(_CASES_13_9)
