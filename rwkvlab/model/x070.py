"""RWKV-7 "Goose" (x070) language model, with the official RWKV-LM parameter names.

One block (RWKV-7 paper, arXiv 2503.14456, Eqs. 1–24; RWKV-LM ``RWKV_Tmix_x070``), x of shape [B, T, C], C = H·N::

    x_prev          = token_shift(x)                          previous token's input
    x_r … x_g       = x + (x_prev − x) ⊙ μ_□                 μ_□ = att.x_r, x_w, x_k, x_v, x_a, x_g
    r, k, v         = x_r W_r, x_k W_k, x_v W_v               receptance / key / value.weight
    d               = w0 + tanh(x_w w1) w2
    log w           = −exp(−softplus(−d) − 0.5) = −e^{−0.5} σ(d)       ∈ (−0.607, 0)
    v               = v + (v_first − v) ⊙ σ(v0 + x_v v1 v2)   (not in block 0, which sets v_first = v)
    a               = σ(a0 + x_a a1 a2)                       in-context learning rate
    g               = σ(x_g g1) g2                            output gate
    κ̂               = normalize_per_head(k ⊙ k_k)             removal key
    k̃               = k ⊙ (1 + (a − 1) ⊙ k_a)                 replacement key
    S_t             = diag(e^{w_t}) S + b_t (a_tᵀ S) + k̃_t v_tᵀ     with a = −κ̂, b = κ̂ ⊙ a   (rwkvlab.wkv7)
    o_t             = S_tᵀ r_t
    p               = GroupNorm_H(o) + ((r ⊙ k̃ ⊙ r_k) summed per head) v       bonus AFTER the norm
    att_out         = (g ⊙ p) W_o
    ffn_out         = relu(lerp(x', x'_prev, ffn.x_k) W_key)² W_value

Residual stream: ``x = ln0(emb)`` (block 0 only); ``x += att(ln1 x)``; ``x += ffn(ln2 x)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import rwkv7_ops as ops
from .. import wkv7
from ..wkv7.reference import _update as wkv7_update
from .common import GROUPNORM_EPS, BlockBase, LanguageModel, LayerState, Sizes, random_init



def lora_rank(C: int, factor: float) -> int:
    """RWKV-LM's suggested LoRA rank: factor·√C rounded to a multiple of 32, at least 32."""
    return max(32, int(round(factor * C ** 0.5 / 32)) * 32)


@dataclass
class Config(Sizes):
    """Sizes of an x070 model. LoRA ranks: decay (w), in-context rate (a), value residual (v), gate (g)."""
    d_decay: int = 32
    d_aaa: int = 32
    d_mv: int = 32
    d_gate: int = 32

    @classmethod
    def make(cls, vocab_size: int, n_embd: int, n_layer: int, head_size: int = 64, **kw) -> "Config":
        """Sizes with RWKV-LM's defaults: FFN 4C and the suggested LoRA ranks (override with ``kw``)."""
        d = dict(dim_ffn=4 * n_embd, d_decay=lora_rank(n_embd, 2.5), d_aaa=lora_rank(n_embd, 2.5),
                 d_mv=lora_rank(n_embd, 1.7), d_gate=lora_rank(n_embd, 5))
        d.update(kw)
        return cls(vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, head_size=head_size, **d)


#: the time mix's elementwise pieces as Triton kernels (``kernels_fused``: the token shift with its
#: six mixes, and GroupNorm + bonus + gate) instead of torch operations: None (the default) takes
#: them on a GPU, where they save passes over memory and launches; True also in the interpreter
#: (tests); False never. Same results either way (tests/test_model.py).
FUSED = None


def _fused(x: torch.Tensor) -> bool:
    if FUSED is not None:
        return bool(FUSED)
    from .. import device
    return x.is_cuda and not device.interpreting()


