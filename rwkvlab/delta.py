"""The delta rule: the experiments and hand-made constructions of chapters 08 and 09.

Nothing here evolves a state by itself: every state update goes through :mod:`rwkvlab.wkv7`
(its ``naive`` scan or its ``step``). This module only *chooses the arguments* ``w, k, v, a, b``
that turn RWKV-7's update into something recognisable, and reads the result back.

RWKV-7's update per head, state ``S`` in K×V layout (rows are key channels)::

    S_t = diag(exp(w_t)) S_{t-1} + b_t (a_tᵀ S_{t-1}) + k_t v_tᵀ,      o_t = scale · S_tᵀ r_t
        = G_t S_{t-1} + k_t v_tᵀ,        G_t = diag(exp(w_t)) + b_t a_tᵀ   (the transition)

Four readings of it live here:

* **one SGD step** (:func:`loss`, :func:`sgd_as_wkv7`): with ``a = −k̂``, ``b = η ⊙ k̂`` and the
  written key ``η ⊙ k̂``, the update is ``S − diag(η) ∇_S L`` for ``L = ½‖Sᵀk̂ − v‖²`` (plus decay);
* **the released parameterisation** (:func:`released_transitions`, :func:`transition`,
  :func:`eigenvalue_bounds`): ``w = −e^{−0.5} σ(d)``, ``a = −k̂``, ``b = k̂ ⊙ iclr``, iclr ∈ (0, 1);
  every eigenvalue of ``G`` is real and inside ``[min e^w − ‖z‖², max e^w]``, ``z = √iclr ⊙ k̂``;
* **associative memory** (:func:`write`, :func:`read`, :func:`recall`, :func:`retrieval_error`):
  the additive rule ``S += k̂ vᵀ`` (RWKV-6 without decay) against the delta rule with ``η = 1``;
* **state tracking** (:func:`reflection_args`, :func:`track`, :func:`compose`,
  :func:`diagonal_track`): a transposition ``(i j)`` is the reflection ``I − 2k̂k̂ᵀ`` with
  ``k̂ = (e_i − e_j)/√2`` (``a = −k̂``, ``b = 2k̂``, ``w = 0``), so a word of transpositions run
  from ``S_0 = I`` leaves the permutation matrix of its product in the state;
  :func:`basis_prefix_args` shows how a model that starts from ``S_0 = 0`` gets there;
* **the ablation** (:func:`without_removal`, :func:`removal_ablation_run`): an RWKV-7 model
  with the removal term ``b (aᵀS)`` switched off (``a = b = 0``) and everything else unchanged,
  so the transition becomes diagonal at the same state size — chapter 14's experiment.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import validate, wkv7

__all__ = [
    "loss", "sgd_as_wkv7",
    "transition", "released_transitions", "eigenvalue_bounds",
    "write", "read", "recall", "retrieval_error",
    "check_permutation", "check_word", "decompose", "compose", "random_word",
    "reflection_args", "basis_prefix_args", "track", "diagonal_track",
    "without_removal", "removal_ablation_run",
]

RELEASED_DECAY_BOUND = math.exp(-0.5)   # RWKV-7: log decay w = −e^{−0.5}·σ(d) ∈ (−e^{−0.5}, 0)


# ---------------------------------------------------------------------------------------------
# the delta rule as one step of gradient descent
# ---------------------------------------------------------------------------------------------

def loss(S: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The regression loss the delta rule descends: ``L = ½‖Sᵀk − v‖²``.

    S: [..., K, V] (the state as a linear map that should send the key k to the value v);
    k: [..., K]; v: [..., V]. Returns [...] (one loss per leading index).
    Its gradient is ``∇_S L = k (Sᵀk − v)ᵀ``, a rank-1 K×V matrix.
    """
    validate.tensor("S", S)
    validate.tensor("k", k)
    validate.tensor("v", v)
    if S.ndim < 2 or S.shape[:-2] != k.shape[:-1] or S.shape[-2] != k.shape[-1]:
        raise ValueError(f"k: expected shape {tuple(S.shape[:-1])} to match S {tuple(S.shape)} (..., K, V), "
                         f"got {tuple(k.shape)}")
    if S.shape[:-2] != v.shape[:-1] or S.shape[-1] != v.shape[-1]:
        raise ValueError(f"v: expected shape {tuple(S.shape[:-2]) + (S.shape[-1],)} to match S, got {tuple(v.shape)}")
    pred = torch.einsum("...kv,...k->...v", S, k)                 # Sᵀk: what the map currently returns for k
    return 0.5 * ((pred - v) ** 2).sum(-1)


