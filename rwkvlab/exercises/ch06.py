"""Checkers for chapter 06 (the chunked form of RWKV-6).

The exercises work on one chunk per head, laid out ``[B, H, C, ·]`` (tokens along dim -2), the
layout inside ``wkv6.chunked``; the checkers cut chunks out of sequences in the book's
``[B, T, H, ·]`` layout and compare with ``wkv6.naive`` (or a loop of their own) in float64.
"""
from __future__ import annotations

import math

import torch

from .. import wkv6
from . import call, close, compare, exercise


def _distinct(mistakes, want):
    """Drop the mistakes that a case cannot tell from the right answer (e.g. a decay error when T = 1)."""
    return {text: wrong for text, wrong in mistakes.items() if not close(wrong, want, 1e-3)}

_OVERFLOW = ("if you see NaN or Inf: some exponent you evaluated was positive and overflowed (e^{-c_j} alone, "
             "or an entry above the diagonal masked only after the exp); form the difference of cumulative "
             "log decays first, mask it to -inf where it is not needed, and only then exponentiate")


def _tol(C, decay):
    """1e-5, or 5e-5 where the cumulative log decay inside a chunk reaches hundreds: a float32 sum of that
    size is off by ~1e-5 in absolute terms, and so is every exponent formed from it."""
    return 5e-5 if C * decay > 20 else 1e-5


def _heads_first(*xs):
    """[B, T, H, ·] -> [B, H, T, ·]"""
    return [x.transpose(1, 2) for x in xs]


# ---------------------------------------------------------------------------------------------
# 06.7  the intra-chunk decay matrix
# ---------------------------------------------------------------------------------------------
# (leading shape, C, K, decay scale): odd C, C = 1, slow decay, and a decay strong enough that
# e^{-c} overflows float32 (C·|w| ≫ 88.7)
_PAIR = [((2,), 7, 4, 1.0), ((), 1, 4, 1.0), ((1, 2), 16, 8, 0.02), ((2,), 16, 4, 8.0)]


def _pair_inputs(lead, C, K, decay, seed):
    g = torch.Generator().manual_seed(seed)
    w = -decay * torch.exp(torch.randn(*lead, C, K, generator=g))
    G = torch.randn(*lead, C, C, K, generator=g, dtype=torch.float64)       # weights of the loss for the gradient
    return w, G


def _pair_loop(w, kind="right"):
    """D[..., i, j, :] from the sums of log decays strictly between j and i, by a loop over (i, j)."""
    C = w.shape[-2]
    rows = []
    for i in range(C):
        row = []
        for j in range(C):
            if kind == "transposed":
                i_, j_ = j, i
            else:
                i_, j_ = i, j
            lo, hi = {"right": (j_ + 1, i_), "transposed": (j_ + 1, i_), "query_decay": (j_ + 1, i_ + 1),
                      "key_decay": (j_, i_), "diagonal": (j_ + 1, i_)}[kind]
            keep = j_ < i_ or (kind == "diagonal" and j_ == i_)
            if not keep:
                row.append(torch.zeros_like(w[..., 0, :]))
            elif kind == "diagonal" and j_ == i_:
                row.append(torch.exp(-w[..., i_, :]))                         # c_{i-1} - c_i = -w_i
            else:
                row.append(torch.exp(w[..., lo:hi, :].sum(-2)))
        rows.append(torch.stack(row, -2))
    return torch.stack(rows, -3)


@exercise("06.7", "the intra-chunk decay matrix, masked before the exp", difficulty="medium", spec="""
    Write pairwise_decay(w) -> D for one chunk: w is the log decay [..., C, K] (any leading
    dimensions, e.g. [B, H]; tokens along dim -2, w ≤ 0, float32). With c_i = w_0 + … + w_i the
    inclusive cumulative log decay inside the chunk, return D [..., C, C, K] with
    D[..., i, j, :] = exp(c_{i-1} − c_j) = exp(c_i − w_i − c_j) for j < i (what is left of token
    j's write when token i reads) and 0 for j ≥ i (the diagonal belongs to the bonus). Every
    exponent you evaluate must be ≤ 0: the checker uses decays with C·|w| far beyond 88.7, where
    e^{−c_j} overflows float32, and it also differentiates your D with respect to w, so an inf in
    an entry you throw away afterwards still shows up (as NaN in the gradient).""")
