"""Checkers for chapter 09 (what the delta rule buys: associative recall and state tracking)."""
from __future__ import annotations

import math

import torch

from .. import delta, wkv7
from . import call, compare, exercise


def _unit(x):
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# 09.7: a delta-rule memory, written and read by hand
# ---------------------------------------------------------------------------------------------
# (n pairs, K, V, m queries, lr, repeat a key?): one pair with eta = 0.5 (eta = 1 would hide a
# removal made after the write: both give an empty state); a key written twice; more pairs than
# dimensions with a small step; a large step (eta > 1). Queries: some written keys, some fresh directions
_RECALL_CASES = [(1, 4, 3, 2, 0.5, False), (6, 8, 5, 6, 1.0, True), (20, 8, 4, 20, 0.5, False),
                 (13, 16, 16, 7, 1.5, False)]


def _recall_inputs(n, K, V, m, repeat, seed):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, K, generator=g) * 3.0              # not unit: normalising is part of the job
    if repeat:
        keys[-1] = 0.5 * keys[1]                              # the same direction as key 1, another length
    values = torch.randn(n, V, generator=g)
    queries = torch.randn(m, K, generator=g) * 2.0            # some fresh directions, and
    h = min(m, n) // 2 + 1
    queries[:h] = keys[:h]                                     # some of the written keys
    return keys, values, queries


def _recall_mistake(keys, values, queries, lr, kind):
    """What a plausible wrong memory returns (float64 loop)."""
    kh, v = _unit(keys.double()), values.double()
    S = torch.zeros(kh.shape[-1], v.shape[-1], dtype=torch.float64)
    for i in range(kh.shape[0]):
        k_, v_ = kh[i:i + 1].T, v[i:i + 1]                    # [K, 1], [1, V]
        if kind == "additive":
            S = S + lr * k_ @ v_
        elif kind == "remove_after_write":                    # the removal reads the updated state
            S = S + lr * k_ @ v_
            S = S - lr * k_ @ (k_.T @ S)
        else:
            S = S - lr * k_ @ (k_.T @ S - v_)
    q = queries.double() if kind == "raw_queries" else _unit(queries.double())
    return q @ S


@exercise("09.7", "a delta-rule memory by hand", difficulty="easy", spec="""
    Write delta_recall(keys, values, queries, lr) -> reads [m, V]: write n key->value pairs into an
    empty state S [K, V] with the delta rule, then read it. keys [n, K], values [n, V], queries
    [m, K] (float32), lr the step size eta in (0, 2]. Keys and queries are L2-normalised first
    (k̂, q̂). The pairs are written in order, each by S <- S - eta k̂ (k̂ᵀ S - vᵀ): the removal
    reads the state as it was BEFORE this pair's write. The read-out of a query is Sᵀ q̂; return
    them stacked, [m, V]. The checker writes a key twice, more pairs than K, and eta in {0.5, 1, 1.5}.""")
def _check_09_7(fn):
    for i, (n, K, V, m, lr, repeat) in enumerate(_RECALL_CASES):
        keys, values, queries = _recall_inputs(n, K, V, m, repeat, seed=90 + i)
        case = f"{i} (n={n} pairs, K={K}, V={V}, m={m} queries, lr={lr:g}{', a key written twice' if repeat else ''})"
        got = call(fn, case, keys.clone(), values.clone(), queries.clone(), lr)
        want = delta.recall(keys.double(), values.double(), queries.double(), rule="delta", lr=lr)
        compare(case, got, want, tol=1e-5, name="reads", hint=(
            "for each pair in order: e = k̂ᵀ S (what S returns for the unit key), S <- S - eta k̂ (e - vᵀ); "
            "read with Sᵀ q̂ for unit queries"), mistakes={
            "that is an additive memory (S <- S + eta k̂ vᵀ): the delta rule first removes what S "
            "already returns for k̂, so a key written twice returns its newest value":
                _recall_mistake(keys, values, queries, lr, "additive"),
            "the removal must read the state BEFORE the write: e = k̂ᵀ S_{t-1}; removing after the write "
            "erases (part of) the new value": _recall_mistake(keys, values, queries, lr, "remove_after_write"),
            "normalise the queries too: the read-out is Sᵀ q̂ with ||q̂|| = 1":
                _recall_mistake(keys, values, queries, lr, "raw_queries"),
        })
    return len(_RECALL_CASES)


