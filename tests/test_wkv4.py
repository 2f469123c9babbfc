"""rwkvlab.wkv4: every rung of the ladder agrees with the double sum of Eq. 16."""
import pytest
import torch

import rwkvlab  # noqa: F401  (selects the Triton interpreter before wkv4 is imported)
from rwkvlab import rel_err, wkv4

F64 = torch.float64
STABLE = ["recurrent", "chunked", "triton_recurrent"]
DEV = rwkvlab.device.device()  # the Triton kernels run on CUDA tensors with a GPU, on CPU ones otherwise


def _to(x, dev):
    if isinstance(x, torch.Tensor):
        return x.to(dev)
    if isinstance(x, wkv4.State):
        return wkv4.State(*(_to(t, dev) for t in x))
    if isinstance(x, (tuple, list)):
        return type(x)(_to(t, dev) for t in x)
    return x


def _on_device(f):
    """Run a Triton rung on the kernel's device; hand results back on the CPU (differentiably)."""
    def g(*args, **kw):
        out = f(*(_to(a, DEV) for a in args), **{n: _to(a, DEV) for n, a in kw.items()})
        return _to(out, "cpu")
    return g


IMPL = {n: (_on_device(f) if n.startswith("triton") else f) for n, f in wkv4.IMPLEMENTATIONS.items()}


def make(B, T, C, seed=0, k_scale=1.0, with_state=False):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, T, C, generator=g, dtype=F64) * k_scale
    v = torch.randn(B, T, C, generator=g, dtype=F64)
    w = torch.rand(C, generator=g, dtype=F64) * 2  # decay rates in [0, 2)
    u = torch.randn(C, generator=g, dtype=F64)
    s0 = None
    if with_state:
        s0 = wkv4.State(torch.randn(B, C, generator=g, dtype=F64),
                        torch.rand(B, C, generator=g, dtype=F64) + 0.5,
                        torch.randn(B, C, generator=g, dtype=F64))
    return k, v, w, u, s0


def f32(xs):
    return None if xs is None else [x.float() for x in xs]


def tol(name):
    return 1e-4 if name.startswith("triton") else 1e-5


def test_naive_is_the_double_sum_for_one_channel_by_hand():
    # T = 3, one channel: write Eq. 16 out term by term
    k = torch.tensor([[[0.3], [-0.2], [0.5]]], dtype=F64)
    v = torch.tensor([[[1.0], [2.0], [-1.0]]], dtype=F64)
    w, u = torch.tensor([0.7], dtype=F64), torch.tensor([0.4], dtype=F64)
    e = torch.exp
    y3_num = e(-1 * w + k[0, 0]) * v[0, 0] + e(k[0, 1]) * v[0, 1] + e(u + k[0, 2]) * v[0, 2]
    y3_den = e(-1 * w + k[0, 0]) + e(k[0, 1]) + e(u + k[0, 2])
    y, _ = wkv4.naive(k, v, w, u)
    assert torch.allclose(y[0, 0], v[0, 0])  # the first token sees only itself
    assert torch.allclose(y[0, 2], y3_num / y3_den)


@pytest.mark.parametrize("B,T,C", [(1, 1, 3), (2, 7, 5), (1, 33, 16), (2, 20, 19)])
@pytest.mark.parametrize("with_state", [False, True])
def test_every_rung_matches_naive_in_float64_reference(B, T, C, with_state):
    k, v, w, u, s0 = make(B, T, C, seed=T + C, with_state=with_state)
    ref = wkv4.naive(k, v, w, u, s0, output_final_state=True)
    for name in STABLE:
        got = IMPL[name](k.float(), v.float(), w.float(), u.float(), f32(s0), True)
        assert got[0].dtype == torch.float32 and got[1].a.dtype == torch.float32
        assert rel_err(got, ref) <= tol(name), name
    if s0 is None:
        assert rel_err(wkv4.recurrent_unstable(k, v, w, u), ref[0]) <= 1e-12


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 64])
def test_chunked_any_chunk_size_and_float64_exact(chunk_size):
    k, v, w, u, s0 = make(2, 21, 6, seed=3, with_state=True)
    ref = wkv4.naive(k, v, w, u, s0, True)
    got = wkv4.chunked(k, v, w, u, s0, True, chunk_size=chunk_size)
    assert got[0].dtype == F64
    assert rel_err(got, ref) <= 1e-12


