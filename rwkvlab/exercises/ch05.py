"""Checkers for chapter 05 (RWKV-6: the matrix state, the bonus, Finch's decay)."""
from __future__ import annotations

import torch

from .. import wkv6
from . import call, close, compare, exercise


def _distinct(mistakes, want):
    """Drop the mistakes that a case cannot tell from the right answer (e.g. a decay error when T = 1)."""
    return {text: wrong for text, wrong in mistakes.items() if not close(wrong, want, 1e-3)}

# (B, T, H, K, V, decay scale): T = 1, odd T, several heads, K ≠ V, slow decay over a long run.
# The first case has K == V, so that a state built on the wrong axis still has the right shape
# and the checker can say which mistake it is.
_CASES = [(1, 1, 1, 4, 4, 1.0), (2, 7, 2, 4, 4, 1.0), (1, 33, 2, 8, 6, 0.05), (3, 12, 1, 5, 3, 3.0)]


def _inputs(B, T, H, K, V, decay, seed):
    r, k, v, w, u = wkv6.random_inputs(B, T, H, K, V, seed=seed, decay=decay)
    S0 = torch.randn(B, H, K, V, generator=torch.Generator().manual_seed(seed + 1000))
    return r, k, v, w, u, S0


def _case(i, B, T, H, K, V, decay):
    return f"{i} (B={B}, T={T}, H={H}, K={K}, V={V}, log decay ~ -{decay:g}·e^N(0,1))"


def _reference(r, k, v, w, u, S0):
    """(o, final state) in float64 from the package's token loop."""
    o, S = wkv6.naive(*(x.double() for x in (r, k, v, w, u)), initial_state=S0.double(), output_final_state=True)
    return o, S


def _loop(r, k, v, w, u, S0, kind):
    """The token loop with one mistake made on purpose (float64), for the hints: (o, final state)."""
    r, k, v, w, u, S = (x.double() for x in (r, k, v, w, u, S0))
    T = r.shape[1]
    outs = []
    for t in range(T):
        rt, kt, vt, wt = r[:, t], k[:, t], v[:, t], w[:, t]
        kv = kt[..., :, None] * vt[..., None, :]                           # [B, H, K, V]
        dec = torch.exp(wt)[..., :, None]
        if kind == "decay_v_axis":
            new = torch.exp(wt)[..., None, :] * S + kv                      # needs K == V
        elif kind == "v_k_outer":
            new = dec * S + vt[..., :, None] * kt[..., None, :]             # needs K == V
        elif kind == "no_exp":
            new = wt[..., :, None] * S + kv
        elif kind == "decay_new_token":
            new = dec * (S + kv)
        elif kind == "bonus_in_state":
            new = dec * S + u[None, :, :, None] * kv
        else:
            new = dec * S + kv
        bonus = u[None, :, :, None] * kv
        if kind == "read_h_t":                                              # o_t = r_tᵀ(S_t + diag(u) k_t v_tᵀ)
            o = torch.einsum("bhk,bhkv->bhv", rt, new + bonus)
        elif kind == "read_after_update":                                   # o_t = r_tᵀ S_t, GLA-style
            o = torch.einsum("bhk,bhkv->bhv", rt, new)
        elif kind == "no_bonus":
            o = torch.einsum("bhk,bhkv->bhv", rt, S)
        elif kind == "bonus_without_u":
            o = torch.einsum("bhk,bhkv->bhv", rt, S + kv)
        else:
            o = torch.einsum("bhk,bhkv->bhv", rt, S + bonus)
        outs.append(o)
        S = new
    return torch.stack(outs, 1), S


_UPDATE_HINTS = {
    "decay_v_axis": "the decay acts on the KEY axis: e^{w_t} has K entries and scales row κ of S (dim -2), "
                    "S_t = e^{w_t}[..., :, None] * S + k_t v_tᵀ; you decayed the value columns (dim -1)",
    "v_k_outer": "K and V are swapped: the state is K×V, so the new write is the outer product k_t v_tᵀ "
                 "(k[..., :, None] * v[..., None, :]), not v_t k_tᵀ",
    "no_exp": "w is the LOG decay (≤ 0): the factor that multiplies S is exp(w_t), not w_t",
    "decay_new_token": "decay first, then add: the new token's k_t v_tᵀ is not decayed by its own w_t",
}


