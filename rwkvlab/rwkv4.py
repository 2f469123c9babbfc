"""The RWKV-4 block: token shift, time mixing, channel mixing, and a tiny model in two modes.

Peng et al. 2023 (arXiv 2305.13048), final-version equation numbers (v1 numbers in brackets):

    token shift (RWKV-4's μ weights the *current* token):  mix(x_t, x_{t-1}, μ) = μ⊙x_t + (1−μ)⊙x_{t−1}
    time mixing   (Eqs. 11–13, 16–17 [v1 11–15]):
        r_t = W_r mix(x_t, x_{t−1}, μ_r),  k_t = W_k mix(.., μ_k),  v_t = W_v mix(.., μ_v)
        o_t = W_o (σ(r_t) ⊙ wkv_t),        wkv_t from :mod:`rwkvlab.wkv4` with w = exp(time_decay), u = time_first
    channel mixing (Eqs. 14–15, 18 [v1 16–18]):
        r'_t = W'_r mix(x'_t, x'_{t−1}, μ'_r),  k'_t = W'_k mix(.., μ'_k)
        o'_t = σ(r'_t) ⊙ (W'_v max(k'_t, 0)²)
    block: x ← x + TimeMix(LN₁(x));  x ← x + ChannelMix(LN₂(x))   (LN₀ after the embedding, in block 0)

Shapes: x is [B, T, C] in parallel mode and [B, C] in RNN mode. Parameter names follow the
official RWKV-4 code (``time_decay``, ``time_first``, ``time_mix_k``, ``key``, ``receptance`` …).

Each layer's RNN state is :class:`LayerState`: five [B, C] tensors — the last input of the time
mix, the WKV state (a', b', p), and the last input of the channel mix ("5DL" in App. D). Its size
does not depend on how many tokens have been read.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import validate, wkv4

__all__ = ["token_shift", "mix", "TimeMix", "ChannelMix", "Block", "Model", "LayerState"]


def token_shift(x: torch.Tensor, shift_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous token's input at every position: ``x_prev[:, t] = x[:, t−1]``.

    x: [B, T, C]; shift_state: [B, C], the input just before this segment (None: zeros, as at the
    start of a text). Returns ``(x_prev, x[:, -1])``; the second is what the next segment needs as
    its ``shift_state`` — in RNN mode this one vector *is* the token shift's state. The one token
    shift of the package: RWKV-6 and RWKV-7 blocks use it too (``rwkv7_ops.token_shift``). It
    checks structure only (type, rank, shape), not values: it runs on every token of RNN mode.
    """
    validate.tensor("x", x, ndim=3, finite=False)
    B, T, C = x.shape
    if T < 1:
        raise ValueError(f"x: expected T >= 1, got shape {tuple(x.shape)}")
    if shift_state is None:
        first = x.new_zeros(B, 1, C)
    else:
        validate.tensor("shift_state", shift_state, ndim=2, finite=False)
        validate.same_shape("shift_state", shift_state, (B, C), "(B, C) of x")
        first = shift_state.to(x.dtype)[:, None]
    return torch.cat([first, x[:, :-1]], dim=1), x[:, -1]


