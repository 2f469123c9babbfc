"""RWKV-7 torch rungs: ``naive`` against an independent loop in the paper's own (transposed)
layout, ``chunked`` against ``naive``, gradients, varlen, ``step`` and input validation.

Kernel engineer: add Triton implementations to ``IMPLS`` below (every test parametrised over it
then covers them), or put interpreter-sized tests in tests/test_wkv7_triton.py.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch

import rwkvlab  # noqa: F401  (selects the Triton mode before any kernel module is imported)
from rwkvlab import wkv7
from rwkvlab.checking import rel_err

# Implementations compared against ``naive`` (name -> callable with the wkv7 contract).
# Each is checked against ``naive`` in float32 to TOL[name] (default 1e-5) and for gradients.
IMPLS = {
    "chunked": wkv7.chunked,
    "chunked_c1": functools.partial(wkv7.chunked, chunk_size=1),
    "chunked_c4": functools.partial(wkv7.chunked, chunk_size=4),
    "chunked_c7": functools.partial(wkv7.chunked, chunk_size=7),
    "chunked_c64": functools.partial(wkv7.chunked, chunk_size=64),
}
TOL: dict[str, float] = {}


def make_inputs(B, T, H, K, V, seed=0, dtype=torch.float32, decay="rwkv7", model_like=True):
    """wkv7.random_inputs. ``model_like``: a = -κ̂, b = κ̂·iclr as the models call it (the state stays
    bounded for any T), else a, b independent normals. ``decay``: "rwkv7" draws w ∈ (-e^{-0.5}, 0)
    like the model, or a float for a constant w."""
    return tuple(wkv7.random_inputs(B, T, H, K, V, seed=seed, dtype=dtype, model_like=model_like,
                                    w_const=None if decay == "rwkv7" else decay))


def paper_loop(r, w, k, v, a, b, scale=1.0, s0=None):
    """The RWKV-7 paper / CUDA kernel form, written independently: state V×K (rows index values),
    decay on the columns. With a = -κ̂ and b = κ̂⊙iclr this is
    S_t = S_{t-1} diag(w_t) - (S_{t-1} κ̂ᵀ)(iclr⊙κ̂) + v_tᵀ k̃_t, y_t = S_t r_t. float64."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    S = torch.zeros(B, H, V, K, dtype=torch.float64) if s0 is None else s0.double().transpose(-1, -2).clone()
    y = torch.zeros(B, T, H, V, dtype=torch.float64)
    for bb in range(B):
        for h in range(H):
            for t in range(T):
                wt = w[bb, t, h].double().exp()
                at, bt = a[bb, t, h].double(), b[bb, t, h].double()
                kt, vt, rt = k[bb, t, h].double(), v[bb, t, h].double(), r[bb, t, h].double()
                Sbh = S[bb, h]
                sa = Sbh @ at                                   # sa_i = Σ_j a_j S_ij
                Sbh = Sbh * wt[None, :] + torch.outer(sa, bt) + torch.outer(vt, kt)
                S[bb, h] = Sbh
                y[bb, t, h] = scale * (Sbh @ rt)
    return y, S.transpose(-1, -2)


