"""Every Triton rung of wkv6 and wkv7 at the head sizes the contract promises (K, V powers of two
from 16 to 128), in the interpreter on CPU and compiled on a GPU: forward output and final state
against the float64 naive loop. The per-mechanism test files cover the rest of the behaviour."""
from __future__ import annotations

import pytest
import torch

import rwkvlab
from rwkvlab import rel_err, wkv6, wkv7

DEV = rwkvlab.device.device()
SIZES = [(16, 128), (128, 16), (64, 64), (128, 128), (32, 16)]
# T crosses chunk boundaries at every size: wkv6.triton_chunked's chunks of 64 (sub-chunks of 16),
# wkv7.triton_chunked's chunks of 16 and triton_recurrent's checkpoints, with a partial last chunk
T = 70


def _inputs(kind, K, V, T=T, H=1, seed=0):
    """The operator's own generator (float64, with an initial state); wkv7's keys scaled by 1/√K."""
    mod = {"wkv6": wkv6, "wkv7": wkv7}[kind]
    extra = {} if kind == "wkv6" else {"key_scale": K ** -0.5}
    *xs, h0 = mod.random_inputs(1, T, H, K, V, seed=seed, dtype=torch.float64, with_state=True, **extra)
    return tuple(xs), h0


@pytest.mark.parametrize("K,V", SIZES, ids=lambda x: str(x))
@pytest.mark.parametrize("kind,impl", [("wkv6", "triton_recurrent"), ("wkv6", "triton_chunked"),
                                       ("wkv7", "triton_recurrent"), ("wkv7", "triton_chunked")])
def test_triton_rungs_at_every_promised_head_size(kind, impl, K, V):
    mod = {"wkv6": wkv6, "wkv7": wkv7}[kind]
    xs, h0 = _inputs(kind, K, V)
    want = mod.naive(*xs, initial_state=h0, output_final_state=True)
    got = getattr(mod, impl)(*(x.float().to(DEV) for x in xs), initial_state=h0.float().to(DEV),
                             output_final_state=True)
    assert rel_err(got, want) <= 1e-4, f"{kind}.{impl} at K={K}, V={V}: {rel_err(got, want):.2e}"