def _update_mistakes(r, k, v, w, u, S0, extra=()):
    """{hint: final state} for the update mistakes that give a state of the right shape."""
    K, V = k.shape[-1], v.shape[-1]
    kinds = {**_UPDATE_HINTS, **dict(extra)}
    return {text: _loop(r, k, v, w, u, S0, kind)[1] for kind, text in kinds.items()
            if K == V or kind not in ("decay_v_axis", "v_k_outer")}


@exercise("05.7", "the state update with per-channel decay", difficulty="easy", spec="""
    Write update(S, k, v, w) -> S_new: one token of RWKV-6's state update for every batch row
    and head, S_new = diag(exp(w)) S + k vᵀ. S is [B, H, K, V] (the state in K×V layout: rows are
    key channels), k and w are [B, H, K], v is [B, H, V], all float32; w is the log decay (≤ 0),
    one factor exp(w[κ]) per key channel κ, so it scales row κ of S. Return S_new, [B, H, K, V].
    The checker runs your update over sequences from a random initial state and compares the
    final state with wkv6.naive in float64.""")
def _check_05_7(fn):
    for i, (B, T, H, K, V, decay) in enumerate(_CASES):
        r, k, v, w, u, S0 = _inputs(B, T, H, K, V, decay, seed=50 + i)
        case = _case(i, B, T, H, K, V, decay)
        S = S0
        for t in range(T):
            S = call(fn, case, S, k[:, t], v[:, t], w[:, t])
            if not isinstance(S, torch.Tensor) or tuple(S.shape) != (B, H, K, V):
                compare(f"{case}, token {t}", S, S0, name="S_new",
                        hint="S_new has the shape of S, [B, H, K, V]: rows are key channels, columns value channels")
        want = _reference(r, k, v, w, u, S0)[1]
        mistakes = _distinct(_update_mistakes(r, k, v, w, u, S0), want)
        compare(case, S, want, tol=1e-5, name="final state", mistakes=mistakes, hint=(
            "S_new = exp(w)[..., :, None] * S + k[..., :, None] * v[..., None, :]: every key row of the old "
            "state shrinks by its own factor, then the rank-one write k vᵀ is added"))
    return len(_CASES)


@exercise("05.8", "one token of RWKV-6: read-out with the bonus, then update", difficulty="medium", spec="""
    Write step(r, k, v, w, u, S) -> (o, S_new): one token of RWKV-6 in RNN mode. r, k, w are
    [B, H, K], v is [B, H, V], u (the bonus) is [H, K], S is the state [B, H, K, V] (K×V layout),
    all float32, w ≤ 0 the log decay. The output reads the state from BEFORE this token plus the
    current token weighted by the bonus, o = rᵀ (S + diag(u) k vᵀ), shape [B, H, V]; the new state
    is S_new = diag(exp(w)) S + k vᵀ. The checker feeds your step token by token from a random
    initial state and compares every output and the final state with wkv6.naive in float64.""")
