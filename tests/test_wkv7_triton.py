"""RWKV-7 Triton kernels (fused recurrent and chunked, forward and backward; the fused token-shift
mixing kernel) against the float64 loop ``wkv7.naive`` and the torch pieces in ``rwkv7_ops``.

In interpreter mode (no GPU) the shapes are tiny and everything is float32; on a GPU the same
tests also run larger shapes and bfloat16, with the bf16 tolerance stated below.
"""
from __future__ import annotations

import functools
from unittest import mock

import pytest
import torch

import rwkvlab
from rwkvlab import wkv7
from rwkvlab.checking import GridRecorder, rel_err

GPU = rwkvlab.device.has_gpu()
DEV = rwkvlab.device.device()
def _chunked_parallel_backward(*args, **kw):
    """triton_chunked with its backward on the parallel schedule (a dS pass, then every chunk's
    gradients at once), which "auto" takes on a GPU only when B·H is small: decided at the forward."""
    from rwkvlab.wkv7 import kernels_chunked as kc

    saved = kc.TUNE["bwd_schedule"]
    kc.TUNE["bwd_schedule"] = "parallel"
    try:
        return wkv7.triton_chunked(*args, **kw)
    finally:
        kc.TUNE["bwd_schedule"] = saved


def _chunked_folded(*args, **kw):
    """triton_chunked with the folded forward switched on (``TUNE["fold"]``): a forward that keeps
    no checkpoints takes it; with a gradient to take, the forward is the ordinary one."""
    from rwkvlab.wkv7 import kernels_chunked as kc

    saved = kc.TUNE["fold"]
    kc.TUNE["fold"] = True
    try:
        return wkv7.triton_chunked(*args, **kw)
    finally:
        kc.TUNE["fold"] = saved


IMPLS = {"recurrent": wkv7.triton_recurrent, "chunked": wkv7.triton_chunked,   # both must exist
         "chunked_parallel_bwd": _chunked_parallel_backward, "chunked_folded": _chunked_folded}

TOL32 = 1e-5    # float32 kernel vs float64 loop: achieved ≤ 2e-6 in every CPU case here, ≤ 4e-7 on an H200 (2, 512, 4, 64, 64)
TOL_BF16 = 1e-2  # bfloat16 inputs: 8 bits of mantissa on every load, float32 accumulation (H200: ≤ 3.4e-3)


def make_inputs(B, T, H, K, V, seed=0, decay=1.0, dtype=torch.float32, n_state=None):
    """wkv7.random_inputs shaped like a real layer's (a = -κ̂, b = κ̂ ⊙ iclr, keys scaled by 1/√K),
    on the book's device: ([r, w, k, v, a, b], initial_state)."""
    xs = wkv7.random_inputs(B, T, H, K, V, seed=seed, dtype=dtype, decay=decay, key_scale=K ** -0.5,
                            with_state=True, N=n_state, device=DEV)
    return xs[:6], xs[6]


def reference(xs, h0, cu=None, scale=1.0):
    return wkv7.naive(*[x.double() for x in xs], scale=scale, initial_state=h0.double(),
                      output_final_state=True, cu_seqlens=cu)