def test_state_splits_the_sequence():
    # running [0, T) at once equals running [0, s) then [s, T) from the carried state
    k, v, w, u, _ = make(2, 25, 7, seed=5)
    args = [x.float() for x in (k, v, w, u)]
    for name in STABLE:
        f = IMPL[name]
        y, sT = f(*args, output_final_state=True)
        y1, s1 = f(args[0][:, :11], args[1][:, :11], args[2], args[3], output_final_state=True)
        y2, s2 = f(args[0][:, 11:], args[1][:, 11:], args[2], args[3], initial_state=s1, output_final_state=True)
        assert rel_err(torch.cat([y1, y2], 1), y) <= tol(name)
        assert rel_err(s2, sT) <= tol(name)


def test_paper_initialisation_is_the_empty_state():
    # App. D starts from a'_1 = v_1, b'_1 = 1, p_1 = k_1: one step from the empty state gives exactly that
    k, v, w, u, _ = make(3, 1, 4, seed=1)
    _, s = wkv4.recurrent(k, v, w, u, output_final_state=True)
    assert torch.equal(s.a, v[:, 0]) and torch.equal(s.b, torch.ones_like(s.b)) and torch.equal(s.p, k[:, 0])


def test_large_keys_overflow_the_raw_form_but_not_the_stable_ones():
    k, v, w, u, _ = make(2, 17, 8, seed=2)
    k = k + 100.0  # e^100 > float32 max (3.4e38)
    ref, _ = wkv4.naive(k, v, w, u)  # float64: e^100 ≈ 2.7e43 is fine
    assert torch.isfinite(ref).all()
    raw = wkv4.recurrent_unstable(k.float(), v.float(), w.float(), u.float())
    assert not torch.isfinite(raw).all()
    naive32, _ = wkv4.naive(k.float(), v.float(), w.float(), u.float())
    assert not torch.isfinite(naive32).all()
    for name in STABLE:
        y, s = IMPL[name](k.float(), v.float(), w.float(), u.float(), output_final_state=True)
        assert torch.isfinite(y).all() and all(torch.isfinite(x).all() for x in s), name
        assert rel_err(y, ref) <= tol(name), name


def test_very_large_and_very_negative_keys_in_float32():
    k, v, w, u, _ = make(1, 30, 4, seed=7, k_scale=60.0)  # keys of ±100 and beyond
    ref, _ = wkv4.naive(k, v, w, u)
    for name in STABLE:
        y, _ = IMPL[name](k.float(), v.float(), w.float(), u.float())
        assert rel_err(y, ref) <= tol(name), name


def test_zero_decay_and_huge_decay_limits():
    k, v, _, u, _ = make(1, 9, 3, seed=4)
    # w = 0: no forgetting, wkv_t is a softmax-weighted mean over all tokens with a bonus on the last
    w0 = torch.zeros(3, dtype=F64)
    y, _ = wkv4.chunked(k, v, w0, u)
    logits = torch.cat([k[0, :8], (u + k[0, 8])[None]], 0)
    assert torch.allclose(y[0, 8], (torch.softmax(logits, 0) * v[0]).sum(0))
    # w → ∞ kills every past token but the newest one (decayed 0 times)
    wbig = torch.full((3,), 1e4, dtype=F64)
    y, _ = wkv4.recurrent(k, v, wbig, u)
    wt = torch.softmax(torch.stack([k[0, 7], u + k[0, 8]]), 0)
    assert torch.allclose(y[0, 8], wt[0] * v[0, 7] + wt[1] * v[0, 8])


def _grads(fn, inputs, dtype, seed=11):
    xs = [x.detach().to(dtype).requires_grad_() for x in inputs]
    y, s = fn(*xs[:4], wkv4.State(*xs[4:]), True)
    g = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=g, dtype=F64).to(dtype)).sum()
    loss = loss + sum((x * torch.randn(x.shape, generator=g, dtype=F64).to(dtype)).sum() for x in s)
    loss.backward()
    return [x.grad for x in xs]


