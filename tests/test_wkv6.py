"""RWKV-6 WKV: the torch rungs (naive, chunked, step) against an independent float64 loop.

For the kernel engineer: the equivalence tests below are parametrized over ``IMPLS``, a list of
``(name, fn, tol)`` where ``fn`` has the contract signature ``fn(r, k, v, w, u, scale=...,
initial_state=..., output_final_state=..., cu_seqlens=...)`` and ``tol`` is the float32 relative
tolerance against the float64 reference. Either append the Triton rungs here (e.g.
``IMPLS.append(("triton_recurrent", wkv6.triton_recurrent, 1e-4))``) or import ``IMPLS``,
``make_inputs`` and ``reference_loop`` from this module in ``tests/test_wkv6_triton.py`` and
parametrize your own tests over the same shapes (``SHAPES``) — keep interpreter shapes tiny.
"""
from __future__ import annotations

import re
import functools

import pytest
import torch

import rwkvlab  # noqa: F401  (selects the device mode before any kernel module is imported)
from rwkvlab import rel_err, wkv6

# (name, implementation, float32 relative tolerance against the float64 reference)
IMPLS = [
    ("naive", wkv6.naive, 1e-5),
    ("chunked", wkv6.chunked, 1e-5),                         # the default: chunks of 64, sub-chunks of 16
    ("chunked32_8", functools.partial(wkv6.chunked, chunk_size=32, sub_chunk_size=8), 1e-5),   # 32 → 8 → 2 → 1
    ("chunked16", functools.partial(wkv6.chunked, chunk_size=16), 1e-5),
    ("chunked5", functools.partial(wkv6.chunked, chunk_size=5), 1e-5),
]
IDS = [name for name, _, _ in IMPLS]

# (B, T, H, K, V): T = 1, odd T, T a multiple of 16 and not, several heads, K != V
SHAPES = [(1, 1, 1, 4, 4), (2, 37, 2, 8, 5), (1, 32, 2, 16, 16), (3, 13, 1, 6, 10)]


def make_inputs(B, T, H, K, V, dtype=torch.float32, seed=0, decay=1.0, with_state=True, requires_grad=False):
    """wkv6.random_inputs: r, k, v, w, u and an initial state (None when ``with_state`` is False)."""
    xs = wkv6.random_inputs(B, T, H, K, V, seed=seed, dtype=dtype, decay=decay, with_state=with_state,
                            requires_grad=requires_grad)
    return xs if with_state else xs + [None]


