"""Softmax attention: the rungs agree, gradients match autograd, the KV cache decodes, bad input raises."""
from __future__ import annotations

import re

import pytest
import torch

import rwkvlab
from rwkvlab import attention as A

DEV = rwkvlab.device.device()  # the Triton kernels run here: CUDA with a GPU, CPU in the interpreter

SHAPES = [(2, 37, 2, 16, 16), (1, 1, 1, 8, 12), (1, 33, 3, 5, 7), (2, 16, 1, 32, 16)]


def _inputs(B, T, H, K, V, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, d, generator=g, dtype=torch.float64).to(dtype) for d in (K, K, V)]


def _dense_reference(q, k, v, scale):
    """Softmax attention written out with no shared code: float64, explicit exp and sums."""
    B, T, H, K = q.shape
    o = torch.zeros(B, T, H, v.shape[-1], dtype=torch.float64)
    for t in range(T):
        s = (q[:, t, None].double() * k[:, : t + 1].double()).sum(-1) * scale  # [B, t+1, H]
        e = torch.exp(s - s.max(dim=1, keepdim=True).values)
        o[:, t] = (e[..., None] * v[:, : t + 1].double()).sum(1) / e.sum(1)[..., None]
    return o


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_naive_matches_written_out_reference_in_float64(shape):
    q, k, v = _inputs(*shape, dtype=torch.float64)
    K = shape[3]
    assert rwkvlab.rel_err(A.naive(q, k, v), _dense_reference(q, k, v, K ** -0.5)) < 1e-12
    assert rwkvlab.rel_err(A.naive(q, k, v, scale=0.3), _dense_reference(q, k, v, 0.3)) < 1e-12


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("impl", ["parallel", "chunked"])
def test_torch_rungs_match_float64_naive(shape, impl):
    q, k, v = _inputs(*shape)
    ref = A.naive(q.double(), k.double(), v.double())
    got = getattr(A, impl)(q, k, v)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert rwkvlab.rel_err(got, ref) < 1e-5


@pytest.mark.parametrize("block_size", [1, 3, 8, 64])
def test_chunked_any_block_size(block_size):
    q, k, v = _inputs(1, 21, 2, 8, 8, seed=3)
    ref = A.naive(q.double(), k.double(), v.double())
    assert rwkvlab.rel_err(A.chunked(q, k, v, block_size=block_size), ref) < 1e-5


def test_chunked_is_stable_for_huge_scores():
    # scores of order 1e3 overflow exp() unless the running max is subtracted
    q, k, v = _inputs(1, 20, 1, 4, 4, seed=4)
    q = q * 60
    ref = A.naive(q.double(), k.double(), v.double())
    got = A.chunked(q, k, v, block_size=4)
    assert torch.isfinite(got).all()
    assert rwkvlab.rel_err(got, ref) < 1e-5


def test_causality_future_tokens_do_not_change_the_past():
    q, k, v = _inputs(1, 12, 2, 8, 8, seed=5)
    o = A.chunked(q, k, v, block_size=4)
    v2 = v.clone()
    v2[:, 7:] += 100.0
    k2 = k.clone()
    k2[:, 7:] -= 3.0
    o2 = A.chunked(q, k2, v2, block_size=4)
    assert torch.equal(o[:, :7], o2[:, :7])
    assert not torch.allclose(o[:, 7:], o2[:, 7:])