class TimeMix(nn.Module):
    """``att``: the RWKV-7 time mix around the generalised-delta-rule state."""

    def __init__(self, cfg: Config, layer_id: int):
        super().__init__()
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.layer_id, self.n_head = layer_id, H
        vec = lambda: nn.Parameter(torch.zeros(1, 1, C))  # noqa: E731
        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g = (vec() for _ in range(6))
        self.w0, self.w1, self.w2 = vec(), nn.Parameter(torch.zeros(C, cfg.d_decay)), nn.Parameter(torch.zeros(cfg.d_decay, C))
        self.a0, self.a1, self.a2 = vec(), nn.Parameter(torch.zeros(C, cfg.d_aaa)), nn.Parameter(torch.zeros(cfg.d_aaa, C))
        # RWKV-LM creates the value-residual LoRA in every block, block 0 included (where it is unused)
        self.v0, self.v1, self.v2 = vec(), nn.Parameter(torch.zeros(C, cfg.d_mv)), nn.Parameter(torch.zeros(cfg.d_mv, C))
        self.g1, self.g2 = nn.Parameter(torch.zeros(C, cfg.d_gate)), nn.Parameter(torch.zeros(cfg.d_gate, C))
        self.k_k, self.k_a = vec(), vec()
        self.r_k = nn.Parameter(torch.zeros(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=GROUPNORM_EPS)

    def log_decay(self, xw: torch.Tensor) -> torch.Tensor:
        """``log w = −exp(−softplus(−d) − 0.5)`` with ``d = w0 + tanh(x_w w1) w2``: in (−e^{−0.5}, 0)."""
        d = self.w0 + torch.tanh(xw @ self.w1) @ self.w2
        return -torch.exp(-F.softplus(-d) - 0.5)

    def projections(self, x: torch.Tensor, x_prev: torch.Tensor | None, v_first: torch.Tensor | None,
                    mixes: tuple | None = None):
        """Everything before the state update, for ``x`` [B, T, C]: a dict of [B, T, C] tensors.
        ``mixes``: the six token-shift mixes already made (the fused kernel's), else from ``x_prev``."""
        if mixes is None:
            mixes = ops.addcmul_mix(x, x_prev, self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g)
        xr, xw, xk, xv, xa, xg = mixes
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        if self.layer_id == 0:
            v_first = v                                   # the value residual starts here
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = ops.removal_key(k, self.k_k, self.n_head)
        k = ops.k_update(k, a, self.k_a)
        return dict(r=r, w=self.log_decay(xw), k=k, v=v, a=a, g=g, kk=kk, v_first=v_first)

    def forward(self, x, shift, S, v_first, core):
        B, T, C = x.shape
        H = self.n_head
        fused = _fused(x)
        if fused:   # the token shift and the six mixes in one Triton pass (kernels_fused)
            from ..wkv7 import kernels_fused as kf
            mixes = kf.fused_addcmul(x, self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g, shift_state=shift)
            p, last = self.projections(x, None, v_first, mixes=mixes), x[:, -1]
        else:
            x_prev, last = ops.token_shift(x, shift)
            p = self.projections(x, x_prev, v_first)
        heads = lambda t: t.reshape(B, T, H, C // H)  # noqa: E731
        r, w, k, v, a, kk = (heads(p[n]) for n in ("r", "w", "k", "v", "a", "kk"))
        # the WKV-7 call (RWKV-LM: RWKV7_OP(r, w, k, v, -kk, kk*a)): core is wkv7.<impl>(..., initial_state=S,
        # output_final_state=True) in parallel mode and wkv7.step in RNN mode (RWKV7.sequence_core / step_core)
        o, S = core(r, w, k, v, -kk, kk * a, S)
        if fused:   # GroupNorm, bonus and gate in one Triton pass
            o = kf.fused_output(o.reshape(B, T, C), p["r"], p["k"], p["v"], p["g"], self.ln_x.weight,
                                self.ln_x.bias, self.r_k, H, self.ln_x.eps)
            return self.output(o), last, S, p["v_first"]
        o = self.ln_x(o.reshape(B * T, C)).reshape(B, T, C)
        o = o + ops.output_correction(p["r"], p["k"], p["v"], self.r_k, H)
        return self.output(o * p["g"]), last, S, p["v_first"]


class ChannelMix(nn.Module):
    """``ffn``: token-shifted squared-ReLU MLP (no receptance gate in RWKV-7)."""

    def __init__(self, cfg: Config, layer_id: int):
        super().__init__()
        self.x_k = nn.Parameter(torch.zeros(1, 1, cfg.n_embd))
        self.key = nn.Linear(cfg.n_embd, cfg.dim_ffn, bias=False)
        self.value = nn.Linear(cfg.dim_ffn, cfg.n_embd, bias=False)

    def forward(self, x, shift):
        x_prev, last = ops.token_shift(x, shift)
        return ops.channel_mix(x, x_prev, self.x_k, self.key.weight, self.value.weight), last


class Block(BlockBase):
    """One residual block: ln1 → time mixing, ln2 → channel mixing (ln0 first in block 0)."""

    TimeMix = TimeMix
    ChannelMix = ChannelMix


class RWKV7(LanguageModel):
    """An RWKV-7 (x070) language model; ``state_dict()`` uses the official names."""

    version = "x070"
    Block = Block
    wkv_module = wkv7

    def sequence_core(self, fn):
        # log_decay keeps w in (−e^{−1/2}, 0), so the chunked kernel is told so and compiles without its
        # strong-decay path (an H200, B=4, T=4096, H=32: 1.61 against 2.52 ms forward;
        # benchmarks/results/h200_wkv7_v3_2026-12-01.txt). The margin of 0.1 % covers a device exp
        # that rounds e^{−1/2} a few ulps up; bf16/fp16 round the bound inward anyway
        bound = wkv7.RWKV7_LOWER_BOUND * 1.001
        # and its value check is off: the layer's own code made these values (w within the bound by
        # construction), and reading the check's flag would make every layer of every forward wait
        # for the GPU (chapter 11 measures the wait: 1.50 against 1.26 ms at that shape)
        kw = {"lower_bound": bound, "check_values": False} if getattr(fn, "__name__", "") == "triton_chunked" else {}

        def core(r, w, k, v, a, b, S):
            return fn(r, w, k, v, a, b, scale=1.0, initial_state=S, output_final_state=True, **kw)
        return core

    def step_core(self):
        def core(r, w, k, v, a, b, S):
            if S is None:                                  # a fresh sequence starts from zeros
                S = torch.zeros(*r.shape[:1], *r.shape[2:], v.shape[-1], dtype=torch.float32, device=r.device)
            o, S = wkv7.step(r[:, 0], w[:, 0], k[:, 0], v[:, 0], a[:, 0], b[:, 0], state=S)
            return o[:, None], S
        return core

    @torch.no_grad()
    def init_weights(self, scheme: str = "rwkv", seed: int = 0) -> "RWKV7":
        """Fill the parameters. ``"rwkv"``: the recipe RWKV-LM trains from (zero output maps,
        per-channel spread of token-shift weights and decay biases); ``"random"``: every
        parameter non-zero and of moderate size, so that every path matters in a test."""
        g = torch.Generator().manual_seed(seed)
        C, N, L = self.cfg.n_embd, self.cfg.head_size, self.cfg.n_layer

        def uniform(t, a):
            t.copy_((torch.rand(t.shape, generator=g) * 2 - 1) * a)

        if scheme == "random":
            random_init(self, g)
            return self
        if scheme != "rwkv":
            raise ValueError(f"scheme: expected 'rwkv' or 'random', got {scheme!r}")

        ch = torch.arange(C, dtype=torch.float32)
        frac = (ch / C).reshape(1, 1, C)                                 # 0 … (C−1)/C
        linear = (ch / max(C - 1, 1) - 0.5).reshape(1, 1, C)             # −0.5 … 0.5
        zig = ((ch % N) - (N - 1) / 2) / max((N - 1) / 2, 1e-9)
        zig = (zig * zig.abs()).reshape(1, 1, C)                        # per-head zigzag in [−1, 1]

        def ortho(t, scale):
            nn.init.orthogonal_(t, gain=scale * (math.sqrt(t.shape[0] / t.shape[1]) if t.shape[0] > t.shape[1] else 1),
                                generator=g)

        uniform(self.emb.weight, 1e-4)
        for i, blk in enumerate(self.blocks):
            deep = i / max(L - 1, 1)                                     # 0 → 1 through the stack
            shallow = 1.0 - i / L                                        # 1 → ~0
            att, ffn = blk.att, blk.ffn
            for mu, p in ((att.x_r, 0.2), (att.x_w, 0.9), (att.x_k, 0.7), (att.x_v, 0.7), (att.x_a, 0.9), (att.x_g, 0.2)):
                mu.copy_(1.0 - frac ** (p * shallow))
            decay_bias = -6 + 6 * (ch / max(C - 1, 1)) ** (1 + deep ** 0.3)
            att.w0.copy_(decay_bias.reshape(1, 1, C) + 0.5 + zig * 2.5)
            att.a0.copy_(-0.19 + zig * 0.3 + linear * 0.4)
            att.v0.copy_(0.73 - linear * 0.4)
            for lo, hi in ((att.w1, att.w2), (att.a1, att.a2), (att.v1, att.v2), (att.g1, att.g2)):
                lo.zero_()
                ortho(hi, 0.1)
            att.k_k.copy_(0.71 - linear * 0.1)
            att.k_a.fill_(1.02)
            att.r_k.fill_(-0.04)
            uniform(att.receptance.weight, 0.5 / C ** 0.5)
            uniform(att.key.weight, 0.05 / C ** 0.5)
            uniform(att.value.weight, 0.5 / C ** 0.5)
            att.output.weight.zero_()
            att.ln_x.weight.fill_(1.0)
            att.ln_x.bias.zero_()
            ffn.x_k.copy_(1.0 - frac ** (shallow ** 4))
            uniform(ffn.key.weight, 0.5 / C ** 0.5)
            ffn.value.weight.zero_()
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
        ortho(self.head.weight, 0.5)
        return self


# ------------------------------------------------------------------------------------ RNN mode, lean


class PackedBlock(NamedTuple):
    """One block's weights as :class:`Decoder` packs them (the arguments of :func:`decode_block`)."""
    layer_id: int
    ln1w: torch.Tensor
    ln1b: torch.Tensor
    ln2w: torch.Tensor
    ln2b: torch.Tensor
    mu: torch.Tensor            # [6, 1, C]  token-shift weights, order r, k, v, w, a, g
    W_rkv: torch.Tensor         # [3, C, C]  receptance, key, value maps, [in, out]
    down: torch.Tensor          # [4, C, D]  LoRA down-maps of v, w, a, g (zero-padded to rank D)
    up: torch.Tensor            # [4, D, C]  their up-maps
    bias: torch.Tensor          # [3, 1, C]  v0, w0, a0
    k_k: torch.Tensor           # [H, N]     (these four per head, as the time mix uses them)
    k_a: torch.Tensor           # [H, N]
    one_minus_k_a: torch.Tensor # [H, N]
    r_k: torch.Tensor           # [H, N]
    lnxw: torch.Tensor
    lnxb: torch.Tensor
    W_oT: torch.Tensor          # [C, C]     output map, [in, out]
    mu_f: torch.Tensor
    W_fkT: torch.Tensor         # [C, F]     channel-mix key, [in, out]
    W_fvT: torch.Tensor         # [F, C]     channel-mix value, [in, out]


class Decoder:
    """RWKV-7 in RNN mode for inference: the model's weights packed once, one token per call.

    Same equations as ``TimeMix``/``ChannelMix`` with ``T = 1``, and the same WKV update as
    ``wkv7.step``: unfused, the decoder calls the function that ``wkv7.step`` runs once its inputs are
    checked (``rwkvlab.wkv7.reference._update``), in place; fused (below), one Triton kernel computes
    the same update in float32. Three differences only change speed:

    * **fewer, larger operations**: the six token-shift mixes are one broadcast ``lerp``
      ([6, B, C]); the receptance/key/value maps one ``bmm`` over weights stacked [3, C, C];
      the four LoRA down-maps (value residual, decay, in-context rate, gate; padded with zeros
      to one rank, which adds exact zeros) one ``bmm``, and their up-maps another;
    * **nothing is checked or read back**: no shape, range or finiteness tests and no ``.item()``,
      so a CUDA step never waits for the device and can be captured in a CUDA graph (the caller
      checks once: :meth:`LanguageModel.step` per call, ``generate`` per call);
    * **the state is updated in place** (:meth:`step_` overwrites the tensors it is given).

    ``script`` picks the TorchScript-compiled block (``True``), the plain Python function
    (``False``: what a profiler should look at, one ATen call per line) or, by default, the plain
    function for the first ``SCRIPT_AFTER`` steps and then the compiled one (CPU, float32/float64).
    ``dtype`` sets the weights' and activations' precision (default: the model's); the WKV state
    stays in float32 (float64 for a float64 model) and the WKV update runs in it, as in
    ``wkv7.step``. ``fused`` runs the WKV part of each block (value residual, removal and
    replacement keys, state update, GroupNorm, bonus, gate) as one Triton kernel
    (``rwkvlab.wkv7.kernels_decode``, float32 math for float32/float16/bfloat16 weights) instead of
    some two dozen torch operations (:func:`decode_wkv`), and the elementwise work around the matrix
    products in three more (LayerNorm with the token-shift mixes, the LoRA activations, relu²): eleven
    launches a block instead of nineteen (:func:`_fused_block`); by default on CUDA, where each
    operation is a kernel launch even in a captured graph, and not on CPU. ``fused=True`` on CPU runs it in the
    Triton interpreter (for tests) and takes precedence over ``script``.

    Memory: on CPU the decoder holds a copy of every weight matrix, laid out [in, out] (faster
    one-row products there); on a GPU only the stacked pieces are copies and the other matrices
    are views of the model's own tensors.
    """

    SCRIPT_AFTER = 2048     # eager steps before the automatic switch to the TorchScript block

    def __init__(self, model: "RWKV7", dtype: torch.dtype | None = None, script: bool | None = None,
                 fused: bool | None = None):
        c = model.cfg
        self.script = script
        self.steps = 0
        ref = model.emb.weight
        self.dtype = dtype or ref.dtype
        self.acc = torch.float64 if self.dtype == torch.float64 else torch.float32
        self.device = ref.device
        if fused is None:
            fused = self.device.type == "cuda" and self.acc == torch.float32
        elif fused:
            if self.acc != torch.float32:
                raise ValueError(f"fused: the fused WKV kernel computes in float32; a {self.dtype} decoder "
                                 "takes the torch path (fused=False)")
            from .. import validate

            validate.kernel_device("fused", ref)
        self.fused = bool(fused)
        self.C, self.H, self.N, self.V = c.n_embd, c.n_head, c.head_size, c.vocab_size
        self.eps = model.blocks[0].att.ln_x.eps
        D = max(c.d_mv, c.d_decay, c.d_aaa, c.d_gate)

        def t(p):                                          # the model's tensor, in our dtype
            return p.detach().to(self.dtype)

        # weight matrices as x @ W wants them, [in, out]: on CPU a contiguous copy (one-row
        # products over a contiguous [in, out] matrix ran 1.1-2.2x faster than over the transposed
        # view of nn.Linear's [out, in] weight, from 64x256 to the 65,536-row head); on a GPU the
        # view (cuBLAS reads either layout well, and the memory is not doubled)
        copy = self.device.type == "cpu"

        def tT(p):
            w = t(p).t()
            return w.contiguous() if copy else w

        def padded(ps, rows):                              # stack LoRA factors, zero-padded to rank D
            out = torch.zeros(len(ps), *((self.C, D) if rows else (D, self.C)), dtype=self.dtype, device=self.device)
            for i, p in enumerate(ps):
                if rows:
                    out[i, :, :p.shape[1]] = p.detach()
                else:
                    out[i, :p.shape[0]] = p.detach()
            return out

        self.emb, self.ln0 = t(ref), (t(model.blocks[0].ln0.weight), t(model.blocks[0].ln0.bias))
        self.layers = []
        for blk in model.blocks:
            a, f = blk.att, blk.ffn
            vec = lambda p: t(p).reshape(self.C)  # noqa: E731
            head = lambda p: t(p).reshape(self.H, self.N)  # noqa: E731
            self.layers.append(PackedBlock(
                blk.layer_id,
                t(blk.ln1.weight), t(blk.ln1.bias), t(blk.ln2.weight), t(blk.ln2.bias),
                # mixes in the order r, k, v, w, a, g: [:3] feed the r/k/v maps, [2:] the LoRAs (v, w, a, g)
                torch.stack([vec(m) for m in (a.x_r, a.x_k, a.x_v, a.x_w, a.x_a, a.x_g)])[:, None],
                torch.stack([t(lin.weight).t() for lin in (a.receptance, a.key, a.value)]).contiguous(),
                padded([a.v1, a.w1, a.a1, a.g1], rows=True),
                padded([a.v2, a.w2, a.a2, a.g2], rows=False),
                torch.stack([vec(a.v0), vec(a.w0), vec(a.a0)])[:, None],      # biases of v, w, a
                head(a.k_k), head(a.k_a), 1 - head(a.k_a), head(a.r_k),
                t(a.ln_x.weight), t(a.ln_x.bias), tT(a.output.weight),
                vec(f.x_k), tT(f.key.weight), tT(f.value.weight),
            ))
        self.ln_out = (t(model.ln_out.weight), t(model.ln_out.bias))
        self.headT = tT(model.head.weight)

    # -- state ---------------------------------------------------------------------------------
    def new_state(self, batch: int) -> list[LayerState]:
        """Zeros for ``batch`` sequences, in the decoder's dtypes."""
        z = lambda *s, dt: torch.zeros(*s, dtype=dt, device=self.device)  # noqa: E731
        return [LayerState(z(batch, self.C, dt=self.dtype), z(batch, self.H, self.N, self.N, dt=self.acc),
                           z(batch, self.C, dt=self.dtype)) for _ in self.layers]

    def own_state(self, state, batch: int) -> list[LayerState]:
        """A private copy of ``state`` (or zeros for ``None``) that :meth:`step_` may overwrite."""
        if state is None:
            return self.new_state(batch)
        def mine(t, dt):
            return t.clone(memory_format=torch.contiguous_format) if t.dtype == dt else t.to(dt).contiguous()
        return [LayerState(mine(s, self.dtype), mine(S, self.acc), mine(f, self.dtype)) for s, S, f in state]

    # -- one token -------------------------------------------------------------------------------
    def step_(self, token: torch.Tensor, state: list[LayerState]) -> torch.Tensor:
        """Read ``token`` [B] (int64, in range: not checked), update ``state`` in place; logits [B, V]."""
        C = self.C
        self.steps += 1
        x = torch.layer_norm(torch.embedding(self.emb, token), (C,), self.ln0[0], self.ln0[1], 1e-5, False)
        v_first = x                                          # replaced in block 0
        block = self._block()
        for (lid, *w), (shift, S, fshift) in zip(self.layers, state):
            x, v_first = block(x, shift, S, fshift, v_first, lid, self.H, self.N, self.eps, self.acc, self.fused, *w)
        return torch.mm(torch.layer_norm(x, (C,), self.ln_out[0], self.ln_out[1], 1e-5, False), self.headT)

    def _block(self):
        # TorchScript on CPU: at small sizes a step is all per-operation overhead, and the scripted
        # block skips the interpreter between operations (~1.3x the eager Python on 2 cores). Its
        # first call costs ~0.1 s (compile + profiling runs) against ~60 µs saved per step at the
        # chapter-14 size, so by default it takes over only after SCRIPT_AFTER eager steps (short
        # runs, and the CLI's start-up, never pay for it); compile() switches at once.
        # On CUDA the eager function: a captured graph removes that overhead there, and the script
        # executor's fusers would make the captured work depend on its profiling runs. The fused
        # WKV kernel is a Triton launch, which TorchScript cannot compile: always the Python block.
        if self.fused:
            use = False
        elif self.script is None:
            use = self.device.type == "cpu" and self.acc == self.dtype and self.steps > self.SCRIPT_AFTER
        else:
            use = self.script
        return _scripted_block() if use else decode_block

    def compile(self) -> "Decoder":
        """Switch to the TorchScript block now (CPU, float32/float64 weights) and pay its one-time
        cost here: compilation and the script executor's profiling runs, on a scratch state."""
        if self.device.type == "cpu" and self.acc == self.dtype:
            self.script = True
            scratch = self.new_state(1)
            tok = torch.zeros(1, dtype=torch.long, device=self.device)
            with torch.inference_mode():
                for _ in range(3):
                    self.step_(tok, scratch)
        return self


def decode_block(x: torch.Tensor, shift: torch.Tensor, S: torch.Tensor, fshift: torch.Tensor, v_first: torch.Tensor,
                 lid: int, H: int, N: int, eps: float, acc: torch.dtype, fused: bool,
                 ln1w: torch.Tensor, ln1b: torch.Tensor, ln2w: torch.Tensor, ln2b: torch.Tensor, mu: torch.Tensor,
                 W_rkv: torch.Tensor, down: torch.Tensor, lora_up: torch.Tensor, bias: torch.Tensor,
                 k_k: torch.Tensor, k_a: torch.Tensor, one_minus_k_a: torch.Tensor, r_k: torch.Tensor,
                 lnxw: torch.Tensor, lnxb: torch.Tensor, W_oT: torch.Tensor, mu_f: torch.Tensor,
                 W_fkT: torch.Tensor, W_fvT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of :meth:`Decoder.step_`: ``x`` [B, C] → ``(x, v_first)``; ``shift``, ``S`` and
    ``fshift`` (this block's state) are overwritten. Weights as packed by :class:`Decoder`.
    ``fused``: the same block with its elementwise work in Triton kernels (:func:`_fused_block`).

    Written in the TorchScript subset (it is scripted for CPU) and from ATen operators directly
    (``torch.layer_norm``, not ``F.layer_norm``'s Python wrapper); additions folded into ``addmm``."""
    if fused and not torch.jit.is_scripting():           # TorchScript compiles only the torch path
        return _fused_block(x, shift, S, fshift, v_first, lid, H, N, eps, ln1w, ln1b, ln2w, ln2b, mu, W_rkv, down,
                            lora_up, bias, k_k, k_a, r_k, lnxw, lnxb, W_oT, mu_f, W_fkT, W_fvT)
    B, C = x.shape[0], x.shape[1]
    # ---- time mix
    xa = torch.layer_norm(x, [C], ln1w, ln1b, 1e-5, False)
    mixes = torch.lerp(xa, shift, mu)                      # [6, B, C]: x + (x_prev − x) ⊙ μ, order r k v w a g
    shift.copy_(xa)
    rkv = torch.bmm(mixes[:3], W_rkv).view(3, B, H, N)     # receptance, key, value, per head from here on
    r, k, v = rkv[0], rkv[1], rkv[2]
    h = torch.bmm(mixes[2:], down)                         # LoRA down-maps of v, w, a, g
    h[1].tanh_()
    h[3].sigmoid_()
    lo = torch.bmm(h, lora_up)
    gates = lo[:3].add_(bias).sigmoid_().view(3, B, H, N)  # σ(v0 + ·), σ(d), a = σ(a0 + ·)
    if lid == 0:
        v_first = v                                        # the value residual starts here
    # ---- value residual, keys, WKV update, read-out, bonus, gate: [B, C] = o ⊙ g
    o = decode_wkv(S, r, k, v, v_first, gates, lo[3], lid != 0, eps, acc, k_k, k_a, one_minus_k_a, r_k,
                   lnxw, lnxb)
    x = torch.addmm(x, o, W_oT)                            # x + (o ⊙ g) W_o
    # ---- channel mix
    xf = torch.layer_norm(x, [C], ln2w, ln2b, 1e-5, False)
    kf = torch.lerp(xf, fshift, mu_f)
    fshift.copy_(xf)
    x = torch.addmm(x, torch.mm(kf, W_fkT).relu_().square_(), W_fvT)
    return x, v_first


def decode_wkv(S: torch.Tensor, r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, v_first: torch.Tensor,
               gates: torch.Tensor, g: torch.Tensor, mix_v: bool, eps: float, acc: torch.dtype,
               k_k: torch.Tensor, k_a: torch.Tensor, one_minus_k_a: torch.Tensor, r_k: torch.Tensor,
               lnxw: torch.Tensor, lnxb: torch.Tensor) -> torch.Tensor:
    """The WKV part of :func:`decode_block` in torch: ``r, k, v, v_first`` [B, H, N], ``gates``
    [3, B, H, N] (σ_v, σ(d), a), ``g`` [B, C]; ``S`` [B, H, N, N] is updated in place. Returns
    ``o ⊙ g`` [B, C]: the value residual (``mix_v``), κ̂ and k̃, ``wkv7``'s own unchecked step, the
    heads' GroupNorm and the bonus, as in ``TimeMix``. ``rwkvlab.wkv7.kernels_decode`` does the same
    in one Triton kernel."""
    B, H, N = r.shape[0], r.shape[1], r.shape[2]
    if mix_v:
        v = torch.lerp(v, v_first, gates[0])               # v + (v_first − v) ⊙ σ(...)
    a = gates[2]
    kk = k * k_k                                           # removal key κ̂ = normalize(k ⊙ k_k) per head
    kk = kk / torch.linalg.vector_norm(kk, 2.0, [-1], True).clamp_min(1e-12)
    k = k * torch.addcmul(one_minus_k_a, a, k_a)           # k̃ = k ⊙ (1 + (a − 1) ⊙ k_a)
    # ---- the WKV update: wkv7's own unchecked step (a = −κ̂, b = κ̂ ⊙ a), in place, in the state's dtype
    log_w, a_, b_ = gates[1] * -0.6065306597126334, kk.neg(), kk * a     # log w = −e^{−0.5} σ(d)
    if acc == r.dtype:
        o = wkv7_update(S, r, log_w, k, v, a_, b_, 1.0, True)[0]
    else:
        o = wkv7_update(S, r.to(acc), log_w.to(acc), k.to(acc), v.to(acc), a_.to(acc), b_.to(acc), 1.0, True)[0]
        o = o.to(r.dtype)
    # ---- read-out: per-head norm, bonus, gate
    o = torch.group_norm(o.view(B, H * N), H, lnxw, lnxb, eps, False)
    bonus = (r * k * r_k).sum(-1, keepdim=True)
    o.view(B, H, N).addcmul_(bonus, v)
    return o.mul_(g)


def _fused_block(x, shift, S, fshift, v_first, lid: int, H: int, N: int, eps: float, ln1w, ln1b, ln2w, ln2b, mu,
                 W_rkv, down, lora_up, bias, k_k, k_a, r_k, lnxw, lnxb, W_oT, mu_f, W_fkT, W_fvT):
    # decode_block with everything but the matrix products in Triton (rwkvlab.wkv7.kernels_decode):
    # eleven launches a block where the torch path makes one for each operation. The module is
    # imported on first use: the model on CPU and the command line start without Triton
    from ..wkv7 import kernels_decode as kd

    B, C = x.shape[0], x.shape[1]
    # ---- time mix: LayerNorm, the six mixes and the new shift in one launch
    mixes = kd.token_mix_decode(x, shift, mu, ln1w, ln1b)            # [6, B, C], order r k v w a g
    rkv = torch.bmm(mixes[:3], W_rkv).view(3, B, H, N)
    h = kd.lora_act_decode(torch.bmm(mixes[2:], down))             # tanh on the decay's, σ on the gate's
    lo = torch.bmm(h, lora_up).view(4, B, H, N)                    # pre-activations; the kernel adds the biases
    if lid == 0:
        v_first = rkv[2]
    o = kd.fused_wkv_decode(S, rkv[0], rkv[1], rkv[2], lo[1], lo[2], lo[3].view(B, C), k_k, k_a, r_k, lnxw, lnxb, eps,
                            v_first if lid != 0 else None, lo[0] if lid != 0 else None, gate_bias=bias)
    x = torch.addmm(x, o, W_oT)
    # ---- channel mix: LayerNorm, mix and shift in one launch, relu² in another
    kf = kd.token_mix_decode(x, fshift, mu_f, ln2w, ln2b)[0]
    x = torch.addmm(x, kd.relu_square_decode(torch.mm(kf, W_fkT)), W_fvT)
    return x, v_first


_SCRIPTED = []


def _scripted_block():
    """``decode_block`` compiled by TorchScript on first use (not at import: CLI start-up), or the
    plain function where scripting is unavailable (TorchScript is deprecated in recent torch)."""
    if not _SCRIPTED:
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _SCRIPTED.append(torch.jit.script(decode_block))
        except Exception:  # noqa: BLE001  (a torch without TorchScript: the same function, uncompiled)
            _SCRIPTED.append(decode_block)
    return _SCRIPTED[0]


RWKV7.Decoder = Decoder