def _check_05_8(fn):
    for i, (B, T, H, K, V, decay) in enumerate(_CASES):
        r, k, v, w, u, S0 = _inputs(B, T, H, K, V, decay, seed=80 + i)
        case = _case(i, B, T, H, K, V, decay)
        S, outs = S0, []
        for t in range(T):
            out = call(fn, case, r[:, t], k[:, t], v[:, t], w[:, t], u, S)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise AssertionError(f"case {case}: expected a pair (o, S_new), got {type(out).__name__}")
            o, S = out
            if not isinstance(o, torch.Tensor) or tuple(o.shape) != (B, H, V):
                compare(f"{case}, token {t}", o, v[:, t], name="o", hint="o has one value vector per head: [B, H, V]")
            if not isinstance(S, torch.Tensor) or tuple(S.shape) != (B, H, K, V):
                compare(f"{case}, token {t}", S, S0, name="S_new", hint="S_new has the shape of S, [B, H, K, V]")
            outs.append(o)
        o_want, S_want = _reference(r, k, v, w, u, S0)
        compare(case, torch.stack(outs, 1), o_want, tol=1e-5, name="o (stacked over tokens, [B, T, H, V])",
                hint="o = rᵀ(S + diag(u) k vᵀ) with S the state from BEFORE the update; "
                     "then S_new = diag(e^w) S + k vᵀ",
                mistakes=_distinct({
                    "you read the state AFTER the update (the 'o_t = r_t h_t' transcription): S_t already holds "
                    "k_t v_tᵀ, so the current token is counted twice and the past is decayed one step too far; "
                    "compute o from the old S, then update": _loop(r, k, v, w, u, S0, "read_h_t")[0],
                    "you read the state AFTER the update and left out the bonus (GLA's o_t = q_tᵀ S_t); RWKV-6 reads "
                    "the state before the token and adds the current token through the bonus u":
                        _loop(r, k, v, w, u, S0, "read_after_update")[0],
                    "the current token is missing from o: add the bonus term rᵀ diag(u) k vᵀ = (r·(u⊙k)) v":
                        _loop(r, k, v, w, u, S0, "no_bonus")[0],
                    "the bonus weights the current token per key channel: rᵀ diag(u) k vᵀ, not rᵀ k vᵀ":
                        _loop(r, k, v, w, u, S0, "bonus_without_u")[0],
                    "the outputs depend on the earlier updates: " + _UPDATE_HINTS["decay_new_token"]:
                        _loop(r, k, v, w, u, S0, "decay_new_token")[0],
                    "the outputs depend on the earlier updates: " + _UPDATE_HINTS["no_exp"]:
                        _loop(r, k, v, w, u, S0, "no_exp")[0],
                }, o_want))
        in_state = {"bonus_in_state": "the bonus u belongs to the output only: the state gets the plain k vᵀ"}
        mistakes = _distinct(_update_mistakes(r, k, v, w, u, S0, extra=in_state.items()), S_want)
        compare(case, S, S_want, tol=1e-5, name="final state", mistakes=mistakes,
                hint="S_new = diag(exp(w)) S + k vᵀ: the bonus u appears in the output only, never in the state")
    return len(_CASES)


# (leading shape, D, R, offset range): fast and slow channels, a single vector, a batch of sequences
_FINCH = [((), 6, 2, (-6.0, 1.0)), ((9,), 8, 3, (-8.0, 2.0)), ((2, 5), 16, 4, (-5.0, 3.0))]


def _finch_inputs(lead, D, R, lo_hi, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, D, generator=g)
    lam = torch.linspace(*lo_hi, D)
    A = 0.5 * torch.randn(D, R, generator=g)
    Bm = 0.5 * torch.randn(R, D, generator=g)
    return x, lam, A, Bm


@exercise("05.9", "Finch's data-dependent log decay", difficulty="easy", spec="""
    Write log_decay(x, lam, A, B) -> w: the log decay that Finch (RWKV-6) feeds to the WKV kernels.
    x is the (token-shifted) input [..., D] with any number of leading dimensions, lam the learned
    offset [D], A [D, R] and B [R, D] the low-rank map. With d = lam + tanh(x A) B the decay factor
    per token and channel is exp(-exp(d)), and the kernels take its log: return w = log of the
    factor, shape [..., D], every entry < 0. Offsets range from slow (d = -8) to fast (d = +3).""")
def _check_05_9(fn):
    for i, (lead, D, R, lo_hi) in enumerate(_FINCH):
        x, lam, A, Bm = _finch_inputs(lead, D, R, lo_hi, seed=90 + i)
        case = f"{i} (x {tuple(x.shape)}, R={R}, λ from {lo_hi[0]:g} to {lo_hi[1]:g})"
        got = call(fn, case, x, lam, A, Bm)
        x64, lam64, A64, B64 = (t.double() for t in (x, lam, A, Bm))
        d = lam64 + torch.tanh(x64 @ A64) @ B64                              # the model's parameter, "log-log"
        want = -torch.exp(d)
        compare(case, got, want, tol=1e-5, name="w", hint=(
            "d = lam + tanh(x @ A) @ B, then w = -exp(d): the log of the factor exp(-exp(d))"), mistakes=_distinct({
            "you returned the decay FACTOR exp(-exp(d)); the kernels take its log, w = -exp(d) ≤ 0":
                torch.exp(want),
            "you returned d, the model's parameter (the 'log-log' of the factor); the kernels take w = -exp(d)": d,
            "the sign is wrong: w = -exp(d) is negative for every d, so the memory can never grow": -want,
            "the low-rank map has a tanh between its two matrices: d = lam + tanh(x A) B":
                -torch.exp(lam64 + (x64 @ A64) @ B64),
            "w = -exp(d), not exp(-d)": torch.exp(-d),
        }, want))
    return len(_FINCH)