@pytest.mark.parametrize("impl", ["parallel", "chunked"])
def test_gradients_match_autograd_through_naive(impl):
    q, k, v = _inputs(2, 11, 2, 6, 5, seed=6, dtype=torch.float64)
    grads = []
    for f in (A.naive, getattr(A, impl)):
        xs = [x.clone().requires_grad_() for x in (q, k, v)]
        o = f(*xs, scale=0.7) if f is A.naive else f(*xs, scale=0.7, **({"block_size": 4} if impl == "chunked" else {}))
        (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum().backward()
        grads.append([x.grad for x in xs])
    for g_ref, g in zip(*grads):
        assert rwkvlab.rel_err(g, g_ref) < 1e-10


@pytest.mark.parametrize("shape", [(1, 1, 1, 16, 16), (2, 37, 2, 16, 16), (1, 64, 2, 16, 16), (1, 19, 1, 5, 20)], ids=str)
def test_triton_kernel_matches_naive(shape):
    q, k, v = _inputs(*shape, seed=7)
    ref = A.naive(q.double(), k.double(), v.double())
    got = A.triton_chunked(q.to(DEV), k.to(DEV), v.to(DEV))
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert rwkvlab.rel_err(got, ref) < 1e-4


def test_triton_kernel_block_32_and_custom_scale():
    q, k, v = _inputs(1, 40, 2, 16, 16, seed=8)
    ref = A.naive(q.double(), k.double(), v.double(), scale=0.2)
    assert rwkvlab.rel_err(A.triton_chunked(q.to(DEV), k.to(DEV), v.to(DEV), scale=0.2, block_size=32), ref) < 1e-4


def test_triton_kernel_is_forward_only():
    q, k, v = [x.to(DEV).requires_grad_() for x in _inputs(1, 16, 1, 16, 16, seed=9)]
    assert not A.triton_chunked(q, k, v).requires_grad


def test_kv_cache_decoding_matches_parallel_and_cache_grows_linearly():
    q, k, v = _inputs(2, 9, 2, 8, 6, seed=10)
    ref = A.parallel(q, k, v)
    cache, sizes = None, []
    for t in range(9):
        o_t, cache = A.kv_cache_step(q[:, t], k[:, t], v[:, t], cache)
        assert rwkvlab.rel_err(o_t, ref[:, t]) < 1e-6
        sizes.append(cache.nbytes)
        assert cache.length == t + 1
    per_token = 2 * 2 * (8 + 6) * 4  # B · H · (K + V) · 4 bytes
    assert sizes == [per_token * (t + 1) for t in range(9)]


BAD = [
    ("q", lambda q, k, v: (q[0], k, v)),                       # wrong rank
    ("k", lambda q, k, v: (q, k[:, :-1], v)),                  # mismatched T
    ("v", lambda q, k, v: (q, k, v[:, :, :1])),                # mismatched H
    ("q", lambda q, k, v: (q.long(), k, v)),                   # int dtype
    ("v", lambda q, k, v: (q, k, v.clone().fill_(float("nan")))),
    ("k", lambda q, k, v: (q, k.clone().index_fill_(1, torch.tensor([2]), float("inf")), v)),
    ("q, k, v", lambda q, k, v: (q, k.double(), v)),           # mixed dtypes
]


@pytest.mark.parametrize("impl", ["naive", "parallel", "chunked", "triton_chunked"])
@pytest.mark.parametrize("argname, make", BAD, ids=[f"{a}-{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_inputs_raise_value_error_naming_the_argument(impl, argname, make):
    q, k, v = _inputs(1, 4, 2, 16, 16, seed=11)
    with pytest.raises(ValueError, match=f"^{re.escape(argname)}:"):
        getattr(A, impl)(*make(q, k, v))


def test_bad_scale_and_block_size():
    q, k, v = _inputs(1, 4, 1, 16, 16)
    with pytest.raises(ValueError, match=r"^scale:"):
        A.parallel(q, k, v, scale=float("nan"))
    with pytest.raises(ValueError, match=r"^block_size:"):
        A.chunked(q, k, v, block_size=0)
    with pytest.raises(ValueError, match=r"^block_size:"):
        A.triton_chunked(q, k, v, block_size=24)


def test_kv_cache_bad_inputs():
    q, k, v = _inputs(1, 3, 2, 8, 4)
    with pytest.raises(ValueError, match=r"^q_t:"):
        A.kv_cache_step(q, k[:, 0], v[:, 0])
    with pytest.raises(ValueError, match=r"^v_t:"):
        A.kv_cache_step(q[:, 0], k[:, 0], v[:, 0, :1])
    _, cache = A.kv_cache_step(q[:, 0], k[:, 0], v[:, 0])
    with pytest.raises(ValueError, match=r"^cache:"):
        A.kv_cache_step(q[:, 1, :1], k[:, 1, :1], v[:, 1, :1], cache)
    with pytest.raises(ValueError, match=r"^cache:"):
        A.kv_cache_step(q[:, 1], k[:, 1], v[:, 1], (cache.keys, cache.values, 0))
    with pytest.raises(ValueError, match="^scale:"):
        A.kv_cache_step(q[:, 1], k[:, 1], v[:, 1], cache, scale=float("inf"))


# ---- linear attention (Katharopoulos et al. 2020): the recurrence equals the definition ----

def _linear_reference(q, k, v, normalize):
    """Linear attention written with no shared code: the masked T × T weight matrix, float64."""
    fq, fk = torch.nn.functional.elu(q.double()) + 1, torch.nn.functional.elu(k.double()) + 1
    T = q.shape[1]
    W = torch.einsum("bthk,bihk->bhti", fq, fk) * torch.ones(T, T, dtype=torch.float64).tril()
    o = torch.einsum("bhti,bihv->bthv", W, v.double())
    return o / W.sum(-1).permute(0, 2, 1)[..., None] if normalize else o


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("normalize", [True, False])
def test_linear_attention_naive_and_recurrent_match_the_matrix_form(shape, normalize):
    q, k, v = _inputs(*shape, seed=21)
    ref = _linear_reference(q, k, v, normalize)
    assert rwkvlab.rel_err(A.linear_naive(q.double(), k.double(), v.double(), normalize=normalize), ref) < 1e-12
    got = A.linear_recurrent(q, k, v, normalize=normalize)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert rwkvlab.rel_err(got, ref) < 1e-5
    assert rwkvlab.rel_err(A.linear_recurrent(q.double(), k.double(), v.double(), normalize=normalize), ref) < 1e-12


def test_linear_attention_identity_map_and_final_state():
    q, k, v = _inputs(2, 19, 3, 6, 5, seed=22, dtype=torch.float64)
    o, (S, z) = A.linear_recurrent(q, k, v, feature_map="identity", normalize=False, output_final_state=True)
    assert rwkvlab.rel_err(o, A.linear_naive(q, k, v, feature_map="identity", normalize=False)) < 1e-12
    # the state is the sum of all outer products, whatever T: [B, H, K, V] and [B, H, K]
    assert S.shape == (2, 3, 6, 5) and z.shape == (2, 3, 6)
    assert rwkvlab.rel_err(S, torch.einsum("bthk,bthv->bhkv", k, v)) < 1e-12
    assert rwkvlab.rel_err(z, k.sum(1)) < 1e-12
    # the weights depend on the query: changing q_t changes o_t
    q2 = q.clone()
    q2[:, 7] += 1.0
    o2 = A.linear_recurrent(q2, k, v, feature_map="identity", normalize=False)
    assert torch.equal(o2[:, :7], o[:, :7]) and not torch.allclose(o2[:, 7], o[:, 7])


def test_linear_attention_bad_arguments():
    q, k, v = _inputs(1, 4, 1, 4, 4)
    for fn in (A.linear_naive, A.linear_recurrent):
        with pytest.raises(ValueError, match="^feature_map:"):
            fn(q, k, v, feature_map="relu")
        with pytest.raises(ValueError, match="^normalize:"):
            fn(q, k, v, feature_map="identity")
        with pytest.raises(ValueError, match="^normalize:"):
            fn(q, k, v, normalize=1)
        with pytest.raises(ValueError, match="^v:"):
            fn(q, k, v[:, :3])


def test_split_rank_separates_finite_feature_maps_from_the_exponential_kernel():
    g = torch.Generator().manual_seed(23)
    T, K = 48, 4
    q, k = torch.randn(T, K, generator=g, dtype=torch.float64), torch.randn(T, K, generator=g, dtype=torch.float64)
    fq, fk = A.elu_feature_map(q), A.elu_feature_map(k)
    assert A.split_rank(fq @ fk.T, 24) == K                          # a state of K numbers suffices
    assert A.split_rank(torch.exp(q @ k.T / 2), 24) == 24            # full: every past key is needed
    lam = 0.3                                                        # a decay bias: one number
    ages = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    assert A.split_rank(torch.exp(-lam * ages.double()), 24) == 1
    # a row scaling (the softmax denominator) leaves the rank alone
    assert A.split_rank((torch.rand(T, 1, generator=g, dtype=torch.float64) + 0.5) * (fq @ fk.T), 10) == K
    assert A.split_rank(torch.zeros(T, T), 5) == 0
    with pytest.raises(ValueError, match="^t0:"):
        A.split_rank(fq @ fk.T, T)
    with pytest.raises(ValueError, match="^weights:"):
        A.split_rank(fq, 2)
