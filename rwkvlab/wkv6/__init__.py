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
from .kernels_recurrent import triton_recurrent  # noqa: E402
from .kernels_chunked import triton_chunked  # noqa: E402