SHAPES = [  # (B, T, H, K, V): T = 1, odd T, T not a multiple of the chunk, K != V, several heads
    (1, 1, 1, 16, 16),
    (2, 37, 2, 16, 32),
    (1, 17, 2, 32, 16),
]
if GPU:
    SHAPES += [(2, 300, 4, 64, 64), (1, 1000, 2, 128, 128), (3, 257, 3, 64, 32)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_naive(impl, shape):
    xs, h0 = make_inputs(*shape, seed=sum(shape))
    o, ht = IMPLS[impl](*xs, scale=0.5, initial_state=h0, output_final_state=True)
    o_ref, ht_ref = reference(xs, h0, scale=0.5)
    assert o.dtype == xs[0].dtype and ht.dtype == torch.float32
    assert rel_err(o, o_ref) <= TOL32, rel_err(o, o_ref)
    assert rel_err(ht, ht_ref) <= TOL32, rel_err(ht, ht_ref)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_initial_state_and_no_final_state(impl):
    xs, _ = make_inputs(1, 9, 2, 16, 16, seed=3)
    o, ht = IMPLS[impl](*xs)
    o_ref, _ = wkv7.naive(*[x.double() for x in xs])
    assert ht is None
    assert rel_err(o, o_ref) <= TOL32


@pytest.mark.parametrize("impl", IMPLS)
def test_strong_decay_stays_finite(impl):
    # w = -8 on every channel: exp(w)^16 = e^-128 underflows float32; nothing may overflow
    xs, h0 = make_inputs(1, 40, 2, 16, 16, seed=4)
    xs[1] = torch.full_like(xs[1], -8.0)
    o, ht = IMPLS[impl](*xs, initial_state=h0, output_final_state=True)
    o_ref, ht_ref = reference(xs, h0)
    assert torch.isfinite(o).all() and torch.isfinite(ht).all()
    assert rel_err(o, o_ref) <= TOL32 and rel_err(ht, ht_ref) <= TOL32


@pytest.mark.parametrize("impl", IMPLS)
def test_varlen_matches_separate_sequences(impl):
    cu = torch.tensor([0, 1, 18, 40], device=DEV)
    xs, h0 = make_inputs(1, 40, 2, 16, 16, seed=5, decay=3.0, n_state=3)
    o, ht = IMPLS[impl](*xs, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    o_ref, ht_ref = reference(xs, h0, cu=cu)
    assert rel_err(o, o_ref) <= TOL32 and rel_err(ht, ht_ref) <= TOL32
    # and each packed sequence equals that sequence run on its own
    o1, ht1 = IMPLS[impl](*[x[:, 1:18] for x in xs], initial_state=h0[1:2], output_final_state=True)
    assert rel_err(o1, o[:, 1:18]) <= 1e-6 and rel_err(ht1, ht[1:2]) <= 1e-6


GRAD_CASES = [  # (B, T, H, K, V, varlen): T > 16 crosses checkpoints, T odd, K != V
    (1, 21, 2, 16, 32, False),
    (1, 40, 2, 16, 16, True),
]
if GPU:
    GRAD_CASES += [(2, 200, 2, 64, 64, False), (1, 300, 2, 64, 32, True)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_gradients_of_every_input_match_autograd_through_naive(impl, case):
    B, T, H, K, V, varlen = case
    cu = torch.tensor([0, 7, 9, T], device=DEV) if varlen else None
    xs, h0 = make_inputs(B, T, H, K, V, seed=T, decay=2.0, n_state=3 if varlen else B)
    g = torch.Generator().manual_seed(99)
    do = torch.randn(B, T, H, V, generator=g).to(DEV)
    dht = torch.randn(h0.shape, generator=g).to(DEV)

    leaves64 = [x.double().requires_grad_() for x in xs + [h0]]
    o, ht = wkv7.naive(*leaves64[:6], scale=0.7, initial_state=leaves64[6], output_final_state=True, cu_seqlens=cu)
    ref = torch.autograd.grad((o * do.double()).sum() + (ht * dht.double()).sum(), leaves64)

    leaves = [x.clone().requires_grad_() for x in xs + [h0]]
    o, ht = IMPLS[impl](*leaves[:6], scale=0.7, initial_state=leaves[6], output_final_state=True, cu_seqlens=cu)
    got = torch.autograd.grad((o * do).sum() + (ht * dht).sum(), leaves)
    for name, gg, rr in zip(["r", "w", "k", "v", "a", "b", "initial_state"], got, ref):
        assert rel_err(gg, rr) <= TOL32, f"d{name}: rel err {rel_err(gg, rr):.2e}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("w_const", [-8.0, -20.0])
def test_gradients_under_strong_decay(impl, w_const):
    # the true dw of a channel with decay factor e^-8 per step is tiny; a kernel that forms it
    # from differences of running sums loses it to float32 cancellation (chapter 10, trap 2)
    xs, h0 = make_inputs(1, 40, 1, 16, 16, seed=9)
    xs[1] = torch.full_like(xs[1], w_const)
    g = torch.Generator().manual_seed(10)
    do = torch.randn(1, 40, 1, 16, generator=g).to(DEV)
    leaves64 = [x.double().requires_grad_() for x in xs + [h0]]
    o, _ = wkv7.naive(*leaves64[:6], initial_state=leaves64[6])
    ref = torch.autograd.grad((o * do.double()).sum(), leaves64)
    leaves = [x.clone().requires_grad_() for x in xs + [h0]]
    o, _ = IMPLS[impl](*leaves[:6], initial_state=leaves[6])
    got = torch.autograd.grad((o * do).sum(), leaves)
    assert all(torch.isfinite(gg).all() for gg in got)
    for name, gg, rr in zip(["r", "w", "k", "v", "a", "b", "initial_state"], got, ref):
        assert rel_err(gg, rr) <= TOL32, f"d{name}: rel err {rel_err(gg, rr):.2e}"


@pytest.mark.parametrize("impl", IMPLS)
def test_gradient_without_final_state_or_initial_state(impl):
    xs, _ = make_inputs(1, 18, 1, 16, 16, seed=6)
    leaves64 = [x.double().requires_grad_() for x in xs]
    o, _ = wkv7.naive(*leaves64)
    ref = torch.autograd.grad(o.square().sum(), leaves64)
    leaves = [x.clone().requires_grad_() for x in xs]
    o, ht = IMPLS[impl](*leaves)
    assert ht is None
    got = torch.autograd.grad(o.square().sum(), leaves)
    for gg, rr in zip(got, ref):
        assert rel_err(gg, rr) <= TOL32


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision(impl, dtype):
    # the reference runs in float64 on the same (rounded) inputs; TOL_BF16 covers float16 too
    shape = rwkvlab.device.pick((1, 20, 1, 16, 16), (2, 513, 4, 64, 64))
    xs, h0 = make_inputs(*shape, seed=7, dtype=dtype)
    o, ht = IMPLS[impl](*xs, initial_state=h0, output_final_state=True)
    o_ref, ht_ref = reference(xs, h0)
    assert o.dtype == dtype
    assert rel_err(o, o_ref) <= TOL_BF16 and rel_err(ht, ht_ref) <= TOL_BF16
    leaves = [x.clone().requires_grad_() for x in xs]
    o, _ = IMPLS[impl](*leaves, initial_state=h0)
    got = torch.autograd.grad(o.float().square().sum(), leaves)
    leaves64 = [x.double().requires_grad_() for x in xs]
    o64, _ = wkv7.naive(*leaves64, initial_state=h0.double())
    ref = torch.autograd.grad(o64.square().sum(), leaves64)
    for name, gg, rr in zip("rwkvab", got, ref):
        assert gg.dtype == dtype
        assert rel_err(gg, rr) <= TOL_BF16, f"d{name}: rel err {rel_err(gg, rr):.2e}"


class _NoLaunch:
    """Stands in for a kernel: any launch fails the test, so errors must come from validation."""

    def __getitem__(self, grid):
        raise AssertionError("a kernel was launched before the input was validated")


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_inputs_raise_before_launch(impl, monkeypatch):
    from rwkvlab.wkv7 import kernels_chunked, kernels_recurrent

    for mod, name in ((kernels_recurrent, "wkv7_fwd_recurrent_kernel"), (kernels_recurrent, "wkv7_bwd_recurrent_kernel"),
                      (kernels_chunked, "wkv7_fwd_prep_kernel"), (kernels_chunked, "wkv7_fwd_chunked_kernel"),
                      (kernels_chunked, "wkv7_bwd_chunked_kernel")):
        monkeypatch.setattr(mod, name, _NoLaunch())
    f = IMPLS[impl]
    xs, h0 = make_inputs(1, 5, 1, 16, 16, seed=8)
    r, w, k, v, a, b = xs
    if impl == "recurrent":  # the chunked forward checks values inside its kernel (next test)
        with pytest.raises(ValueError, match=r"^w:"):
            f(r, w.abs() + 0.1, k, v, a, b)                    # positive log decay
    with pytest.raises(ValueError, match=r"^k:"):
        f(r, w, k[..., :8], v, a, b)                           # K mismatch
    with pytest.raises(ValueError, match=r"^r:"):
        f(*make_inputs(1, 5, 1, 24, 16)[0])                    # K not a power of two
    with pytest.raises(ValueError, match=r"^v:"):
        f(*make_inputs(1, 5, 1, 16, 256)[0])                   # V above 128
    with pytest.raises(ValueError, match=r"^r:"):
        f(*[x.double() for x in xs])                           # float64 is for references
    with pytest.raises(ValueError, match=r"^initial_state:"):
        f(*xs, initial_state=h0[..., :8])
    with pytest.raises(ValueError, match=r"^cu_seqlens:"):
        f(*[torch.cat([x, x]) for x in xs], cu_seqlens=torch.tensor([0, 2, 5], device=DEV))
    with pytest.raises(ValueError, match=r"^scale:"):
        f(*xs, scale="1")


@pytest.mark.parametrize("arg", ["r", "w", "k", "v", "a", "b", "initial_state"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_chunked_checks_values_in_its_kernel(arg, bad):
    """The chunked forward reads every value anyway and flags NaN/Inf there (no pass of its own):
    the error still names the argument, and no output is returned."""
    xs, h0 = make_inputs(1, 37, 2, 16, 16, seed=9)
    named = dict(zip("rwkvab", xs), initial_state=h0)
    x = named[arg].clone()
    x.view(-1)[x.numel() // 2] = -bad if arg == "w" else bad
    named[arg] = x
    with pytest.raises(ValueError, match=rf"^{arg}:"):
        wkv7.triton_chunked(*[named[n] for n in "rwkvab"], initial_state=named["initial_state"])


@pytest.mark.parametrize("arg", ["r", "w", "k", "v", "a", "b"])
def test_chunked_reads_the_flag_after_the_prep_without_an_initial_state(arg, monkeypatch):
    """Without an initial state the prep's flag is final before the state pass: the forward reads
    it then (FlagRead, made before the state pass is launched), and a bad value is still a
    ValueError naming the argument; with an initial state, which the state pass checks, it waits."""
    from rwkvlab.wkv7 import kernels_chunked as kc

    xs, h0 = make_inputs(1, 37, 2, 16, 16, seed=25)
    order = []
    real_read, real_launches = kc.FlagRead, kc.fwd_launches

    def launches(*a, **k):
        prep, state, out = real_launches(*a, **k)
        return prep, (lambda: (order.append("state"), state())), out

    monkeypatch.setattr(kc, "FlagRead", lambda f: (order.append("read"), real_read(f))[1])
    monkeypatch.setattr(kc, "fwd_launches", launches)
    named = dict(zip("rwkvab", xs))
    x = named[arg].clone()
    x.view(-1)[x.numel() // 3] = -float("inf") if arg == "w" else float("nan")
    named[arg] = x
    with pytest.raises(ValueError, match=rf"^{arg}:"):
        wkv7.triton_chunked(*[named[n] for n in "rwkvab"])
    assert order == ["read", "state"]
    order.clear()
    o, _ = wkv7.triton_chunked(*xs, initial_state=h0)
    assert order == ["state"] and torch.isfinite(o).all()      # the initial state's check is the state pass's
    lb = wkv7.RWKV7_LOWER_BOUND
    w = xs[1].clamp(min=lb).clone()
    w[0, 20, 1, 3] = lb - 0.05
    with pytest.raises(ValueError, match=r"^w: below the declared lower_bound"):
        wkv7.triton_chunked(xs[0], w, *xs[2:], lower_bound=lb)


def test_chunked_checks_every_sequences_initial_state():
    """The state pass checks the initial state it reads, one tile per program: a NaN in the
    initial state of any packed sequence (here a one-token one) is a ValueError naming it."""
    xs, h0 = make_inputs(1, 30, 2, 16, 16, seed=19, n_state=3)
    cu = torch.tensor([0, 12, 13, 30], device=DEV)
    o, ht = wkv7.triton_chunked(*xs, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    o_ref, ht_ref = reference(xs, h0, cu=cu.cpu())
    assert rel_err(o, o_ref) <= TOL32 and rel_err(ht, ht_ref) <= TOL32
    for n in range(3):
        bad = h0.clone()
        bad[n, 1, 3, 4] = float("nan")
        with pytest.raises(ValueError, match=r"^initial_state:"):
            wkv7.triton_chunked(*xs, initial_state=bad, cu_seqlens=cu)


def test_chunked_lower_bound_is_checked():
    """A declared lower bound takes the factored path everywhere; a w below it (or above 0) is a
    ValueError, never a wrong answer; a bound the factored path cannot carry is refused up front."""
    xs, h0 = make_inputs(2, 40, 2, 16, 16, seed=10, decay=0.6)
    lb = wkv7.RWKV7_LOWER_BOUND
    o, ht = wkv7.triton_chunked(*xs, initial_state=h0, output_final_state=True, lower_bound=lb)
    o_ref, ht_ref = reference(xs, h0)
    assert rel_err(o, o_ref) <= TOL32 and rel_err(ht, ht_ref) <= TOL32
    w = xs[1].clone()
    w[0, 33, 1, 5] = lb - 0.01
    with pytest.raises(ValueError, match=r"^w: below the declared lower_bound"):
        wkv7.triton_chunked(xs[0], w, *xs[2:], lower_bound=lb)
    w[0, 33, 1, 5] = 0.01
    with pytest.raises(ValueError, match=r"^w:"):
        wkv7.triton_chunked(xs[0], w, *xs[2:], lower_bound=lb)
    for bad in (-3.0, 0.5, float("nan"), "x", True):
        with pytest.raises(ValueError, match=r"^lower_bound:"):
            wkv7.triton_chunked(*xs, lower_bound=bad)
    with pytest.raises(ValueError, match=r"^lower_bound:"):
        wkv7.triton_chunked(*xs, lower_bound=-2.0, chunk_size=32)        # 32 · 2 > FACTORED_SPAN


@pytest.mark.parametrize("case", [(1, 64, 1, 16, 16, None), (2, 150, 2, 16, 32, None), (1, 97, 2, 32, 16, "lb"),
                                  (1, 130, 1, 16, 16, "strong")], ids=str)
@pytest.mark.parametrize("chunk_size", [16, 32])
def test_folded_forward_launches_and_matches_naive(case, chunk_size):
    """The folded forward (steps of 64 tokens: 4 or 2 chunks folded into one map of the step's
    start state) runs its own two launches, on its own grids, and matches the float64 loop;
    slow decay over many steps, a strong decay (the exact path inside the fold), the bound."""
    from rwkvlab.wkv7 import kernels_chunked as kc

    B, T, H, K, V, kind = case
    xs, h0 = make_inputs(B, T, H, K, V, seed=23, decay={"strong": 8.0, "lb": 0.6}.get(kind, 0.05))
    kw = {"lower_bound": wkv7.RWKV7_LOWER_BOUND} if kind == "lb" else {}
    if kind == "lb":
        xs[1] = xs[1].clamp(min=wkv7.RWKV7_LOWER_BOUND)
    fold_rec, folded_rec = GridRecorder(kc.wkv7_fwd_fold_kernel), GridRecorder(kc.wkv7_fwd_folded_kernel)
    plain = GridRecorder(kc.wkv7_fwd_chunked_kernel)
    with mock.patch.object(kc, "wkv7_fwd_fold_kernel", fold_rec), \
            mock.patch.object(kc, "wkv7_fwd_folded_kernel", folded_rec), \
            mock.patch.object(kc, "wkv7_fwd_chunked_kernel", plain):
        o, ht = _chunked_folded(*xs, initial_state=h0, output_final_state=True, chunk_size=chunk_size, **kw)
    steps = -(-T // kc.FOLD_TOKENS)
    assert fold_rec.grids == [(B * steps, H)] and len(folded_rec.grids) == 1 and not plain.grids
    o_ref, ht_ref = reference(xs, h0)
    assert rel_err(o, o_ref) <= TOL32 and rel_err(ht, ht_ref) <= TOL32


def test_folded_forward_varlen_and_only_without_checkpoints():
    """Packed sequences of lengths 1, 70, 5 and 60 fold per sequence (a step never crosses a
    sequence's end); a forward with a gradient to take keeps the checkpointed launches."""
    from rwkvlab.wkv7 import kernels_chunked as kc

    cu = torch.tensor([0, 1, 71, 76, 136], device=DEV)
    xs, h0 = make_inputs(1, 136, 2, 16, 16, seed=24, decay=0.5, n_state=4)
    o, ht = _chunked_folded(*xs, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    o_ref, ht_ref = reference(xs, h0, cu=cu)
    assert rel_err(o, o_ref) <= TOL32 and rel_err(ht, ht_ref) <= TOL32
    bad = h0.clone()
    bad[2, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"^initial_state:"):
        _chunked_folded(*xs, initial_state=bad, cu_seqlens=cu)
    fold_rec = GridRecorder(kc.wkv7_fwd_fold_kernel)
    leaves = [x.clone().requires_grad_() for x in xs]
    with mock.patch.object(kc, "wkv7_fwd_fold_kernel", fold_rec):
        _chunked_folded(*leaves, initial_state=h0, cu_seqlens=cu)[0].sum().backward()
    assert not fold_rec.grids and all(x.grad is not None for x in leaves)


def test_chunked_check_values_off_skips_only_the_value_check(monkeypatch):
    """check_values=False: the same answer, bit for bit, and no read of the flag (the forward's one
    sync); a NaN then goes through (documented: as in FLA), while bad structure is still refused."""
    from rwkvlab.wkv7 import kernels_chunked as kc

    xs, h0 = make_inputs(2, 37, 2, 16, 16, seed=21, decay=0.3)
    lb = wkv7.RWKV7_LOWER_BOUND
    for kw in ({}, {"lower_bound": lb}):
        want = wkv7.triton_chunked(*xs, initial_state=h0, output_final_state=True, **kw)
        checks, reads = [], []
        real = kc.fwd_launches
        monkeypatch.setattr(kc, "fwd_launches", lambda *a, **k: (checks.append(a[-1]), real(*a, **k))[1])
        monkeypatch.setattr(kc, "FlagRead", lambda f: reads.append(f))
        got = wkv7.triton_chunked(*xs, initial_state=h0, output_final_state=True, check_values=False, **kw)
        monkeypatch.undo()
        assert checks == [False] and not reads                 # launched unchecked, no flag to read
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        leaves = [x.clone().requires_grad_() for x in xs]
        o, _ = wkv7.triton_chunked(*leaves, check_values=False, **kw)
        g = torch.autograd.grad(o.sum(), leaves)
        leaves2 = [x.clone().requires_grad_() for x in xs]
        g2 = torch.autograd.grad(wkv7.triton_chunked(*leaves2, **kw)[0].sum(), leaves2)
        assert all(torch.equal(x, y) for x, y in zip(g, g2))
    r = xs[0].clone()
    r[0, 5, 1, 3] = float("nan")
    assert torch.isnan(wkv7.triton_chunked(r, *xs[1:], check_values=False)[0]).any()
    with pytest.raises(ValueError, match=r"^r:"):
        wkv7.triton_chunked(r, *xs[1:])
    with pytest.raises(ValueError, match=r"^k:"):
        wkv7.triton_chunked(xs[0], xs[1], xs[2][:, :-1], *xs[3:], check_values=False)
    for bad in (0, 1, "yes", None):
        with pytest.raises(ValueError, match=r"^check_values:"):
            wkv7.triton_chunked(*xs, check_values=bad)


@pytest.mark.parametrize("impl", IMPLS)
def test_slow_decay_over_many_chunks(impl):
    """The regime trained models live in: decay factors 0.99–1.0 (w ∈ (−0.01, 0)), so the state
    remembers across every chunk of a long sequence; output, final state and gradients of every
    input stay at float32 accuracy against the float64 loop."""
    shape = rwkvlab.device.pick((1, 200, 1, 16, 16), (2, 2048, 4, 64, 64))
    xs, h0 = make_inputs(*shape, seed=13, decay=0.01)
    assert (xs[1].exp() > 0.99).all()
    leaves = [x.clone().requires_grad_() for x in xs]
    s0 = h0.clone().requires_grad_()
    o, ht = IMPLS[impl](*leaves, initial_state=s0, output_final_state=True)
    leaves64 = [x.double().requires_grad_() for x in xs]
    s64 = h0.double().requires_grad_()
    o64, ht64 = wkv7.chunked(*leaves64, initial_state=s64, output_final_state=True)   # exact, and fast in float64
    g = torch.Generator().manual_seed(14)
    go = torch.randn(o64.shape, generator=g, dtype=torch.float64).to(o64.device)
    got = torch.autograd.grad((o * go.float()).sum() + ht.sum(), [*leaves, s0])
    ref = torch.autograd.grad((o64 * go).sum() + ht64.sum(), [*leaves64, s64])
    assert rel_err(o, o64) <= TOL32 and rel_err(ht, ht64) <= TOL32, (rel_err(o, o64), rel_err(ht, ht64))
    for n, gg, rr in zip(["r", "w", "k", "v", "a", "b", "initial_state"], got, ref):
        assert rel_err(gg, rr) <= TOL32, (n, rel_err(gg, rr))


def _exact_share(w, C=16):
    """The share of (sequence, chunk, head) triples whose decay over the chunk exceeds FACTORED_SPAN
    in some channel: those take the exact path."""
    B, T, H, K = w.shape
    pad = torch.zeros(B, -T % C, H, K, dtype=w.dtype, device=w.device)
    spans = (-torch.cat([w, pad], 1).unflatten(1, (-1, C)).sum(2)).amax(-1)
    return (spans > wkv7.kernels_chunked.FACTORED_SPAN).float().mean().item()


@pytest.mark.parametrize("decay", [0.05, 1.0, 5.0], ids=lambda d: f"decay{d}")
def test_chunked_paths_agree(decay):
    """Chunks whose decay exceeds FACTORED_SPAN take the exact path, the others the factored one:
    a sequence with both (decay scale 5 mixes them: its short last chunk is factored) matches the float64 loop in value and gradient,
    declared bound or not where the bound holds."""
    shape = rwkvlab.device.pick((1, 50, 2, 16, 16), (2, 300, 4, 64, 64))
    xs, h0 = make_inputs(*shape, seed=11, decay=decay)
    exact = _exact_share(xs[1])
    assert (0 < exact < 1) if decay == 5.0 else exact == 0, exact      # both paths, or the factored one
    leaves = [x.clone().requires_grad_() for x in xs]
    s0 = h0.clone().requires_grad_()
    o, ht = wkv7.triton_chunked(*leaves, initial_state=s0, output_final_state=True)
    leaves64 = [x.double().requires_grad_() for x in xs]
    s64 = h0.double().requires_grad_()
    o64, ht64 = wkv7.naive(*leaves64, initial_state=s64, output_final_state=True)
    g = torch.Generator().manual_seed(12)
    go = torch.randn(o64.shape, generator=g, dtype=torch.float64).to(o64.device)
    gs = torch.randn(ht64.shape, generator=g, dtype=torch.float64).to(o64.device)
    got = torch.autograd.grad((o * go.float()).sum() + (ht * gs.float()).sum(), [*leaves, s0])
    ref = torch.autograd.grad((o64 * go).sum() + (ht64 * gs).sum(), [*leaves64, s64])
    assert rel_err(o, o64) <= TOL32 and rel_err(ht, ht64) <= TOL32
    for n, gg, rr in zip(["r", "w", "k", "v", "a", "b", "initial_state"], got, ref):
        assert rel_err(gg, rr) <= TOL32, (n, rel_err(gg, rr))


def test_breakdown_script_launches_what_triton_chunked_launches(capsys):
    """benchmarks/gpu_wkv7_breakdown.py times the launches one by one; its dry run checks that the
    launches it builds still give triton_chunked's output (so the script cannot silently rot)."""
    import importlib.util

    from rwkvlab import book

    path = book.root() / "benchmarks" / "gpu_wkv7_breakdown.py"
    spec = importlib.util.spec_from_file_location("gpu_wkv7_breakdown", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--dry-run"]) == 0
    assert capsys.readouterr().out.count("match triton_chunked") == len(mod.variants(dry=True))


def test_backward_schedule_and_fold_follow_the_device(monkeypatch):
    """"auto": the parallel backward on a GPU and the sequential one in the interpreter; the
    folded forward only without checkpoints and where the state pass would idle a 132-SM GPU."""
    from rwkvlab.wkv7 import kernels_chunked as kc

    assert kc.bwd_schedule(1, 8, 64) == "sequential" and not kc.folds(False, 1, 8, 64)  # interpreter
    monkeypatch.setattr(kc.device, "interpreting", lambda: False)
    monkeypatch.setattr(kc, "_multiprocessors", lambda: 132)
    assert kc.bwd_schedule(1, 8, 64) == "parallel" and kc.bwd_schedule(4, 32, 64) == "parallel"
    assert kc.folds(False, 1, 8, 64) and not kc.folds(True, 1, 8, 64) and not kc.folds(False, 4, 32, 64)
    monkeypatch.setitem(kc.TUNE, "bwd_schedule", "sequential")
    monkeypatch.setitem(kc.TUNE, "fold", False)
    assert kc.bwd_schedule(1, 8, 64) == "sequential" and not kc.folds(False, 1, 8, 64)
    monkeypatch.setitem(kc.TUNE, "fold", True)
    assert kc.folds(False, 4, 32, 64)


def test_state_pass_splits_v_only_when_the_gpu_would_idle():
    """On a 132-multiprocessor GPU: B=4, H=32 (128 programs of the whole V) keeps 64 columns;
    B=1, H=8 (8 programs) halves to 32 and no further; the backward keeps its table's block."""
    from rwkvlab.wkv7 import kernels_chunked as kc

    assert kc.gpu_block_v(64, programs=128) == 64
    assert kc.gpu_block_v(64, programs=8) == kc.gpu_block_v(128, programs=1) == 32
    assert kc.gpu_block_v(16, programs=1) == 16 and kc.gpu_block_v(64, "bwd") == 64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sixteen_bit_hand_off_option(dtype, monkeypatch):
    """TUNE["wu"] = "input" stores W, U and A_rk V in the 16-bit input type (an option to time):
    forward and gradients stay within the bf16 tolerance of the float64 loop on the same inputs."""
    from rwkvlab.wkv7 import kernels_chunked as kc

    monkeypatch.setitem(kc.TUNE, "wu", "input")
    monkeypatch.setitem(kc.TUNE, "bwd_schedule", "parallel")      # its dS pass reads the stored W
    xs, h0 = make_inputs(1, 40, 2, 16, 16, seed=31, dtype=dtype)
    leaves = [x.clone().requires_grad_() for x in xs + [h0]]
    o, ht = kc.triton_chunked(*leaves[:6], initial_state=leaves[6], output_final_state=True)
    got = torch.autograd.grad(o.float().sum() + ht.sum(), leaves)
    leaves64 = [x.detach().double().requires_grad_() for x in xs + [h0]]
    o64, ht64 = wkv7.naive(*leaves64[:6], initial_state=leaves64[6], output_final_state=True)
    want = torch.autograd.grad(o64.sum() + ht64.sum(), leaves64)
    assert rel_err(o, o64) <= TOL_BF16 and rel_err(ht, ht64) <= TOL_BF16
    for name, gg, rr in zip(["r", "w", "k", "v", "a", "b", "initial_state"], got, want):
        assert rel_err(gg, rr) <= TOL_BF16, f"d{name}: rel err {rel_err(gg, rr):.2e}"


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("shape", [(2, 37, 2, 16, 32), (1, 70, 1, 32, 16)], ids=str)
def test_state_pass_with_and_without_prefetch(prefetch, shape, monkeypatch):
    """The state pass's two loop shapes (next chunk's pieces loaded ahead, or loaded when used)
    agree with the float64 loop, initial and final state included, over several chunks."""
    from rwkvlab.wkv7 import kernels_chunked as kc

    monkeypatch.setitem(kc.TUNE, "prefetch", prefetch)
    x, h0 = make_inputs(*shape, seed=11, decay=0.05)      # slow decay: the state carries across chunks
    o, S = kc.triton_chunked(*x, initial_state=h0, output_final_state=True)
    o64, S64 = reference(x, h0)
    assert rel_err(o, o64) < TOL32 and rel_err(S, S64) < TOL32


# ----------------------------------------------------------------------------- fused block pieces
FUSED_CASES = [(2, 7, 48, True), (1, 1, 16, False), (3, 33, 100, True)]
if GPU:
    FUSED_CASES += [(4, 1024, 2048, True), (2, 513, 768, False)]


@pytest.mark.parametrize("case", FUSED_CASES, ids=str)
def test_fused_addcmul_matches_rwkv7_ops_forward_and_backward(case):
    from rwkvlab import rwkv7_ops
    from rwkvlab.wkv7.kernels_fused import fused_addcmul

    B, T, C, with_shift = case
    g = torch.Generator().manual_seed(C)
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    mus = [torch.rand(1, 1, C, generator=g, dtype=torch.float64) for _ in range(6)]
    shift = torch.randn(B, C, generator=g, dtype=torch.float64) if with_shift else None
    douts = [torch.randn(B, T, C, generator=g, dtype=torch.float64).to(DEV) for _ in range(6)]
    leaves64 = [t.to(DEV).requires_grad_() for t in [x, *mus] + ([shift] if with_shift else [])]
    x_prev, _ = rwkv7_ops.token_shift(leaves64[0], leaves64[7] if with_shift else None)
    want = rwkv7_ops.addcmul_mix(leaves64[0], x_prev, *leaves64[1:7])
    dwant = torch.autograd.grad(sum((o * d).sum() for o, d in zip(want, douts)), leaves64)

    leaves = [t.detach().float().requires_grad_() for t in leaves64]
    got = fused_addcmul(leaves[0], *leaves[1:7], shift_state=leaves[7] if with_shift else None)
    assert len(got) == 6 and all(o.dtype == torch.float32 and o.shape == (B, T, C) for o in got)
    dgot = torch.autograd.grad(sum((o * d.float()).sum() for o, d in zip(got, douts)), leaves)
    assert rel_err(got, want) <= 1e-6
    for name, gg, rr in zip(["x"] + [f"mu{i}" for i in range(6)] + ["shift_state"], dgot, dwant):
        assert rel_err(gg, rr) <= 1e-5, f"d{name}: rel err {rel_err(gg, rr):.2e}"


def test_fused_addcmul_bad_inputs():
    from rwkvlab.wkv7.kernels_fused import fused_addcmul

    x = torch.randn(2, 5, 16, device=DEV)
    mu = torch.rand(16, device=DEV)
    with pytest.raises(ValueError, match=r"^x:"):
        fused_addcmul(x[0], mu)
    with pytest.raises(ValueError, match=r"^mus:"):
        fused_addcmul(x)
    with pytest.raises(ValueError, match=r"mus\[1\]"):
        fused_addcmul(x, mu, mu[:8])
    with pytest.raises(ValueError, match=r"^shift_state:"):
        fused_addcmul(x, mu, shift_state=torch.zeros(3, 16, device=DEV))


@pytest.mark.parametrize("name,impl", [("recurrent", wkv7.triton_recurrent), ("chunked16", wkv7.triton_chunked),
                                       ("chunked32", functools.partial(wkv7.triton_chunked, chunk_size=32)),
                                       ("chunked16_parallel_bwd", _chunked_parallel_backward)])
def test_decay_spike_keeps_float32_accuracy(name, impl):
    """w = -0.01 with w = -1e4 and -1e3 on alternate channels of two tokens: every exponent is a sum
    over its own interval, so the output, the final state and every gradient stay at float32
    accuracy against the float64 loop (a difference of running sums would be off by ~1e-3)."""
    B, T, H, K, V = 1, 40, 2, 16, 16
    x = list(wkv7.random_inputs(B, T, H, K, V, seed=21, dtype=torch.float64, w_const=-0.01))
    x[1][:, 11, :, ::2] = -1e4
    x[1][:, 27, :, 1::2] = -1e3
    g = torch.Generator().manual_seed(22)
    s0, go, gs = (torch.randn(*shape, generator=g, dtype=torch.float64)
                  for shape in ((B, H, K, V), (B, T, H, V), (B, H, K, V)))

    def run(fn, xs, s):
        xs = [t.detach().clone().requires_grad_() for t in xs]
        s = s.detach().clone().requires_grad_()
        o, S = fn(*xs, initial_state=s, output_final_state=True)
        loss = (o * go.to(o)).sum() + (S * gs.to(S)).sum()
        return (o, S, *torch.autograd.grad(loss, [*xs, s]))

    want = run(wkv7.naive, x, s0)
    got = run(impl, [t.float().to(DEV) for t in x], s0.float().to(DEV))
    for n, a, b in zip(["o", "final_state", "r", "w", "k", "v", "a", "b", "initial_state"], got, want):
        assert rel_err(a, b) < 2e-6, (n, rel_err(a, b))


TAIL_CASES = [(2, 21, 3, 16), (1, 1, 1, 32), (1, 40, 2, 64)]      # (B, T, H, head size): rows not a multiple of the block
if GPU:
    TAIL_CASES += [(4, 1024, 32, 64), (2, 513, 12, 64)]


def _tail_reference(o, r, k, v, g, w, b, rk, H):
    from rwkvlab import rwkv7_ops

    B, T, C = o.shape
    y = torch.group_norm(o.reshape(B * T, C), H, w, b, 64e-5).reshape(B, T, C)
    return (y + rwkv7_ops.output_correction(r, k, v, rk, H)) * g


@pytest.mark.parametrize("case", TAIL_CASES, ids=str)
def test_fused_output_matches_group_norm_bonus_gate_forward_and_backward(case):
    """fused_output against the torch pieces (GroupNorm per head, rwkv7_ops.output_correction, the
    gate) in float64 with autograd: the output and all eight gradients, on an output with a large
    mean and spread per head (the norm's cancellation) and channel parameters far from 1 and 0."""
    from rwkvlab.wkv7 import kernels_fused as kf

    B, T, H, N = case
    C = H * N
    g0 = torch.Generator().manual_seed(sum(case))
    mk = lambda *s: torch.randn(*s, generator=g0, dtype=torch.float64)  # noqa: E731
    ts = [mk(B, T, C) * 3 + 5, mk(B, T, C), mk(B, T, C) / N ** 0.5, mk(B, T, C), torch.sigmoid(mk(B, T, C)),
          mk(C), mk(C), mk(H, N)]
    dout = mk(B, T, C)
    leaves = [t.clone().requires_grad_() for t in ts]
    want = _tail_reference(*leaves, H)
    g_want = torch.autograd.grad(want, leaves, dout)
    for dtype, tol in ((torch.float32, 1e-5),) + (((torch.bfloat16, 1e-2),) if GPU else ()):
        xs = [t.to(DEV, dtype if i < 5 else torch.float32).requires_grad_() for i, t in enumerate(ts)]
        got = kf.fused_output(*xs[:5], xs[5], xs[6], xs[7], H, 64e-5)
        assert got.dtype == dtype and rel_err(got, want) <= tol
        g_got = torch.autograd.grad(got, xs, dout.to(DEV, dtype))
        for name, a_, b_ in zip(["o", "r", "k", "v", "g", "weight", "bias", "r_k"], g_got, g_want):
            assert a_.shape == b_.shape and rel_err(a_, b_) <= tol, (name, dtype, rel_err(a_, b_))


def test_fused_output_bad_inputs():
    from rwkvlab.wkv7 import kernels_fused as kf

    o = torch.randn(1, 4, 32, device=DEV)
    w = torch.ones(32, device=DEV)
    with pytest.raises(ValueError, match=r"^k:"):
        kf.fused_output(o, o, o[:, :3], o, o, w, w, w, 2, 1e-5)
    with pytest.raises(ValueError, match=r"^n_head:"):
        kf.fused_output(o, o, o, o, o, w, w, w, 3, 1e-5)
    with pytest.raises(ValueError, match=r"^n_head:.*power of two"):
        kf.fused_output(o, o, o, o, o, w, w, w, 4, 1e-5)          # heads of 8
    with pytest.raises(ValueError, match=r"^r_k:"):
        kf.fused_output(o, o, o, o, o, w, w, w[:31], 2, 1e-5)
    with pytest.raises(ValueError, match=r"^eps:"):
        kf.fused_output(o, o, o, o, o, w, w, w, 2, 0.0)


def test_fold_steps_script_agrees_at_every_step_size(capsys):
    """benchmarks/gpu_fold_steps.py times the folded state pass with steps of 16, 32 and 64 tokens;
    its dry run asserts each folded forward's output against triton_chunked's (float32, 1e-5)."""
    import importlib.util

    from rwkvlab import book

    path = book.root() / "benchmarks" / "gpu_fold_steps.py"
    spec = importlib.util.spec_from_file_location("gpu_fold_steps", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    errs = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "o vs plain" in line]
    assert len(errs) == 3 and max(errs) < 1e-5, out