def _check_06_7(fn):
    for i, (lead, C, K, decay) in enumerate(_PAIR):
        w, G = _pair_inputs(lead, C, K, decay, seed=70 + i)
        spread = C * decay * math.e ** 0.5                                  # C · E|w|
        case = f"{i} (w {tuple(w.shape)}, log decay ~ -{decay:g}·e^N(0,1), C·mean|w| ≈ {spread:.3g})"
        tol = _tol(C, decay)
        w_in = w.clone().requires_grad_()
        got = call(fn, case, w_in)
        w64 = w.double().requires_grad_()
        want = _pair_loop(w64)
        hint = ("D = exp(masked (c - w)[..., :, None, :] - c[..., None, :, :]) with c = w.cumsum(-2) and the mask "
                "j < i (strictly) applied as -inf BEFORE the exp. " + _OVERFLOW)
        compare(case, got, want.detach(), tol=tol, name="D", hint=hint, mistakes=_distinct({
            "the diagonal must be 0: the mask is STRICTLY lower (j < i); token i's own write reaches its output "
            "through the bonus u, not through the decay matrix": _pair_loop(w.double(), "diagonal"),
            "off by one: token i reads the state BEFORE its own decay is applied, so the exponent is "
            "c_{i-1} − c_j = c_i − w_i − c_j, not c_i − c_j": _pair_loop(w.double(), "query_decay"),
            "off by one: token j's own decay never touches its own write, so the exponent is c_{i-1} − c_j "
            "(c inclusive), not c_{i-1} − c_{j-1}": _pair_loop(w.double(), "key_decay"),
            "rows are the reading token i, columns the written token j: D is lower triangular, you built its "
            "transpose": _pair_loop(w.double(), "transposed"),
        }, want.detach()))
        if C == 1:                                     # D is all zeros: nothing to differentiate
            continue
        if not got.requires_grad:
            raise AssertionError(f"case {case}: D does not depend on w for autograd; build it from w with torch "
                                 "operations (no .detach(), no numpy)")
        (g_got,) = torch.autograd.grad((got.double() * G).sum(), w_in, allow_unused=True)
        (g_want,) = torch.autograd.grad((want * G).sum(), w64)
        if g_got is None:
            raise AssertionError(f"case {case}: D does not depend on w for autograd")
        compare(case, g_got, g_want, tol=tol, name="gradient of Σ G·D with respect to w", hint=_OVERFLOW)
    return len(_PAIR)


# ---------------------------------------------------------------------------------------------
# 06.8  the inter-chunk hand-off
# ---------------------------------------------------------------------------------------------
# (B, H, n_chunks, C, K, V, decay scale): slow decay over many chunks (first: there every mistake
# shows as itself), odd C with K ≠ V, C = 1, strong decay (e^{-c} overflows float32)
_HAND = [(1, 2, 12, 8, 8, 8, 0.02), (2, 2, 3, 5, 4, 6, 1.0), (1, 1, 1, 1, 4, 4, 1.0), (1, 1, 4, 16, 4, 4, 8.0)]


def _hand_off64(S, k, v, w, kind="right"):
    """One chunk's hand-off in float64, [B, H, C, ·] inputs, with one mistake made on purpose."""
    c = w.cumsum(-2)
    c_last = c[..., -1:, :]                                                # [B, H, 1, K]
    if kind == "exclusive":                    # c counted without the token itself: c - w
        c, c_last = c - w, c_last - w[..., -1:, :]
    key_exp = {"right": c_last - c, "exclusive": c_last - c, "own_decay": c_last - c + w,
               "keys_not_decayed": torch.zeros_like(c), "state_not_decayed": c_last - c,
               "decay_v_axis": c_last - c}[kind]
    dS = ((k * torch.exp(key_exp))[..., :, :, None] * v[..., :, None, :]).sum(-3)   # [B, H, K, V]
    if kind == "state_not_decayed":
        return S + dS
    if kind == "decay_v_axis":                 # needs K == V
        return torch.exp(c_last) * S + dS
    return torch.exp(c_last).transpose(-1, -2) * S + dS


