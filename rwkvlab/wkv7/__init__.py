"""RWKV-7 ("Goose"): the diagonal-plus-low-rank state update, on every rung of the ladder.

``naive`` (a loop), ``step`` (one RNN step) and ``chunked`` (the chunkwise WY/UT form) live in
:mod:`rwkvlab.wkv7.reference`; the Triton kernels ``triton_recurrent`` and ``triton_chunked``
live beside them in :mod:`.kernels_recurrent` and :mod:`.kernels_chunked`.

One contract for all: ``scale`` is a finite real number (int, float or numpy scalar; not bool, NaN
or ±inf); ``initial_state`` may be any float dtype and is cast to float32 (float64 inputs keep
float64 in the torch rungs); B, H, K, V ≥ 1; bad input is a ``ValueError`` that opens with the
argument's name, structure and device checked before values.
"""
from .reference import RWKV7_LOWER_BOUND, chunked, naive, random_inputs, step  # noqa: F401

__all__ = ["naive", "chunked", "step", "random_inputs", "RWKV7_LOWER_BOUND", "triton_recurrent", "triton_chunked"]


def __getattr__(name):
    """The Triton rungs load on first use (importing Triton and compiling nothing until then), so
    the torch rungs, the model on CPU and the command line start without it."""
    if name in _KERNELS:
        import importlib

        value = getattr(importlib.import_module(f".{_KERNELS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_KERNELS = {"triton_recurrent": "kernels_recurrent", "triton_chunked": "kernels_chunked"}