def _unit(k: torch.Tensor) -> torch.Tensor:
    return k / torch.linalg.vector_norm(k, dim=-1, keepdim=True)


def sgd_as_wkv7(k: torch.Tensor, v: torch.Tensor, lr, log_decay: torch.Tensor | None = None,
                normalize: bool = True) -> dict[str, torch.Tensor]:
    """The ``wkv7`` arguments that make RWKV-7's update one gradient step on :func:`loss`.

    k: [B, T, H, K] keys, v: [B, T, H, V] values; lr: a positive number or a tensor that
    broadcasts to k (one learning rate per token, head, or key channel); log_decay: optional
    [B, T, H, K] log decay (≤ 0), zeros (no decay) by default. With ``k̂ = k/‖k‖`` (or k itself
    when ``normalize=False``) it returns ``dict(w=, k=, v=, a=, b=)`` with

        a = −k̂,   b = η ⊙ k̂,   k̃ = η ⊙ k̂   (the written key),

    so that ``wkv7`` computes ``S_t = diag(e^w) S − (η ⊙ k̂)(k̂ᵀS − vᵀ) = diag(e^w) S − diag(η) ∇_S L``
    with ``∇_S L = k̂ (Sᵀk̂ − v)ᵀ``: one step of (per-key-channel) gradient descent, decay added.
    """
    validate.tensor("k", k, ndim=4)
    validate.tensor("v", v, ndim=4)
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v: expected shape (B, T, H, V) with (B, T, H) = {tuple(k.shape[:3])} from k, got {tuple(v.shape)}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float, torch.Tensor)):
        raise ValueError(f"lr: expected a positive number or tensor, got {type(lr).__name__}")
    if isinstance(lr, torch.Tensor):
        validate.tensor("lr", lr)
        try:
            torch.broadcast_shapes(lr.shape, k.shape)
        except RuntimeError:
            raise ValueError(f"lr: shape {tuple(lr.shape)} does not broadcast to k {tuple(k.shape)}") from None
    if (torch.as_tensor(lr) <= 0).any():
        raise ValueError("lr: expected a positive learning rate")
    if normalize and (torch.linalg.vector_norm(k, dim=-1) == 0).any():
        raise ValueError("k: a zero key cannot be L2-normalised")
    if log_decay is None:
        log_decay = torch.zeros_like(k)
    else:
        validate.tensor("log_decay", log_decay, ndim=4)
        validate.same_shape("log_decay", log_decay, tuple(k.shape), "k")
        if (log_decay > 0).any():
            raise ValueError("log_decay: must be <= 0 (a decay factor exp(log_decay) in (0, 1])")
    kh = _unit(k) if normalize else k
    step = lr * kh                                                # η ⊙ k̂: both the gate b and the written key
    return dict(w=log_decay, k=step, v=v, a=-kh, b=step)


# ---------------------------------------------------------------------------------------------
# the transition matrix and its eigenvalues
# ---------------------------------------------------------------------------------------------

