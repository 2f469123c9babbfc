"""RWKV-7 ("Goose"): the diagonal-plus-low-rank state update, on every rung of the ladder.

``naive`` (a loop), ``step`` (one RNN step) and ``chunked`` (the chunkwise WY/UT form) live in
:mod:`rwkvlab.wkv7.reference`; the Triton kernels ``triton_recurrent`` and ``triton_chunked``
live beside them in :mod:`.kernels_recurrent` and :mod:`.kernels_chunked`.
"""
from .reference import chunked, naive, random_inputs, step  # noqa: F401
from .kernels_recurrent import triton_recurrent  # noqa: F401
from .kernels_chunked import triton_chunked  # noqa: F401

__all__ = ["naive", "chunked", "step", "random_inputs", "triton_recurrent", "triton_chunked"]
