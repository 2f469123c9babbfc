"""The small, elementwise pieces of an RWKV-7 block, in plain torch.

These are the reference forms of the pieces that surround the WKV-7 state update (RWKV-7
paper, arXiv 2503.14456, Eqs. 1–24; official code ``RWKV-v7``/``RWKV_Tmix_x070``). The whole model
(:mod:`rwkvlab.model`) is built from them, and the Triton chapter fuses them; both must agree
with what is written here.

Shapes: ``x`` is ``[B, T, C]`` (or ``[B, C]`` for one token in RNN mode, except for
:func:`token_shift`), ``C = H · N`` with ``H = n_head`` heads of ``N`` channels. Parameters
are broadcastable to ``x`` (the official checkpoints store them as ``[1, 1, C]``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import validate
from .rwkv4 import token_shift  # noqa: F401  (the one token shift; chapter 04 derives it)


def _tensor(name, x, ndim=None):
    # type, rank and dtype only: these pieces run on every token of RNN mode, and scanning whole
    # weight matrices for NaN on each call would cost more than the arithmetic (the WKV cores
    # check their inputs' finiteness themselves)
    return validate.tensor(name, x, ndim=ndim, finite=False)

__all__ = ["token_shift", "addcmul_mix", "k_update", "removal_key", "output_correction", "channel_mix"]


def _heads(name: str, x: torch.Tensor, n_head) -> int:
    if not isinstance(n_head, int) or n_head < 1:
        raise ValueError(f"n_head: expected a positive int, got {n_head!r}")
    if x.shape[-1] % n_head:
        raise ValueError(f"n_head: {name} has {x.shape[-1]} channels, which {n_head} heads do not divide")
    return x.shape[-1] // n_head


def _broadcastable(name: str, p, x: torch.Tensor) -> torch.Tensor:
    _tensor(name, p)
    # by hand: torch.broadcast_shapes goes through torch._refs, which imports the symbolic-shape
    # machinery on first use (~0.3 s) and costs ~25 µs a call on this path
    extra = p.shape[:max(p.ndim - x.ndim, 0)]                 # [1, 1, C] against one token's [B, C]
    if any(a != 1 for a in extra) or any(a != 1 and a != b for a, b in zip(reversed(p.shape), reversed(x.shape))):
        raise ValueError(f"{name}: shape {tuple(p.shape)} does not broadcast to {tuple(x.shape)}")
    if p.shape[-1] not in (1, x.shape[-1]):
        raise ValueError(f"{name}: expected {x.shape[-1]} channels in the last dimension, got {tuple(p.shape)}")
    return p


def addcmul_mix(x: torch.Tensor, x_prev: torch.Tensor, *mus: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``lerp(x, x_prev, μ) = x + (x_prev − x) ⊙ μ`` for each ``μ`` (paper Eq. 3).

    μ weights the *previous* token (the v6/v7 convention of RWKV-LM; RWKV-4's ``time_mix`` weighted the current one). One difference
    ``x_prev − x`` is shared by all the mixes, which is why the official code computes it once.
    """
    _tensor("x", x)
    _tensor("x_prev", x_prev)
    if x_prev.shape != x.shape:
        raise ValueError(f"x_prev: expected the shape of x {tuple(x.shape)}, got {tuple(x_prev.shape)}")
    if not mus:
        raise ValueError("mus: expected at least one mixing vector")
    xx = x_prev - x
    return tuple(x + xx * _broadcastable(f"mus[{i}]", mu, x) for i, mu in enumerate(mus))


def k_update(k: torch.Tensor, a: torch.Tensor, k_a: torch.Tensor) -> torch.Tensor:
    """The replacement key ``k̃ = k ⊙ (1 + (a − 1) ⊙ α)`` (paper Eq. 7, ``α = k_a``).

    With ``α = 0`` the key is written at full strength; with ``α = 1`` it is scaled by the
    in-context learning rate ``a``, the same rate that scales the removal (as in the delta rule,
    though the removal direction is the normalised ``κ̂``, not ``k``).
    """
    _tensor("k", k)
    _tensor("a", a)
    if a.shape != k.shape:
        raise ValueError(f"a: expected the shape of k {tuple(k.shape)}, got {tuple(a.shape)}")
    return k * (1 + (a - 1) * _broadcastable("k_a", k_a, k))


def removal_key(k: torch.Tensor, k_k: torch.Tensor, n_head: int) -> torch.Tensor:
    """The removal key ``κ̂ = normalize(k ⊙ ξ)`` per head (paper Eqs. 6 and 15, ``ξ = k_k``).

    Unit length per head makes ``κ̂ᵀ(a ⊙ κ̂)`` remove at most what is stored along ``κ̂``.
    """
    _tensor("k", k)
    N = _heads("k", k, n_head)
    kk = k * _broadcastable("k_k", k_k, k)
    kk = F.normalize(kk.reshape(*k.shape[:-1], n_head, N), dim=-1, p=2.0)
    return kk.reshape(k.shape)


def output_correction(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_k: torch.Tensor,
                      n_head: int) -> torch.Tensor:
    """The bonus ``u_t = (r_t · (ρ ⊙ k̃_t)) v_t`` per head (paper Eq. 20, ``ρ = r_k``).

    ``r, k, v`` are ``[..., C]`` (``k`` the replacement key k̃), ``r_k`` is ``[H, N]`` (or
    anything with ``C`` elements). RWKV-7 adds this *after* the per-head GroupNorm (Eq. 21).
    """
    for name, t in (("r", r), ("k", k), ("v", v)):
        _tensor(name, t)
        if t.shape != r.shape:
            raise ValueError(f"{name}: expected the shape of r {tuple(r.shape)}, got {tuple(t.shape)}")
    N = _heads("r", r, n_head)
    _tensor("r_k", r_k)
    if r_k.numel() != r.shape[-1]:
        raise ValueError(f"r_k: expected {n_head} x {N} = {r.shape[-1]} elements (shape (H, N)), got {tuple(r_k.shape)}")
    hs = (*r.shape[:-1], n_head, N)
    score = (r.reshape(hs) * k.reshape(hs) * r_k.reshape(n_head, N)).sum(dim=-1, keepdim=True)
    return (score * v.reshape(hs)).reshape(r.shape)


def channel_mix(x: torch.Tensor, x_prev: torch.Tensor, mu_k: torch.Tensor, W_key: torch.Tensor,
                W_value: torch.Tensor) -> torch.Tensor:
    """RWKV-7's MLP: ``k' = lerp(x, x_prev, μ'_k) W_key``, ``o' = relu(k')² W_value`` (Eqs. 23–24).

    ``W_key`` is ``[F, C]`` and ``W_value`` ``[C, F]`` as stored by ``nn.Linear``
    (``ffn.key.weight``, ``ffn.value.weight``); F = 4C in the released models.
    """
    (xk,) = addcmul_mix(x, x_prev, mu_k)
    _tensor("W_key", W_key, ndim=2)
    _tensor("W_value", W_value, ndim=2)
    C = x.shape[-1]
    if W_key.shape[1] != C:
        raise ValueError(f"W_key: expected shape (F, C) with C = {C}, got {tuple(W_key.shape)}")
    if tuple(W_value.shape) != (C, W_key.shape[0]):
        raise ValueError(f"W_value: expected shape (C, F) = {(C, W_key.shape[0])}, got {tuple(W_value.shape)}")
    return torch.relu(xk @ W_key.t()).square() @ W_value.t()
