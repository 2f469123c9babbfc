"""What RWKV-6 and RWKV-7 language models share: the stack, the state, the two modes, sampling.

A model is ``emb → blocks → ln_out → head`` with the official RWKV-LM parameter names, so
``model.state_dict()`` *is* an official checkpoint. Each block carries three pieces of
recurrent state per sequence: the time-mix token-shift input ``[B, C]``, the WKV matrix
``[B, H, N, N]`` (float32, the K×V layout of the wkv contract) and the channel-mix token-shift input
``[B, C]``. That is all an RWKV model remembers, however long the text.

Two modes run the same blocks:

* parallel — ``model(idx, state)``: the WKV core is one of the sequence implementations of
  :mod:`rwkvlab.wkv6` / :mod:`rwkvlab.wkv7` (``chunked`` by default on CPU);
* RNN — ``model.step(token, state)``: the core is the one-token ``step``; memory is O(1) in T.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn

from .. import device as _device
from .. import validate


class LayerState(NamedTuple):
    """Recurrent state of one block: token-shift inputs and the WKV matrix."""
    att_shift: torch.Tensor   # [B, C]    last input of the time mix
    wkv: torch.Tensor         # [B, H, N, N] float32, K×V layout
    ffn_shift: torch.Tensor   # [B, C]    last input of the channel mix


def state_nbytes(state: list[LayerState]) -> int:
    """Bytes held by a model state (it does not grow with the number of tokens read)."""
    return sum(t.numel() * t.element_size() for layer in state for t in layer)


def state_detach(state: list[LayerState] | None):
    """Cut the autograd graph at a state (truncated back-propagation through time)."""
    if state is None:
        return None
    return [LayerState(*(t.detach() for t in layer)) for layer in state]


@dataclass
class Sizes:
    """Sizes every version shares; the version configs add their LoRA ranks."""
    vocab_size: int
    n_embd: int
    n_layer: int
    head_size: int
    dim_ffn: int

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    def _check(self):
        for name in ("vocab_size", "n_embd", "n_layer", "head_size", "dim_ffn"):
            val = getattr(self, name)
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name}: expected a positive int, got {val!r}")
        if self.n_embd % self.head_size:
            raise ValueError(f"head_size: must divide n_embd = {self.n_embd}, got {self.head_size}")


def default_impl(x: torch.Tensor) -> str:
    """The WKV core for tensors like ``x``: the chunked Triton kernel for CUDA tensors, plain-torch
    ``chunked`` for CPU tensors (in the interpreter the torch form is the faster one, and on a
    GPU machine compiled kernels cannot take CPU tensors)."""
    return "triton_chunked" if x.is_cuda and _device.has_gpu() else "chunked"


def resolve_core(module, impl: str):
    """The sequence implementation ``impl`` of a wkv module (``naive``, ``chunked``, ``triton_*``)."""
    if not isinstance(impl, str):
        raise ValueError(f"impl: expected a name such as 'chunked', got {impl!r}")
    fn = getattr(module, impl, None)
    if fn is None or impl.startswith("_") or impl == "step":
        have = sorted(n for n in ("naive", "chunked", "triton_recurrent", "triton_chunked") if hasattr(module, n))
        raise ValueError(f"impl: {module.__name__} has no sequence implementation {impl!r}; available: {have}")
    return fn


def check_tokens(name: str, idx, vocab_size: int, ndim: int, device: torch.device | None = None) -> torch.Tensor:
    """Token ids: an int tensor of rank ``ndim`` on ``device`` (the model's), ids in [0, vocab_size).
    Structure and device first; the ids' values are read last."""
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name}: expected an integer (int64) tensor of token ids, got "
                         f"{type(idx).__name__ if not isinstance(idx, torch.Tensor) else idx.dtype}")
    if idx.ndim != ndim:
        shape = "[B, T]" if ndim == 2 else "[B]"
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(idx.shape)}")
    if idx.numel() == 0:
        raise ValueError(f"{name}: expected at least one token, got shape {tuple(idx.shape)}")
    if device is not None and idx.device != device:
        raise ValueError(f"{name}: expected a tensor on the model's device ({device}), got one on {idx.device}")
    validate.has_data(name, idx)
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name}: token ids must lie in [0, {vocab_size}), got range [{lo}, {hi}]")
    return idx.long()


