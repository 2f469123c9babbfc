"""A small softmax-attention transformer: the baseline the RWKV models are measured against.

Same residual layout as the RWKV models (pre-LayerNorm blocks, the same squared-ReLU MLP of
width ``dim_ffn``), so a comparison isolates the token mixer: causal multi-head softmax
attention (:mod:`rwkvlab.attention`) with learned absolute positions.

* parallel mode — ``model(idx) -> (logits, cache)``: ``attention.parallel`` over the whole
  sequence; the returned cache holds every key and value (what decoding continues from);
* decoding — ``model.step(token, cache) -> (logits, cache)``: ``attention.kv_cache_step``
  appends one key/value per layer and attends over all of them, O(T) time and memory per token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import attention
from .common import check_tokens


@dataclass
class Config:
    vocab_size: int
    n_embd: int
    n_layer: int
    head_size: int
    dim_ffn: int
    max_len: int = 1024

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        C = cfg.n_embd
        self.n_head = cfg.n_head
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.proj = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, cfg.dim_ffn, bias=False)
        self.value = nn.Linear(cfg.dim_ffn, C, bias=False)

    def _heads(self, t):
        return t.reshape(*t.shape[:-1], self.n_head, -1)

    def mlp(self, x):
        return self.value(torch.relu(self.key(self.ln2(x))).square())

    def forward(self, x):                                   # x [B, T, C]
        q, k, v = (self._heads(t) for t in self.qkv(self.ln1(x)).chunk(3, -1))
        o = attention.parallel(q, k, v)
        x = x + self.proj(o.reshape(x.shape))
        return x + self.mlp(x), attention.KVCache(k, v)

    def step(self, x, cache):                               # x [B, C]
        q, k, v = (self._heads(t) for t in self.qkv(self.ln1(x)).chunk(3, -1))
        o, cache = attention.kv_cache_step(q, k, v, cache)
        x = x + self.proj(o.reshape(x.shape))
        return x + self.mlp(x), cache


class Transformer(nn.Module):
    """Causal softmax-attention language model with a KV cache for decoding."""

    version = "softmax"

    def __init__(self, cfg: Config):
        super().__init__()
        if cfg.n_embd % cfg.head_size:
            raise ValueError(f"head_size: must divide n_embd = {cfg.n_embd}, got {cfg.head_size}")
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = nn.Parameter(torch.zeros(cfg.max_len, cfg.n_embd))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> "Transformer":
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "ln_out.weight")):
                p.fill_(1.0)
            elif p.ndim == 1:
                p.zero_()
            else:
                fan_in = p.shape[1] if name != "emb.weight" else 1
                std = 0.02 if name in ("emb.weight", "pos") else fan_in ** -0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
        for blk in self.blocks:                        # start every block as the identity map
            blk.proj.weight.zero_()
            blk.value.weight.zero_()
        return self

    def forward(self, idx: torch.Tensor):
        """``idx`` [B, T] → ``(logits [B, T, vocab], cache)``; cache: one KVCache per block."""
        idx = check_tokens("idx", idx, self.cfg.vocab_size, 2)
        T = idx.shape[1]
        if T > self.cfg.max_len:
            raise ValueError(f"idx: {T} tokens exceed max_len = {self.cfg.max_len} (learned positions)")
        x = self.emb(idx) + self.pos[:T]
        cache = []
        for blk in self.blocks:
            x, c = blk(x)
            cache.append(c)
        return self.head(self.ln_out(x)), cache

    def step(self, token: torch.Tensor, cache=None):
        """``token`` [B] → ``(logits [B, vocab], cache)``: one decoding step with the KV cache."""
        token = check_tokens("token", token, self.cfg.vocab_size, 1)
        t = 0 if cache is None else cache[0].keys.shape[1]
        if t >= self.cfg.max_len:
            raise ValueError(f"cache: already holds {t} tokens, max_len = {self.cfg.max_len}")
        x = self.emb(token) + self.pos[t]
        new = []
        for i, blk in enumerate(self.blocks):
            x, c = blk.step(x, None if cache is None else cache[i])
            new.append(c)
        return self.head(self.ln_out(x)), new


def cache_nbytes(cache) -> int:
    """Bytes held by a KV cache: grows by 2·L·C numbers with every token."""
    return sum(c.keys.numel() * c.keys.element_size() + c.values.numel() * c.values.element_size() for c in cache)
