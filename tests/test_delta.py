"""rwkvlab.delta: the delta rule's readings (SGD step, eigenvalues, recall, state tracking),
each checked against an independent computation, with every state evolved by rwkvlab.wkv7."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import rwkvlab  # noqa: F401  (selects the device before any kernel module)
from rwkvlab import delta, wkv7


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- one SGD step
@pytest.mark.parametrize("B,H,K,V", [(1, 1, 4, 3), (2, 3, 8, 5), (1, 2, 16, 16)])
@pytest.mark.parametrize("lr_kind", ["scalar", "per_channel"])
@pytest.mark.parametrize("decay", [False, True])
def test_one_wkv7_step_is_one_gradient_step(B, H, K, V, lr_kind, decay):
    g = gen(K * 10 + V)
    k = torch.randn(B, 1, H, K, generator=g, dtype=torch.float64)
    v = torch.randn(B, 1, H, V, generator=g, dtype=torch.float64)
    S0 = torch.randn(B, H, K, V, generator=g, dtype=torch.float64)
    lr = 0.3 if lr_kind == "scalar" else torch.rand(B, 1, H, K, generator=g, dtype=torch.float64) + 0.1
    w = -torch.rand(B, 1, H, K, generator=g, dtype=torch.float64) if decay else None
    args = delta.sgd_as_wkv7(k, v, lr, log_decay=w)
    _, S1 = wkv7.naive(torch.zeros_like(k), args["w"], args["k"], args["v"], args["a"], args["b"],
                       initial_state=S0, output_final_state=True)
    # independent: autograd on L = ½‖Sᵀk̂ − v‖², then S ← diag(e^w) S − diag(η) ∇L
    S = S0.clone().requires_grad_()
    kh = k[:, 0] / k[:, 0].norm(dim=-1, keepdim=True)
    delta.loss(S, kh, v[:, 0]).sum().backward()
    eta = torch.as_tensor(lr, dtype=torch.float64)
    eta = eta[:, 0, :, :, None] if eta.ndim else eta
    decay_f = torch.exp(w[:, 0])[..., None] if decay else 1.0
    expect = decay_f * S0 - eta * S.grad
    assert (S1 - expect).abs().max().item() <= 1e-12


def test_loss_gradient_is_rank_one_k_times_residual():
    g = gen(1)
    S = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    delta.loss(S, k, v).backward()
    expect = torch.outer(k, S.detach().T @ k - v)
    assert torch.allclose(S.grad, expect, atol=1e-14)


@pytest.mark.parametrize("T", [1, 7, 20])
def test_a_sequence_of_updates_is_online_gradient_descent(T):
    g = gen(T)
    K, V, lr = 6, 4, 0.8
    k = torch.randn(1, T, 1, K, generator=g, dtype=torch.float64)
    v = torch.randn(1, T, 1, V, generator=g, dtype=torch.float64)
    args = delta.sgd_as_wkv7(k, v, lr)
    _, ST = wkv7.naive(torch.zeros_like(k), args["w"], args["k"], args["v"], args["a"], args["b"],
                       output_final_state=True)
    S = torch.zeros(K, V, dtype=torch.float64)
    for t in range(T):
        S = S.detach().requires_grad_()
        kh = k[0, t, 0] / k[0, t, 0].norm()
        delta.loss(S, kh, v[0, t, 0]).backward()
        S = S - lr * S.grad
    assert (ST[0, 0] - S).abs().max().item() <= 1e-12


def test_unit_keys_bound_the_state_and_raw_keys_blow_it_up():
    g = gen(0)
    T, K, lr = 64, 16, 0.5
    k = torch.randn(1, T, 1, K, generator=g)
    v = torch.randn(1, T, 1, K, generator=g)
    S_norm, S_raw = torch.zeros(1, 1, K, K), torch.zeros(1, 1, K, K)
    budget = 0.0                                   # ‖S_t‖_F² ≤ ‖S_0‖_F² + η Σ ‖v_t‖² for unit keys, η ≤ 1
    ok, raw = delta.sgd_as_wkv7(k, v, lr), delta.sgd_as_wkv7(k, v, lr, normalize=False)
    r = torch.zeros(1, 1, K)
    for t in range(T):
        _, S_norm = wkv7.step(r, *(ok[n][:, t] for n in ("w", "k", "v", "a", "b")), S_norm)
        _, S_raw = wkv7.step(r, *(raw[n][:, t] for n in ("w", "k", "v", "a", "b")), S_raw)
        budget += lr * v[0, t, 0].double().pow(2).sum().item()
        assert S_norm.double().pow(2).sum().item() <= budget * (1 + 1e-5)
    assert not (S_raw.norm().item() < 1e12)       # eigenvalue 1 − η‖k‖² ≈ −7: the state explodes


# --------------------------------------------------------------------------- eigenvalues
@pytest.mark.parametrize("K", [2, 5, 16])
def test_released_transitions_have_real_eigenvalues_inside_the_bound(K):
    w, kk, iclr = delta.released_transitions(400, K, gen(K))
    G = delta.transition(w, -kk, kk * iclr)
    ev = torch.linalg.eigvals(G)
    lo, hi = delta.eigenvalue_bounds(w, kk, iclr)
    assert ev.imag.abs().max().item() < 1e-9
    re = ev.real
    assert (re.min(-1).values >= lo - 1e-12).all() and (re.max(-1).values <= hi + 1e-12).all()
    assert ev.abs().max().item() < 1                       # ρ(G) < 1: no exact reflection
    assert lo.min().item() > math.exp(-math.exp(-0.5)) - 1 - 1e-12   # ≈ −0.455
    # interlacing: at most one eigenvalue below min e^w
    assert ((re < torch.exp(w).amin(-1, keepdim=True) - 1e-12).sum(-1) <= 1).all()


def test_transition_matches_the_wkv7_update():
    g = gen(3)
    K, V = 6, 4
    w, kk, iclr = delta.released_transitions(1, K, g)
    S0 = torch.randn(1, 1, K, V, generator=g, dtype=torch.float64)
    shape = (1, 1, 1, K)
    z = torch.zeros(shape, dtype=torch.float64)
    _, S1 = wkv7.naive(z, w.view(shape), z, torch.zeros(1, 1, 1, V, dtype=torch.float64), (-kk).view(shape),
                       (kk * iclr).view(shape), initial_state=S0, output_final_state=True)
    G = delta.transition(w[0], -kk[0], kk[0] * iclr[0])
    assert torch.allclose(S1[0, 0], G @ S0[0, 0], atol=1e-14)


def test_reflection_has_eigenvalue_minus_one():
    kh = torch.nn.functional.normalize(torch.randn(7, generator=gen(5), dtype=torch.float64), dim=0)
    ev = torch.linalg.eigvalsh(delta.transition(torch.zeros(7, dtype=torch.float64), -kh, 2 * kh))
    assert torch.allclose(ev, torch.tensor([-1.0] + [1.0] * 6, dtype=torch.float64), atol=1e-12)


# --------------------------------------------------------------------------- associative recall
@pytest.mark.parametrize("rule", delta.RULES)
@pytest.mark.parametrize("n,K", [(1, 4), (5, 8), (16, 16)])
def test_orthonormal_keys_are_recalled_exactly(rule, n, K):
    g = gen(n + K)
    Q, _ = torch.linalg.qr(torch.randn(K, K, generator=g, dtype=torch.float64))
    keys, values = Q[:n], torch.randn(n, 3, generator=g, dtype=torch.float64)
    assert delta.retrieval_error(keys, values, rule).max().item() < 1e-12


def test_repeated_key_delta_returns_the_new_value_additive_the_sum():
    g = gen(7)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    keys = torch.cat([Q[:4], Q[1:2]])                       # key 1 is written twice
    values = torch.randn(5, 3, generator=g, dtype=torch.float64)
    got_d = delta.recall(keys, values, Q[1:2], "delta")[0]
    got_a = delta.recall(keys, values, Q[1:2], "additive")[0]
    assert torch.allclose(got_d, values[4], atol=1e-12)
    assert torch.allclose(got_a, values[1] + values[4], atol=1e-12)
    # the other keys are untouched by the overwrite under both rules
    for rule in delta.RULES:
        assert torch.allclose(delta.recall(keys, values, Q[[0, 2, 3]], rule), values[[0, 2, 3]], atol=1e-12)


def test_with_more_pairs_than_dimensions_delta_keeps_the_recent_pairs():
    g = gen(11)
    K, n, trials = 16, 48, 32
    keys = torch.randn(trials, n, K, generator=g)
    values = torch.randn(trials, n, K, generator=g)
    e_add = delta.retrieval_error(keys, values, "additive")
    e_del = delta.retrieval_error(keys, values, "delta")
    assert e_del[:, -1].max().item() < 1e-5                 # the newest pair is exact under η = 1
    assert e_del[:, -8:].mean().item() < 0.5 * e_add[:, -8:].mean().item()
    assert e_add.mean().item() > 1.0                        # additive crosstalk ~ √(n/K)


def test_write_batched_equals_unbatched():
    g = gen(2)
    keys, values = torch.randn(3, 9, 5, generator=g), torch.randn(3, 9, 4, generator=g)
    for rule in delta.RULES:
        Sb = delta.write(keys, values, rule, lr=0.7)
        for i in range(3):
            assert torch.allclose(Sb[i], delta.write(keys[i], values[i], rule, lr=0.7), atol=1e-6)


# --------------------------------------------------------------------------- state tracking
@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reflections_track_every_prefix_of_a_permutation_word(n, seed, dtype):
    word = delta.random_word(n, 64 + seed, gen(100 * n + seed))
    perms, drift = delta.track(word, n, dtype=dtype)
    assert perms == delta.compose(word, n)
    assert drift < (1e-4 if dtype == torch.float32 else 1e-12)


def test_every_letter_of_s5_decomposes_into_at_most_four_reflections():
    for p in itertools.permutations(range(5)):
        word = delta.decompose(p)
        assert len(word) <= 4
        if word:
            assert delta.compose(word, 5)[-1] == p
            assert delta.track(word, 5)[0][-1] == p


def test_diagonal_transitions_cannot_tell_apart_words_that_reflections_can():
    w1 = [(0, 1), (1, 2), (3, 4), (0, 4)] * 13               # length 52
    w2 = [(1, 2), (0, 1), (0, 4), (3, 4)] * 13               # same letters, each pair swapped
    assert sorted(w1) == sorted(w2)
    assert delta.compose(w1, 5)[-1] != delta.compose(w2, 5)[-1]
    assert delta.track(w1, 5)[0] == delta.compose(w1, 5)
    assert delta.track(w2, 5)[0] == delta.compose(w2, 5)
    d1, d2 = delta.diagonal_track(w1, 5), delta.diagonal_track(w2, 5)
    assert torch.allclose(d1, d2, rtol=1e-12, atol=0)
    assert (d1 - torch.diag(torch.diagonal(d1))).abs().max().item() == 0   # still diagonal


def test_diagonal_maps_commute():
    g = gen(4)
    D = [torch.diag(torch.rand(6, generator=g, dtype=torch.float64)) for _ in range(5)]
    ref = torch.linalg.multi_dot(D)
    for perm in list(itertools.permutations(range(5)))[:30]:
        assert torch.allclose(torch.linalg.multi_dot([D[i] for i in perm]), ref, rtol=1e-14)


# --------------------------------------------------------------------------- bad input
def test_bad_arguments_raise_value_errors_naming_them():
    k, v = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 3)
    with pytest.raises(ValueError, match=r"^lr:"):
        delta.sgd_as_wkv7(k, v, -0.1)
    with pytest.raises(ValueError, match=r"^lr:"):
        delta.sgd_as_wkv7(k, v, torch.ones(5))
    with pytest.raises(ValueError, match=r"^v:"):
        delta.sgd_as_wkv7(k, torch.randn(1, 3, 1, 3), 0.5)
    with pytest.raises(ValueError, match=r"^log_decay:"):
        delta.sgd_as_wkv7(k, v, 0.5, log_decay=torch.ones(1, 2, 1, 4))
    with pytest.raises(ValueError, match=r"^k:"):
        delta.sgd_as_wkv7(torch.zeros(1, 2, 1, 4), v, 0.5)
    with pytest.raises(ValueError, match=r"^perm:"):
        delta.check_permutation((0, 1, 1))
    with pytest.raises(ValueError, match=r"^perm:"):
        delta.decompose((1, 2, 3))
    with pytest.raises(ValueError, match=r"^word:"):
        delta.compose([(0, 0)], 3)
    with pytest.raises(ValueError, match=r"^word:"):
        delta.track([(0, 5)], 5)
    with pytest.raises(ValueError, match=r"^n:"):
        delta.track([(0, 1)], 1)
    with pytest.raises(ValueError, match=r"^rule:"):
        delta.write(torch.randn(3, 4), torch.randn(3, 2), rule="hebbian")
    with pytest.raises(ValueError, match=r"^values:"):
        delta.write(torch.randn(3, 4), torch.randn(2, 2))
    with pytest.raises(ValueError, match=r"^keys:"):
        delta.write(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match=r"^queries:"):
        delta.read(torch.randn(4, 2), torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"^kk:"):
        delta.eigenvalue_bounds(-torch.rand(3), torch.ones(3), torch.full((3,), 0.5))
    with pytest.raises(ValueError, match=r"^iclr:"):
        delta.eigenvalue_bounds(-torch.rand(3), torch.tensor([1.0, 0, 0]), torch.full((3,), 1.5))
    with pytest.raises(ValueError, match=r"^w:"):
        delta.eigenvalue_bounds(torch.rand(3) + 0.1, torch.tensor([1.0, 0, 0]), torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="a, b"):
        delta.transition(torch.zeros(3), torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match=r"^count:"):
        delta.released_transitions(0, 4)
    with pytest.raises(ValueError, match=r"^log_decay_of:"):
        delta.diagonal_track([(0, 1)], 3, log_decay_of={(1, 2): torch.zeros(3)})


def test_released_range_iclr_below_one_cannot_swap():
    word = delta.random_word(5, 60, gen(9))
    perms, drift = delta.track(word, 5, eta=0.99)            # G = I − 0.99 k̂k̂ᵀ: eigenvalue 0.01, not −1
    assert perms != delta.compose(word, 5)
    assert drift > 0.05
    with pytest.raises(ValueError, match=r"^eta:"):
        delta.track(word, 5, eta=2.5)


# --------------------------------------------------------------------------- the ablation of ch14
def _tiny_rwkv7(seed=0):
    from rwkvlab.model import RWKV7, Config7
    cfg = Config7.make(29, 32, 2, head_size=16, d_decay=8, d_aaa=8, d_mv=8, d_gate=8, dim_ffn=64)
    return RWKV7(cfg).init_weights("random", seed=seed).double()


def test_without_removal_makes_the_removal_key_irrelevant_and_keeps_the_modes_equal():
    idx = torch.randint(0, 29, (2, 13), generator=gen(40))
    full, ablated = _tiny_rwkv7(), delta.without_removal(_tiny_rwkv7())
    logits_full = full(idx, impl="naive")[0]
    logits_abl, state_abl = ablated(idx, impl="naive")
    assert (logits_full - logits_abl).abs().max().item() > 1e-3        # the removal term mattered
    # k_k (the removal key's multiplier ξ) enters only κ̂, i.e. only a and b: with a = b = 0 it is dead
    with torch.no_grad():
        for m in (full, ablated):
            for i, blk in enumerate(m.blocks):     # not a common factor: that would cancel in κ̂ and in b aᵀ
                blk.att.k_k.add_(torch.randn(blk.att.k_k.shape, generator=gen(50 + i), dtype=torch.float64))
    assert (full(idx, impl="naive")[0] - logits_full).abs().max().item() > 1e-3
    assert torch.equal(ablated(idx, impl="naive")[0], logits_abl)
    # the chunked core and RNN mode see the same ablation
    assert rwkvlab.rel_err(ablated(idx, impl="chunked")[0], logits_abl) < 1e-10
    state, steps = None, []
    for t in range(idx.shape[1]):
        lg, state = ablated.step(idx[:, t], state)
        steps.append(lg)
    assert rwkvlab.rel_err(torch.stack(steps, 1), logits_abl) < 1e-10
    # the same state size as the model with the removal term
    from rwkvlab.model import state_nbytes
    assert state_nbytes(state_abl) == state_nbytes(full(idx)[1])


def test_without_removal_equals_a_diagonal_wkv7_on_the_block_inputs():
    # one block's core, by hand: with a = b = 0 wkv7 is S_t = diag(e^w) S + k vᵀ, an RWKV-6-like update
    m = delta.without_removal(_tiny_rwkv7(seed=3))
    seen = {}

    def spy(r, w, k, v, a, b, **kw):
        seen.update(a=a, b=b)
        return wkv7.naive(r, w, k, v, a, b, **kw)
    x = [torch.randn(1, 7, 2, 16, generator=gen(41 + i), dtype=torch.float64) for i in range(6)]
    x[1] = -torch.rand(1, 7, 2, 16, generator=gen(47), dtype=torch.float64)
    o, _ = m.sequence_core(spy)(*x, None)
    assert torch.equal(seen["a"], torch.zeros_like(x[4])) and torch.equal(seen["b"], torch.zeros_like(x[5]))
    o_ref = torch.zeros(1, 7, 2, 16, dtype=torch.float64)
    S = torch.zeros(2, 16, 16, dtype=torch.float64)
    for t in range(7):
        S = torch.exp(x[1][0, t])[..., None] * S + x[2][0, t, :, :, None] * x[3][0, t, :, None, :]
        o_ref[0, t] = torch.einsum("hk,hkv->hv", x[0][0, t], S)
    assert rwkvlab.rel_err(o, o_ref) < 1e-12


def test_removal_ablation_run_trains_both_variants_from_the_same_start():
    from rwkvlab.model import train
    task = train.Recall(n_keys=4, n_values=8, n_pairs=4, n_queries=2, overwrite=True)
    res = delta.removal_ablation_run(task, 3, 4, seed=0, progress=False)
    assert list(res) == list(delta.ABLATION_VARIANTS)
    for r in res.values():
        assert len(r["losses"]) == 3 and 0 <= r["accuracy"] <= 1
    with pytest.raises(ValueError, match="^variants:"):
        delta.removal_ablation_run(task, 3, 4, variants=("RWKV-8",))
    with pytest.raises(ValueError, match="^steps:"):
        delta.removal_ablation_run(task, 0, 4)
    with pytest.raises(ValueError, match="^model:"):
        delta.without_removal(train.small_models(task.vocab_size)["RWKV-6"])


# --------------------------------------------------------------------------- from S_0 = 0 to S = I
@pytest.mark.parametrize("n", [2, 3, 5])
def test_basis_prefix_writes_the_identity_from_zero_one_rank_per_token(n):
    pre = delta.basis_prefix_args(n, dtype=torch.float64)
    ranks = []
    for t in range(1, n + 1):
        _, S = wkv7.naive(*(pre[m][:, :t] for m in ("r", "w", "k", "v", "a", "b")), output_final_state=True)
        ranks.append(int(torch.linalg.matrix_rank(S[0, 0])))
    assert ranks == list(range(1, n + 1))
    assert torch.equal(S[0, 0], torch.eye(n, dtype=torch.float64))


@pytest.mark.parametrize("n,seed", [(3, 0), (5, 1)])
def test_tracking_from_zero_with_the_prefix_equals_tracking_from_the_identity(n, seed):
    word = delta.random_word(n, 40, gen(60 + seed))
    perms0, drift0 = delta.track(word, n, from_zero=True)
    assert perms0 == delta.compose(word, n) and drift0 < 1e-4
    # without the prefix the zero state stays zero: reflections of nothing
    args = delta.reflection_args(word, n)
    o, _ = wkv7.naive(*(args[m] for m in ("r", "w", "k", "v", "a", "b")))
    assert torch.equal(o, torch.zeros_like(o))
    with pytest.raises(ValueError, match="^n:"):
        delta.basis_prefix_args(1)
