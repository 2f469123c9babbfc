"""The fused WKV kernel of the RWKV-7 decoder (``rwkvlab.wkv7.kernels_decode``) against the torch
path it replaces (``x070.decode_wkv``), alone over several steps and inside a whole ``Decoder``.

On CPU the kernel runs in the Triton interpreter, so the shapes are tiny.
"""
from __future__ import annotations

import pytest
import torch

import rwkvlab
from rwkvlab import model as M
from rwkvlab.model import generation as G
from rwkvlab.model import x070
from rwkvlab.wkv7.kernels_decode import fused_wkv_decode

DEV = rwkvlab.device.device()


def wkv_inputs(B, H, N, seed, dtype=torch.float32):
    """One block's WKV inputs laid out as ``decode_block`` hands them over: ``r, k, v`` views of a
    [3, B, H, N] product, the gates (σ_v, σ(d), a) a [3, B, H, N] tensor, ``g`` a row of [4, B, C]."""
    gen = torch.Generator().manual_seed(seed)
    C = H * N
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    rkv, v_first, gates, lo = rnd(3, B, H, N), rnd(B, H, N), torch.sigmoid(rnd(3, B, H, N)), rnd(4, B, C)
    params = [rnd(H, N), torch.rand(H, N, generator=gen, dtype=torch.float64), 0.3 * rnd(H, N),
              1 + 0.2 * rnd(C), 0.1 * rnd(C)]                                   # k_k, k_a, r_k, γ, β
    S = rnd(B, H, N, N)
    cast = lambda t: t.to(DEV, dtype)  # noqa: E731
    return [cast(rkv), cast(v_first), cast(gates), cast(lo), [cast(p) for p in params], S.to(DEV, torch.float32)]


def torch_wkv(S, rkv, v_first, gates, g, mix_v, params, eps, acc):
    k_k, k_a, r_k, lnxw, lnxb = params
    return x070.decode_wkv(S, rkv[0], rkv[1], rkv[2], v_first, gates, g, mix_v, eps, acc, k_k, k_a, 1 - k_a, r_k,
                           lnxw, lnxb)


def fused_wkv(S, rkv, v_first, gates, g, mix_v, params, eps):
    k_k, k_a, r_k, lnxw, lnxb = params
    return fused_wkv_decode(S, rkv[0], rkv[1], rkv[2], gates[1], gates[2], g, k_k, k_a, r_k, lnxw, lnxb, eps,
                            v_first if mix_v else None, gates[0] if mix_v else None)


# ---------------------------------------------------------------- the WKV part alone
@pytest.mark.parametrize("B,H,N", [(1, 2, 16), (3, 2, 16), (1, 2, 64), (1, 1, 128), (3, 1, 24)])
@pytest.mark.parametrize("mix_v", [True, False])
def test_fused_wkv_equals_the_torch_path_over_several_steps(B, H, N, mix_v):
    # float32 kernel against decode_wkv in float64; N = 24 exercises the masks of a padded tile
    S_fused = S_ref = None
    for t in range(3):
        rkv, v_first, gates, lo, params, S0 = wkv_inputs(B, H, N, seed=100 * t + B + N)
        if S_fused is None:
            S_fused, S_ref = S0.clone(), S0.double()
        up = lambda x: x.double()  # noqa: E731
        want = torch_wkv(S_ref, up(rkv), up(v_first), up(gates), up(lo)[3], mix_v, [up(p) for p in params],
                         64e-5, torch.float64)
        got = fused_wkv(S_fused, rkv, v_first, gates, lo[3], mix_v, params, 64e-5)
        assert got.shape == (B, H * N) and got.dtype == torch.float32
        rwkvlab.check(f"fused WKV step {t} {(B, H, N)} mix_v={mix_v}: o ⊙ g", got, want, 1e-5)
        rwkvlab.check(f"fused WKV step {t} {(B, H, N)} mix_v={mix_v}: state", S_fused, S_ref, 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_wkv_reads_half_precision_and_computes_in_float32(dtype):
    # the kernel upcasts what it loads: its state equals the float32 path's on the same (rounded)
    # inputs, and its output differs from it only by the final rounding to the activations' dtype
    rkv, v_first, gates, lo, params, S0 = wkv_inputs(3, 2, 16, seed=7, dtype=dtype)
    S_fused, S_ref = S0.clone(), S0.clone()
    up = lambda x: x.float()  # noqa: E731
    want = torch_wkv(S_ref, up(rkv), up(v_first), up(gates), up(lo)[3], True, [up(p) for p in params], 64e-5,
                     torch.float32)
    got = fused_wkv(S_fused, rkv, v_first, gates, lo[3], True, params, 64e-5)
    assert got.dtype == dtype
    rwkvlab.check(f"fused WKV {dtype}: state vs float32 path", S_fused, S_ref, 1e-5)
    rwkvlab.check(f"fused WKV {dtype}: o ⊙ g vs float32 path", got, want, 1e-2)


# ---------------------------------------------------------------- inside the decoder
def tiny7(C=32, L=3, N=16, seed=0):
    cfg = M.Config7.make(61, C, L, head_size=N, dim_ffn=48, d_decay=8, d_aaa=12, d_mv=4, d_gate=8)
    return M.RWKV7(cfg).init_weights("random", seed=seed).to(DEV)


@pytest.mark.parametrize("B,N", [(1, 16), (3, 8)])
def test_a_fused_decoder_equals_the_torch_decoder(B, N):
    m = tiny7(N=N, seed=B)
    x = torch.randint(0, 61, (B, 4), generator=torch.Generator().manual_seed(B)).to(DEV)
    outs, states = {}, {}
    for fused in (False, True):
        dec = x070.Decoder(m, fused=fused, script=False)
        assert dec.fused is fused
        st = dec.new_state(B)
        with torch.inference_mode():
            outs[fused] = torch.stack([dec.step_(x[:, t], st).clone() for t in range(4)], 1)
        states[fused] = [t for layer in st for t in layer]
    rwkvlab.check(f"fused vs torch decoder B={B}, N={N}: logits", outs[True], outs[False], 1e-5)
    rwkvlab.check(f"fused vs torch decoder B={B}, N={N}: state", states[True], states[False], 1e-5)


def test_the_graph_stepper_replays_the_fused_decoder():
    # the static-buffer stepper (eager stand-in for the CUDA graph on CPU) on a fused decoder
    m = tiny7(seed=5)
    x = torch.randint(0, 61, (2, 3), generator=torch.Generator().manual_seed(5)).to(DEV)
    with torch.no_grad():
        _, s0 = m.prefill(x[:, :2])
        plain = G.EagerStepper(x070.Decoder(m, fused=False), 2)
        graph = G.GraphStepper(x070.Decoder(m, fused=True), 2, capture=DEV.type == "cuda")
        plain.load(s0)
        graph.load(s0)
        for t in range(2):
            rwkvlab.check(f"graph-stepped fused decoder, token {t}", graph(x[:, 2 - t]).clone(), plain(x[:, 2 - t]),
                          1e-5)


def test_the_decoder_chooses_and_checks_its_path():
    m = tiny7(seed=6)
    dec = x070.Decoder(m, script=True, fused=True)
    assert dec._block() is x070.decode_block                  # the fused block is never the scripted one
    assert x070.Decoder(m).fused is (DEV.type == "cuda")       # default: fused on CUDA only
    with pytest.raises(ValueError, match="^fused: .*float32"):
        x070.Decoder(m, dtype=torch.float64, fused=True)
    assert x070.Decoder(m, dtype=torch.float64).fused is False