@exercise("06.8", "the inter-chunk hand-off", difficulty="medium", spec="""
    Write hand_off(S, k, v, w) -> S_new: the state after one chunk of C tokens, given the state S
    [B, H, K, V] at the chunk's start. k and w are [B, H, C, K], v is [B, H, C, V] (one chunk per
    head, tokens along dim -2; float32, w ≤ 0 the log decay). With c the inclusive cumulative log
    decay in the chunk (c_i = w_0 + … + w_i) and c_last = c_{C-1}:
    S_new = diag(exp(c_last)) S + (k ⊙ exp(c_last − c))ᵀ v. The checker chains your hand-off over
    many chunks (slow decay, so the start state and every chunk still count at the end; and strong
    decay, so e^{−c} alone overflows) and compares the final state with wkv6.naive in float64.""")
def _check_06_8(fn):
    for i, (B, H, n, C, K, V, decay) in enumerate(_HAND):
        r, k, v, w, u = wkv6.random_inputs(B, n * C, H, K, V, seed=60 + i, decay=decay)
        S0 = torch.randn(B, H, K, V, generator=torch.Generator().manual_seed(160 + i))
        case = f"{i} (B={B}, H={H}, {n} chunks of C={C}, K={K}, V={V}, log decay ~ -{decay:g}·e^N(0,1))"
        kh, vh, wh = _heads_first(k, v, w)
        S = S0
        for m in range(n):
            sl = slice(m * C, (m + 1) * C)
            S = call(fn, case, S, kh[:, :, sl].contiguous(), vh[:, :, sl].contiguous(), wh[:, :, sl].contiguous())
            if not isinstance(S, torch.Tensor) or tuple(S.shape) != (B, H, K, V):
                compare(f"{case}, chunk {m}", S, S0, name="S_new", hint="S_new has the shape of S, [B, H, K, V]")
        want = wkv6.naive(*(x.double() for x in (r, k, v, w, u)), initial_state=S0.double(), output_final_state=True)[1]
        mistakes = {}
        for kind, text in (
                ("own_decay", "off by one: token j's write is decayed only by the LATER tokens j+1 … C−1 of the "
                              "chunk, so its factor is e^{c_last − c_j} with c inclusive, "
                              "not e^{c_last − c_j + w_j}"),
                ("exclusive", "off by one: c must be the INCLUSIVE cumulative sum (c_i includes w_i), so the "
                              "start state decays by every token of the chunk, the last one included: e^{c_last}"),
                ("state_not_decayed", "the chunk-start state decays across the whole chunk: diag(e^{c_last}) S"),
                ("keys_not_decayed", "each token's write must be decayed to the END of the chunk: "
                                     "k ⊙ e^{c_last − c}"),
                ("decay_v_axis", "the decay acts on the key rows of S (dim -2): e^{c_last} has K entries; "
                                 "you decayed the value columns")):
            if kind == "decay_v_axis" and K != V:
                continue
            S_bad = S0.double()
            for m in range(n):
                sl = slice(m * C, (m + 1) * C)
                S_bad = _hand_off64(S_bad, kh[:, :, sl].double(), vh[:, :, sl].double(), wh[:, :, sl].double(), kind)
            mistakes[text] = S_bad
        compare(case, S, want, tol=_tol(C, decay), name="final state (after the last chunk)",
                mistakes=_distinct(mistakes, want), hint=(
            "c = w.cumsum(-2); c_last = c[..., -1:, :]; S_new = exp(c_last).transpose(-1, -2) * S + "
            "(k * exp(c_last - c)).transpose(-1, -2) @ v. " + _OVERFLOW))
    return len(_HAND)


# ---------------------------------------------------------------------------------------------
# 06.9  one chunk's output from its start state
# ---------------------------------------------------------------------------------------------
# (B, H, C, K, V, chunk index, decay scale): odd C with K ≠ V, C = 1, a late chunk under slow
# decay (the state carries a lot), strong decay (e^{-c} overflows float32)
_OUT = [(2, 2, 5, 4, 6, 2, 1.0), (1, 1, 1, 4, 4, 3, 1.0), (1, 2, 8, 8, 8, 6, 0.02), (1, 1, 16, 4, 4, 2, 8.0)]