@pytest.mark.parametrize("B,T,C", [(1, 1, 4), (2, 13, 6), (2, 24, 17)])
def test_gradients_match_autograd_through_naive(B, T, C):
    k, v, w, u, s0 = make(B, T, C, seed=20 + T, with_state=True)
    inputs = (k, v, w, u, *s0)
    ref = _grads(wkv4.naive, inputs, F64)
    for name in STABLE:
        got = _grads(IMPL[name], inputs, torch.float32)
        for arg, a, b in zip(["k", "v", "w", "u", "a0", "b0", "p0"], got, ref):
            assert rel_err(a, b) <= 1e-4, f"{name}: d/d{arg}"


def test_triton_gradients_with_large_keys_and_no_initial_state():
    k, v, w, u, _ = make(2, 12, 5, seed=9)
    k = k * 30  # spreads keys over about ±90
    xs64 = [x.clone().requires_grad_() for x in (k, v, w, u)]
    wkv4.naive(*xs64)[0].pow(2).sum().backward()
    xs32 = [x.float().requires_grad_() for x in (k, v, w, u)]
    y, _ = IMPL["triton_recurrent"](*xs32)
    y.pow(2).sum().backward()
    for a, b in zip(xs32, xs64):
        assert torch.isfinite(a.grad).all()
        assert rel_err(a.grad, b.grad) <= 1e-4


def test_output_dtype_follows_the_input():
    k, v, w, u, _ = make(1, 5, 4)
    for name in STABLE:
        y, s = IMPL[name](k.bfloat16(), v.bfloat16(), w.float(), u.float(), output_final_state=True)
        assert y.dtype == torch.bfloat16 and s.p.dtype == torch.float32
        ref, _ = wkv4.naive(k.bfloat16().double(), v.bfloat16().double(), w, u)
        assert rel_err(y, ref) <= 1e-2  # bf16 output rounding only


@pytest.mark.parametrize("name", ["naive", "recurrent", "chunked", "triton_recurrent"])
def test_bad_inputs_raise_value_errors_naming_the_argument(name):
    f = IMPL[name]
    k, v, w, u, _ = (x.float() if x is not None else None for x in make(2, 5, 4))
    with pytest.raises(ValueError, match=r"^k:"):
        f(k[0], v, w, u)
    with pytest.raises(ValueError, match=r"^v:"):
        f(k, v[:, :3], w, u)
    with pytest.raises(ValueError, match=r"^w:"):
        f(k, v, -w, u)  # negative decay rate: paper convention is w >= 0
    with pytest.raises(ValueError, match=r"^w:"):
        f(k, v, w[:3], u)
    with pytest.raises(ValueError, match=r"^u:"):
        f(k, v, w, u[None])
    bad = k.clone()
    bad[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"^k:"):
        f(bad, v, w, u)
    with pytest.raises(ValueError, match=r"^v:"):
        f(k, v.double(), w, u)
    with pytest.raises(ValueError, match=r"^initial_state:"):
        f(k, v, w, u, initial_state=(k[:, 0], k[:, 0]))
    with pytest.raises(ValueError, match=r"^initial_state\.p:"):
        f(k, v, w, u, initial_state=wkv4.State(k[:, 0], k[:, 0].abs(), k[:1, 0]))
    with pytest.raises(ValueError, match=r"^initial_state\.b:"):
        f(k, v, w, u, initial_state=wkv4.State(k[:, 0], -k[:, 0].abs() - 1, k[:, 0]))
    with pytest.raises(ValueError, match=r"^k:"):
        f(k[:, :0], v[:, :0], w, u)


def test_chunk_size_is_validated():
    k, v, w, u, _ = make(1, 4, 2)
    with pytest.raises(ValueError, match=r"^chunk_size:"):
        wkv4.chunked(k, v, w, u, chunk_size=0)


def test_recurrent_unstable_validates_too():
    k, v, w, u, _ = make(1, 4, 2)
    with pytest.raises(ValueError, match=r"^w:"):
        wkv4.recurrent_unstable(k, v, -w, u)