def mix(x: torch.Tensor, x_prev: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """RWKV-4's token-shift interpolation ``μ⊙x + (1−μ)⊙x_prev``: μ weights the current token.

    (RWKV-5/6/7 papers write lerp(x, x_prev, μ) = x + (x_prev − x)⊙μ, where μ weights the
    *previous* token: the same operation with μ ↦ 1 − μ.)
    """
    return mu * x + (1 - mu) * x_prev


class LayerState(NamedTuple):
    """One layer's RNN-mode state: five [B, C] tensors."""

    tm_x: torch.Tensor  # time mixing: the previous token's (normalised) input
    a: torch.Tensor  # WKV numerator a' (scaled by e^{-p})
    b: torch.Tensor  # WKV denominator b'
    p: torch.Tensor  # WKV running max exponent
    cm_x: torch.Tensor  # channel mixing: the previous token's (normalised) input


def _ramp(C: int) -> torch.Tensor:
    return torch.arange(C, dtype=torch.float32) / C


class TimeMix(nn.Module):
    """RWKV-4 time mixing (attention's place): token shift, r/k/v, WKV, σ(r) gate, W_o.

    Parameters are initialised as in the paper's App. E and the official code: time_decay_i =
    −5 + 8 (i/(C−1))^{0.7 + 1.3 l/(L−1)}, time_first_i = 0.5(((i+1) mod 3) − 1) + log 0.3, and
    the μ's a ramp over channels that leans on the previous token more in lower layers.
    """

    def __init__(self, C: int, layer_id: int = 0, n_layer: int = 1):
        super().__init__()
        r01 = layer_id / (n_layer - 1) if n_layer > 1 else 0.0
        r10 = 1.0 - layer_id / n_layer
        i = torch.arange(C, dtype=torch.float32)
        self.time_decay = nn.Parameter(-5 + 8 * (i / max(C - 1, 1)) ** (0.7 + 1.3 * r01))
        self.time_first = nn.Parameter(0.5 * (((i + 1) % 3) - 1) + math.log(0.3))
        self.time_mix_k = nn.Parameter(_ramp(C) ** r10)
        self.time_mix_v = nn.Parameter(_ramp(C) ** r10 + 0.3 * r01)
        self.time_mix_r = nn.Parameter(_ramp(C) ** (0.5 * r10))
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)

    def rkv(self, x, x_prev):
        """r, k, v from the mixed inputs (Eqs. 11–13); works on [B, T, C] and on [B, C]."""
        return (self.receptance(mix(x, x_prev, self.time_mix_r)),
                self.key(mix(x, x_prev, self.time_mix_k)),
                self.value(mix(x, x_prev, self.time_mix_v)))

    def decay(self) -> torch.Tensor:
        """The paper's w = exp(time_decay) >= 0 (the official kernel receives −exp(time_decay))."""
        return torch.exp(self.time_decay)

    def forward(self, x, last=None, wkv_state=None, impl: str = "chunked"):
        """Parallel mode. x: [B, T, C] -> (o [B, T, C], x[:, -1], final WKV State)."""
        x_prev, x_last = token_shift(x, last)
        r, k, v = self.rkv(x, x_prev)
        if impl not in wkv4.IMPLEMENTATIONS:
            raise ValueError(f"impl: expected one of {sorted(wkv4.IMPLEMENTATIONS)}, got {impl!r}")
        y, s = wkv4.IMPLEMENTATIONS[impl](k, v, self.decay(), self.time_first, wkv_state, output_final_state=True)
        return self.output(torch.sigmoid(r) * y), x_last, s

    def step(self, x, last, wkv_state):
        """RNN mode, one token. x, last: [B, C] -> (o [B, C], x, new WKV State)."""
        r, k, v = self.rkv(x, last)
        y, s = wkv4.step(k, v, self.decay(), self.time_first, wkv_state)
        return self.output(torch.sigmoid(r) * y), x, s


class ChannelMix(nn.Module):
    """RWKV-4 channel mixing (the MLP's place): token shift, squared ReLU, σ(r') gate (Eq. 18)."""

    def __init__(self, C: int, layer_id: int = 0, n_layer: int = 1, hidden: int | None = None):
        super().__init__()
        r10 = 1.0 - layer_id / n_layer
        hidden = 4 * C if hidden is None else hidden
        self.time_mix_k = nn.Parameter(_ramp(C) ** r10)
        self.time_mix_r = nn.Parameter(_ramp(C) ** r10)
        self.key = nn.Linear(C, hidden, bias=False)
        self.value = nn.Linear(hidden, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)

    def mixed(self, x, x_prev):
        """o' = σ(W'_r mix(x, x_prev, μ'_r)) ⊙ W'_v relu(W'_k mix(x, x_prev, μ'_k))²; any leading shape."""
        k = torch.square(F.relu(self.key(mix(x, x_prev, self.time_mix_k))))
        return torch.sigmoid(self.receptance(mix(x, x_prev, self.time_mix_r))) * self.value(k)

    def forward(self, x, last=None):
        """Parallel mode. x: [B, T, C] -> (o' [B, T, C], x[:, -1])."""
        x_prev, x_last = token_shift(x, last)
        return self.mixed(x, x_prev), x_last

    def step(self, x, last):
        """RNN mode, one token. x, last: [B, C] -> (o' [B, C], x)."""
        return self.mixed(x, last), x


