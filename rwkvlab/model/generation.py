"""Generating text: read the prompt in parallel mode, then one RNN step per new token.

:meth:`LanguageModel.generate` (one sequence, an iterator of token ids) and
:meth:`LanguageModel.generate_batch` (B sequences at once, each with its own state, its own
length and its own stop tokens) both run here:

1. **prefill**: the prompt goes through parallel mode in one call (the chunked WKV core), and the
   head is applied to the last position only; the state it leaves is the one ``T`` RNN steps
   would have left (tested);
2. **decode**: one step per token on the model's lean decoder (RWKV-7's :class:`~.x070.Decoder`),
   its state updated in place. Arguments are checked once, at the call; nothing on the per-token
   path reads a value back from the device except the sampled token ids themselves.
   On a CUDA device the whole step is captured once in a CUDA graph and replayed per token
   (:class:`GraphStepper`), which removes the launch overhead of its few hundred small kernels.
   Greedy decoding on that stepper also runs one token ahead (:meth:`Run._greedy`): the argmax
   stays on the device and feeds the next replay, and the host reads each token while the
   device already computes the next, so the device never waits for Python between tokens.

Timings (prefill and decode, tokens per second) are kept in :class:`Stats`.
"""
from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, field

import torch

from .. import validate
from .common import LayerState, check_sampling, sample


