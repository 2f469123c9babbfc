"""RWKV-6 "Finch" (x060) language model, with the official RWKV-LM parameter names.

One block (Finch paper, arXiv 2404.05892, Eqs. 14–22; RWKV-LM ``RWKV_Tmix_x060``)::

    xx          = x_prev − x
    m_w … m_g   = tanh((x + xx ⊙ time_maa_x) time_maa_w1) time_maa_w2      five LoRAs at once (ddlerp)
    x_□         = x + xx ⊙ (time_maa_□ + m_□)            □ ∈ {w, k, v, r, g}
    r, k, v     = x_r W_r, x_k W_k, x_v W_v
    g           = SiLU(x_g W_g)
    d           = time_decay + tanh(x_w time_decay_w1) time_decay_w2
    log w       = −exp(d)                                  (per-step factor exp(−exp(d)))
    o_t         = r_tᵀ (S_{t−1} + diag(u) k_t v_tᵀ),  S_t = diag(e^{w_t}) S_{t−1} + k_t v_tᵀ   (rwkvlab.wkv6; u = time_faaaa)
    att_out     = (GroupNorm_H(o) ⊙ g) W_o                 the bonus u is INSIDE the norm here
    ffn_out     = σ(x'_r W_r') ⊙ (relu(x'_k W_k')² W_v')  with x'_□ = x' + (x'_prev − x') ⊙ ffn.time_maa_□
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import rwkv7_ops as ops
from .. import wkv6
from .common import GROUPNORM_EPS, BlockBase, LanguageModel, Sizes, random_init


@dataclass
class Config(Sizes):
    """Sizes of an x060 model: ``d_mix`` is the rank of each of the five mix LoRAs, ``d_decay``
    that of the decay LoRA (RWKV-LM: 32 and 64 below C = 4096)."""
    d_mix: int = 32
    d_decay: int = 64

    @classmethod
    def make(cls, vocab_size: int, n_embd: int, n_layer: int, head_size: int = 64, **kw) -> "Config":
        """Sizes with RWKV-LM's defaults: FFN 3.5C (rounded down to a multiple of 32)."""
        d = dict(dim_ffn=max(32, int(n_embd * 3.5) // 32 * 32), d_mix=32 if n_embd < 4096 else 64,
                 d_decay=64 if n_embd < 4096 else 128)
        d.update(kw)
        return cls(vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, head_size=head_size, **d)


class TimeMix(nn.Module):
    def __init__(self, cfg: Config, layer_id: int):
        super().__init__()
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.n_head = H
        vec = lambda: nn.Parameter(torch.zeros(1, 1, C))  # noqa: E731
        self.time_maa_x, self.time_maa_w, self.time_maa_k = vec(), vec(), vec()
        self.time_maa_v, self.time_maa_r, self.time_maa_g = vec(), vec(), vec()
        self.time_maa_w1 = nn.Parameter(torch.zeros(C, 5 * cfg.d_mix))
        self.time_maa_w2 = nn.Parameter(torch.zeros(5, cfg.d_mix, C))
        self.time_decay = vec()
        self.time_decay_w1 = nn.Parameter(torch.zeros(C, cfg.d_decay))
        self.time_decay_w2 = nn.Parameter(torch.zeros(cfg.d_decay, C))
        self.time_faaaa = nn.Parameter(torch.zeros(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.gate = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=GROUPNORM_EPS)

    def projections(self, x, x_prev):
        """ddlerp and the projections, for ``x`` [B, T, C]: a dict of [B, T, C] tensors."""
        B, T, C = x.shape
        (xxx,) = ops.addcmul_mix(x, x_prev, self.time_maa_x)
        lo = torch.tanh(xxx @ self.time_maa_w1).reshape(B, T, 5, -1)
        mw, mk, mv, mr, mg = torch.einsum("btfd,fdc->fbtc", lo, self.time_maa_w2).unbind(0)
        xw, xk, xv, xr, xg = ops.addcmul_mix(x, x_prev, self.time_maa_w + mw, self.time_maa_k + mk,
                                             self.time_maa_v + mv, self.time_maa_r + mr, self.time_maa_g + mg)
        d = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        return dict(r=self.receptance(xr), k=self.key(xk), v=self.value(xv), g=F.silu(self.gate(xg)),
                    w=-torch.exp(d))

    def forward(self, x, shift, S, v_first, core):
        B, T, C = x.shape
        x_prev, last = ops.token_shift(x, shift)
        p = self.projections(x, x_prev)
        heads = lambda t: t.reshape(B, T, self.n_head, C // self.n_head)  # noqa: E731
        r, k, v, w = (heads(p[n]) for n in ("r", "k", "v", "w"))
        # the WKV-6 call: core is wkv6.<impl>(r, k, v, w, u, initial_state=S, output_final_state=True) in
        # parallel mode and wkv6.step in RNN mode (RWKV6.sequence_core / step_core)
        o, S = core(r, k, v, w, self.time_faaaa, S)
        o = self.ln_x(o.reshape(B * T, C)).reshape(B, T, C)
        return self.output(o * p["g"]), last, S, v_first


class ChannelMix(nn.Module):
    def __init__(self, cfg: Config, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_r = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, cfg.dim_ffn, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(cfg.dim_ffn, C, bias=False)

    def forward(self, x, shift):
        x_prev, last = ops.token_shift(x, shift)
        xk, xr = ops.addcmul_mix(x, x_prev, self.time_maa_k, self.time_maa_r)
        kv = self.value(torch.relu(self.key(xk)).square())
        return torch.sigmoid(self.receptance(xr)) * kv, last


class Block(BlockBase):
    """One residual block: ln1 → time mixing, ln2 → channel mixing (ln0 first in block 0)."""

    TimeMix = TimeMix
    ChannelMix = ChannelMix


class RWKV6(LanguageModel):
    """An RWKV-6 (x060) language model; ``state_dict()`` uses the official names."""

    version = "x060"
    Block = Block
    wkv_module = wkv6

    def sequence_core(self, fn):
        # the Triton kernel's value check is off here: the layer's own code made these values (w =
        # −exp(·) ≤ 0 by construction), and reading the check's flag would make every layer of every
        # forward wait for the GPU (chapter 07 measures the wait: 1.09 against 0.77 ms at T = 4096)
        kw = {"check_values": False} if getattr(fn, "__name__", "") == "triton_chunked" else {}

        def core(r, k, v, w, u, S):
            return fn(r, k, v, w, u, scale=1.0, initial_state=S, output_final_state=True, **kw)
        return core

    def step_core(self):
        def core(r, k, v, w, u, S):
            o, S = wkv6.step(r[:, 0], k[:, 0], v[:, 0], w[:, 0], u, state=S)
            return o[:, None], S
        return core

    @torch.no_grad()
    def init_weights(self, scheme: str = "rwkv", seed: int = 0) -> "RWKV6":
        """``"rwkv"``: RWKV-LM's starting recipe for x060; ``"random"``: everything non-zero (tests)."""
        g = torch.Generator().manual_seed(seed)
        if scheme == "random":
            random_init(self, g)
            return self
        if scheme != "rwkv":
            raise ValueError(f"scheme: expected 'rwkv' or 'random', got {scheme!r}")
        C, N, L = self.cfg.n_embd, self.cfg.head_size, self.cfg.n_layer
        ch = torch.arange(C, dtype=torch.float32)
        frac = (ch / C).reshape(1, 1, C)

        def uniform(t, a):
            t.copy_((torch.rand(t.shape, generator=g) * 2 - 1) * a)

        uniform(self.emb.weight, 1e-4)
        for i, blk in enumerate(self.blocks):
            deep, shallow = i / max(L - 1, 1), 1.0 - i / L
            att, ffn = blk.att, blk.ffn
            base = 1.0 - frac ** shallow
            for mu in (att.time_maa_x, att.time_maa_w, att.time_maa_k):
                mu.copy_(base)
            att.time_maa_v.copy_(1.0 - (frac ** shallow + 0.3 * deep))
            att.time_maa_r.copy_(1.0 - frac ** (0.5 * shallow))
            att.time_maa_g.copy_(1.0 - frac ** (0.5 * shallow))
            att.time_maa_w1.zero_()
            uniform(att.time_maa_w2, 0.01)
            att.time_decay.copy_((-6 + 5 * (ch / max(C - 1, 1)) ** (0.7 + 1.3 * deep)).reshape(1, 1, C))
            att.time_decay_w1.zero_()
            uniform(att.time_decay_w2, 0.01)
            zig = ((ch + 1) % 3 - 1) * 0.1
            att.time_faaaa.copy_((deep * (1 - ch / max(C - 1, 1)) + zig).reshape(-1, N))
            for lin, a in ((att.receptance, 0.5), (att.key, 0.05), (att.value, 0.5), (att.gate, 0.1)):
                uniform(lin.weight, a / C ** 0.5)
            att.output.weight.zero_()
            att.ln_x.weight.fill_(1.0)
            att.ln_x.bias.zero_()
            ffn.time_maa_k.copy_(1.0 - frac ** shallow)
            ffn.time_maa_r.copy_(1.0 - frac ** shallow)
            uniform(ffn.key.weight, 0.5 / C ** 0.5)
            uniform(ffn.receptance.weight, 0.5 / C ** 0.5)
            ffn.value.weight.zero_()
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
        nn.init.orthogonal_(self.head.weight, gain=0.5 * math.sqrt(max(self.cfg.vocab_size / C, 1)), generator=g)
        return self
