"""rwkvlab.family: the delta-rule family as calls into wkv7, checked against the papers' loops."""
from __future__ import annotations

import math

import pytest
import torch

import rwkvlab

from rwkvlab import delta, family
from rwkvlab.checking import rel_err

SHAPES = [(1, 1, 1, 4, 3), (2, 5, 3, 8, 6), (1, 41, 2, 16, 16)]      # T = 1, odd T, T across two chunks
TORCH_IMPLS = ("naive", "chunked")


def _models(x):
    """name -> (wkv7 args, paper loop result, n_h)"""
    S0 = x["S0"]
    return {
        "gla": (family.gla(x["q"], x["k"], x["v"], x["gk"]),
                family.reference_gla(x["q"], x["k"], x["v"], x["gk"], initial_state=S0), 1),
        "deltanet": (family.deltanet(x["q"], x["k"], x["v"], x["beta"]),
                     family.reference_deltanet(x["q"], x["k"], x["v"], x["beta"], initial_state=S0), 1),
        "gated_deltanet": (family.gated_deltanet(x["q"], x["k"], x["v"], x["beta"], x["g"]),
                           family.reference_gated_deltanet(x["q"], x["k"], x["v"], x["beta"], x["g"],
                                                           initial_state=S0), 1),
        "kda": (family.kda(x["q"], x["k"], x["v"], x["beta"], x["gk"]),
                family.reference_kda(x["q"], x["k"], x["v"], x["beta"], x["gk"], initial_state=S0), 1),
        "deltaproduct": (family.deltaproduct(x["q"], x["kp"], x["vp"], x["bp"]),
                         family.reference_deltaproduct(x["q"], x["kp"], x["vp"], x["bp"], initial_state=S0),
                         x["kp"].shape[3]),
    }