def transition(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The matrix ``G = diag(exp(w)) + b aᵀ`` that RWKV-7 applies to the state from the left.

    w, a, b: [..., K]. Returns [..., K, K]; ``S_t = G_t S_{t−1} + k_t v_tᵀ``.
    """
    for name, x in (("w", w), ("a", a), ("b", b)):
        validate.tensor(name, x)
    if not (w.shape == a.shape == b.shape) or w.ndim < 1:
        raise ValueError(f"a, b: expected the shape of w {tuple(w.shape)}, got {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.diag_embed(torch.exp(w)) + b[..., :, None] * a[..., None, :]


def released_transitions(count: int, K: int, generator: torch.Generator | None = None,
                         dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``(w, k̂, iclr)`` as the released RWKV-7 models parameterise them.

    w = −e^{−0.5}·σ(d) (log decay, so e^w ∈ (0.545, 1)), k̂ a unit removal key, iclr = σ(·) ∈ (0, 1);
    the raw d and the iclr logits are drawn wide (N(0, 3²)) so that both ends of each range show up.
    Each is [count, K]; the kernel's arguments are ``a = −k̂``, ``b = k̂ ⊙ iclr``.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count: expected a positive int, got {count!r}")
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K: expected a positive int, got {K!r}")
    g = generator
    w = -RELEASED_DECAY_BOUND * torch.sigmoid(3 * torch.randn(count, K, generator=g, dtype=dtype))
    kk = _unit(torch.randn(count, K, generator=g, dtype=dtype))
    iclr = torch.sigmoid(3 * torch.randn(count, K, generator=g, dtype=dtype))
    return w, kk, iclr


def eigenvalue_bounds(w: torch.Tensor, kk: torch.Tensor, iclr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The interval that holds every eigenvalue of ``G = diag(e^w) − (iclr ⊙ k̂) k̂ᵀ``.

    w, kk, iclr: [..., K] with w ≤ 0, ‖k̂‖ = 1 and iclr ∈ (0, 1). Returns ``(lo, hi)``, each [...]:

        lo = min e^w − ‖z‖²,   hi = max e^w,   z = √iclr ⊙ k̂ (so ‖z‖² < 1).

    Why: ``diag(iclr)^{−1/2} G diag(iclr)^{1/2} = diag(e^w) − z zᵀ`` is symmetric, so the
    eigenvalues are real; subtracting the PSD rank-1 ``z zᵀ`` (largest eigenvalue ‖z‖²) moves
    each eigenvalue of ``diag(e^w)`` down by at most ‖z‖² (Weyl), never up.
    """
    for name, x in (("w", w), ("kk", kk), ("iclr", iclr)):
        validate.tensor(name, x)
    if not (w.shape == kk.shape == iclr.shape):
        raise ValueError(f"kk, iclr: expected the shape of w {tuple(w.shape)}, got {tuple(kk.shape)} and {tuple(iclr.shape)}")
    if (w > 0).any():
        raise ValueError("w: is a log decay and must be <= 0")
    if ((torch.linalg.vector_norm(kk.double(), dim=-1) - 1).abs() > 1e-6).any():
        raise ValueError("kk: expected unit (L2-normalised) removal keys")
    if ((iclr <= 0) | (iclr >= 1)).any():
        raise ValueError("iclr: expected values in the open interval (0, 1)")
    z2 = (iclr * kk * kk).sum(-1)
    ew = torch.exp(w)
    return ew.amin(-1) - z2, ew.amax(-1)


# ---------------------------------------------------------------------------------------------
# associative memory: write key→value pairs, read them back
# ---------------------------------------------------------------------------------------------

RULES = ("additive", "delta")


def _pairs(keys, values):
    validate.tensor("keys", keys)
    validate.tensor("values", values)
    if keys.ndim not in (2, 3):
        raise ValueError(f"keys: expected [n, K] or [B, n, K], got shape {tuple(keys.shape)}")
    if values.ndim != keys.ndim or values.shape[:-1] != keys.shape[:-1]:
        raise ValueError(f"values: expected shape {tuple(keys.shape[:-1])} + (V,) to match keys, got {tuple(values.shape)}")
    if (torch.linalg.vector_norm(keys, dim=-1) == 0).any():
        raise ValueError("keys: a zero key cannot be L2-normalised")
    batched = keys.ndim == 3
    return (keys if batched else keys[None]), (values if batched else values[None]), batched


def write(keys: torch.Tensor, values: torch.Tensor, rule: str = "delta", lr: float = 1.0) -> torch.Tensor:
    """Write ``n`` key→value pairs into an empty state with ``rwkvlab.wkv7`` and return the state.

    keys: [n, K] or [B, n, K] (L2-normalised here: k̂); values: [n, V] or [B, n, V].
    Returns S: [K, V] (or [B, K, V]), float32 (float64 for float64 input). No decay (w = 0).

    * ``"additive"`` (RWKV-6 style, a = b = 0):        S ← S + k̂ vᵀ
    * ``"delta"`` (RWKV-7 style, a = −k̂, b = η k̂):   S ← (I − η k̂k̂ᵀ) S + η k̂ vᵀ
      (with η = ``lr`` = 1 the new pair replaces whatever the state returned for k̂).
    """
    if rule not in RULES:
        raise ValueError(f"rule: expected one of {RULES}, got {rule!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 2:
        raise ValueError(f"lr: expected a number in (0, 2], got {lr!r}")
    ks, vs, batched = _pairs(keys, values)
    kh = _unit(ks)[:, :, None, :]                                # [B, n, 1, K]: one head
    v4 = vs[:, :, None, :]
    if rule == "additive":
        zeros = torch.zeros_like(kh)
        args = dict(w=zeros, k=kh, v=v4, a=zeros, b=zeros)
    else:
        args = sgd_as_wkv7(kh, v4, float(lr))
    B, n, _, K = kh.shape
    r = torch.zeros_like(kh)                                     # nothing is read while writing
    _, S = wkv7.naive(r, args["w"], args["k"], args["v"], args["a"], args["b"], output_final_state=True)
    S = S[:, 0]                                                  # [B, K, V]: the single head
    return S if batched else S[0]


def read(S: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Read values back: ``Sᵀ q̂`` for each query (L2-normalised, like the written keys).

    S: [K, V] or [B, K, V]; queries: [m, K] or [B, m, K]. Returns [m, V] or [B, m, V].
    """
    validate.tensor("S", S)
    validate.tensor("queries", queries)
    if S.ndim not in (2, 3) or queries.ndim != S.ndim or queries.shape[-1] != S.shape[-2] \
            or queries.shape[:-2] != S.shape[:-2]:
        raise ValueError(f"queries: expected [..., m, K] with K = {S.shape[-2] if S.ndim >= 2 else '?'} "
                         f"and the batch of S {tuple(S.shape)}, got {tuple(queries.shape)}")
    q = _unit(queries.to(S.dtype))
    return torch.einsum("...mk,...kv->...mv", q, S)


def recall(keys, values, queries=None, rule: str = "delta", lr: float = 1.0) -> torch.Tensor:
    """``read(write(keys, values, rule, lr), queries)``; queries default to the keys themselves."""
    S = write(keys, values, rule=rule, lr=lr)
    return read(S, keys if queries is None else queries)


def retrieval_error(keys, values, rule: str = "delta", lr: float = 1.0) -> torch.Tensor:
    """Relative error ``‖read(k_i) − v_i‖ / ‖v_i‖`` of every written pair after all are written.

    Same arguments as :func:`write`; returns [n] (or [B, n]), oldest pair first. When a key is
    written twice, the reference for both positions is the pair's own value (so an overwritten
    pair counts as an error: the memory can hold one value per key).
    """
    got = recall(keys, values, rule=rule, lr=lr)
    ref = values.to(got.dtype)
    return torch.linalg.vector_norm(got - ref, dim=-1) / torch.linalg.vector_norm(ref, dim=-1)


# ---------------------------------------------------------------------------------------------
# state tracking: permutations as products of reflections
# ---------------------------------------------------------------------------------------------

def check_permutation(perm, n: int | None = None) -> tuple[int, ...]:
    """Return ``perm`` as a tuple if it lists ``0..n−1`` once each (one-line notation: i ↦ perm[i])."""
    if isinstance(perm, torch.Tensor):
        perm = perm.tolist()
    if not isinstance(perm, Sequence) or not all(isinstance(p, int) and not isinstance(p, bool) for p in perm):
        raise ValueError(f"perm: expected a sequence of ints, got {perm!r}")
    m = len(perm) if n is None else n
    if sorted(perm) != list(range(m)):
        raise ValueError(f"perm: expected a permutation of 0..{m - 1}, got {tuple(perm)}")
    return tuple(perm)


def check_word(word, n: int) -> list[tuple[int, int]]:
    """Return ``word`` as a list of transpositions ``(i, j)``, ``i ≠ j``, both in ``0..n−1``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n: expected an int >= 2, got {n!r}")
    if not isinstance(word, Sequence) or len(word) == 0:
        raise ValueError("word: expected a non-empty sequence of transpositions (i, j)")
    out = []
    for pos, letter in enumerate(word):
        ok = (isinstance(letter, Sequence) and len(letter) == 2
              and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < n for x in letter)
              and letter[0] != letter[1])
        if not ok:
            raise ValueError(f"word: letter {pos} is {letter!r}; expected a transposition (i, j) with i != j in 0..{n - 1}")
        out.append((int(letter[0]), int(letter[1])))
    return out


def decompose(perm) -> list[tuple[int, int]]:
    """Transpositions whose product (first one applied first) is ``perm``; at most n − 1 of them.

    Each cycle (c_0 c_1 … c_m) (c_0 ↦ c_1 ↦ … ↦ c_m ↦ c_0) is (c_0 c_1), (c_0 c_2), …, (c_0 c_m)
    applied in that order — so an arbitrary letter of S_n costs at most n − 1 RWKV-7 tokens (one reflection each).
    """
    p = check_permutation(perm)
    seen, out = set(), []
    for start in range(len(p)):
        if start in seen:
            continue
        cycle, i = [], start
        while i not in seen:
            seen.add(i)
            cycle.append(i)
            i = p[i]
        out.extend((cycle[0], c) for c in cycle[1:])
    return out


def compose(word, n: int) -> list[tuple[int, ...]]:
    """The reference: the permutation after each prefix of ``word`` (combinatorially, no floats).

    Letter σ_t acts after the earlier ones: π_t = σ_t ∘ π_{t−1}, π_0 = identity; returns
    [π_1, …, π_T] in one-line notation (π(i) = tuple[i]).
    """
    letters = check_word(word, n)
    p, out = list(range(n)), []
    for i, j in letters:
        # σ = (i j) applied after p: swap the *values* i and j
        p = [j if x == i else i if x == j else x for x in p]
        out.append(tuple(p))
    return out


def random_word(n: int, length: int, generator: torch.Generator | None = None) -> list[tuple[int, int]]:
    """A random word of ``length`` transpositions of ``0..n−1``."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length: expected a positive int, got {length!r}")
    check_word([(0, 1)], n)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    idx = torch.randint(len(pairs), (length,), generator=generator).tolist()
    return [pairs[m] for m in idx]


def _eta(eta) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 < eta <= 2:
        raise ValueError(f"eta: expected a number in (0, 2], got {eta!r}")
    return float(eta)


def reflection_args(word, n: int, dtype: torch.dtype = torch.float32, eta: float = 2.0) -> dict[str, torch.Tensor]:
    """``wkv7`` arguments (B = H = 1, K = V = n) that apply one reflection per letter.

    Letter (i j) becomes ``k̂ = (e_i − e_j)/√2``, ``a = −k̂``, ``b = η k̂`` with ``η = 2``, ``w = 0``
    and writes nothing (k = v = 0), so ``G = I − 2k̂k̂ᵀ``: the permutation matrix that swaps rows
    i and j. (Any other ``η`` ∈ (0, 2] gives ``I − η k̂k̂ᵀ``, e.g. an RWKV-7 iclr < 1: no swap.)
    The read-out key is ``r = (0, 1, …, n−1)`` at every step: with ``S_t = P_{π_t}`` (the matrix
    with ``P e_i = e_{π(i)}``), ``o_t = S_tᵀ r`` has entries ``r_{π_t(i)} = π_t(i)``.
    """
    letters = check_word(word, n)
    eta = _eta(eta)
    T = len(letters)
    kh = torch.zeros(1, T, 1, n, dtype=dtype)
    for t, (i, j) in enumerate(letters):
        kh[0, t, 0, i] = 1 / math.sqrt(2)
        kh[0, t, 0, j] = -1 / math.sqrt(2)
    zeros = torch.zeros_like(kh)
    r = torch.arange(n, dtype=dtype).expand(1, T, 1, n).contiguous()
    return dict(r=r, w=zeros, k=zeros, v=zeros, a=-kh, b=eta * kh)


def basis_prefix_args(n: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """``wkv7`` arguments for ``n`` tokens that take a zero state to the identity.

    Token i writes ``k = v = e_i`` with ``w = 0`` and ``a = b = 0`` (nothing decays, nothing is
    removed), so after the prefix ``S = Σ_i e_i e_iᵀ = I``: the starting point of the swap
    construction, reached from the ``S_0 = 0`` every model starts from. Each token adds a
    rank-one ``k vᵀ``, so no shorter prefix can do it. The read-out key is that of
    :func:`reflection_args`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n: expected an int >= 2, got {n!r}")
    eye = torch.eye(n, dtype=dtype)[None, :, None, :]          # [1, T=n, 1, n]: token i carries e_i
    zeros = torch.zeros_like(eye)
    r = torch.arange(n, dtype=dtype).expand(1, n, 1, n).contiguous()
    return dict(r=r, w=zeros, k=eye, v=eye.clone(), a=zeros, b=zeros)


def track(word, n: int, dtype: torch.dtype = torch.float32, eta: float = 2.0,
          from_zero: bool = False) -> tuple[list[tuple[int, ...]], float]:
    """Run ``word`` through ``rwkvlab.wkv7.naive`` from ``S_0 = I`` and read each prefix's permutation.

    Returns ``(perms, drift)``: the permutation read after every token (rounded read-out
    ``o_t = S_tᵀ (0, …, n−1)``) and the largest distance of any read-out from an integer
    (the floating-point error of the reflections, which rounding removes while it is < 0.5).
    ``eta`` is passed to :func:`reflection_args` (2: exact reflections). With
    ``from_zero=True`` the run starts from the zero state, as a model does, and the ``n``
    tokens of :func:`basis_prefix_args` come first (their outputs are not returned).
    """
    args = reflection_args(word, n, dtype=dtype, eta=eta)
    names = ("r", "w", "k", "v", "a", "b")
    if from_zero:
        pre = basis_prefix_args(n, dtype=dtype)
        o, _ = wkv7.naive(*(torch.cat([pre[m], args[m]], dim=1) for m in names))
        o = o[:, n:]
    else:
        S0 = torch.eye(n, dtype=dtype)[None, None]             # [N=1, H=1, K, V]: the identity
        o, _ = wkv7.naive(*(args[m] for m in names), initial_state=S0)
    out = o[0, :, 0].double()                                  # [T, n]
    ints = out.round()
    drift = (out - ints).abs().max().item()
    return [tuple(int(x) for x in row) for row in ints.tolist()], drift


def diagonal_track(word, n: int, log_decay_of: dict | None = None,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The same tokens driving a *diagonal* (RWKV-6-style) transition: the state after the word.

    Each letter (i j) is mapped to a log-decay vector ``log_decay_of[(i, j)]`` ∈ (−∞, 0]^n
    (default: a fixed, seeded, distinct vector per letter), run through ``rwkvlab.wkv7.naive``
    with ``a = b = 0`` and no writes from ``S_0 = I`` — i.e. ``S_T = Π_t diag(e^{w_t})``, the
    RWKV-6 state recurrence's transition part. Returns the final state [n, n].
    """
    letters = check_word(word, n)
    if log_decay_of is None:
        g = torch.Generator().manual_seed(1234)
        log_decay_of = {(i, j): -torch.rand(n, generator=g, dtype=torch.float64)
                        for i in range(n) for j in range(i + 1, n)}
        log_decay_of.update({(j, i): w for (i, j), w in list(log_decay_of.items())})
    missing = [l for l in letters if l not in log_decay_of]
    if missing:
        raise ValueError(f"log_decay_of: no log decay for letter {missing[0]}")
    w = torch.stack([torch.as_tensor(log_decay_of[l], dtype=dtype) for l in letters])[None, :, None, :]
    zeros = torch.zeros_like(w)
    S0 = torch.eye(n, dtype=dtype)[None, None]
    _, S = wkv7.naive(zeros, w, zeros, zeros, zeros, zeros, initial_state=S0, output_final_state=True)
    return S[0, 0]


# ---------------------------------------------------------------------------------------------
# the ablation of chapter 14: RWKV-7 with its removal term switched off
# ---------------------------------------------------------------------------------------------

def without_removal(model):
    """Switch off the delta rule's removal term in every block of an RWKV-7 model, in place.

    The model's WKV calls then receive ``a = b = 0``: ``S_t = diag(e^{w_t}) S_{t−1} + k̃_t v_tᵀ``,
    a diagonal transition (RWKV-6's kind of memory), while every other piece of the block —
    token shift, LoRAs, the value residual, the replacement key k̃ (which still uses the
    in-context rate), the bonus after the norm, the FFN, the initialisation — stays as it is,
    and so does the state size. Works for parallel mode (``model(idx)``) and RNN mode
    (``model.step``). Returns the model.
    """
    from .model.x070 import RWKV7
    if not isinstance(model, RWKV7):
        raise ValueError(f"model: expected an RWKV-7 model (rwkvlab.model.RWKV7), got {type(model).__name__}")
    sequence_core, step_core = model.sequence_core, model.step_core

    def no_removal(core):
        def core_without(r, w, k, v, a, b, S):
            return core(r, w, k, v, torch.zeros_like(a), torch.zeros_like(b), S)
        return core_without

    model.sequence_core = lambda fn: no_removal(sequence_core(fn))
    model.step_core = lambda: no_removal(step_core())
    model.removal = False
    return model


ABLATION_VARIANTS = ("RWKV-7", "RWKV-7, no removal")


def removal_ablation_run(task, steps: int, batch: int, seed: int = 0, impl: str = "naive",
                         variants=ABLATION_VARIANTS, progress: bool = True) -> dict:
    """Train RWKV-7 with and without its removal term on an MQAR task; same seed for both.

    ``task`` is a :class:`rwkvlab.model.train.Recall`. Both variants start from the *same*
    weights (``train.small_models(..., seed=seed)["RWKV-7"]``) and see the *same* stream of
    batches; the only difference is :func:`without_removal`. Learning rate
    ``train.LEARNING_RATES["RWKV-7"]``. Returns ``{variant: {"losses", "accuracy", "seconds", "model"}}``
    (the trained model, in eval mode).
    """
    import time

    from .model import train
    steps = validate.positive_int("steps", steps)
    batch = validate.positive_int("batch", batch)
    unknown = [v for v in variants if v not in ABLATION_VARIANTS]
    if unknown:
        raise ValueError(f"variants: expected names from {ABLATION_VARIANTS}, got {unknown}")
    out = {}
    for name in variants:
        model = train.small_models(task.vocab_size, seed=seed, max_len=task.length + 1)["RWKV-7"]
        if name != "RWKV-7":
            without_removal(model)
        g = torch.Generator().manual_seed(seed + 1)
        t0 = time.perf_counter()
        losses = train.fit(model, lambda: task.batch(batch, g), steps, train.LEARNING_RATES["RWKV-7"],
                           impl=impl, label=f"{name:18s}", progress=progress)
        out[name] = {"losses": losses, "seconds": time.perf_counter() - t0,
                     "accuracy": train.recall_accuracy(model, task, impl=impl), "model": model}
    return out