SHAPES = [  # (B, T, H, K, V)
    (1, 1, 1, 4, 4),
    (2, 7, 2, 4, 3),
    (1, 13, 3, 5, 6),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("model_like", [True, False])
def test_naive_matches_paper_layout_loop(shape, model_like):
    x = make_inputs(*shape, seed=1, dtype=torch.float64, model_like=model_like)
    B, T, H, K, V = shape
    s0 = torch.randn(B, H, K, V, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    o, S = wkv7.naive(*x, scale=0.7, initial_state=s0, output_final_state=True)
    o_ref, S_ref = paper_loop(*x, scale=0.7, s0=s0)
    assert o.dtype == torch.float64 and S.dtype == torch.float64
    assert rel_err(o, o_ref) < 1e-12 and rel_err(S, S_ref) < 1e-12


def test_naive_matches_the_papers_equation_in_its_own_variables():
    """Eq. 17 of the RWKV-7 paper, V×K state: wkv_t = wkv_{t-1}(diag(w_t) − κ̂_tᵀ(iclr_t⊙κ̂_t)) + v_tᵀk̃_t,
    read-out wkv_t r_t, with w_t the decay *factor*; the kernel gets a = −κ̂, b = κ̂⊙iclr, log w."""
    g = torch.Generator().manual_seed(20)
    T, H, K, V = 9, 2, 5, 3
    kappa = torch.randn(1, T, H, K, generator=g, dtype=torch.float64)
    kappa_hat = kappa / kappa.norm(dim=-1, keepdim=True)
    iclr = torch.rand(1, T, H, K, generator=g, dtype=torch.float64)
    k_tilde, r = torch.randn(1, T, H, K, generator=g, dtype=torch.float64), torch.randn(1, T, H, K, generator=g, dtype=torch.float64)
    v = torch.randn(1, T, H, V, generator=g, dtype=torch.float64)
    factor = torch.exp(-math.exp(-0.5) * torch.sigmoid(torch.randn(1, T, H, K, generator=g, dtype=torch.float64)))
    wkv = torch.zeros(H, V, K, dtype=torch.float64)
    ys = []
    for t in range(T):
        y_t = []
        for h in range(H):
            kh = kappa_hat[0, t, h]
            wkv[h] = wkv[h] @ (torch.diag(factor[0, t, h]) - torch.outer(kh, iclr[0, t, h] * kh)) \
                + torch.outer(v[0, t, h], k_tilde[0, t, h])
            y_t.append(wkv[h] @ r[0, t, h])
        ys.append(torch.stack(y_t))
    o, S = wkv7.naive(r, factor.log(), k_tilde, v, -kappa_hat, kappa_hat * iclr, output_final_state=True)
    assert rel_err(o[0], torch.stack(ys)) < 1e-12
    assert rel_err(S[0], wkv.transpose(-1, -2)) < 1e-12


def test_naive_float32_against_float64_and_dtypes():
    x = make_inputs(2, 9, 2, 4, 4, seed=3, dtype=torch.float64)
    o64, S64 = wkv7.naive(*x, output_final_state=True)
    o32, S32 = wkv7.naive(*(t.float() for t in x), output_final_state=True)
    assert o32.dtype == torch.float32 and S32.dtype == torch.float32
    assert rel_err(o32, o64) < 1e-5 and rel_err(S32, S64) < 1e-5
    obf, Sbf = wkv7.naive(*(t.bfloat16() for t in x), output_final_state=True)
    assert obf.dtype == torch.bfloat16 and Sbf.dtype == torch.float32   # state accumulates in float32
    assert rel_err(obf, o64) < 3e-2


def test_no_final_state_unless_asked():
    x = make_inputs(1, 3, 1, 4, 4)
    assert wkv7.naive(*x)[1] is None


def test_naive_varlen_equals_separate_runs():
    lens = [3, 1, 6, 2]
    T = sum(lens)
    x = make_inputs(1, T, 2, 4, 3, seed=4)
    cu = torch.tensor([0, 3, 4, 10, 12])
    s0 = torch.randn(len(lens), 2, 4, 3, generator=torch.Generator().manual_seed(5))
    o, S = wkv7.naive(*x, initial_state=s0, output_final_state=True, cu_seqlens=cu)
    for n, (bos, eos) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        on, Sn = wkv7.naive(*(t[:, bos:eos] for t in x), initial_state=s0[n:n + 1], output_final_state=True)
        assert rel_err(o[:, bos:eos], on) == 0.0 and rel_err(S[n:n + 1], Sn) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_equals_last_position(dtype):
    B, T, H, K, V = 2, 6, 2, 4, 5
    x = make_inputs(B, T, H, K, V, seed=6, dtype=dtype)
    s0 = torch.randn(B, H, K, V, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    o, S = wkv7.naive(*x, initial_state=s0, output_final_state=True)
    state = s0
    for t in range(T):
        o_t, state = wkv7.step(*(z[:, t] for z in x), state)
        assert rel_err(o_t, o[:, t]) < 1e-6
    assert o_t.dtype == dtype and rel_err(state, S) < 1e-6


def test_step_rejects_bad_input():
    x = [z[:, 0] for z in make_inputs(2, 1, 2, 4, 5)]
    state = torch.zeros(2, 2, 4, 5)
    with pytest.raises(ValueError, match="^state:"):
        wkv7.step(*x, None)
    with pytest.raises(ValueError, match="^state:"):
        wkv7.step(*x, torch.zeros(2, 2, 5, 4))
    with pytest.raises(ValueError, match="^r:"):
        wkv7.step(x[0][None], *x[1:], state)
    with pytest.raises(ValueError, match="^v:"):
        wkv7.step(*x[:3], x[3][:1], *x[4:], state)
    with pytest.raises(ValueError, match="^w:"):
        wkv7.step(x[0], x[1].abs() + 0.1, *x[2:], state)


ALL = {"naive": wkv7.naive, **IMPLS}


BASE_SHAPE = (2, 5, 2, 4, 3)


def _inputs():
    return dict(zip(["r", "w", "k", "v", "a", "b"], make_inputs(*BASE_SHAPE, seed=9)))


def _shape_mismatch(name):
    def f(d):
        d[name] = d[name][:, :, :, :-1] if name != "v" else d[name][:, :-1]
        return d
    return f


def _set(name, fn):
    def f(d):
        d[name] = fn(d[name])
        return d
    return f


BAD = [
    *[(f"{n}-shape", _shape_mismatch(n), n) for n in ("w", "k", "a", "b", "v")],
    ("r-rank", _set("r", lambda x: x[0]), "r"),
    ("v-rank", _set("v", lambda x: x[0]), "v"),
    ("w-positive", _set("w", lambda x: x.abs() + 0.01), "w"),
    ("k-nan", _set("k", lambda x: x.index_put((torch.tensor([0]),), torch.tensor(float("nan")))), "k"),
    ("b-inf", _set("b", lambda x: x.index_put((torch.tensor([1]),), torch.tensor(float("inf")))), "b"),
    ("a-int", _set("a", lambda x: x.long()), "a"),
    ("v-dtype-mix", _set("v", lambda x: x.double()), "v: expected one dtype"),
    ("r-not-tensor", _set("r", lambda x: x.tolist()), "r"),
    ("state-wrong-N", lambda d: {**d, "initial_state": torch.zeros(3, 2, 4, 3)}, "initial_state"),
    ("state-wrong-K", lambda d: {**d, "initial_state": torch.zeros(2, 2, 3, 4)}, "initial_state"),
    ("state-nan", lambda d: {**d, "initial_state": torch.full((2, 2, 4, 3), float("nan"))}, "initial_state"),
    ("cu-with-B2", lambda d: {**d, "cu_seqlens": torch.tensor([0, 2, 5])}, "cu_seqlens"),
    ("scale-str", lambda d: {**d, "scale": "1"}, "scale"),
]
BAD_B1 = [  # cu_seqlens errors need B == 1
    ("cu-end", torch.tensor([0, 2, 4]), "cu_seqlens"),
    ("cu-start", torch.tensor([1, 2, 5]), "cu_seqlens"),
    ("cu-empty-seq", torch.tensor([0, 2, 2, 5]), "cu_seqlens"),
    ("cu-float", torch.tensor([0.0, 5.0]), "cu_seqlens"),
    ("cu-2d", torch.tensor([[0, 5]]), "cu_seqlens"),
]


@pytest.mark.parametrize("impl", list(ALL), ids=str)
@pytest.mark.parametrize("case", BAD, ids=lambda c: c[0])
def test_bad_inputs_name_the_argument(impl, case):
    _, modify, argname = case
    kwargs = modify(_inputs())
    with pytest.raises(ValueError, match=argname if " " in argname else f"^{argname}:"):  # the message opens with the name
        ALL[impl](**kwargs)


@pytest.mark.parametrize("impl", list(ALL), ids=str)
@pytest.mark.parametrize("case", BAD_B1, ids=lambda c: c[0])
def test_bad_cu_seqlens(impl, case):
    _, cu, argname = case
    d = {n: x[:1] for n, x in _inputs().items()}
    with pytest.raises(ValueError, match=f"^{argname}:"):
        ALL[impl](**d, cu_seqlens=cu)
    with pytest.raises(ValueError, match="^initial_state:"):   # one state per sequence
        ALL[impl](**d, cu_seqlens=torch.tensor([0, 2, 5]), initial_state=torch.zeros(1, 2, 4, 3))


# --------------------------------------------------------------------------- chunked (and IMPLS)
IMPL_SHAPES = [  # (B, T, H, K, V): T = 1, odd T, T a multiple of 16, T < chunk, H >= 2, K != V
    (1, 1, 1, 4, 4),
    (2, 13, 2, 4, 6),
    (1, 32, 2, 8, 8),
    (2, 37, 3, 16, 5),
]


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", IMPL_SHAPES, ids=str)
@pytest.mark.parametrize("with_state", [False, True])
def test_impl_matches_naive_float32(impl, shape, with_state):
    B, T, H, K, V = shape
    x = make_inputs(*shape, seed=10)
    s0 = torch.randn(B, H, K, V, generator=torch.Generator().manual_seed(11)) if with_state else None
    ref = wkv7.naive(*x, scale=0.5, initial_state=s0, output_final_state=True)
    got = IMPLS[impl](*x, scale=0.5, initial_state=s0, output_final_state=True)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert rel_err(got, ref) <= TOL.get(impl, 1e-5)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("decay", [-8.0, -60.0, "rwkv7"])
def test_strong_and_realistic_decay_finite_and_equal(impl, decay):
    x = make_inputs(1, 40, 2, 16, 16, seed=12, decay=decay)
    ref = wkv7.naive(*x, output_final_state=True)
    got = IMPLS[impl](*x, output_final_state=True)
    assert all(torch.isfinite(t).all() for t in got)
    assert rel_err(got, ref) <= TOL.get(impl, 1e-5)


def _grads(fn, x, s0, go, gs):
    o, S = fn(*x, initial_state=s0, output_final_state=True)
    return torch.autograd.grad((o * go).sum() + (S * gs).sum(), [*x, s0])


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("decay", ["rwkv7", -8.0])
@pytest.mark.parametrize("model_like", [True, False])
def test_gradients_match_autograd_through_naive(impl, decay, model_like):
    """Gradients of r, w, k, v, a, b and initial_state, from o and from final_state, in float64
    against autograd through the loop; and the float32 gradients against that reference."""
    B, T, H, K, V = 2, 11, 2, 4, 3
    g = torch.Generator().manual_seed(13)
    go = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    gs = torch.randn(B, H, K, V, generator=g, dtype=torch.float64)
    s0 = torch.randn(B, H, K, V, generator=g, dtype=torch.float64).requires_grad_()
    x = [t.requires_grad_() for t in make_inputs(B, T, H, K, V, seed=14, dtype=torch.float64,
                                                  decay=decay, model_like=model_like)]
    ref = _grads(wkv7.naive, x, s0, go, gs)
    got64 = _grads(IMPLS[impl], x, s0, go, gs)
    names = ["r", "w", "k", "v", "a", "b", "initial_state"]
    for n, gg, rr in zip(names, got64, ref):
        assert torch.isfinite(gg).all() and rr.abs().max() > 0, n
        assert rel_err(gg, rr) < 1e-10, (n, rel_err(gg, rr))
    x32 = [t.detach().float().requires_grad_() for t in x]
    s32 = s0.detach().float().requires_grad_()
    got32 = _grads(IMPLS[impl], x32, s32, go.float(), gs.float())
    for n, gg, rr in zip(names, got32, ref):
        assert gg.dtype == torch.float32 and rel_err(gg, rr) < 1e-4, (n, rel_err(gg, rr))


@pytest.mark.parametrize("impl", list(IMPLS))
def test_impl_varlen_equals_separate_runs(impl):
    lens = [5, 1, 17, 3]
    cu = torch.tensor([0, 5, 6, 23, 26])
    x = make_inputs(1, sum(lens), 2, 4, 3, seed=15)
    s0 = torch.randn(len(lens), 2, 4, 3, generator=torch.Generator().manual_seed(16))
    o, S = IMPLS[impl](*x, initial_state=s0, output_final_state=True, cu_seqlens=cu)
    c = cu.tolist()
    for n, (bos, eos) in enumerate(zip(c, c[1:])):
        on, Sn = wkv7.naive(*(t[:, bos:eos] for t in x), initial_state=s0[n:n + 1], output_final_state=True)
        assert rel_err(o[:, bos:eos], on) <= TOL.get(impl, 1e-5)
        assert rel_err(S[n:n + 1], Sn) <= TOL.get(impl, 1e-5)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_two_huge_decays_keep_float32_accuracy(impl):
    """The precision rule: every decay is built from its own interval, never as the difference of
    two long running sums. Two tokens with w = -1e4 and w = -1e3 (on alternate channels) among
    w = -0.01 push any running sum to ~1e4, where float32 keeps only ~1e-3 absolute; a difference
    of such sums would lose ~1e-4 relative in o, the state and every gradient. Float32 must stay
    at float32 accuracy against the float64 loop."""
    B, T, H, K, V = 1, 40, 2, 16, 8
    x = list(make_inputs(B, T, H, K, V, seed=21, dtype=torch.float64, decay=-0.01))
    x[1][:, 11, :, ::2] = -1e4
    x[1][:, 27, :, 1::2] = -1e3
    g = torch.Generator().manual_seed(22)
    s0 = torch.randn(B, H, K, V, generator=g, dtype=torch.float64)
    go = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    gs = torch.randn(B, H, K, V, generator=g, dtype=torch.float64)

    def run(fn, xs, s):
        xs = [t.clone().requires_grad_() for t in xs]
        s = s.clone().requires_grad_()
        o, S = fn(*xs, initial_state=s, output_final_state=True)
        return (o, S, *torch.autograd.grad((o * go.to(o.dtype)).sum() + (S * gs.to(S.dtype)).sum(), [*xs, s]))

    want = run(wkv7.naive, x, s0)
    got = run(IMPLS[impl], [t.float() for t in x], s0.float())
    for n, gg, ww in zip(["o", "final_state", "r", "w", "k", "v", "a", "b", "initial_state"], got, want):
        assert gg.dtype == torch.float32 and rel_err(gg, ww) < 1e-6, (n, rel_err(gg, ww))


@pytest.mark.parametrize("impl", ["chunked", "chunked_c64"])
def test_strong_decay_over_many_chunks(impl):
    """w = -8 everywhere over 512 tokens (e^{-8·512} is far below float32's range): finite, and
    equal to the loop, from an initial state."""
    x = make_inputs(1, 512, 2, 16, 16, seed=23, decay=-8.0)
    s0 = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(24))
    ref = wkv7.naive(*x, initial_state=s0, output_final_state=True)
    got = IMPLS[impl](*x, initial_state=s0, output_final_state=True)
    assert all(torch.isfinite(t).all() for t in got)
    assert rel_err(got, ref) <= 1e-5


def test_chunked_float64_stays_float64_and_both_paths_agree():
    """float64 inputs give float64 outputs and state; the no-autograd path (which rescales in
    place) and the autograd path give the same numbers and leave the inputs untouched."""
    x = make_inputs(2, 45, 2, 8, 6, seed=25, dtype=torch.float64)
    kept = [t.clone() for t in x]
    s0 = torch.randn(2, 2, 8, 6, generator=torch.Generator().manual_seed(26), dtype=torch.float64)
    with torch.no_grad():
        o1, S1 = wkv7.chunked(*x, initial_state=s0, output_final_state=True, chunk_size=16)
    o2, S2 = wkv7.chunked(*(t.clone().requires_grad_() for t in x), initial_state=s0, output_final_state=True,
                          chunk_size=16)
    assert o1.dtype == S1.dtype == torch.float64 and o2.requires_grad
    assert rel_err((o1, S1), (o2, S2)) < 1e-14
    assert all(torch.equal(t, u) for t, u in zip(x, kept))
    ref = wkv7.naive(*x, initial_state=s0, output_final_state=True)
    assert rel_err((o1, S1), ref) < 1e-12


@pytest.mark.parametrize("which", ["v", "initial_state"])
def test_chunked_grad_through_v_or_the_state_alone(which):
    """Only ``v`` (or only the initial state) needs grad: the chunk pieces take the no-grad road,
    but the state loop must still be one autograd can follow (no ``out=`` writes)."""
    *x, s0 = wkv7.random_inputs(1, 40, 2, 8, 6, seed=27, dtype=torch.float64, with_state=True)
    grads = []
    for impl in (functools.partial(wkv7.chunked, chunk_size=16), wkv7.naive):
        xs = [t.clone() for t in (*x, s0)]
        leaf = xs[3 if which == "v" else 6].requires_grad_()
        o, S = impl(*xs[:6], initial_state=xs[6], output_final_state=True)
        grads.append(torch.autograd.grad(o.sum() + S.square().sum(), leaf)[0])
    assert rel_err(grads[0], grads[1]) < 1e-12


@pytest.mark.parametrize("C", [1, 2, 3, 8, 13, 32])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_chunk_matrices_equal_the_pairwise_definition(C, requires_grad):
    """chunk_matrices (halving, decays factored at midpoints) == intra_chunk_matrices (pairwise),
    for any chunk length and leading dims, on both code paths."""
    from rwkvlab.wkv7.reference import chunk_matrices, intra_chunk_matrices
    g = torch.Generator().manual_seed(27 + C)
    r, k, a, b = (torch.randn(2, 3, C, 5, generator=g, dtype=torch.float64) for _ in range(4))
    w = -2.0 * torch.rand(2, 3, C, 5, generator=g, dtype=torch.float64)
    xs = [t.requires_grad_(requires_grad) for t in (r, w, k, a, b)]
    want, got = intra_chunk_matrices(*xs), chunk_matrices(*xs)
    assert set(got) == set(want)
    for n in want:
        assert got[n].shape == want[n].shape and rel_err(got[n], want[n]) < 1e-13, n


def test_chunk_matrices_finite_for_strong_decay():
    from rwkvlab.wkv7.reference import chunk_matrices, intra_chunk_matrices
    x = [t[0].transpose(0, 1) for t in make_inputs(1, 64, 2, 16, 4, seed=28, decay=-60.0)]
    r, w, k, v, a, b = x
    got = chunk_matrices(r, w, k, a, b)
    want = intra_chunk_matrices(*(t.double() for t in (r, w, k, a, b)))
    for n in want:
        assert torch.isfinite(got[n]).all() and rel_err(got[n], want[n]) < 1e-6, n


def test_chunked_bfloat16_output_dtype():
    x = make_inputs(1, 20, 2, 8, 8, seed=17)
    o, S = wkv7.chunked(*(t.bfloat16() for t in x), output_final_state=True)
    ref = wkv7.naive(*x)[0]
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32 and rel_err(o, ref) < 3e-2


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "16"])
def test_chunked_rejects_bad_chunk_size(bad):
    x = make_inputs(1, 4, 1, 4, 4)
    with pytest.raises(ValueError, match="^chunk_size:"):
        wkv7.chunked(*x, chunk_size=bad)