def reference_loop(r, k, v, w, u, scale=1.0, initial_state=None):
    """The matrix equations written out per (batch, head) in float64, independently of the package:
    o_t = scale · r_tᵀ (S_{t−1} + diag(u) k_t v_tᵀ),  S_t = diag(exp(w_t)) S_{t−1} + k_t v_tᵀ."""
    r, k, v, w, u = (x.detach().double() for x in (r, k, v, w, u))
    B, T, H, K = r.shape
    V = v.shape[-1]
    o = torch.zeros(B, T, H, V, dtype=torch.float64)
    S = torch.zeros(B, H, K, V, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            St = initial_state[b, h].detach().double().clone() if initial_state is not None else torch.zeros(K, V, dtype=torch.float64)
            for t in range(T):
                kv = torch.outer(k[b, t, h], v[b, t, h])
                o[b, t, h] = scale * (r[b, t, h] @ (St + torch.diag(u[h]) @ kv))
                St = torch.diag(torch.exp(w[b, t, h])) @ St + kv
            S[b, h] = St
    return o, S


# ------------------------------------------------------------------------------------------------
# forward equivalence
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name,impl,tol", IMPLS, ids=IDS)
def test_forward_matches_float64_loop(name, impl, tol, shape):
    r, k, v, w, u, s0 = make_inputs(*shape)
    o, s = impl(r, k, v, w, u, scale=0.5, initial_state=s0, output_final_state=True)
    o_ref, s_ref = reference_loop(r, k, v, w, u, scale=0.5, initial_state=s0)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert rel_err(o, o_ref) <= tol and rel_err(s, s_ref) <= tol, (rel_err(o, o_ref), rel_err(s, s_ref))


@pytest.mark.parametrize("name,impl,tol", IMPLS, ids=IDS)
def test_float64_inputs_stay_float64_and_agree_to_rounding(name, impl, tol):
    r, k, v, w, u, s0 = make_inputs(2, 19, 2, 4, 3, dtype=torch.float64)
    o, s = impl(r, k, v, w, u, initial_state=s0, output_final_state=True)
    o_ref, s_ref = reference_loop(r, k, v, w, u, initial_state=s0)
    assert o.dtype == torch.float64 and s.dtype == torch.float64
    assert rel_err((o, s), (o_ref, s_ref)) < 1e-12


@pytest.mark.parametrize("name,impl,tol", IMPLS, ids=IDS)
def test_zero_initial_state_is_the_default_and_final_state_is_optional(name, impl, tol):
    r, k, v, w, u, _ = make_inputs(2, 9, 2, 4, 4, with_state=False)
    o1, s1 = impl(r, k, v, w, u)
    o2, s2 = impl(r, k, v, w, u, initial_state=torch.zeros(2, 2, 4, 4), output_final_state=True)
    assert s1 is None and s2.shape == (2, 2, 4, 4)
    assert rel_err(o1, o2) == 0.0


@pytest.mark.parametrize("name,impl,tol", IMPLS, ids=IDS)
def test_bfloat16_output_dtype_and_float32_state(name, impl, tol):
    r, k, v, w, u, s0 = make_inputs(1, 11, 2, 8, 8)
    bf = [x.to(torch.bfloat16) for x in (r, k, v, w, u)]
    o, s = impl(*bf, initial_state=s0, output_final_state=True)
    o_ref, s_ref = reference_loop(*bf, initial_state=s0)   # same bf16-rounded inputs, float64 maths
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert rel_err(o, o_ref) < 1e-2 and rel_err(s, s_ref) < 1e-5


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 16, 64])
@pytest.mark.parametrize("T", [1, 15, 16, 33])
def test_chunked_equals_naive_float32_for_any_chunk_size(T, chunk_size):
    r, k, v, w, u, s0 = make_inputs(2, T, 2, 8, 6, seed=T)
    ref = wkv6.naive(r, k, v, w, u, initial_state=s0, output_final_state=True)
    got = wkv6.chunked(r, k, v, w, u, initial_state=s0, output_final_state=True, chunk_size=chunk_size)
    assert rel_err(got, ref) <= 1e-5


@pytest.mark.parametrize("chunk_size,sub_chunk_size", [(64, 16), (64, 8), (64, 4), (64, 64), (48, 16), (32, 16),
                                                       (32, 8), (20, 16), (16, 4), (8, 2)])
@pytest.mark.parametrize("T", [1, 63, 64, 150])
def test_chunked_equals_naive_for_any_sub_chunk_size(T, chunk_size, sub_chunk_size):
    r, k, v, w, u, s0 = make_inputs(1, T, 2, 8, 6, seed=T + chunk_size)
    ref = reference_loop(r, k, v, w, u, scale=0.5, initial_state=s0)
    got = wkv6.chunked(r, k, v, w, u, scale=0.5, initial_state=s0, output_final_state=True,
                       chunk_size=chunk_size, sub_chunk_size=sub_chunk_size)
    assert rel_err(got, ref) <= 1e-5


@pytest.mark.parametrize("C,L,sizes", [(64, 16, [64, 16, 4, 1]), (64, 8, [64, 8, 1]), (32, 8, [32, 8, 2, 1]),
                                       (32, 16, [32, 16, 8, 4, 2, 1]), (48, 16, [48, 16, 1]), (16, 16, [16, 1]),
                                       (20, 16, [20, 1]), (5, 16, [5, 1]), (1, 16, [1]), (64, 1, [64, 1])])
def test_block_sizes_nest_down_to_single_tokens(C, L, sizes):
    from rwkvlab.wkv6.reference import _block_sizes
    assert _block_sizes(C, L) == sizes


def test_scale_multiplies_the_output_only():
    r, k, v, w, u, s0 = make_inputs(1, 10, 2, 4, 4)
    o1, s1 = wkv6.chunked(r, k, v, w, u, scale=1.0, initial_state=s0, output_final_state=True)
    o2, s2 = wkv6.chunked(r, k, v, w, u, scale=0.25, initial_state=s0, output_final_state=True)
    assert rel_err(o2, 0.25 * o1) < 1e-6 and rel_err(s2, s1) == 0.0