# ---------------------------------------------------------------------------------------------
# 09.8: a word of transpositions tracked by reflections of the state
# ---------------------------------------------------------------------------------------------
_SWAP_CASES = [(2, 1), (3, 7), (5, 40), (4, 25)]     # (n, word length)


def _perm_rows(perms):
    return torch.tensor(perms, dtype=torch.float64)


def _swap_mistake(word, n, kind):
    """Read-outs of plausible wrong trackers (float64)."""
    if kind == "inverse":
        # pi_t^{-1}: what S_t r reads, and also what S <- S G reads, since transpositions are their own
        # inverses: (sigma_t o ... o sigma_1)^{-1} = sigma_1 o ... o sigma_t
        inv = []
        for p in delta.compose(word, n):
            q = [0] * n
            for i, x in enumerate(p):
                q[x] = i
            inv.append(tuple(q))
        return _perm_rows(inv)
    S, r, out = torch.eye(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), []
    for i, j in word:
        kh = torch.zeros(n, dtype=torch.float64)
        kh[i], kh[j] = 1.0, -1.0
        if kind == "projection":                               # eta = 1: I - k̂ k̂ᵀ
            kh = kh / math.sqrt(2)
            G = torch.eye(n, dtype=torch.float64) - torch.outer(kh, kh)
        else:                                                  # "unnormalised": e_i - e_j without 1/sqrt(2)
            G = torch.eye(n, dtype=torch.float64) - 2 * torch.outer(kh, kh)
        S = G @ S
        out.append(S.T @ r)
    return torch.stack(out)


@exercise("09.8", "a word of swaps tracked by reflections", difficulty="medium", spec="""
    Write swap_readout(word, n) -> o [T, n]: the construction of section 3. word is a list of T
    transpositions (i, j) of 0..n-1. Start from S_0 = I (n x n); letter t is one RWKV-7 token
    with w = 0, k = v = 0, a = -k̂, b = 2 k̂ and k̂ = (e_i - e_j)/sqrt(2), so
    S_t = (I - 2 k̂ k̂ᵀ) S_{t-1}. Read with the fixed key r = (0, 1, ..., n-1): o_t = S_tᵀ r.
    Return the read-outs, unrounded, stacked over time: [T, n] floats. Row t must be the
    permutation pi_t = sigma_t o ... o sigma_1 in one-line form. Use rwkvlab.wkv7 (naive or
    step, initial_state = I) or write the update yourself.""")
def _check_09_8(fn):
    for i, (n, T) in enumerate(_SWAP_CASES):
        word = delta.random_word(n, T, torch.Generator().manual_seed(980 + i))
        case = f"{i} (S_{n}, word of {T} swaps, first letters {word[:3]})"
        got = call(fn, case, list(word), n)
        want = _perm_rows(delta.compose(word, n))
        compare(case, got, want, tol=1e-5, name="o", hint=(
            "each token applies G = I - 2 k̂ k̂ᵀ from the LEFT to the state (S_t = G_t S_{t-1}, S_0 = I); "
            "read o_t = S_tᵀ r with r = (0, 1, ..., n-1)"), mistakes={
            "you got the inverse permutations pi_t^{-1}: either the read-out is S_t r instead of S_tᵀ r, or "
            "the reflections multiply from the right (S_{t-1} G_t, the letters composed in the other order); "
            "RWKV-7 does S_t = G_t S_{t-1} and reads S_tᵀ r": _swap_mistake(word, n, "inverse"),
            "b = k̂ (eta = 1) gives the projection I - k̂ k̂ᵀ, which averages x_i and x_j; a swap needs "
            "the reflection, b = 2 k̂": _swap_mistake(word, n, "projection"),
            "k̂ must be a unit vector: (e_i - e_j)/sqrt(2); without the 1/sqrt(2) the transition has "
            "eigenvalue -3 and the state blows up": _swap_mistake(word, n, "unnormalised"),
        })
    return len(_SWAP_CASES)


# ---------------------------------------------------------------------------------------------
# 09.9: parity with one channel
# ---------------------------------------------------------------------------------------------
_PARITY_CASES = [(1, 1), (2, 9), (3, 64), (1, 31)]        # (B, T)
_ARG_NAMES = ("r", "w", "k", "v", "a", "b")


