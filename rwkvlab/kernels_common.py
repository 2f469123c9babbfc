"""What every Triton rung of wkv6 and wkv7 shares: where a sequence lies, and how chunks are numbered.

All token offsets are int64: a packed batch of B·T tokens times H·K channels passes 2^31 long
before it runs out of memory (e.g. 2^20 tokens of 32 heads of 64 channels), and a 32-bit product
would wrap around silently.

In the kernels, the time axis is the flattened ``[B·T]`` axis: sequence ``i_n`` of a dense batch
occupies rows ``[i_n·T, (i_n + 1)·T)``, and with ``cu_seqlens`` (then ``B == 1``) rows
``[cu[i_n], cu[i_n + 1])``. A chunked layout numbers the chunks of all sequences one after
another; ``chunk_table`` gives, per sequence, the index of its first chunk, and per chunk, its
(sequence, chunk inside the sequence).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

__all__ = ["seq_bounds", "first_chunk", "chunk_of", "cu_arg", "chunk_table"]


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
    return cu_seqlens.to(device=dev, dtype=torch.int32).contiguous()


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
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).cpu().long()
    n = (lens + BT - 1) // BT
    offs = torch.cat([n.new_zeros(1), n.cumsum(0)])
    seq = torch.repeat_interleave(torch.arange(len(n)), n)
    local = torch.arange(len(seq)) - offs[seq]
    idx = torch.stack([seq, local], 1).to(device=dev, dtype=torch.int32).contiguous()
    return offs.to(device=dev, dtype=torch.int32), idx, int(offs[-1])


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
    cu = cu_seqlens.to(device=dev, dtype=torch.int32).contiguous()
    lens = (cu[1:] - cu[:-1]).to(torch.int64)
    n_ck = (lens + C - 1) // C
    ck_off = torch.zeros_like(n_ck)
    ck_off[1:] = torch.cumsum(n_ck, 0)[:-1]
    return len(lens), int(n_ck.sum()), cu, ck_off.to(torch.int32)


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