@pytest.mark.parametrize("impl", TORCH_IMPLS)
@pytest.mark.parametrize("decay", ["slow", "fast"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_mapping_matches_its_papers_loop_float64(shape, decay, impl):
    x = family.random_inputs(*shape, n_h=3, decay=decay, beta_max=2.0 if decay == "fast" else 1.0,
                             seed=sum(shape))
    for name, (args, (o_ref, S_ref), n_h) in _models(x).items():
        o, S = family.run(args, impl, initial_state=x["S0"], output_final_state=True)
        o = family.last_substep(o, n_h)
        assert o.dtype == torch.float64
        assert rel_err(o, o_ref) < 1e-13, (name, rel_err(o, o_ref))
        assert rel_err(S, S_ref) < 1e-13, (name, rel_err(S, S_ref))


@pytest.mark.parametrize("impl", ["triton_recurrent", "triton_chunked"])
def test_every_mapping_on_the_triton_kernels_float32(impl):
    x = family.random_inputs(1, 19, 2, 16, 16, n_h=2, decay="fast", seed=4)
    dev = rwkvlab.device.device()           # the kernels' device: compiled kernels read GPU tensors only
    for name, (args, (o_ref, S_ref), n_h) in _models(x).items():
        args = {n: t.float().to(dev) for n, t in args.items()}
        o, S = family.run(args, impl, initial_state=x["S0"].float().to(dev), output_final_state=True)
        o, S = family.last_substep(o, n_h).cpu(), S.cpu()
        assert o.dtype == torch.float32
        assert rel_err(o.double(), o_ref) < 2e-6, (name, rel_err(o.double(), o_ref))
        assert rel_err(S.double(), S_ref) < 2e-6, (name, rel_err(S.double(), S_ref))


def test_special_cases_reduce_to_each_other():
    x = family.random_inputs(2, 9, 2, 8, 5, n_h=2, decay="fast", seed=1)
    q, k, v, beta, g = x["q"], x["k"], x["v"], x["beta"], x["g"]
    run = lambda args: family.run(args, "naive", initial_state=x["S0"])[0]  # noqa: E731
    # Gated DeltaNet with the gate at 1 is DeltaNet
    assert rel_err(run(family.gated_deltanet(q, k, v, beta, torch.zeros_like(g))),
                   run(family.deltanet(q, k, v, beta))) < 1e-15
    # KDA with one gate for every channel is Gated DeltaNet: (I − βkkᵀ)(αI) = α(I − βkkᵀ)
    gk = g.unsqueeze(-1).expand_as(k).contiguous()
    assert rel_err(run(family.kda(q, k, v, beta, gk)), run(family.gated_deltanet(q, k, v, beta, g))) < 1e-13
    # DeltaProduct with one step per token is DeltaNet
    dp = family.deltaproduct(q, k.unsqueeze(3), v.unsqueeze(3), beta.unsqueeze(3))
    assert rel_err(run(dp), run(family.deltanet(q, k, v, beta))) < 1e-15
    # GLA with no gate is linear attention
    assert rel_err(run(family.gla(q, k, v, torch.zeros_like(k))), run(family.linear_attention(q, k, v))) < 1e-15
    # RWKV-7's mapping is the models' call, a = −κ̂, b = κ̂ ⊙ iclr, and its transition is delta.transition's
    iclr = torch.rand_like(k)
    args = family.rwkv7(q, x["gk"], k, v, k, iclr)
    assert torch.equal(args["a"], -k) and torch.equal(args["b"], k * iclr)
    assert rel_err(family.transitions(args), delta.transition(x["gk"], -k, k * iclr)) < 1e-15


def test_transitions_are_the_papers_matrices():
    x = family.random_inputs(1, 6, 2, 5, 3, n_h=2, decay="wide", beta_max=2.0, seed=2)
    k, beta, g, gk = x["k"], x["beta"], x["g"], x["gk"]
    eye = torch.eye(5, dtype=torch.float64)
    house = eye - beta[..., None, None] * k.unsqueeze(-1) * k.unsqueeze(-2)          # I − β k kᵀ
    G = family.transitions(family.gated_deltanet(x["q"], k, x["v"], beta, g))
    assert rel_err(G, g.exp()[..., None, None] * house) < 1e-15
    G = family.transitions(family.kda(x["q"], k, x["v"], beta, gk))
    assert rel_err(G, house @ torch.diag_embed(gk.exp())) < 1e-15
    kp, bp = x["kp"], x["bp"]
    h = eye - bp[..., None, None] * kp.unsqueeze(-1) * kp.unsqueeze(-2)               # [B, T, H, n_h, K, K]
    G = family.transitions(family.deltaproduct(x["q"], kp, x["vp"], bp), n_h=2)
    assert rel_err(G, h[:, :, :, 1] @ h[:, :, :, 0]) < 1e-15                         # the later step on the left


def test_eigenvalue_sets_of_the_table():
    x = family.random_inputs(1, 300, 1, 6, 2, n_h=2, decay="wide", seed=3)
    alpha, beta = x["gk"].exp(), x["beta"]
    ev = torch.linalg.eigvals(family.transitions(family.kda(x["q"], x["k"], x["v"], beta, x["gk"])))
    assert ev.imag.abs().max() < 1e-10 and ev.real.min() > -1e-12
    assert (ev.real.amax(-1) <= alpha.amax(-1) + 1e-12).all()
    x2 = family.random_inputs(1, 300, 1, 6, 2, n_h=2, beta_max=2.0, seed=4)
    ev = torch.linalg.eigvals(family.transitions(family.deltaproduct(x2["q"], x2["kp"], x2["vp"], x2["bp"]), n_h=2))
    assert ev.abs().max() <= 1 + 1e-12 and (ev.imag.abs() > 1e-3).any()


def test_deltaproduct_tracks_a_3_cycle_in_one_token():
    """(0 1) then (0 2) in one DeltaProduct token is the 3-cycle 0 -> 1 -> 2 -> 0."""
    kp = torch.zeros(1, 1, 1, 2, 3, dtype=torch.float64)
    kp[0, 0, 0, 0, :2] = torch.tensor([1.0, -1.0], dtype=torch.float64) / math.sqrt(2)
    kp[0, 0, 0, 1, [0, 2]] = torch.tensor([1.0, -1.0], dtype=torch.float64) / math.sqrt(2)
    bp = torch.full((1, 1, 1, 2), 2.0, dtype=torch.float64)
    args = family.deltaproduct(torch.zeros(1, 1, 1, 3, dtype=torch.float64), kp, torch.zeros_like(kp), bp)
    G = family.transitions(args, n_h=2)[0, 0, 0]
    P = torch.zeros(3, 3, dtype=torch.float64)
    P[[1, 2, 0], [0, 1, 2]] = 1.0
    assert rel_err(G, P) < 1e-15
    assert delta.compose(delta.decompose((1, 2, 0)), 3)[-1] == (1, 2, 0)


def test_gradients_through_the_mappings_match_the_papers_loop():
    x = family.random_inputs(1, 11, 2, 4, 3, n_h=2, decay="fast", seed=9)
    leaves = {n: x[n].clone().requires_grad_() for n in ("q", "k", "v", "beta", "gk")}
    args = family.kda(leaves["q"], leaves["k"], leaves["v"], leaves["beta"], leaves["gk"])
    o, S = family.run(args, "chunked", initial_state=x["S0"], output_final_state=True)
    grads = torch.autograd.grad((o ** 2).sum() + S.sum(), list(leaves.values()))
    o_r, S_r = family.reference_kda(leaves["q"], leaves["k"], leaves["v"], leaves["beta"], leaves["gk"],
                                    initial_state=x["S0"])
    grads_r = torch.autograd.grad((o_r ** 2).sum() + S_r.sum(), list(leaves.values()))
    for n, a, b in zip(leaves, grads, grads_r):
        assert rel_err(a, b) < 1e-12, n


def test_bad_inputs_raise():
    x = family.random_inputs(1, 4, 1, 4, 3, n_h=2, seed=0)
    q, k, v, beta, g, gk = x["q"], x["k"], x["v"], x["beta"], x["g"], x["gk"]
    with pytest.raises(ValueError, match="^g: is a log decay"):
        family.gated_deltanet(q, k, v, beta, -g)
    with pytest.raises(ValueError, match="^g: is a log decay"):
        family.kda(q, k, v, beta, -gk)
    with pytest.raises(ValueError, match="^beta"):
        family.deltanet(q, k, v, beta[..., None])
    with pytest.raises(ValueError, match="^v"):
        family.deltanet(q, k, v[:, :2], beta)
    with pytest.raises(ValueError, match="^v"):
        family.deltaproduct(q, x["kp"], x["vp"][:, :, :, :1], x["bp"])
    with pytest.raises(ValueError, match="^impl"):
        family.run(family.deltanet(q, k, v, beta), "fused")
    with pytest.raises(ValueError, match="^o"):
        family.last_substep(torch.zeros(1, 5, 1, 3), 2)
    with pytest.raises(ValueError, match="^decay"):
        family.random_inputs(1, 2, 1, 4, 3, decay="medium")


def test_against_fla_when_available():
    """FLA's chunked DeltaNet and Gated DeltaNet kernels against the mappings (GPU and fla-core only)."""
    pytest.importorskip("fla", reason="fla-core is not installed")
    if not torch.cuda.is_available():
        pytest.skip("FLA's kernels are written for GPUs; no CUDA device")
    from fla.ops.delta_rule import chunk_delta_rule
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    # fla-core 0.6.0's delta-rule kernels refuse float32: FLA gets bf16, ours the same values in
    # float32, so the gap is FLA's bf16 rounding (the book's bf16 tolerance)
    x = {n: t.float().cuda() for n, t in family.random_inputs(2, 100, 4, 64, 64, seed=3).items()}
    xb = {n: t if n == "S0" else t.bfloat16() for n, t in x.items()}
    x = {n: t.float() for n, t in xb.items()}
    common = dict(scale=1.0, initial_state=x["S0"], output_final_state=True)
    got = chunk_delta_rule(q=xb["q"], k=xb["k"], v=xb["v"], beta=xb["beta"], **common)
    want = family.run(family.deltanet(x["q"], x["k"], x["v"], x["beta"]), "triton_chunked",
                      initial_state=x["S0"], output_final_state=True)
    assert max(rel_err(got[0], want[0]), rel_err(got[1], want[1])) < 1e-2
    got = chunk_gated_delta_rule(q=xb["q"], k=xb["k"], v=xb["v"], g=x["g"], beta=xb["beta"], **common)
    want = family.run(family.gated_deltanet(x["q"], x["k"], x["v"], x["beta"], x["g"]), "triton_chunked",
                      initial_state=x["S0"], output_final_state=True)
    assert max(rel_err(got[0], want[0]), rel_err(got[1], want[1])) < 1e-2