def test_attention_matrix_is_causal_and_reproduces_the_output():
    r, k, v, w, u, _ = make_inputs(2, 12, 2, 4, 3, dtype=torch.float64, with_state=False)
    A = wkv6.attention_matrix(r, k, w, u, scale=0.5)
    assert A.shape == (2, 2, 12, 12)
    assert torch.all(A.triu(1) == 0)
    o = torch.einsum("bhij,bjhv->bihv", A, v)
    assert rel_err(o, wkv6.naive(r, k, v, w, u, scale=0.5)[0]) < 1e-12
    # the diagonal is the bonus term alone
    assert rel_err(A.diagonal(dim1=-2, dim2=-1), 0.5 * (r * u * k).sum(-1).transpose(1, 2)) < 1e-12


def test_finch_log_decay_is_minus_exp_of_the_lora():
    g = torch.Generator().manual_seed(3)
    x, lam = torch.randn(2, 5, 8, generator=g), torch.randn(8, generator=g)
    A, B = torch.randn(8, 3, generator=g), torch.randn(3, 8, generator=g)
    w = wkv6.finch_log_decay(x, lam, A, B)
    assert w.shape == x.shape and torch.all(w < 0)
    assert rel_err(torch.exp(w), torch.exp(-torch.exp(lam + torch.tanh(x @ A) @ B))) < 1e-6


# ------------------------------------------------------------------------------------------------
# RNN mode and variable length
# ------------------------------------------------------------------------------------------------

def test_step_equals_last_position_and_chains_to_the_full_forward():
    r, k, v, w, u, s0 = make_inputs(2, 8, 2, 4, 5)
    o_full, s_full = wkv6.naive(r, k, v, w, u, scale=0.7, initial_state=s0, output_final_state=True)
    S = s0
    for t in range(8):
        o_t, S = wkv6.step(r[:, t], k[:, t], v[:, t], w[:, t], u, S, scale=0.7)
        assert rel_err(o_t, o_full[:, t]) < 1e-6
    assert rel_err(S, s_full) < 1e-6
    o1, S1 = wkv6.step(r[:, 0], k[:, 0], v[:, 0], w[:, 0], u)      # state None means zeros
    assert rel_err(o1, wkv6.naive(r[:, :1], k[:, :1], v[:, :1], w[:, :1], u)[0][:, 0]) < 1e-7


@pytest.mark.parametrize("name,impl,tol", IMPLS, ids=IDS)
def test_varlen_equals_separate_runs(name, impl, tol):
    lens = [5, 1, 17, 9]
    cu = torch.tensor([0, 5, 6, 23, 32])
    r, k, v, w, u, _ = make_inputs(1, 32, 2, 4, 6, seed=7, with_state=False)
    s0 = torch.randn(len(lens), 2, 4, 6, generator=torch.Generator().manual_seed(8))
    o, s = impl(r, k, v, w, u, initial_state=s0, output_final_state=True, cu_seqlens=cu)
    assert o.shape == (1, 32, 2, 6) and s.shape == (4, 2, 4, 6)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        o_ref, s_ref = reference_loop(r[:, a:b], k[:, a:b], v[:, a:b], w[:, a:b], u, initial_state=s0[n:n + 1])
        assert rel_err(o[:, a:b], o_ref) <= tol and rel_err(s[n:n + 1], s_ref) <= tol


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------

def _grads(impl, xs, **kw):
    r, k, v, w, u, s0 = xs
    o, s = impl(r, k, v, w, u, scale=0.5, initial_state=s0, output_final_state=True, **kw)
    g = torch.Generator().manual_seed(11)
    go = torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)
    gs = torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.dtype)   # a loss on the final state too
    return torch.autograd.grad((o * go).sum() + (s * gs).sum(), xs)