def _chunk_out64(r, k, v, w, u, S, kind="right"):
    """One chunk's output in float64, [B, H, C, ·] inputs, with one mistake made on purpose."""
    C = r.shape[-2]
    c = w.cumsum(-2)
    q_exp = c if kind == "query_decay" else c - w              # the reading token's side of the exponent
    r_dec = r * torch.exp(c if kind == "inter_own_decay" else q_exp)
    inter = 0 if kind == "no_state" else (r_dec[..., :, :, None] * S[..., None, :, :]).sum(-2)
    e = q_exp[..., :, None, :] - c[..., None, :, :]
    i, j = torch.arange(C)[:, None], torch.arange(C)[None, :]
    mask = (j <= i) if kind == "diagonal" else (j < i)      # (comparisons, not tril: tril is slow on a busy CPU)
    D = e.masked_fill(~mask[:, :, None], -math.inf).exp()
    P = (r[..., :, None, :] * k[..., None, :, :] * D).sum(-1)                # [B, H, C, C]
    uu = {"no_bonus": 0.0, "bonus_without_u": 1.0}.get(kind, u[None, :, None, :])
    bonus = (r * uu * k).sum(-1)
    # elementwise sums rather than matmuls: tiny batched matmuls are slow on a busy multi-threaded CPU
    return inter + ((P + torch.diag_embed(bonus))[..., :, :, None] * v[..., None, :, :]).sum(-2)


@exercise("06.9", "one chunk's output from its start state", difficulty="hard", spec="""
    Write chunk_output(r, k, v, w, u, S) -> O: the outputs of one chunk of C tokens, all at once
    (no loop over tokens), given the state S [B, H, K, V] handed over by the earlier chunks. r, k,
    w are [B, H, C, K], v is [B, H, C, V], u (the bonus) is [H, K]; float32, w ≤ 0. With c the
    inclusive cumulative log decay in the chunk: O = (r ⊙ e^{c−w}) S + (P ⊙ M) v + diag((r ⊙ k) u) v,
    where P_ij = Σ_κ r_iκ k_jκ e^{c_iκ − w_iκ − c_jκ} and M is the strictly lower mask (j < i).
    Return O [B, H, C, V]. The checker takes a chunk from the middle of a sequence, S from the
    token loop, and compares O with wkv6.naive in float64, slow and strong decays included (C·|w|
    far beyond 88.7, where e^{−c_j} overflows float32).""")
def _check_06_9(fn):
    for i, (B, H, C, K, V, n, decay) in enumerate(_OUT):
        T = (n + 1) * C
        r, k, v, w, u = wkv6.random_inputs(B, T, H, K, V, seed=90 + i, decay=decay)
        S = wkv6.naive(*(x[:, :n * C].double() for x in (r, k, v, w)), u.double(), output_final_state=True)[1]
        o_all = wkv6.naive(*(x.double() for x in (r, k, v, w, u)))[0]
        want = o_all[:, n * C:].transpose(1, 2)                                    # [B, H, C, V]
        sl = slice(n * C, T)
        rh, kh, vh, wh = (x[:, :, sl].contiguous() for x in _heads_first(r, k, v, w))
        case = f"{i} (B={B}, H={H}, chunk {n} of C={C}, K={K}, V={V}, log decay ~ -{decay:g}·e^N(0,1))"
        got = call(fn, case, rh, kh, vh, wh, u, S.float())
        x64 = [x.double() for x in (rh, kh, vh, wh, u, S)]
        mistakes = {
            "off by one in the inter-chunk term: token i reads the state BEFORE its own decay, so the start "
            "state reaches it through e^{c_i − w_i} = e^{c_{i-1}}, not e^{c_i}":
                _chunk_out64(*x64, "inter_own_decay"),
            "off by one: token i reads before its own decay, so both the state and the earlier tokens reach it "
            "through e^{c_i − w_i − …}, not e^{c_i − …}": _chunk_out64(*x64, "query_decay"),
            "the mask is STRICTLY lower (j < i): the current token enters once, through the bonus u, "
            "not also through P": _chunk_out64(*x64, "diagonal"),
            "the current token is missing: add the bonus diagonal diag((r ⊙ k) u) v": _chunk_out64(*x64, "no_bonus"),
            "the bonus weights each key channel by u: Σ_κ r_iκ u_κ k_iκ, not r_i · k_i":
                _chunk_out64(*x64, "bonus_without_u"),
            "the earlier chunks are missing: add the inter-chunk read-out (r ⊙ e^{c−w}) S":
                _chunk_out64(*x64, "no_state"),
        }
        compare(case, got, want, tol=_tol(C, decay), name="O", mistakes=_distinct(mistakes, want), hint=(
            "three pieces: (r ⊙ e^{c−w}) @ S, the intra-chunk scores with the pairwise decay "
            "e^{c_i − w_i − c_j} "
            "masked to j < i, and the bonus diagonal. " + _OVERFLOW))
    return len(_OUT)