class BlockBase(nn.Module):
    """The block both versions share; subclasses name their ``TimeMix`` and ``ChannelMix``."""

    TimeMix: type[nn.Module]
    ChannelMix: type[nn.Module]

    def __init__(self, cfg: Sizes, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(cfg.n_embd)
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.att = self.TimeMix(cfg, layer_id)
        self.ffn = self.ChannelMix(cfg, layer_id)

    def forward(self, x, layer: LayerState | None, v_first, core):
        att_shift, S, ffn_shift = layer if layer is not None else (None, None, None)
        if self.layer_id == 0:
            x = self.ln0(x)
        dx, att_shift, S, v_first = self.att(self.ln1(x), att_shift, S, v_first, core)
        x = x + dx
        dx, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
        return x + dx, LayerState(att_shift, S, ffn_shift), v_first


class LanguageModel(nn.Module):
    """The stack around the blocks; subclasses define ``Block`` and ``version``."""

    version = "?"
    Block: type = nn.Module
    wkv_module = None

    def __init__(self, cfg):
        super().__init__()
        cfg._check()
        self.cfg = cfg
        self.impl = None          # None: chosen per call from the input's device (default_impl)
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList([self.Block(cfg, i) for i in range(cfg.n_layer)])
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    # -- state -------------------------------------------------------------------------------
    def empty_state(self, batch: int) -> list[LayerState]:
        """A fresh state (zeros) for ``batch`` sequences: what ``state=None`` means."""
        c = self.cfg
        dev, dt = self.emb.weight.device, self.emb.weight.dtype
        return [LayerState(torch.zeros(batch, c.n_embd, device=dev, dtype=dt),
                           torch.zeros(batch, c.n_head, c.head_size, c.head_size, device=dev, dtype=torch.float32),
                           torch.zeros(batch, c.n_embd, device=dev, dtype=dt))
                for _ in range(c.n_layer)]

    def _check_state(self, state, batch: int):
        if state is None:
            return [None] * self.cfg.n_layer
        c = self.cfg
        if not isinstance(state, (list, tuple)) or len(state) != c.n_layer:
            raise ValueError(f"state: expected a list of {c.n_layer} LayerState (one per block), got "
                             f"{type(state).__name__} of length {len(state) if hasattr(state, '__len__') else '?'}")
        want = ((batch, c.n_embd), (batch, c.n_head, c.head_size, c.head_size), (batch, c.n_embd))
        dev = self.emb.weight.device
        for i, layer in enumerate(state):
            for field, t, shp in zip(LayerState._fields, layer, want):
                if not isinstance(t, torch.Tensor) or tuple(t.shape) != shp:
                    got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                    raise ValueError(f"state: block {i} {field} expected shape {shp}, got {got}")
                if t.device != dev:
                    raise ValueError(f"state: block {i} {field} expected on the model's device ({dev}), got {t.device}")
        return list(state)

    # -- the two modes -------------------------------------------------------------------------
    def _run(self, x, state, core):
        x = x  # [B, T, C]
        new_state = []
        v_first = None
        for block, layer in zip(self.blocks, state):
            x, layer, v_first = block(x, layer, v_first, core)
            new_state.append(layer)
        return self.head(self.ln_out(x)), new_state

    def forward(self, idx: torch.Tensor, state: list[LayerState] | None = None, impl: str | None = None):
        """Parallel mode. ``idx`` [B, T] token ids → ``(logits [B, T, vocab], state)``."""
        idx = check_tokens("idx", idx, self.cfg.vocab_size, 2, self.emb.weight.device)
        state = self._check_state(state, idx.shape[0])
        fn = resolve_core(self.wkv_module, impl or self.impl or default_impl(idx))
        return self._run(self.emb(idx), state, self.sequence_core(fn))

    def step(self, token: torch.Tensor, state: list[LayerState] | None = None):
        """RNN mode. ``token`` [B] ids → ``(logits [B, vocab], state)``; O(1) memory per token."""
        token = check_tokens("token", token, self.cfg.vocab_size, 1, self.emb.weight.device)
        state = self._check_state(state, token.shape[0])
        logits, state = self._run(self.emb(token)[:, None], state, self.step_core())
        return logits[:, 0], state

    # subclasses: adapters from [B, T, H, N] tensors to the wkv module's functions
    def sequence_core(self, fn):  # pragma: no cover - abstract
        raise NotImplementedError

    def step_core(self):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- generation ----------------------------------------------------------------------------
    def generate(self, prompt_ids: list[int], n_tokens: int, temperature: float = 1.0, top_p: float = 0.85,
                 seed: int | None = 0, state=None):
        """An iterator over ``n_tokens`` sampled token ids: the prompt is read in parallel mode,
        every new token in RNN mode (one ``step`` each), so memory stays constant while generating.
        Bad arguments raise here, before anything is computed."""
        n_tokens = validate.positive_int("n_tokens", n_tokens, minimum=0)
        temperature, top_p = check_sampling(temperature, top_p)
        if not prompt_ids:
            raise ValueError("prompt_ids: expected at least one token (RWKV World models use 0 as a start token)")
        gen = torch.Generator(device="cpu")
        if seed is not None:
            gen.manual_seed(seed)
        idx = torch.tensor([list(prompt_ids)], device=self.emb.weight.device)

        @torch.no_grad()
        def tokens(state):
            logits, state = self(idx, state)
            logits = logits[:, -1]
            for _ in range(n_tokens):
                tok = sample(logits[0], temperature, top_p, gen)
                yield tok
                logits, state = self.step(torch.tensor([tok], device=idx.device), state)

        return tokens(state)


def check_sampling(temperature, top_p) -> tuple[float, float]:
    """``temperature``: a finite number >= 0 (0 = greedy); ``top_p``: a number in (0, 1]."""
    if validate.real("temperature", temperature) < 0:
        raise ValueError(f"temperature: expected >= 0 (0 = greedy), got {temperature}")
    if not 0 < validate.real("top_p", top_p) <= 1:
        raise ValueError(f"top_p: expected a value in (0, 1], got {top_p}")
    return float(temperature), float(top_p)


def sample(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 0.85, generator=None) -> int:
    """Nucleus sampling: keep the most likely tokens whose probabilities add up to ``top_p``,
    sharpen or flatten with ``temperature``, draw one. ``temperature == 0`` is greedy.

    The temperature divides the logits (in float64, after subtracting their maximum), so every
    weight lies in [0, 1] with the top token at exactly 1: stable for any temperature > 0, down
    to 1e-300, where it becomes the argmax. ``-inf`` logits (masked tokens) are allowed; NaN or
    ``+inf`` logits are an error.
    """
    temperature, top_p = check_sampling(temperature, top_p)
    validate.tensor("logits", logits, ndim=1, finite=False)
    logits = logits.detach().double().cpu()
    if logits.numel() == 0 or torch.isnan(logits).any() or (logits == float("inf")).any() \
            or not (logits > float("-inf")).any():
        raise ValueError("logits: expected finite values (or -inf for masked tokens, not all of them); "
                         "got NaN, +inf or nothing to sample")
    if temperature == 0:
        return int(logits.argmax())
    sorted_l, order = torch.sort(logits, descending=True)
    sorted_p = torch.softmax(sorted_l, -1)
    keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p          # always keeps the top token
    z = torch.where(keep, (sorted_l - sorted_l[0]) / temperature, float("-inf"))   # <= 0, top token 0
    weights = torch.exp(z)                                       # softmax(logits / T) on the nucleus
    choice = torch.multinomial(weights / weights.sum(), 1, generator=generator)
    return int(order[choice])


@torch.no_grad()
def random_init(model: nn.Module, g: torch.Generator) -> None:
    """Every parameter random and of moderate size: a test model in which every path matters
    (the training recipe zeroes the output maps, which would hide mistakes in a test)."""
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        parent = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
        u = torch.rand(p.shape, generator=g) * 2 - 1
        if name == "emb.weight":
            p.copy_(u)
        elif leaf == "weight" and parent.startswith("ln"):
            p.copy_(1 + 0.2 * u)                       # LayerNorm / GroupNorm gains near 1
        elif leaf == "bias":
            p.copy_(0.1 * u)
        elif leaf == "weight":                         # nn.Linear [out, in]
            p.copy_(u / p.shape[1] ** 0.5)
        elif p.ndim == 3:                              # RWKV-6's five stacked mix LoRAs [5, D, C]
            p.copy_(u / p.shape[1] ** 0.5)
        elif p.ndim == 2 and leaf[-1] in "12":         # LoRA factors used as x @ W
            p.copy_(u / p.shape[0] ** 0.5)
        elif leaf.startswith(("x_", "time_maa_")) and leaf not in ("time_maa_w1", "time_maa_w2"):
            p.copy_((u + 1) / 2)                       # token-shift weights in [0, 1]
        else:
            p.copy_(0.5 * u)