def test_naive_gradients_pass_gradcheck():
    xs = make_inputs(1, 5, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    f = lambda r, k, v, w, u, s0: wkv6.naive(r, k, v, w, u, initial_state=s0, output_final_state=True)  # noqa: E731
    assert torch.autograd.gradcheck(f, xs)


@pytest.mark.parametrize("cu", [None, [0, 3, 14, 20]], ids=["dense", "varlen"])
@pytest.mark.parametrize("chunk_size", [4, 16])
def test_chunked_gradients_equal_autograd_through_naive(chunk_size, cu):
    B = 2 if cu is None else 1
    N = B if cu is None else len(cu) - 1
    xs = make_inputs(B, 20, 2, 4, 3, dtype=torch.float64, requires_grad=True, with_state=False)
    xs[5] = torch.randn(N, 2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_()
    cu_t = None if cu is None else torch.tensor(cu)
    g_ref = _grads(wkv6.naive, xs, cu_seqlens=cu_t)
    g = _grads(wkv6.chunked, xs, cu_seqlens=cu_t, chunk_size=chunk_size)
    for name, a, b in zip(["r", "k", "v", "w", "u", "initial_state"], g, g_ref):
        assert rel_err(a, b) < 1e-10, name


@pytest.mark.parametrize("cu", [None, [0, 70, 71, 150]], ids=["dense", "varlen"])
def test_default_chunked_gradients_equal_autograd_through_naive_over_several_chunks(cu):
    # the default (chunks of 64, sub-chunks of 16, 4, 1) over more than two chunks: the in-place writes
    # into the score matrix and every level of the split must differentiate correctly
    B = 2 if cu is None else 1
    N = B if cu is None else len(cu) - 1
    xs = make_inputs(B, 150, 2, 4, 3, dtype=torch.float64, requires_grad=True, with_state=False)
    xs[5] = torch.randn(N, 2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_()
    cu_t = None if cu is None else torch.tensor(cu)
    g_ref = _grads(wkv6.naive, xs, cu_seqlens=cu_t)
    g = _grads(wkv6.chunked, xs, cu_seqlens=cu_t)
    for name, a, b in zip(["r", "k", "v", "w", "u", "initial_state"], g, g_ref):
        assert rel_err(a, b) < 1e-10, name


@pytest.mark.parametrize("cu", [None, [0, 70, 71, 150]], ids=["dense", "varlen"])
def test_segments_pass_the_state_on_exactly(monkeypatch, cu):
    # long inputs run as segments of whole chunks (to stay in cache); force one chunk per segment here
    from rwkvlab.wkv6 import reference
    monkeypatch.setattr(reference, "_SEGMENT_ELEMENTS", 1)
    B = 2 if cu is None else 1
    N = B if cu is None else len(cu) - 1
    xs = make_inputs(B, 150, 2, 4, 3, dtype=torch.float64, requires_grad=True, with_state=False)
    xs[5] = torch.randn(N, 2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_()
    cu_t = None if cu is None else torch.tensor(cu)
    ref = wkv6.naive(*xs[:5], scale=0.5, initial_state=xs[5], output_final_state=True, cu_seqlens=cu_t)
    got = wkv6.chunked(*xs[:5], scale=0.5, initial_state=xs[5], output_final_state=True, cu_seqlens=cu_t)
    assert rel_err(got, ref) < 1e-12
    for name, a, b in zip(["r", "k", "v", "w", "u", "initial_state"], _grads(wkv6.chunked, xs, cu_seqlens=cu_t),
                          _grads(wkv6.naive, xs, cu_seqlens=cu_t)):
        assert rel_err(a, b) < 1e-10, name


def test_chunked_float32_gradients_close_to_float64():
    xs32 = make_inputs(1, 24, 2, 4, 4, requires_grad=True)
    xs64 = [x.detach().double().requires_grad_() for x in xs32]
    g32 = _grads(functools.partial(wkv6.chunked, chunk_size=8), xs32)
    g64 = _grads(wkv6.naive, xs64)
    for name, a, b in zip(["r", "k", "v", "w", "u", "initial_state"], g32, g64):
        assert rel_err(a, b) < 1e-5, name


# ------------------------------------------------------------------------------------------------
# numerics: strong decay
# ------------------------------------------------------------------------------------------------

def test_strong_decay_is_finite_and_equal_to_naive():
    r, k, v, w, u, s0 = make_inputs(1, 512, 2, 16, 16, with_state=True)
    w = torch.full_like(w, -8.0)
    w.requires_grad_()
    o_ref, s_ref = wkv6.naive(r, k, v, w, u, initial_state=s0, output_final_state=True)
    o, s = wkv6.chunked(r, k, v, w, u, initial_state=s0, output_final_state=True, chunk_size=64)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert rel_err((o, s), (o_ref, s_ref)) <= 1e-5
    (dw,) = torch.autograd.grad(o.sum() + s.sum(), w)
    assert torch.isfinite(dw).all()
    # the factorised (GLA-style) form overflows here: e^{-c} reaches e^{8·64} ≫ float32's max
    o_bad, _ = wkv6.chunked(r, k, v, w, u, initial_state=s0, chunk_size=64, stable=False)
    assert not torch.isfinite(o_bad).all()


def _spike_inputs(B, T, H, K, V, spike, seed):
    """w = −0.01 everywhere except two tokens of every channel at ``spike``: a long running sum of w is
    dominated by the spikes, so an exponent formed as the difference of two such sums loses the −0.01s."""
    r, k, v, w, u, s0 = make_inputs(B, T, H, K, V, dtype=torch.float64, seed=seed)
    w = torch.full_like(w, -0.01)
    w[:, T // 3] = spike
    w[:, (2 * T) // 3 + 1] = spike
    return [r, k, v, w, u, s0]


@pytest.mark.parametrize("spike", [-1e4, -1e3])
@pytest.mark.parametrize("shape", [(1, 40, 2, 8, 8), (2, 37, 3, 16, 5), (1, 41, 1, 4, 12), (1, 150, 2, 8, 8)], ids=str)
@pytest.mark.parametrize("chunk_size", [64, 16])
def test_decay_spike_costs_no_float32_accuracy(chunk_size, shape, spike):
    # every exponent is a sum over its own interval: float32 output, final state and every gradient
    # stay at float32 rounding (~1e-7) against the float64 loop (differences of running sums: ~3e-4)
    xs64 = _spike_inputs(*shape, spike, seed=shape[1])
    xs32 = [x.float().requires_grad_() for x in xs64]
    xs64 = [x.requires_grad_() for x in xs64]
    impl = functools.partial(wkv6.chunked, chunk_size=chunk_size)
    out32 = impl(*xs32[:5], scale=0.5, initial_state=xs32[5], output_final_state=True)
    out64 = wkv6.naive(*xs64[:5], scale=0.5, initial_state=xs64[5], output_final_state=True)
    assert rel_err(out32[0], out64[0]) < 1e-6 and rel_err(out32[1], out64[1]) < 1e-6
    g32, g64 = _grads(impl, xs32), _grads(wkv6.naive, xs64)
    for name, a, b in zip(["r", "k", "v", "w", "u", "initial_state"], g32, g64):
        assert rel_err(a, b) < 1e-6, name


class _ExpRecorder(torch.overrides.TorchFunctionMode):
    """Records the largest argument of every exponential evaluated inside the block."""

    EXPS = {torch.exp, torch.Tensor.exp, torch.Tensor.exp_, torch.exp2, torch.Tensor.exp2, torch.Tensor.exp2_,
            torch.special.expm1, torch.special.exp2}

    def __init__(self):
        super().__init__()
        self.largest = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.EXPS:
            self.largest.append(args[0].detach().max().item())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("decay", [0.0, 1.0, 8.0, 1e4])
def test_stable_chunked_never_evaluates_a_positive_exponent(decay):
    r, k, v, w, u, s0 = make_inputs(1, 150, 2, 8, 8, decay=max(decay, 1.0), requires_grad=True)
    if decay in (0.0, 1e4):
        w = torch.full_like(w, -decay).requires_grad_()
    with _ExpRecorder() as rec:
        o, s = wkv6.chunked(r, k, v, w, u, initial_state=s0, output_final_state=True)
    assert rec.largest and max(rec.largest) <= 0.0
    with _ExpRecorder() as rec:
        o_bad, _ = wkv6.chunked(r, k, v, w, u, initial_state=s0, stable=False)
    assert max(rec.largest) > 0.0 or decay == 0.0          # the textbook form does (e^{-c})


@pytest.mark.parametrize("w_value", [-8.0, -20.0, -1e4])
def test_constant_strong_decay_is_finite_with_finite_gradients(w_value):
    r, k, v, w, u, s0 = make_inputs(1, 300, 2, 8, 8, requires_grad=True)
    w = torch.full_like(w, w_value).requires_grad_()
    xs = [r, k, v, w, u, s0]
    o_ref, s_ref = wkv6.naive(*xs[:5], initial_state=s0, output_final_state=True)
    o, s = wkv6.chunked(*xs[:5], initial_state=s0, output_final_state=True)
    assert rel_err((o, s), (o_ref, s_ref)) <= 1e-5
    grads = torch.autograd.grad(o.sum() + s.sum(), xs)
    assert all(torch.isfinite(g).all() for g in grads)


def test_pairwise_decay_is_exact_under_a_spike():
    # attention_matrix's decays are interval sums too: equal to float64 at float32 rounding
    w64 = _spike_inputs(1, 24, 1, 4, 4, -1e4, seed=1)[3][0, :, 0]          # [T, K]
    from rwkvlab.wkv6.reference import _pairwise_decay
    D32, D64 = _pairwise_decay(w64.float()), _pairwise_decay(w64)
    on_or_above = torch.ones(24, 24, dtype=torch.bool).triu()            # j ≥ i: nothing (causal, bonus aside)
    assert torch.all(D64[on_or_above] == 0) and rel_err(D32, D64) < 1e-6


def test_zero_decay_with_long_chunks_is_plain_linear_attention():
    r, k, v, w, u, _ = make_inputs(1, 40, 1, 4, 4, with_state=False)
    w = torch.zeros_like(w)     # factor exp(0) = 1: no forgetting, the edge of the allowed range
    o, _ = wkv6.chunked(r, k, v, w, u, chunk_size=64)
    scores = torch.einsum("bihk,bjhk->bhij", r, k).tril(-1) + torch.diag_embed((r * u * k).sum(-1).transpose(1, 2))
    assert rel_err(o, torch.einsum("bhij,bjhv->bihv", scores, v)) < 1e-5


# ------------------------------------------------------------------------------------------------
# bad input: a ValueError naming the argument
# ------------------------------------------------------------------------------------------------

def _good():
    r, k, v, w, u, s0 = make_inputs(2, 6, 2, 4, 3)
    return dict(r=r, k=k, v=v, w=w, u=u, initial_state=s0)


def _varlen():
    r, k, v, w, u, _ = make_inputs(1, 6, 2, 4, 3, with_state=False)
    return dict(r=r, k=k, v=v, w=w, u=u, cu_seqlens=torch.tensor([0, 2, 6]))


BAD = {
    "k shape": (lambda a: a.update(k=a["k"][:, :5]), "k"),
    "r rank": (lambda a: a.update(r=a["r"][0]), "r"),
    "v shape": (lambda a: a.update(v=a["v"][:, :, :1]), "v"),
    "w shape": (lambda a: a.update(w=a["w"][..., :3]), "w"),
    "u shape": (lambda a: a.update(u=a["u"][:, :3]), "u"),
    "u rank": (lambda a: a.update(u=a["u"][0]), "u"),
    "u heads": (lambda a: a.update(u=torch.zeros(3, 4)), "u"),
    "positive w": (lambda a: a.update(w=a["w"].abs()), "w"),
    "nan in k": (lambda a: a["k"].__setitem__((0, 0, 0, 0), float("nan")), "k"),
    "inf in v": (lambda a: a["v"].__setitem__((0, 0, 0, 0), float("inf")), "v"),
    "nan in u": (lambda a: a["u"].__setitem__((0, 0), float("nan")), "u"),
    "int r": (lambda a: a.update(r=a["r"].long()), "r"),
    "int u": (lambda a: a.update(u=a["u"].long()), "u"),
    "mixed dtypes": (lambda a: a.update(v=a["v"].double()), "r, k, w, v"),
    "state wrong N": (lambda a: a.update(initial_state=a["initial_state"][:1]), "initial_state"),
    "state wrong K": (lambda a: a.update(initial_state=a["initial_state"][:, :, :2]), "initial_state"),
    "state nan": (lambda a: a["initial_state"].__setitem__((0, 0, 0, 0), float("nan")), "initial_state"),
    "list input": (lambda a: a.update(r=a["r"].tolist()), "r"),
    "cu with B > 1": (lambda a: a.update(cu_seqlens=torch.tensor([0, 6])), "cu_seqlens"),
}
BAD_VARLEN = {
    "cu not starting at 0": (lambda a: a.update(cu_seqlens=torch.tensor([1, 2, 6])), "cu_seqlens"),
    "cu not increasing": (lambda a: a.update(cu_seqlens=torch.tensor([0, 4, 4, 6])), "cu_seqlens"),
    "cu decreasing": (lambda a: a.update(cu_seqlens=torch.tensor([0, 4, 2, 6])), "cu_seqlens"),
    "cu not ending at T": (lambda a: a.update(cu_seqlens=torch.tensor([0, 2, 5])), "cu_seqlens"),
    "cu float": (lambda a: a.update(cu_seqlens=torch.tensor([0.0, 2.0, 6.0])), "cu_seqlens"),
    "state wrong N varlen": (lambda a: a.update(initial_state=torch.zeros(3, 2, 4, 3)), "initial_state"),
}
TORCH_IMPLS = [("naive", wkv6.naive), ("chunked", wkv6.chunked)]


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
@pytest.mark.parametrize("name,impl", TORCH_IMPLS, ids=[n for n, _ in TORCH_IMPLS])
def test_bad_input_raises_naming_the_argument(name, impl, case):
    args = _good()
    spoil, arg = BAD[case]
    spoil(args)
    with pytest.raises(ValueError, match=f"^{re.escape(arg)}:"):   # the message opens with the name
        impl(**args)


@pytest.mark.parametrize("case", list(BAD_VARLEN), ids=list(BAD_VARLEN))
@pytest.mark.parametrize("name,impl", TORCH_IMPLS, ids=[n for n, _ in TORCH_IMPLS])
def test_bad_varlen_input_raises_naming_the_argument(name, impl, case):
    args = _varlen()
    impl(**args)                        # the unspoilt call is fine
    spoil, arg = BAD_VARLEN[case]
    spoil(args)
    with pytest.raises(ValueError, match=f"^{re.escape(arg)}:"):
        impl(**args)


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5, True, "16"])
def test_bad_chunk_size(chunk_size):
    with pytest.raises(ValueError, match=r"^chunk_size:"):
        wkv6.chunked(**_good(), chunk_size=chunk_size)
    with pytest.raises(ValueError, match=r"^sub_chunk_size:"):
        wkv6.chunked(**_good(), sub_chunk_size=chunk_size)


def test_bad_scale():
    with pytest.raises(ValueError, match=r"^scale:"):
        wkv6.naive(**_good(), scale=torch.tensor(1.0))


def test_step_bad_input():
    r, k, v, w, u, s0 = make_inputs(2, 1, 2, 4, 3)
    args = dict(r=r[:, 0], k=k[:, 0], v=v[:, 0], w=w[:, 0], u=u, state=s0)
    wkv6.step(**args)
    for key, bad, arg in [("state", s0[:1], "state"), ("state", s0[..., :2], "state"), ("r", r, "r"),
                          ("w", w[:, 0].abs(), "w"), ("u", u[:1], "u"), ("k", k[:, 0, :1], "k")]:
        with pytest.raises(ValueError, match=f"^{arg}:"):
            wkv6.step(**{**args, key: bad})


def test_random_inputs_are_seeded_and_valid():
    a = wkv6.random_inputs(2, 5, 3, 4, 6, seed=1, dtype=torch.float64, decay=2.0)
    b = wkv6.random_inputs(2, 5, 3, 4, 6, seed=1, dtype=torch.float64, decay=2.0)
    assert [tuple(x.shape) for x in a] == [(2, 5, 3, 4), (2, 5, 3, 4), (2, 5, 3, 6), (2, 5, 3, 4), (3, 4)]
    assert all(x.dtype == torch.float64 and torch.equal(x, y) for x, y in zip(a, b))
    assert torch.all(a[3] < 0)
    wkv6.naive(*a)      # a valid call
