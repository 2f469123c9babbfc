"""RWKV-6 ("Finch") WKV: matrix state, bonus ``u``, data-dependent log decay ``w``.

``naive`` (the token loop), ``chunked`` (plain-torch chunkwise-parallel form), ``step`` (one token
of RNN mode); Triton kernels ``triton_recurrent`` and ``triton_chunked`` live in their own modules.
All share the signature ``(r, k, v, w, u, scale=1.0, initial_state=None, output_final_state=False,
cu_seqlens=None) -> (o, final_state | None)`` and one contract: ``scale`` is a finite real number
(int, float or numpy scalar; not bool, NaN or ±inf); ``initial_state`` may be any float dtype and
is cast to float32 (float64 inputs keep float64 in the torch rungs); B, H, K, V ≥ 1; bad input is
a ``ValueError`` that opens with the argument's name, structure and device checked before values.
"""
from .reference import attention_matrix, chunked, finch_log_decay, naive, random_inputs, step  # noqa: F401

__all__ = ["naive", "chunked", "step", "attention_matrix", "finch_log_decay", "random_inputs", "triton_recurrent", "triton_chunked"]


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
