"""The fused kernels of the RWKV-7 decoder (``rwkvlab.wkv7.kernels_decode``) against the torch
operations they replace (``x070.decode_wkv`` and the pieces of ``x070.decode_block``), alone over
several steps and inside a whole ``Decoder``, and the launches a fused block makes.

On CPU the kernel runs in the Triton interpreter, so the shapes are tiny.
"""
from __future__ import annotations

import collections
from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import rwkvlab
from rwkvlab import model as M
from rwkvlab.model import generation as G
from rwkvlab.model import x070
from rwkvlab.wkv7 import kernels_decode as kd
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


def test_fused_wkv_applies_the_gates_itself_given_their_biases():
    # gate_bias (v0, w0, a0): the kernel takes σ(pre-activation + bias) of each gate, as decode_block does
    # before decode_wkv; in float32 against the torch path in float64
    B, H, N = 3, 2, 16
    rkv, v_first, _, lo, params, S0 = wkv_inputs(B, H, N, seed=11)
    pre = torch.randn(3, B, H, N, generator=torch.Generator().manual_seed(12)).to(DEV)
    bias = torch.randn(3, 1, H * N, generator=torch.Generator().manual_seed(13)).to(DEV)
    S_fused, S_ref = S0.clone(), S0.double()
    gates = torch.sigmoid(pre.double() + bias.double().view(3, 1, H, N))
    for mix_v in (True, False):
        want = torch_wkv(S_ref, rkv.double(), v_first.double(), gates, lo.double()[3], mix_v,
                         [p.double() for p in params], 64e-5, torch.float64)
        got = fused_wkv_decode(S_fused, rkv[0], rkv[1], rkv[2], pre[1], pre[2], lo[3], *params, 64e-5,
                               v_first if mix_v else None, pre[0] if mix_v else None, gate_bias=bias)
        rwkvlab.check(f"fused WKV with gate biases, mix_v={mix_v}: o ⊙ g and state", [got, S_fused], [want, S_ref],
                      1e-5)


