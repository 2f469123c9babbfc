"""What every Triton rung of wkv6 and wkv7 shares: where a sequence lies, and how chunks are numbered.

All token offsets are int64: a packed batch of B·T tokens times H·K channels passes 2^31 long
before it runs out of memory (e.g. 2^20 tokens of 32 heads of 64 channels), and a 32-bit product
would wrap around silently.

In the kernels, the time axis is the flattened ``[B·T]`` axis: sequence ``i_n`` of a dense batch
occupies rows ``[i_n·T, (i_n + 1)·T)``, and with ``cu_seqlens`` (then ``B == 1``) rows
``[cu[i_n], cu[i_n + 1])``. A chunked layout numbers the chunks of all sequences one after
another; ``chunk_table`` gives, per sequence, the index of its first chunk, and per chunk, its
(sequence, chunk inside the sequence).

A packed batch's tables are built on the host from one read of ``cu_seqlens`` and sent to the
device without a wait (pinned memory, ``non_blocking``). A read of a GPU tensor, or a plain copy
to it, waits for everything queued before it, and that wait cost about 1 ms a call when each
launch made its own table (H200, 2026-12-01). The read and the tables are remembered for as long
as the ``cu_seqlens`` tensor lives unchanged (its identity and its ``_version``), so the layers
of a model, and the backward, reuse them: one read per tensor, not per call (:func:`host_list`).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .validate import _seqs, host_list  # noqa: F401  (the one host read of cu_seqlens lives there)

__all__ = ["seq_bounds", "first_chunk", "chunk_of", "cu_arg", "chunk_table", "host_list"]

def _upload(x: torch.Tensor, dev) -> torch.Tensor:
    """A CPU int32 tensor on ``dev``, without waiting for the work queued there."""
    dev = torch.device(dev)
    if dev.type != "cuda":
        return x.to(dev)
    return x.pin_memory().to(dev, non_blocking=True)


def _cached(cu, key, make):
    e = _seqs(cu)
    if key not in e:
        e[key] = make(e["host"])
    return e[key]


@triton.jit
def seq_bounds(cu_seqlens, i_n, T, VARLEN: tl.constexpr):
    """First row and end row (int64) of sequence ``i_n`` in the flattened [B·T] time axis."""
    if VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    return bos, eos


@triton.jit
def first_chunk(chunk_offsets, i_n, T, BT: tl.constexpr, VARLEN: tl.constexpr):
    """Index (int64) of sequence ``i_n``'s first chunk of ``BT`` tokens among all chunks of the batch."""
    if VARLEN:
        return tl.load(chunk_offsets + i_n).to(tl.int64)
    return i_n.to(tl.int64) * tl.cdiv(T, BT)


@triton.jit
def chunk_of(cu_seqlens, chunk_indices, i_c, T, BT: tl.constexpr, VARLEN: tl.constexpr):
    """(first row, end row, first token) of global chunk ``i_c`` (for grids parallel over chunks)."""
    if VARLEN:
        i_n = tl.load(chunk_indices + 2 * i_c)
        i_t = tl.load(chunk_indices + 2 * i_c + 1)
    else:
        i_n, i_t = i_c // tl.cdiv(T, BT), i_c % tl.cdiv(T, BT)
    bos, eos = seq_bounds(cu_seqlens, i_n, T, VARLEN)
    return bos, eos, bos + i_t.to(tl.int64) * BT


def cu_arg(cu_seqlens, dev) -> torch.Tensor:
    """``cu_seqlens`` as the int32 device tensor the kernels read (a 1-element dummy when None)."""
    if cu_seqlens is None:
        return _placeholder(str(dev))
    if cu_seqlens.dtype == torch.int32 and cu_seqlens.device == torch.device(dev) and cu_seqlens.is_contiguous():
        return cu_seqlens
    return _cached(cu_seqlens, ("cu", str(dev)), lambda c: _upload(torch.tensor(c, dtype=torch.int32), dev))


@functools.lru_cache(maxsize=None)
def _placeholder(dev: str) -> torch.Tensor:
    """The dummy tables of a dense batch (never read: the kernels take VARLEN=False), one per
    device, made once: a fresh one per call cost a fill launch and host time every forward."""
    return torch.zeros(2, dtype=torch.int32, device=dev)


def chunk_table(cu_seqlens, B: int, T: int, BT: int, dev):
    """(first chunk per sequence [N + 1] int32, (sequence, local chunk) per chunk [n, 2] int32, n).

    Dense batches need neither table (the kernels compute both from T); dummies are returned.
    """
    if cu_seqlens is None:
        z = _placeholder(str(dev))
        return z, z, B * triton.cdiv(T, BT)
    def make(c):
        n_host = [(b - a + BT - 1) // BT for a, b in zip(c, c[1:])]
        n = torch.tensor(n_host)
        offs = torch.cat([n.new_zeros(1), n.cumsum(0)])
        seq = torch.repeat_interleave(torch.arange(len(n)), n)
        local = torch.arange(len(seq)) - offs[seq]
        idx = torch.stack([seq, local], 1).to(torch.int32).contiguous()
        return _upload(offs.to(torch.int32), dev), _upload(idx, dev), sum(n_host)
    return _cached(cu_seqlens, ("chunks", BT, str(dev)), make)


def dot16(x: torch.Tensor) -> bool:
    """The ``DOT16`` switch of every launch: 16-bit inputs on a GPU take ``tl.dot`` with 16-bit
    operands on tensor cores (float32 accumulation); float32 inputs, and the interpreter (whose
    16-bit dots are not exact), use float32 operands."""
    from . import device

    return x.dtype in (torch.float16, torch.bfloat16) and not device.interpreting()


def checkpoint_layout(B: int, T: int, cu_seqlens, C: int, dev):
    """(N, n_ckpt, cu, ck_off): the number of sequences, of C-token checkpoints in all, the int32
    ``cu_seqlens`` on ``dev`` (None for dense input), and where each sequence's checkpoints start."""
    if cu_seqlens is None:
        return B, B * triton.cdiv(T, C), None, None
    def make(c):
        n_ck = [(b - a + C - 1) // C for a, b in zip(c, c[1:])]
        ck_off = torch.tensor([0] + n_ck[:-1]).cumsum(0).to(torch.int32)
        return len(n_ck), sum(n_ck), _upload(ck_off, dev)
    N, n_ck, ck_off = _cached(cu_seqlens, ("ckpt", C, str(dev)), make)
    return N, n_ck, cu_arg(cu_seqlens, dev), ck_off


class FlagRead:
    """The value-check flag read back as soon as the launches that set it are done, not later.

    Made right after the last launch that can set ``flags``: on a GPU it queues a copy of the
    flag into pinned host memory and an event behind it, so :meth:`value` waits for those
    launches only, while the launches queued after it (an output pass, a state pass) keep the
    GPU busy during the wait and during the host's work for the next call. Elsewhere (the
    interpreter, where launches run as they are called) it reads the flag at once.
    """

    def __init__(self, flags: torch.Tensor):
        if flags.is_cuda:
            self._host = torch.empty(1, dtype=flags.dtype, pin_memory=True)
            self._host.copy_(flags, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host, self._event = flags.clone(), None

    def value(self) -> int:
        if self._event is not None:
            self._event.synchronize()
        return int(self._host[0])
