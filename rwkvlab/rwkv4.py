"""RWKV-4's block pieces: token shift, time mixing and channel mixing, in parallel and RNN modes.

Peng et al. 2023 (arXiv 2305.13048), final-version equation numbers (v1 numbers in brackets):

    token shift (RWKV-4's μ weights the *current* token):  mix(x_t, x_{t-1}, μ) = μ⊙x_t + (1−μ)⊙x_{t−1}
    time mixing   (Eqs. 11–13, 16–17 [v1 11–15]):
        r_t = W_r mix(x_t, x_{t−1}, μ_r),  k_t = W_k mix(.., μ_k),  v_t = W_v mix(.., μ_v)
        o_t = W_o (σ(r_t) ⊙ wkv_t),        wkv_t from :mod:`rwkvlab.wkv4` with w = exp(time_decay), u = time_first
    channel mixing (Eqs. 14–15, 18 [v1 16–18]):
        r'_t = W'_r mix(x'_t, x'_{t−1}, μ'_r),  k'_t = W'_k mix(.., μ'_k)
        o'_t = σ(r'_t) ⊙ (W'_v max(k'_t, 0)²)

Shapes: x is [B, T, C] in parallel mode and [B, C] in RNN mode. Parameter names follow the
official RWKV-4 code (``time_decay``, ``time_first``, ``time_mix_k``, ``key``, ``receptance`` …).
These are the mechanism chapters 03–04 derive; the block and the language model that stack them
(x ← x + TimeMix(LN₁(x)); x ← x + ChannelMix(LN₂(x))) are :mod:`rwkvlab.model.x040`, beside the
RWKV-6 and RWKV-7 models.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import validate, wkv4

__all__ = ["token_shift", "mix", "TimeMix", "ChannelMix"]


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