@pytest.mark.parametrize("lead", [(), (3,), (2, 2)])
def test_ut_transform_is_the_triangular_inverse(lead):
    from rwkvlab.wkv7.reference import ut_transform
    C = 9
    A = torch.tril(torch.randn(*lead, C, C, generator=torch.Generator().manual_seed(18), dtype=torch.float64), -1)
    I = torch.eye(C, dtype=torch.float64).expand(A.shape)
    T = ut_transform(A)
    ref = torch.linalg.solve_triangular(I - A, I, upper=False, unitriangular=True)
    assert rel_err(T, ref) < 1e-12
    assert torch.equal(torch.triu(T, 1), torch.zeros_like(T)) and torch.equal(torch.diagonal(T, dim1=-2, dim2=-1),
                                                                              torch.ones(*lead, C, dtype=T.dtype))


def test_segment_log_decays():
    from rwkvlab.wkv7.reference import segment_log_decays
    w = -torch.rand(6, 3, generator=torch.Generator().manual_seed(19), dtype=torch.float64)
    L = segment_log_decays(w)
    for t in range(6):
        for i in range(6):
            want = w[i + 1:t + 1].sum(0) if i <= t else torch.full((3,), float("-inf"), dtype=torch.float64)
            assert torch.allclose(L[t, i], want, atol=1e-15, rtol=0), (t, i)


