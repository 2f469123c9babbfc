"""RWKV-4 (x040) language model, with the official RWKV-4 parameter names.

One block (Peng et al. 2023, arXiv 2305.13048, final-version Eqs. 11–18; RWKV-LM
``RWKV-v4/src/model.py``), x of shape [B, T, C] in parallel mode and [B, C] in RNN mode::

    x_prev      = token_shift(x)                                previous token's input (rwkv4.token_shift)
    r, k, v     = W_r mix(x, x_prev, μ_r), W_k mix(.., μ_k), W_v mix(.., μ_v)     mix = μ⊙x + (1−μ)⊙x_prev
    wkv_t       = WKV(k, v; w = exp(time_decay), u = time_first)                    (rwkvlab.wkv4)
    att_out     = W_o (σ(r) ⊙ wkv)                              rwkv4.TimeMix
    ffn_out     = σ(W'_r mix(x', x'_prev, μ'_r)) ⊙ W'_v max(W'_k mix(.., μ'_k), 0)²   rwkv4.ChannelMix

Residual stream: ``x = ln0(emb)`` (block 0 only); ``x += att(ln1 x)``; ``x += ffn(ln2 x)``; then
``head(ln_out x)``. The two sub-blocks are the mechanism chapters 03–04 derive and live in
:mod:`rwkvlab.rwkv4`; this module stacks them into a language model, as :mod:`.x060` and
:mod:`.x070` do for RWKV-6 and RWKV-7.

Each block's RNN state is a :class:`LayerState`: five [B, C] tensors — the last input of the time
mix, the WKV state (a', b', p) and the last input of the channel mix ("5DL" in the paper's App. D).
Its size does not depend on how many tokens have been read.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .. import rwkv4, wkv4
from .common import check_tokens


class LayerState(NamedTuple):
    """One block's RNN-mode state: five [B, C] tensors."""

    tm_x: torch.Tensor  # time mixing: the previous token's (normalised) input
    a: torch.Tensor  # WKV numerator a' (scaled by e^{-p})
    b: torch.Tensor  # WKV denominator b'
    p: torch.Tensor  # WKV running max exponent
    cm_x: torch.Tensor  # channel mixing: the previous token's (normalised) input


class Block(nn.Module):
    """x ← x + TimeMix(LN₁(x)); x ← x + ChannelMix(LN₂(x)). Block 0 also owns LN₀ (after the embedding)."""

    TimeMix = rwkv4.TimeMix
    ChannelMix = rwkv4.ChannelMix

    def __init__(self, C: int, layer_id: int = 0, n_layer: int = 1):
        super().__init__()
        self.ln0 = nn.LayerNorm(C) if layer_id == 0 else None
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.att = self.TimeMix(C, layer_id, n_layer)
        self.ffn = self.ChannelMix(C, layer_id, n_layer)

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


class RWKV4(nn.Module):
    """A tiny RWKV-4 (x040) language model with random weights: emb, blocks, ln_out, head.

    ``model(idx, state=None, impl="chunked") -> (logits [B, T, vocab], state)`` runs a whole
    sequence at once (idx [B, T], ``impl`` one of ``wkv4.IMPLEMENTATIONS``);
    ``model.step(token, state=None) -> (logits [B, vocab], state)`` reads one token (token [B]).
    The two agree; a state is a list with one :class:`LayerState` per block, ``None`` a fresh one.
    The weights are the paper's initialisation (App. E), drawn from ``seed``; :func:`rwkvlab.model.load`
    reads RWKV-6 and RWKV-7 checkpoints only.
    """

    version = "x040"
    Block = Block

    def __init__(self, vocab: int = 64, C: int = 32, n_layer: int = 2, seed: int = 0):
        super().__init__()
        for name, val in (("vocab", vocab), ("C", C), ("n_layer", n_layer)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name}: expected a positive int, got {val!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.emb = nn.Embedding(vocab, C)
            self.blocks = nn.ModuleList(self.Block(C, i, n_layer) for i in range(n_layer))
            self.ln_out = nn.LayerNorm(C)
            self.head = nn.Linear(C, vocab, bias=False)
        self.vocab = vocab

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
        """Parallel mode. ``idx`` [B, T] token ids → ``(logits [B, T, vocab], state)``."""
        idx = check_tokens("idx", idx, self.vocab, 2, self.emb.weight.device)
        states = self._state(state, idx.shape[0])
        x = self.emb(idx)
        new = []
        for block, s in zip(self.blocks, states):
            x, s = block(x, s, impl)
            new.append(s)
        return self.head(self.ln_out(x)), new

    def step(self, token, state=None):
        """RNN mode. ``token`` [B] ids → ``(logits [B, vocab], state)``; the state passed in is not modified."""
        token = check_tokens("token", token, self.vocab, 1, self.emb.weight.device)
        states = self._state(state, token.shape[0])
        x = self.emb(token)
        new = []
        for block, s in zip(self.blocks, states):
            x, s = block.step(x, s)
            new.append(s)
        return self.head(self.ln_out(x)), new