class Block(nn.Module):
    """x ← x + TimeMix(LN₁(x)); x ← x + ChannelMix(LN₂(x)). Block 0 also owns LN₀ (after the embedding)."""

    def __init__(self, C: int, layer_id: int = 0, n_layer: int = 1):
        super().__init__()
        self.ln0 = nn.LayerNorm(C) if layer_id == 0 else None
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.att = TimeMix(C, layer_id, n_layer)
        self.ffn = ChannelMix(C, layer_id, n_layer)

    def empty_state(self, B: int, device=None) -> LayerState:
        C = self.ln1.normalized_shape[0]
        s = wkv4.empty_state(B, C, torch.float32, device)
        z = torch.zeros(B, C, device=device)
        return LayerState(z, s.a, s.b, s.p, z.clone())

    def forward(self, x, state: LayerState | None = None, impl: str = "chunked"):
        """Parallel mode: x [B, T, C] -> (x [B, T, C], LayerState after the last token)."""
        if self.ln0 is not None:
            x = self.ln0(x)
        tm_x = cm_x = wkv_s = None
        if state is not None:
            tm_x, cm_x, wkv_s = state.tm_x, state.cm_x, wkv4.State(state.a, state.b, state.p)
        dx, tm_last, s = self.att(self.ln1(x), tm_x, wkv_s, impl)
        x = x + dx
        dx, cm_last = self.ffn(self.ln2(x), cm_x)
        return x + dx, LayerState(tm_last, s.a, s.b, s.p, cm_last)

    def step(self, x, state: LayerState | None = None):
        """RNN mode: x [B, C] -> (x [B, C], new LayerState)."""
        if state is None:
            state = self.empty_state(x.shape[0], x.device)
        if self.ln0 is not None:
            x = self.ln0(x)
        dx, tm_last, s = self.att.step(self.ln1(x), state.tm_x, wkv4.State(state.a, state.b, state.p))
        x = x + dx
        dx, cm_last = self.ffn.step(self.ln2(x), state.cm_x)
        return x + dx, LayerState(tm_last, s.a, s.b, s.p, cm_last)


class Model(nn.Module):
    """A tiny RWKV-4 language model with random weights: embedding, blocks, LN_out, head.

    ``model(idx, state=None) -> (logits, state)`` runs a whole sequence at once (idx [B, T]);
    ``model.step(token, state=None) -> (logits, state)`` reads one token (token [B]). The two
    agree; a state is a list with one :class:`LayerState` per block.
    """

    def __init__(self, vocab: int = 64, C: int = 32, n_layer: int = 2, seed: int = 0):
        super().__init__()
        for name, val in (("vocab", vocab), ("C", C), ("n_layer", n_layer)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name}: expected a positive int, got {val!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.emb = nn.Embedding(vocab, C)
            self.blocks = nn.ModuleList(Block(C, i, n_layer) for i in range(n_layer))
            self.ln_out = nn.LayerNorm(C)
            self.head = nn.Linear(C, vocab, bias=False)
        self.vocab = vocab

    def _tokens(self, name, idx, ndim):
        if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int32, torch.int64) or idx.ndim != ndim:
            raise ValueError(f"{name}: expected a {ndim}-d integer tensor of token ids")
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.vocab):
            raise ValueError(f"{name}: token ids must lie in [0, {self.vocab}), got [{idx.min()}, {idx.max()}]")

    def _state(self, state, B):
        if state is None:
            return [None] * len(self.blocks)
        if len(state) != len(self.blocks):
            raise ValueError(f"state: expected one LayerState per block ({len(self.blocks)}), got {len(state)}")
        for s in state:
            if s is not None and tuple(s.a.shape[:1]) != (B,):
                raise ValueError(f"state: expected batch size {B}, got {tuple(s.a.shape)}")
        return list(state)

    def forward(self, idx, state=None, impl: str = "chunked"):
        self._tokens("idx", idx, 2)
        if idx.shape[1] < 1:
            raise ValueError(f"idx: expected T >= 1, got shape {tuple(idx.shape)}")
        states = self._state(state, idx.shape[0])
        x = self.emb(idx)
        new = []
        for block, s in zip(self.blocks, states):
            x, s = block(x, s, impl)
            new.append(s)
        return self.head(self.ln_out(x)), new

    def step(self, token, state=None):
        self._tokens("token", token, 1)
        states = self._state(state, token.shape[0])
        x = self.emb(token)
        new = []
        for block, s in zip(self.blocks, states):
            x, s = block.step(x, s)
            new.append(s)
        return self.head(self.ln_out(x)), new