def _parity_mistake(bits, kind):
    x = bits.double()
    count = x.cumsum(1)
    if kind == "projection":                                   # b = bit, a = -1: G = 0 on a 1
        return (count == 0).double()
    if kind == "wrong_sign":                                   # a = +1, b = 2 bit: G = 3 on a 1
        return 3.0 ** count
    return 1.0 + count                                         # "write": the 1s added into the state


def _run_parity_args(args, bits, case):
    B, T = bits.shape
    if not isinstance(args, dict) or set(args) != set(_ARG_NAMES):
        raise AssertionError(f"case {case}: expected a dict with the keys {_ARG_NAMES}, "
                             f"got {sorted(args) if isinstance(args, dict) else type(args).__name__}")
    for name in _ARG_NAMES:
        x = args[name]
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != (B, T, 1, 1):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise AssertionError(f"case {case}: {name} must be a [B, T, 1, 1] = {(B, T, 1, 1)} tensor, got {shape}")
    if (args["r"].double() != args["r"].double()[:, :1]).any():
        raise AssertionError(f"case {case}: r must be the same at every token (the read-out may not count for you)")
    if (args["k"] != 0).any() or (args["v"] != 0).any():
        raise AssertionError(f"case {case}: k and v must be zero: nothing is written, only the transition acts")
    flat = bits.reshape(-1)
    for name in ("w", "a", "b"):                               # a token's arguments depend on its own bit only
        x = args[name].double().reshape(-1)
        for bit in (0, 1):
            sel = x[flat == bit]
            if sel.numel() and (sel != sel[0]).any():
                raise AssertionError(f"case {case}: {name} must depend only on the token's own bit; "
                                     f"tokens with bit {bit} got different values")
    try:
        o, _ = wkv7.naive(*(args[n].double() for n in _ARG_NAMES),
                          initial_state=torch.ones(B, 1, 1, 1, dtype=torch.float64))
    except ValueError as e:
        raise AssertionError(f"case {case}: wkv7.naive rejected your arguments: {e}") from e
    return o[:, :, 0, 0]


@exercise("09.9", "parity with one channel", difficulty="easy", spec="""
    Write parity_args(bits) -> dict(r=, w=, k=, v=, a=, b=): rwkvlab.wkv7 arguments with one head
    and K = V = 1, each a [B, T, 1, 1] float tensor, for which wkv7.naive(r, w, k, v, a, b,
    initial_state=ones(B, 1, 1, 1)) outputs o_t = (-1)^(number of 1s in bits[:, :t+1]). bits is
    a [B, T] long tensor of 0s and 1s. Rules: r is the same at every token, k = v = 0 (no writes:
    only the transition G_t = e^{w_t} + b_t a_t acts), w <= 0, and each token's w, a, b depend only
    on its own bit.""")
def _check_09_9(fn):
    for i, (B, T) in enumerate(_PARITY_CASES):
        bits = torch.randint(0, 2, (B, T), generator=torch.Generator().manual_seed(990 + i))
        if i == 0:
            bits.fill_(1)
        case = f"{i} (B={B}, T={T}, first bits {bits[0, :6].tolist()})"
        args = call(fn, case, bits.clone())
        got = _run_parity_args(args, bits, case)
        want = (-1.0) ** bits.double().cumsum(1)
        compare(case, got, want, tol=1e-12, name="o", hint=(
            "a 1 must multiply the state by -1 and a 0 by +1: G = e^w + b a, with w = 0, a = -1 and "
            "b = 2 for a 1 (b = 0 for a 0), r = 1"), mistakes={
            "with b = 1 a 1-bit gives G = 1 - 1 = 0 and erases the state: the flip needs b a = -2 (eta = 2, "
            "outside the released iclr range)": _parity_mistake(bits, "projection"),
            "check the sign: G = e^w + b a must be -1 for a 1-bit; with b a = +2 it is 3":
                _parity_mistake(bits, "wrong_sign"),
            "the state counts the 1s: that is an additive write; parity needs the transition to flip the sign":
                _parity_mistake(bits, "write"),
        })
    return len(_PARITY_CASES)
