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

# the heads' GroupNorm (``ln_x``) of both versions: 1e-5 · head_size_divisor² with divisor 8, as in
# RWKV-LM's ``RWKV_Tmix_x060`` / ``RWKV_Tmix_x070``
GROUPNORM_EPS = 64e-5


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


def check_tokens(name: str, idx, vocab_size: int, ndim: int, device: torch.device | None = None,
                 values: bool = True) -> torch.Tensor:
    """Token ids: an int tensor of rank ``ndim`` on ``device`` (the model's), ids in [0, vocab_size).
    Structure and device first; the ids' values are read last, and only with ``values`` (reading
    them from a GPU makes the host wait for the device)."""
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
    if not values:
        return idx.long()
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


def _embedding(vocab: int, dim: int) -> nn.Embedding:
    """``nn.Embedding``; on the ``meta`` device (``load`` builds there) without its random
    initialisation, whose ``normal_`` on meta tensors imports torch's compiler stack (~1 s of
    start-up for nothing: the checkpoint overwrites the weights)."""
    if torch.get_default_device().type == "meta":
        return nn.Embedding(vocab, dim, _weight=torch.empty(vocab, dim))
    return nn.Embedding(vocab, dim)


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
        self.emb = _embedding(cfg.vocab_size, cfg.n_embd)
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
    def _run(self, x, state, core, last_only: bool = False):
        new_state = []
        v_first = None
        for block, layer in zip(self.blocks, state):
            x, layer, v_first = block(x, layer, v_first, core)
            new_state.append(layer)
        if last_only:                       # prefill: only the next token's logits are needed
            x = x[:, -1:]
        return self.head(self.ln_out(x)), new_state

    def forward(self, idx: torch.Tensor, state: list[LayerState] | None = None, impl: str | None = None):
        """Parallel mode. ``idx`` [B, T] token ids → ``(logits [B, T, vocab], state)``."""
        idx = check_tokens("idx", idx, self.cfg.vocab_size, 2, self.emb.weight.device)
        state = self._check_state(state, idx.shape[0])
        fn = resolve_core(self.wkv_module, impl or self.impl or default_impl(idx))
        return self._run(self.emb(idx), state, self.sequence_core(fn))

    def prefill(self, idx: torch.Tensor, state: list[LayerState] | None = None, impl: str | None = None):
        """Read a prompt in parallel mode: ``idx`` [B, T] → ``(logits [B, vocab] of the last position,
        state)``. The same as ``forward`` with the head applied to the last position only."""
        idx = check_tokens("idx", idx, self.cfg.vocab_size, 2, self.emb.weight.device)
        state = self._check_state(state, idx.shape[0])
        fn = resolve_core(self.wkv_module, impl or self.impl or default_impl(idx))
        logits, state = self._run(self.emb(idx), state, self.sequence_core(fn), last_only=True)
        return logits[:, 0], state

    def step(self, token: torch.Tensor, state: list[LayerState] | None = None):
        """RNN mode. ``token`` [B] ids → ``(logits [B, vocab], state)``; O(1) memory per token.

        The state passed in is never modified (a new one is returned). Inference (no autograd:
        under ``torch.no_grad()``/``inference_mode()``, or parameters that need no gradient) runs the
        version's lean :class:`Decoder` when it has one (RWKV-7): weights packed once per change of
        the parameters, checks on shapes, dtypes and devices only — token ids are range-checked
        only for CPU tensors, where reading them does not wait for a device. Under autograd the
        step is the block's own code around ``wkv7.step``/``wkv6.step``, which differentiates.
        """
        token = check_tokens("token", token, self.cfg.vocab_size, 1, self.emb.weight.device,
                             values=not token.is_cuda)
        state = self._check_state(state, token.shape[0])
        dec = self._inference_decoder()
        if dec is not None:
            st = dec.own_state(state if state[0] is not None else None, token.shape[0])
            return dec.step_(token.long(), st), st
        return self.reference_step(token, state)

    def reference_step(self, token: torch.Tensor, state):
        """The differentiable RNN step: the blocks' parallel-mode code with ``T = 1`` and the
        wkv module's ``step`` as the core (``state``: checked, a list of LayerState or Nones)."""
        logits, state = self._run(self.emb(token)[:, None], state, self.step_core())
        return logits[:, 0], state

    Decoder = None        # RWKV-7 sets its lean RNN-mode class (x070.Decoder)

    def decoder(self, dtype: torch.dtype | None = None, refresh: bool = False):
        """The lean RNN-mode decoder of this model's current weights (``None`` if the version has
        none). Cached, and rebuilt when a parameter is replaced, moved or changed in place through
        autograd's view of it (an optimiser step, ``copy_``/``mul_`` under ``no_grad``): each of
        those bumps the tensor's version counter. Edits through ``p.data`` bypass the counter;
        after one, pass ``refresh=True`` (or call ``model.decoder(refresh=True)`` once)."""
        if self.Decoder is None:
            return None
        refs = self.__dict__.get("_param_refs")
        if refs is None:        # where each parameter lives, found once (walking the modules is slow)
            refs = [(m._parameters, n) for m in self.modules() for n, p in m._parameters.items() if p is not None]
            self.__dict__["_param_refs"] = refs
        ps = [d[n] for d, n in refs]
        key = (dtype, tuple(map(id, ps)), tuple(p._version for p in ps), ps[0].data_ptr(), ps[-1].data_ptr())
        cached = self.__dict__.get("_decoder_cache")
        if refresh or cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, self.Decoder(self, dtype))
            self.__dict__["_decoder_cache"] = cached
        return cached[1]

    def _inference_decoder(self):
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return None
        return self.decoder()

    # subclasses: adapters from [B, T, H, N] tensors to the wkv module's functions
    def sequence_core(self, fn):  # pragma: no cover - abstract
        raise NotImplementedError

    def step_core(self):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- generation ----------------------------------------------------------------------------
    def generate(self, prompt_ids: list[int], n_tokens: int, temperature: float = 1.0, top_p: float = 0.85,
                 seed: int | None = 0, state=None, stop=None, graph: bool | None = None, threads="auto"):
        """An iterator over ``n_tokens`` sampled token ids (fewer if one of ``stop`` comes: it is
        yielded, then generation ends). The prompt is read in parallel mode (one call,
        :meth:`prefill`), every new token in RNN mode (one step each, the lean decoder with its
        state in place; a CUDA graph on a GPU, see :mod:`rwkvlab.model.generation`), so memory stays
        constant while generating. Bad arguments raise here, before anything is computed. The
        iterator's ``stats`` hold prefill and decode timings, its ``state`` (once exhausted) the
        state after the last token. ``threads``: intra-op threads while generating (``"auto"``: one
        for small models on CPU, see :func:`~rwkvlab.model.generation.decode_threads`; ``None``:
        torch's setting), restored around every step."""
        from .generation import Generation, Run

        if isinstance(prompt_ids, torch.Tensor):
            prompt_ids = prompt_ids.tolist()
        if not prompt_ids:
            raise ValueError("prompt_ids: expected at least one token (RWKV World models use 0 as a start token)")
        n_tokens = validate.positive_int("n_tokens", n_tokens, minimum=0)
        return Generation(Run(self, [prompt_ids], n_tokens, temperature, top_p, seed, state, stop, graph,
                              threads=threads))

    def generate_batch(self, prompts: list[list[int]], n_tokens, temperature: float = 1.0, top_p: float = 0.85,
                       seed: int | None = 0, state=None, stop=None, graph: bool | None = None, threads="auto"):
        """Generate for ``B = len(prompts)`` sequences at once, each with its own state: prompts of
        one length are read in one parallel call; then every step reads one token of every
        sequence still running. ``n_tokens`` and ``stop`` are one value for all or one per
        sequence; a sequence ends at its own stop token (included) or length. Returns a
        :class:`~rwkvlab.model.generation.BatchResult` (tokens per sequence, each row's state after
        its last token, timings). ``threads`` as in :meth:`generate`."""
        from .generation import BatchResult, Run

        run = Run(self, prompts, n_tokens, temperature, top_p, seed, state, stop, graph, threads=threads)
        tokens = [[] for _ in run.prompts]
        for chosen in run:
            for b, t in chosen:
                tokens[b].append(t)
        return BatchResult(tokens, run.state, run.stats)


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