# ---------------------------------------------------------------- the kernels around the products
@pytest.mark.parametrize("B,C", [(1, 32), (3, 24), (2, 96)])
@pytest.mark.parametrize("M", [6, 1])
def test_token_mix_equals_layer_norm_lerp_and_shift_copy(B, C, M):
    # float32 kernel against torch in float64; C = 24, 96 exercise the masks of a padded row
    gen = torch.Generator().manual_seed(B * C + M)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    x, shift, w, b = 3 * rnd(B, C) + 1, rnd(B, C), 1 + 0.3 * rnd(C), 0.2 * rnd(C)
    mu = torch.rand(M, 1, C, generator=gen, dtype=torch.float64) if M > 1 else torch.rand(C, generator=gen,
                                                                                           dtype=torch.float64)
    xa = torch.layer_norm(x, [C], w, b, 1e-5)
    want = torch.lerp(xa, shift, mu).reshape(M, B, C)
    f32 = lambda t: t.to(DEV, torch.float32)  # noqa: E731
    new_shift = f32(shift)
    got = kd.token_mix_decode(f32(x), new_shift, f32(mu), f32(w), f32(b))
    assert got.shape == (M, B, C) and got.dtype == torch.float32
    rwkvlab.check(f"token mix {(B, C)} M={M}: mixes", got, want, 1e-6)
    rwkvlab.check(f"token mix {(B, C)} M={M}: new shift = LayerNorm(x)", new_shift, xa, 1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_token_mix_reads_half_precision_and_computes_in_float32(dtype):
    # the float32 result differs only by its final rounding (the interpreter rounds float32 to
    # bfloat16 by truncation, a GPU to nearest: within 2^-8 relative either way)
    gen = torch.Generator().manual_seed(3)
    x, shift, w, b = (torch.randn(2, 64, generator=gen), torch.randn(2, 64, generator=gen),
                      torch.randn(64, generator=gen), torch.randn(64, generator=gen))
    mu = torch.rand(6, 1, 64, generator=gen)
    half = [t.to(DEV, dtype) for t in (x, shift, mu, w, b)]
    xh, sh, muh, wh, bh = (t.float() for t in half)
    xa = torch.layer_norm(xh, [64], wh, bh, 1e-5)
    got = kd.token_mix_decode(*half)
    assert got.dtype == dtype
    rwkvlab.check(f"token mix {dtype} vs float32 on the same inputs", [got, half[1]], [torch.lerp(xa, sh, muh), xa],
                  1e-2)


@pytest.mark.parametrize("B,D", [(1, 32), (3, 400)])
def test_lora_activations_are_tanh_and_sigmoid_in_place(B, D):
    # 3 × 400 = 1,200 per slice: more than one program's block along axis 0
    h64 = 3 * torch.randn(4, B, D, generator=torch.Generator().manual_seed(D), dtype=torch.float64)
    h = h64.to(DEV, torch.float32)
    assert kd.lora_act_decode(h) is h
    want = h64.clone()
    want[1].tanh_()
    want[3].sigmoid_()
    rwkvlab.check(f"LoRA activations {(B, D)}: h[1] tanh, h[3] σ, h[0], h[2] as they were", h, want, 1e-6)
    tiny = torch.tensor([1e-4, -1e-4, 30., -30.], dtype=torch.float64)
    h = torch.zeros(4, 1, 4, device=DEV)
    h[1, 0] = tiny.float()
    kd.lora_act_decode(h)
    assert torch.allclose(h[1, 0].double().cpu(), tiny.tanh(), rtol=1e-3, atol=0), "tanh near 0 and saturated"


@pytest.mark.parametrize("n", [5, 48, 3000])
def test_relu_square_in_place(n):
    u64 = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    u = u64.to(DEV, torch.float32)
    assert kd.relu_square_decode(u) is u
    rwkvlab.check(f"relu² of {n}", u, u64.relu().square(), 1e-6)


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


@pytest.mark.parametrize("B", [1, 2])
def test_a_fused_decoder_tracks_the_torch_decoder_over_several_tokens(B):
    # float32 both ways; the fused block's LayerNorm, mixes, gates and LoRA activations are its own
    # kernels, so after 6 tokens the two agree to float32 rounding, not bit for bit
    m = tiny7(C=48, L=2, N=16, seed=10 + B)
    x = torch.randint(0, 61, (B, 6), generator=torch.Generator().manual_seed(B)).to(DEV)
    outs, states = {}, {}
    for fused in (False, True):
        dec = x070.Decoder(m, fused=fused, script=False)
        st = dec.new_state(B)
        with torch.inference_mode():
            outs[fused] = torch.stack([dec.step_(x[:, t], st).clone() for t in range(6)], 1)
        states[fused] = [t for layer in st for t in layer]
    rwkvlab.check(f"fused vs torch decoder, 6 tokens, B={B}: logits and state", [outs[True]] + states[True],
                  [outs[False]] + states[False], 2e-6)


class CountLaunches(TorchDispatchMode):
    """Counts the ATen operators that run a kernel, and each ``kernels_decode`` launch as one."""

    META = {"aten::view", "aten::select", "aten::slice", "aten::empty", "aten::empty_strided", "aten::detach",
            "aten::alias", "aten::t", "aten::transpose", "aten::unsqueeze", "aten::squeeze", "aten::expand",
            "aten::as_strided", "aten::_unsafe_view", "aten::_reshape_alias"}

    def __init__(self):
        super().__init__()
        self.n, self.inside = collections.Counter(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside and func._schema.name not in self.META:     # the interpreter's own calls are not launches
            self.n[func._schema.name] += 1
        return func(*args, **(kwargs or {}))

    def launcher(self, fn):
        def run(*args, **kw):
            self.n["triton " + fn.__name__] += 1
            self.inside += 1
            try:
                return fn(*args, **kw)
            finally:
                self.inside -= 1
        return run


def test_a_fused_block_is_eleven_launches():
    m = tiny7(L=2, seed=8)
    dec = x070.Decoder(m, fused=True)
    st, tok = dec.new_state(1), torch.tensor([3], device=DEV)
    c = CountLaunches()
    with torch.no_grad(), mock.patch.multiple(kd, **{n: c.launcher(getattr(kd, n)) for n in kd.__all__}), c:
        dec.step_(tok, st)
    outside = {"aten::embedding": 1, "aten::native_layer_norm": 2, "aten::mm": 1}       # ln0, ln_out, head
    per_block = {"triton token_mix_decode": 2, "aten::bmm": 3, "triton lora_act_decode": 1,
                 "triton fused_wkv_decode": 1, "aten::addmm": 2, "aten::mm": 1, "triton relu_square_decode": 1}
    want = collections.Counter({k: 2 * v for k, v in per_block.items()}) + collections.Counter(outside)
    assert c.n == want and sum(per_block.values()) == 11
