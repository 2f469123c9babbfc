"""AFT: the rungs agree, the variants relate as the paper says, gradients match, bad input raises."""
from __future__ import annotations

import re

import pytest
import torch

import rwkvlab
from rwkvlab import aft as F

DEV = rwkvlab.device.device()  # the Triton kernels run here: CUDA with a GPU, CPU in the interpreter

SHAPES = [(2, 37, 20), (1, 1, 5), (1, 16, 16), (3, 9, 1), (1, 40, 33)]


def _inputs(B, T, D, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q, k, v = [torch.randn(B, T, D, generator=g, dtype=torch.float64).to(dtype) for _ in range(3)]
    w = torch.randn(T, T, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v, w


def _paper_formula(q, k, v, w):
    """Eq. 2 of Zhai et al. with the causal sum, written out with no shared code, in float64."""
    B, T, D = q.shape
    y = torch.zeros(B, T, D, dtype=torch.float64)
    for t in range(T):
        for b in range(B):
            e = torch.exp(k[b, : t + 1].double() + w[t, : t + 1, None].double())  # [t+1, D]
            y[b, t] = torch.sigmoid(q[b, t].double()) * (e * v[b, : t + 1].double()).sum(0) / e.sum(0)
    return y


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_naive_is_the_papers_formula(shape):
    q, k, v, w = _inputs(*shape, dtype=torch.float64)
    assert rwkvlab.rel_err(F.naive(q, k, v, w), _paper_formula(q, k, v, w)) < 1e-12


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("impl", ["parallel", "chunked"])
def test_torch_rungs_match_float64_naive(shape, impl):
    q, k, v, w = _inputs(*shape, seed=1)
    ref = F.naive(q.double(), k.double(), v.double(), w.double())
    got = getattr(F, impl)(q, k, v, w)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert rwkvlab.rel_err(got, ref) < 1e-5


@pytest.mark.parametrize("block_size", [1, 5, 16, 100])
def test_chunked_any_block_size(block_size):
    q, k, v, w = _inputs(2, 23, 7, seed=2)
    ref = F.naive(q.double(), k.double(), v.double(), w.double())
    assert rwkvlab.rel_err(F.chunked(q, k, v, w, block_size=block_size), ref) < 1e-5


@pytest.mark.parametrize("impl", ["naive", "parallel", "chunked", "triton_chunked"])
def test_large_logits_do_not_overflow(impl):
    # K + w of order 200 overflows exp() in float32 unless the max is subtracted
    q, k, v, w = _inputs(1, 20, 16, seed=3)
    k, w = k * 100, w * 100
    assert not torch.isfinite(torch.exp(k + w.diagonal()[:, None])).all()
    ref = _paper_formula(q, k, v, w)  # float64 holds e^{600}
    got = getattr(F, impl)(*(x.to(DEV) for x in (q, k, v, w))) if impl == "triton_chunked" else getattr(F, impl)(q, k, v, w)
    assert torch.isfinite(got).all()
    assert rwkvlab.rel_err(got, ref) < 1e-4


def test_causality_future_tokens_do_not_change_the_past():
    q, k, v, w = _inputs(1, 12, 4, seed=4)
    y = F.chunked(q, k, v, w, block_size=4)
    k2, v2, w2 = k.clone(), v.clone(), w.clone()
    k2[:, 7:] += 2.0
    v2[:, 7:] -= 5.0
    w2[:, 7:] += 1.0  # biases toward future keys
    y2 = F.chunked(q, k2, v2, w2, block_size=4)
    assert torch.equal(y[:, :7], y2[:, :7])
    assert not torch.allclose(y[:, 7:], y2[:, 7:])


@pytest.mark.parametrize("impl", ["parallel", "chunked"])
def test_gradients_match_autograd_through_naive(impl):
    q, k, v, w = _inputs(2, 10, 5, seed=5, dtype=torch.float64)
    grads = []
    for f in (F.naive, getattr(F, impl)):
        xs = [x.clone().requires_grad_() for x in (q, k, v, w)]
        y = f(*xs, block_size=3) if impl == "chunked" and f is not F.naive else f(*xs)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        grads.append([x.grad for x in xs])
    for name, g_ref, g in zip("qkvw", *grads):
        # w above the diagonal is never used: its gradient is exactly zero in both
        assert rwkvlab.rel_err(g, g_ref) < 1e-10, name
    assert torch.equal(grads[1][3].triu(1), torch.zeros_like(w))


@pytest.mark.parametrize("shape", [(1, 1, 16), (2, 37, 16), (1, 64, 16), (1, 21, 40)], ids=str)
def test_triton_kernel_matches_naive(shape):
    q, k, v, w = _inputs(*shape, seed=6)
    ref = F.naive(q.double(), k.double(), v.double(), w.double())
    got = F.triton_chunked(*(x.to(DEV) for x in (q, k, v, w)))
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert rwkvlab.rel_err(got, ref) < 1e-4


def test_triton_kernel_other_blocks_and_forward_only():
    q, k, v, w = _inputs(1, 30, 12, seed=7)
    ref = F.naive(q.double(), k.double(), v.double(), w.double())
    assert rwkvlab.rel_err(F.triton_chunked(*(x.to(DEV) for x in (q, k, v, w)), block_size=32, block_d=4), ref) < 1e-4
    assert not F.triton_chunked(*[x.to(DEV).requires_grad_() for x in (q, k, v, w)]).requires_grad


def test_simple_is_full_with_zero_bias_and_noncausal_is_a_global_softmax():
    q, k, v, _ = _inputs(2, 15, 6, seed=8)
    zero = torch.zeros(15, 15)
    assert rwkvlab.rel_err(F.simple(q, k, v), F.naive(q.double(), k.double(), v.double(), zero.double())) < 1e-5
    y = F.simple(q, k, v, causal=False)
    ctx = (torch.softmax(k.double(), dim=1) * v.double()).sum(1, keepdim=True)
    assert rwkvlab.rel_err(y, torch.sigmoid(q.double()) * ctx) < 1e-6
    # the non-causal context is the causal one at the last position, shared by every t
    assert rwkvlab.rel_err(y[:, -1], F.simple(q, k, v)[:, -1]) < 1e-6


def test_local_spans_simple_to_full_and_keeps_global_connectivity():
    q, k, v, w = _inputs(1, 14, 4, seed=9, dtype=torch.float64)
    assert rwkvlab.rel_err(F.local(q, k, v, w, 0), F.simple(q, k, v)) < 1e-12
    assert rwkvlab.rel_err(F.local(q, k, v, w, 14), F.naive(q, k, v, w)) < 1e-12
    # outside the window the bias is 0, not −∞: the first value still moves the last output
    y = F.local(q, k, v, w, 3)
    v2 = v.clone()
    v2[:, 0] += 1.0
    assert (F.local(q, k, v2, w, 3)[:, -1] - y[:, -1]).abs().min() > 1e-6
    # while the window's own bias entries are the only ones used
    w2 = w.clone()
    w2[13, 0] += 5.0  # |13 − 0| ≥ 3: outside the window, ignored
    assert torch.equal(F.local(q, k, v, w2, 3), y)


@pytest.mark.parametrize("lam", [0.0, 0.25, 3.0])
def test_decay_bias_turns_aft_full_into_a_recurrence(lam):
    q, k, v, _ = _inputs(2, 17, 5, seed=10, dtype=torch.float64)
    w = F.decay_bias(17, lam, dtype=torch.float64)
    assert w[5, 2] == -3 * lam
    assert rwkvlab.rel_err(F.recurrent(q, k, v, torch.full((5,), lam, dtype=torch.float64)), F.naive(q, k, v, w)) < 1e-12


def test_recurrence_per_channel_decay_and_stability():
    q, k, v, _ = _inputs(1, 25, 3, seed=11)
    lam = torch.tensor([0.0, 0.5, 4.0])
    got = F.recurrent(q, k * 80, v, lam)
    # channel by channel, each equals AFT-full with that channel's decay bias (in float64)
    for d in range(3):
        ref = F.naive(q[..., d:d + 1].double(), k[..., d:d + 1].double() * 80, v[..., d:d + 1].double(),
                      F.decay_bias(25, lam[d].item(), dtype=torch.float64))
        assert rwkvlab.rel_err(got[..., d:d + 1], ref) < 1e-5


def test_recurrent_gradients_match_naive():
    q, k, v, _ = _inputs(1, 8, 3, seed=12, dtype=torch.float64)
    lam = torch.tensor(0.4, dtype=torch.float64)
    grads = []
    for use_rec in (False, True):
        xs = [x.clone().requires_grad_() for x in (q, k, v)]
        lam_ = lam.clone().requires_grad_()
        if use_rec:
            y = F.recurrent(*xs, lam_.expand(3))
        else:
            idx = torch.arange(8, dtype=torch.float64)
            y = F.naive(*xs, (-(idx[:, None] - idx[None, :]) * lam_).tril())
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        grads.append([x.grad for x in xs] + [lam_.grad])
    for g_ref, g in zip(*grads):
        assert rwkvlab.rel_err(g, g_ref) < 1e-10


BAD = [
    ("q", lambda q, k, v, w: (q[0], k, v, w)),                      # wrong rank
    ("k", lambda q, k, v, w: (q, k[:, :-1], v, w)),                 # mismatched T
    ("v", lambda q, k, v, w: (q, k, v[..., :2], w)),                # mismatched D
    ("w", lambda q, k, v, w: (q, k, v, w[:-1])),                    # w not T × T
    ("w", lambda q, k, v, w: (q, k, v, w[None])),                   # w wrong rank
    ("q", lambda q, k, v, w: (q.long(), k, v, w)),                  # int dtype
    ("v", lambda q, k, v, w: (q, k, v.clone().fill_(float("nan")), w)),
    ("w", lambda q, k, v, w: (q, k, v, w.clone().fill_(float("-inf")))),
    ("q, k, v, w", lambda q, k, v, w: (q, k, v, w.double())),       # mixed dtypes
]


@pytest.mark.parametrize("impl", ["naive", "parallel", "chunked", "triton_chunked", "local"])
@pytest.mark.parametrize("argname, make", BAD, ids=[f"{a}-{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_inputs_raise_value_error_naming_the_argument(impl, argname, make):
    q, k, v, w = _inputs(1, 4, 3, seed=13)
    args = make(q, k, v, w)
    extra = (2,) if impl == "local" else ()
    with pytest.raises(ValueError, match=f"^{re.escape(argname)}:"):
        getattr(F, impl)(*args, *extra)


def test_bad_variant_arguments():
    q, k, v, w = _inputs(1, 4, 3)
    with pytest.raises(ValueError, match="^s:"):
        F.local(q, k, v, w, -1)
    with pytest.raises(ValueError, match="^lam:"):
        F.recurrent(q, k, v, torch.tensor([0.1, -0.1, 0.0]))
    with pytest.raises(ValueError, match="^lam:"):
        F.recurrent(q, k, v, torch.zeros(2))
    with pytest.raises(ValueError, match="^lam:"):
        F.decay_bias(4, -1.0)
    with pytest.raises(ValueError, match="^block_size:"):
        F.chunked(q, k, v, w, block_size=0)
    with pytest.raises(ValueError, match="^block_d:"):
        F.triton_chunked(q, k, v, w, block_d=12)
    with pytest.raises(ValueError, match="^q:"):
        F.simple(q[0], k, v)