@dataclass
class Stats:
    """Tokens and wall-clock seconds of the two phases of one generate call."""
    batch: int = 1
    prefill_tokens: int = 0          # prompt tokens read, all sequences together
    prefill_s: float = 0.0
    decode_steps: int = 0            # RNN steps taken (each reads one token of every sequence)
    decode_s: float = 0.0

    @property
    def prefill_tps(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s > 0 else float("nan")

    @property
    def decode_tps(self) -> float:
        """Tokens read per second while decoding, all sequences together (steps × batch / s)."""
        return self.decode_steps * self.batch / self.decode_s if self.decode_s > 0 else float("nan")

    def line(self) -> str:
        return (f"prefill {self.prefill_tokens} tokens in {self.prefill_s * 1e3:.1f} ms ({self.prefill_tps:,.0f} tok/s); "
                f"decode {self.decode_steps} steps x batch {self.batch} in {self.decode_s * 1e3:.1f} ms "
                f"({self.decode_tps:,.0f} tok/s)")


@dataclass
class BatchResult:
    """What :meth:`LanguageModel.generate_batch` returns."""
    tokens: list[list[int]]                 # the new tokens of each sequence (a stop token included)
    state: list[LayerState]                 # each row: the state after reading all of its tokens
    stats: Stats = field(default_factory=Stats)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


SMALL_MODEL_BYTES = 32 * 2**20


class _Threads:
    """Run a block with ``n`` intra-op threads and restore the caller's setting after it (cheap:
    well under a microsecond a switch). ``n = None`` leaves the setting alone."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        if self.n is not None:
            self.before = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.n is not None:
            torch.set_num_threads(self.before)


def decode_threads(model) -> int | None:
    """Intra-op threads while generating with ``model`` (prefill and decode): 1 on CPU for models
    under 32 MiB of weights, else
    ``None`` (torch's own setting). A step of a small model is a hundred-odd operations on vectors
    of a few hundred numbers; none of them has enough work to split, and on a busy machine a second
    thread that has to be woken for each of them stalls the step: on this book's 2-core test machine
    the chapter-14 model decoded at 70-1,400 tokens/s with 2 threads and 4,500-6,800 with one (the
    official runtime: ~330 and 3,000-4,100), same process, same run."""
    w = model.emb.weight
    if w.device.type != "cpu":
        return None
    nbytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n != "emb.weight")
    return 1 if nbytes < SMALL_MODEL_BYTES and torch.get_num_threads() > 1 else None


# ------------------------------------------------------------------------------------ sampling
def sample_rows(logits: torch.Tensor, temperature: float, top_p: float, generator=None) -> torch.Tensor:
    """:func:`~.common.sample` for every row of ``logits`` [B, V] at once, on their device.

    Unchecked (the caller checks ``temperature`` and ``top_p`` once); ``temperature == 0`` is the
    argmax. Returns token ids [B] (int64)."""
    if temperature == 0:
        return logits.argmax(-1)
    lf = logits.float()
    sorted_l, order = torch.sort(lf, dim=-1, descending=True)
    p = torch.softmax(sorted_l, -1)
    keep = torch.cumsum(p, -1) - p < top_p                               # the top token always stays
    z = torch.where(keep, (sorted_l - sorted_l[:, :1]) / temperature, float("-inf"))
    choice = torch.multinomial(torch.exp(z), 1, generator=generator)      # rows need not sum to 1
    return order.gather(-1, choice)[:, 0]


class _Picker:
    """Next tokens from logits [B, V]: one sequence keeps :func:`sample` (a CPU generator, the
    book's reference sampler, so results match earlier versions); several are sampled together
    on the logits' device."""

    def __init__(self, temperature, top_p, seed, device):
        self.temperature, self.top_p = temperature, top_p
        self.cpu = torch.Generator(device="cpu")
        self.dev = torch.Generator(device=device)
        if seed is not None:
            self.cpu.manual_seed(seed)
            self.dev.manual_seed(seed)
        else:
            self.cpu.seed()
            self.dev.seed()

    def __call__(self, logits: torch.Tensor) -> list[int]:
        if self.temperature == 0:
            return logits.argmax(-1).tolist()
        if logits.shape[0] == 1:
            return [sample(logits[0], self.temperature, self.top_p, self.cpu)]
        return sample_rows(logits, self.temperature, self.top_p, self.dev).tolist()


class _Mailbox:
    """Token ids [B] from the device to the host without stopping the device: each ``send``
    enqueues a copy into one of two pinned host buffers and records an event; ``receive`` waits
    only for the oldest copy not yet received. On CPU the copy is simply made."""

    def __init__(self, batch: int, device: torch.device):
        self.cuda = device.type == "cuda"
        self.bufs = [torch.empty(batch, dtype=torch.long, pin_memory=self.cuda) for _ in range(2)]
        self.events = [torch.cuda.Event() if self.cuda else None for _ in range(2)]
        self.sent = self.got = 0

    def send(self, tok: torch.Tensor) -> None:
        i = self.sent % 2
        self.bufs[i].copy_(tok, non_blocking=self.cuda)
        if self.cuda:
            self.events[i].record()
        self.sent += 1

    def receive(self) -> list[int]:
        i = self.got % 2
        if self.cuda:
            self.events[i].synchronize()
        self.got += 1
        return self.bufs[i].tolist()


# ------------------------------------------------------------------------------------ steppers
class EagerStepper:
    """Decode ``batch`` sequences with the lean decoder, state in place (no per-token copies)."""

    def __init__(self, dec, batch: int):
        self.dec = dec
        self.state = dec.new_state(batch)

    def load(self, state) -> None:
        for mine, theirs in zip(self.state, state):
            for dst, src in zip(mine, theirs):
                dst.copy_(src)

    def __call__(self, tok: torch.Tensor) -> torch.Tensor:
        return self.dec.step_(tok, self.state)


class _EagerGraph:
    """The CPU stand-in for a captured graph: ``replay`` runs the function again on the same
    static buffers. It lets the buffer discipline of :class:`GraphStepper` be tested without a GPU."""

    def __init__(self, fn):
        self.fn = fn
        self.out = None

    def replay(self) -> torch.Tensor:
        self.out = self.fn()
        return self.out


class _CudaGraph:
    """``fn`` (no host syncs, fixed shapes, inputs and state in static tensors) captured once and
    replayed. Warm-up runs on a side stream first, as CUDA graph capture requires; they mutate
    the static state, which the caller overwrites (``GraphStepper.load``) before the first replay."""

    def __init__(self, fn, warmup: int = 3):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = fn()                  # lives in the graph's memory pool; replay refills it

    def replay(self) -> torch.Tensor:
        self.graph.replay()
        return self.out


class GraphStepper(EagerStepper):
    """A step with static buffers (token [B], state, logits), captured in a CUDA graph when
    ``capture`` (CUDA only), else replayed eagerly on the same buffers (any device).

    The logits returned are the static buffer: read or copy them before the next call."""

    def __init__(self, dec, batch: int, capture: bool):
        super().__init__(dec, batch)
        self.tok = torch.zeros(batch, dtype=torch.long, device=dec.device)

        def fn():
            return dec.step_(self.tok, self.state)

        if capture:
            if dec.device.type != "cuda":
                raise ValueError(f"graph: CUDA graphs capture CUDA work; the model is on {dec.device}")
            self.runner = _CudaGraph(fn)
        else:
            self.runner = _EagerGraph(fn)

    def __call__(self, tok: torch.Tensor) -> torch.Tensor:
        self.tok.copy_(tok, non_blocking=True)
        return self.runner.replay()


class _ReferenceStepper:
    """Models without a lean decoder (RWKV-6): ``model.step`` per token, under ``no_grad``."""

    def __init__(self, model, batch: int):
        self.model, self.state = model, None

    def load(self, state) -> None:
        self.state = state

    def __call__(self, tok):
        logits, self.state = self.model.step(tok, self.state)
        return logits


def stepper(model, batch: int, graph: bool | None):
    """The stepper ``generate`` uses: ``graph=None`` captures a CUDA graph when the model is on a
    CUDA device (eager elsewhere), ``True`` insists on the static-buffer stepper (captured on CUDA,
    replayed eagerly on CPU: what the tests use), ``False`` never captures."""
    dec = model.decoder()
    if dec is None:
        if graph:
            raise ValueError(f"graph: {model.version} has no lean decoder to capture")
        return _ReferenceStepper(model, batch)
    on_cuda = dec.device.type == "cuda"
    if graph is False or (graph is None and not on_cuda):
        return EagerStepper(dec, batch)
    cache = dec.__dict__.setdefault("_graphs", {})       # captured once per decoder and batch size
    if batch not in cache:
        cache[batch] = GraphStepper(dec, batch, capture=on_cuda)
    return cache[batch]


def _state_rows(state, rows: list[int]) -> list[LayerState]:
    idx = torch.tensor(rows, device=state[0][0].device)
    return [LayerState(*(t.index_select(0, idx) for t in layer)) for layer in state]


# ------------------------------------------------------------------------------------ the loop
def check_prompts(name: str, prompts, vocab_size: int) -> list[list[int]]:
    """A list of prompts, each a non-empty list of ids in [0, vocab_size): checked here, once."""
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"{name}: expected a non-empty list of prompts (lists of token ids), got {prompts!r:.80}")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, torch.Tensor):
            p = p.tolist()
        if not isinstance(p, (list, tuple)) or not p:
            raise ValueError(f"{name}: prompt {i}: expected at least one token id (RWKV World models use 0 as a "
                             f"start token), got {p!r:.80}")
        for t in p:
            if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t < vocab_size:
                raise ValueError(f"{name}: prompt {i}: token ids must be ints in [0, {vocab_size}), got {t!r}")
        out.append([int(t) for t in p])
    return out


def _per_row(name, x, B, conv):
    if isinstance(x, (list, tuple)):
        if len(x) != B:
            raise ValueError(f"{name}: expected one value for all {B} sequences or a list of {B}, got {len(x)}")
        return [conv(v) for v in x]
    return [conv(x)] * B


def _stop_set(x):
    if x is None:
        return frozenset()
    if isinstance(x, int) and not isinstance(x, bool):
        return frozenset([x])
    try:
        s = frozenset(x)
    except TypeError:
        raise ValueError(f"stop: expected a token id, a collection of ids or None, got {x!r:.60}") from None
    if any(isinstance(t, bool) or not isinstance(t, int) for t in s):
        raise ValueError(f"stop: expected int token ids, got {sorted(map(repr, s))[:5]}")
    return s


class Run:
    """One generate call: arguments checked at construction; iterating runs it.

    Each item is a list of ``(row, token)`` pairs, the tokens chosen at one step for the rows
    still running. ``state`` (after the run, or once a row has finished: its final state) and
    ``stats`` are filled in as it goes.
    """

    def __init__(self, model, prompts, n_tokens, temperature, top_p, seed, state, stop, graph, impl=None,
                 threads="auto"):
        self.model = model
        self.prompts = check_prompts("prompt_ids", prompts, model.cfg.vocab_size)
        B = len(self.prompts)
        self.n = _per_row("n_tokens", n_tokens, B, lambda v: validate.positive_int("n_tokens", v, minimum=0))
        self.stops = [_stop_set(s) for s in (stop if isinstance(stop, (list, tuple)) and len(stop) == B
                                             and all(not isinstance(s, int) for s in stop) else [stop] * B)]
        self.temperature, self.top_p = check_sampling(temperature, top_p)
        if graph not in (None, True, False):
            raise ValueError(f"graph: expected None (automatic), True or False, got {graph!r}")
        if seed is not None:
            seed = validate.positive_int("seed", seed, minimum=0)
        self.graph, self.impl, self.seed = graph, impl, seed
        self.threads = decode_threads(model) if threads == "auto" else threads
        if self.threads is not None:
            validate.positive_int("threads", self.threads)
        if state is not None:
            state = model._check_state(state, B)
        self.state0 = state
        self.state = None
        self.stats = Stats(batch=B)

    def _prefill(self):
        """Last-position logits [B, V] and the state after every prompt (one parallel call when the
        prompts have one length, one per prompt otherwise)."""
        m, dev = self.model, self.model.emb.weight.device
        lengths = {len(p) for p in self.prompts}
        if len(lengths) == 1:
            idx = torch.tensor(self.prompts, device=dev)
            return m.prefill(idx, self.state0, impl=self.impl)
        logits, states = [], []
        for b, p in enumerate(self.prompts):
            s0 = None if self.state0 is None else _state_rows(self.state0, [b])
            lg, s = m.prefill(torch.tensor([p], device=dev), s0, impl=self.impl)
            logits.append(lg)
            states.append(s)
        return torch.cat(logits), [LayerState(*(torch.cat(ts) for ts in zip(*layers))) for layers in zip(*states)]

    def __iter__(self):
        # Grad modes are thread-local and a generator's ``with`` would stay open across ``yield``
        # (the caller's code between tokens would run without autograd), so every piece of work
        # enters its own: prefill under no_grad (the sequence cores keep caches that must stay
        # ordinary tensors), the lean decoder's steps under inference mode (no autograd
        # bookkeeping at all: about a quarter of a small model's step on CPU).
        m = self.model
        dev = m.emb.weight.device
        B = len(self.prompts)
        threads = _Threads(self.threads)
        t0 = time.perf_counter()
        with torch.no_grad(), threads:
            logits, state = self._prefill()
            _sync(dev)
        self.stats.prefill_tokens = sum(len(p) for p in self.prompts)
        self.stats.prefill_s = time.perf_counter() - t0
        pick = _Picker(self.temperature, self.top_p, self.seed, dev)
        live = [n > 0 for n in self.n]
        made = [0] * B
        final: list = [None] * B                      # each row's state once it has finished
        with torch.no_grad():
            for b in range(B):
                if not live[b]:
                    final[b] = _state_rows(state, [b])
        if not any(live):
            self.state = _merge(final)
            return
        with torch.no_grad():
            step = stepper(m, B, self.graph)
        fast = not isinstance(step, _ReferenceStepper)
        mode = torch.inference_mode if fast else torch.no_grad
        with mode():
            step.load(state)
        if self.temperature == 0 and isinstance(step, GraphStepper):
            yield from self._greedy(step, logits, mode, threads, live, made, final)
            return
        toks = [0] * B
        t0 = time.perf_counter()
        while True:
            with mode(), threads:
                chosen = pick(logits)
            out, finishing = [], []
            for b in range(B):
                if live[b]:
                    t = chosen[b]
                    toks[b] = t
                    made[b] += 1
                    out.append((b, t))
                    if made[b] >= self.n[b] or t in self.stops[b]:
                        live[b] = False
                        finishing.append(b)
            self.stats.decode_s = time.perf_counter() - t0
            yield out
            t0 += time.perf_counter() - t0 - self.stats.decode_s     # the caller's time is not decode time
            with mode(), threads:
                logits = step(torch.tensor(toks, device=dev))     # read the tokens just chosen
                for b in finishing:
                    final[b] = _state_rows(step.state, [b])
            self.stats.decode_steps += 1
            if not any(live):
                break
        with mode():
            _sync(dev)
        self.stats.decode_s = time.perf_counter() - t0
        self.state = _merge(final)


    def _greedy(self, step, logits, mode, threads, live, made, final):
        """The decode loop for ``temperature == 0`` on a :class:`GraphStepper`, one token ahead:
        replay k reads token t_k from the stepper's token buffer, and its argmax, t_{k+1}, is
        written back there on the device; the host receives t_k (copied before replay k ran)
        while replay k runs, records it, and enqueues replay k+1 only if a row is still live.
        Same tokens, same states, as the loop in ``__iter__``: a row that finishes at t_k keeps
        the state after replay k, which read t_k."""
        dev = step.tok.device
        box = _Mailbox(len(made), dev)
        t0 = time.perf_counter()
        with mode(), threads:
            step.tok.copy_(logits.argmax(-1))                 # t_0, from the prompt's logits
            box.send(step.tok)
        while True:
            with mode(), threads:
                out_logits = step.runner.replay()             # reads t_k
                step.tok.copy_(out_logits.argmax(-1))         # t_{k+1}, for the next replay
                box.send(step.tok)
                chosen = box.receive()                        # t_k: its copy ran before replay k
            self.stats.decode_steps += 1
            out = []
            for b, t in enumerate(chosen):
                if live[b]:
                    made[b] += 1
                    out.append((b, t))
                    if made[b] >= self.n[b] or t in self.stops[b]:
                        live[b] = False
                        with mode():
                            final[b] = _state_rows(step.state, [b])     # enqueued after replay k
            self.stats.decode_s = time.perf_counter() - t0
            yield out
            t0 += time.perf_counter() - t0 - self.stats.decode_s     # the caller's time is not decode time
            if not any(live):
                break
        with mode():
            _sync(dev)
        self.stats.decode_s = time.perf_counter() - t0
        self.state = _merge(final)


def _merge(rows: list[list[LayerState]]) -> list[LayerState]:
    """One batched state from per-row states, as ordinary tensors (cloned outside inference mode)."""
    with torch.inference_mode(False):
        return [LayerState(*(torch.cat(ts).clone() for ts in zip(*layers))) for layers in zip(*rows)]


class Generation:
    """The iterator :meth:`LanguageModel.generate` returns: token ids of one sequence, with
    ``stats`` (prefill/decode timings) and ``state`` (after the last token, once exhausted)."""

    def __init__(self, run: Run):
        self.run = run
        self._it = None

    def __iter__(self):
        return self

    def __next__(self) -> int:
        if self._it is None:
            self._it = iter(self.run)
        return next(self._it)[0][1]

    @property
    def stats(self) -> Stats:
        return self.run.stats

    @property
    def state(self):
        return self.run.state