def test_random_inputs_are_seeded_model_like_and_valid():
    a = wkv7.random_inputs(2, 5, 3, 4, 6, seed=1, dtype=torch.float64)
    b = wkv7.random_inputs(2, 5, 3, 4, 6, seed=1, dtype=torch.float64)
    assert [tuple(x.shape) for x in a] == [(2, 5, 3, 4)] * 3 + [(2, 5, 3, 6)] + [(2, 5, 3, 4)] * 2
    assert all(x.dtype == torch.float64 and torch.equal(x, y) for x, y in zip(a, b))
    r, w, k, v, a_, b_ = a
    assert torch.all(w <= 0) and torch.all(w > -math.exp(-0.5))            # paper Eq. 12 range
    assert torch.allclose(a_.norm(dim=-1), torch.ones(2, 5, 3, dtype=torch.float64))   # a = -κ̂, unit
    iclr = b_ / -a_
    assert torch.all((iclr > 0) & (iclr < 1))
    assert torch.all(wkv7.random_inputs(1, 3, 1, 4, 4, w_const=-8.0)[1] == -8.0)
    wkv7.naive(*a)      # a valid call


def test_chunked_without_autograd_factors_only_small_decays():
    """Without autograd, ``chunked`` builds a chunk's pieces as two products when every chunk's
    decay is at most CHUNK_FACTOR_SPAN, else by halving: realistic decays and a decay spike both
    stay at float32 accuracy against the float64 loop, and the two roads agree."""
    from rwkvlab.wkv7 import reference as ref

    x = list(wkv7.random_inputs(1, 70, 2, 16, 8, seed=41, dtype=torch.float64))
    want = wkv7.naive(*x, output_final_state=True)
    with torch.no_grad():
        got = wkv7.chunked(*[t.float() for t in x], output_final_state=True)
    assert rel_err(got, want) < 2e-6
    c = x[1][0, :32, 0].float()                                   # one chunk: both roads, same pieces
    pieces = [t[0, :32, 0].float() for t in (x[0], x[1], x[2], x[4], x[5])]
    fac, halved = ref.factored_matrices(*pieces), ref.chunk_matrices(*pieces)
    assert -c.sum(0).min() <= ref.CHUNK_FACTOR_SPAN
    assert rel_err([fac[n] for n in halved], [halved[n] for n in halved]) < 2e-6
    x[1][:, 11, :, ::2] = -1e4                                    # a spike: its segment takes the halving road
    want = wkv7.naive(*x, output_final_state=True)
    with torch.no_grad():
        got = wkv7.chunked(*[t.float() for t in x], output_final_state=True)
    assert rel_err(got, want) < 2e-6
