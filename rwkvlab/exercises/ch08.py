"""Checkers for chapter 08 (the delta rule: RWKV-7's update as one SGD step, its eigenvalues)."""
from __future__ import annotations

import torch

from .. import delta, wkv7
from . import call, close, compare, exercise

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# 08.7: the delta rule as one gradient step
# ---------------------------------------------------------------------------------------------
# (B, H, K, V, S scale): K = V first (so a transposed read has the right shape and gets its
# hint); several batches and heads with K != V; a large state, whose residual dominates the value
_CASES_7 = [(1, 1, 4, 4, 1.0), (2, 2, 6, 5, 1.0), (1, 3, 16, 8, 30.0)]


def _sgd_inputs(B, H, K, V, scale, seed):
    g = torch.Generator().manual_seed(seed)
    S = scale * torch.randn(B, H, K, V, generator=g, dtype=F64)
    k = 3 * torch.randn(B, H, K, generator=g, dtype=F64)           # raw keys, far from unit length
    v = torch.randn(B, H, V, generator=g, dtype=F64)
    lr = 0.05 + 0.9 * torch.rand(B, H, K, generator=g, dtype=F64)
    w = -0.5 * torch.rand(B, H, K, generator=g, dtype=F64)
    return S, k, v, lr, w


def _sgd(S, k, v, lr, w, kind=""):
    """One step with a mistake made on purpose (for the hints)."""
    kh = k if kind == "raw_key" else k / k.norm(dim=-1, keepdim=True)
    if kind == "transposed":                                        # S read as V x K: S k̂ instead of Sᵀ k̂
        res = torch.einsum("...vk,...k->...v", S, kh) - v
    else:
        res = torch.einsum("...kv,...k->...v", S, kh) - v
    if kind == "ascent":
        res = -res
    grad = kh[..., :, None] * res[..., None, :]
    if kind == "decay_after":
        return torch.exp(w)[..., None] * (S - lr[..., None] * grad)
    return torch.exp(w)[..., None] * S - lr[..., None] * grad


@exercise("08.7", "the delta rule as one gradient step", difficulty="easy", spec="""
    Write sgd_step(S, k, v, lr, w) -> S_new: one step of gradient descent on the memory's loss
    L(S) = 1/2 ||S^T k_hat - v||^2 with k_hat = k / ||k|| (Section 2), a learning rate per key channel
    and weight decay: S_new = diag(exp(w)) S - diag(lr) grad_S L, the gradient taken at the old S and
    derived by hand (no autograd). S: [B, H, K, V] (K x V layout: rows are key channels); k, lr, w:
    [B, H, K] (k a raw key, lr in (0, 1), w <= 0 the log decay); v: [B, H, V]; float64. The checker
    compares with autograd through rwkvlab.delta.loss.""")
def _check_08_7(fn):
    for i, (B, H, K, V, scale) in enumerate(_CASES_7):
        S, k, v, lr, w = _sgd_inputs(B, H, K, V, scale, seed=70 + i)
        case = f"{i} (B={B}, H={H}, K={K}, V={V}{', large state' if scale > 1 else ''})"
        S_req = S.clone().requires_grad_()
        delta.loss(S_req, k / k.norm(dim=-1, keepdim=True), v).sum().backward()
        want = torch.exp(w)[..., None] * S - lr[..., None] * S_req.grad
        got = call(fn, case, S.clone(), k.clone(), v.clone(), lr.clone(), w.clone())
        mistakes = {
            "normalise the key first: the loss reads the state with the unit key k_hat = k / ||k||":
                _sgd(S, k, v, lr, w, "raw_key"),
            "the sign of the residual: grad = k_hat (S^T k_hat - v)^T, and the step SUBTRACTS lr times it "
            "(your step climbs the loss)": _sgd(S, k, v, lr, w, "ascent"),
            "the decay multiplies the old state only: diag(exp(w)) S - diag(lr) grad, not "
            "diag(exp(w)) (S - diag(lr) grad)": _sgd(S, k, v, lr, w, "decay_after"),
        }
        if K == V:
            mistakes["the state is K x V: the read-out is S^T k_hat (a sum over the key rows), not S k_hat"] = \
                _sgd(S, k, v, lr, w, "transposed")
        compare(case, got, want, tol=1e-10, name="S_new", mistakes=mistakes, hint=(
            "grad_S L = k_hat (S^T k_hat - v)^T, a K x V outer product; scale its rows by lr"))
    return len(_CASES_7)


# ---------------------------------------------------------------------------------------------
# 08.8: one RWKV-7 step
# ---------------------------------------------------------------------------------------------
# (B, T, H, K, V, kind): K = V first (the V x K layout has the right shapes there and gets its
# hint); odd T with several sequences and heads; K != V; a long run with the released
# parameterisation (a = -k̂, b = iclr ⊙ k̂, slow decay), where the state must stay bounded
_CASES_8 = [(1, 1, 1, 4, 4, "random"), (2, 9, 2, 8, 8, "random"), (1, 13, 2, 8, 6, "random"),
            (1, 40, 1, 16, 16, "released")]


def _wkv7_inputs(B, T, H, K, V, kind, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "released":
        r, w, k, v, a, b = wkv7.random_inputs(B, T, H, K, V, seed=seed)
    else:                                  # a, b unrelated to each other, so every term shows
        r, k, a, b = (torch.randn(B, T, H, K, generator=g) for _ in range(4))
        a, b = 0.5 * a, 0.5 * b
        v = torch.randn(B, T, H, V, generator=g)
        w = -torch.exp(torch.randn(B, T, H, K, generator=g))
    S0 = torch.randn(B, H, K, V, generator=g)
    return r, w, k, v, a, b, S0


def _wkv7_wrong(r, w, k, v, a, b, S, kind):
    """o over the sequence from a step with a mistake made on purpose (float64)."""
    r, w, k, v, a, b, S = (x.double() for x in (r, w, k, v, a, b, S))
    outs = []
    for t in range(r.shape[1]):
        rt, wt, kt, vt, at, bt = (x[:, t] for x in (r, w, k, v, a, b))
        decay = wt if kind == "no_exp" else torch.exp(wt)
        kv = kt[..., :, None] * vt[..., None, :]
        if kind == "vk":                                   # state read as V x K, the paper's layout
            S_new = S * decay[..., None, :] + torch.einsum("...vk,...k->...v", S, at)[..., None] * bt[..., None, :] \
                + vt[..., :, None] * kt[..., None, :]
            outs.append(torch.einsum("...vk,...k->...v", S_new, rt))
            S = S_new
            continue
        if kind == "removal_after_write":                  # removal term reads the updated state
            S1 = decay[..., None] * S + kv
            S_new = S1 + bt[..., None] * torch.einsum("...k,...kv->...v", at, S1)[..., None, :]
        elif kind == "removal_after_decay":                # removal term reads the decayed state
            D = decay[..., None] * S
            S_new = D + bt[..., None] * torch.einsum("...k,...kv->...v", at, D)[..., None, :] + kv
        else:
            S_new = decay[..., None] * S + bt[..., None] * torch.einsum("...k,...kv->...v", at, S)[..., None, :] + kv
        read = S if kind == "read_before" else S_new
        outs.append(torch.einsum("...k,...kv->...v", rt, read))
        S = S_new
    return torch.stack(outs, 1)


def _run_steps(fn, r, w, k, v, a, b, S, case):
    outs = []
    for t in range(r.shape[1]):
        out = call(fn, case, *(x[:, t].clone() for x in (r, w, k, v, a, b)), S)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise AssertionError(f"case {case}: expected (o, S_new) from token {t}, got {type(out).__name__}")
        o, S = out
        if not isinstance(o, torch.Tensor) or tuple(o.shape) != tuple(v[:, t].shape):
            compare(f"{case}, token {t}", o, v[:, t], name="o")        # says what shape was expected
        if not isinstance(S, torch.Tensor):
            raise AssertionError(f"case {case}: S_new from token {t} is a {type(S).__name__}, not a torch.Tensor")
        outs.append(o)
    return torch.stack(outs, 1), S


@exercise("08.8", "one RWKV-7 step", difficulty="medium", spec="""
    Write wkv7_step(r, w, k, v, a, b, S) -> (o, S_new): one token of RWKV-7 in the book's K x V
    layout, S_new = diag(exp(w)) S + b (a^T S) + k v^T and o = S_new^T r (the read-out sees the
    UPDATED state, unlike RWKV-6). a^T S is a row of length V read from the OLD state. r, w, k, a, b:
    [B, H, K] (w <= 0, the log decay); v: [B, H, V]; S: [B, H, K, V]; float32. Return o [B, H, V] and
    S_new [B, H, K, V], without changing S in place. The checker drives your step over sequences from
    a random state and compares the outputs and the last state with wkv7.naive in float64, the
    released parameterisation (a = -k_hat, b = iclr * k_hat) over 40 tokens among the cases.""")
def _check_08_8(fn):
    for i, (B, T, H, K, V, kind) in enumerate(_CASES_8):
        r, w, k, v, a, b, S0 = _wkv7_inputs(B, T, H, K, V, kind, seed=80 + i)
        case = f"{i} (B={B}, T={T}, H={H}, K={K}, V={V}{', released a, b, w' if kind == 'released' else ''})"
        o, S = _run_steps(fn, r, w, k, v, a, b, S0.clone(), case)
        want_o, want_S = wkv7.naive(*(x.double() for x in (r, w, k, v, a, b)), initial_state=S0.double(),
                                    output_final_state=True)
        xs = (r, w, k, v, a, b, S0)
        mistakes = {
            "the removal term b (a^T S) reads the state BEFORE this token's decay and write: compute a^T S "
            "from the old S": _wkv7_wrong(*xs, "removal_after_write"),
            "the removal term reads the old state undecayed: b (a^T S), not b (a^T diag(exp(w)) S)":
                _wkv7_wrong(*xs, "removal_after_decay"),
            "RWKV-7 reads the UPDATED state: o = S_new^T r (RWKV-6 read the state before the token)":
                _wkv7_wrong(*xs, "read_before"),
            "w is the LOG decay: the rows are multiplied by exp(w), not by w": _wkv7_wrong(*xs, "no_exp"),
        }
        if K == V:
            mistakes["K and V are swapped: in the K x V layout the decay and b act on the rows (key channels), "
                     "a^T S sums over the rows, the write is k v^T and o = S^T r"] = _wkv7_wrong(*xs, "vk")
        compare(case, o, want_o, tol=1e-5, name="o", mistakes=mistakes, hint=(
            "S_new = exp(w)[..., None] * S + b[..., None] * (a[..., None] * S).sum(-2, keepdim=True) "
            "+ k[..., None] * v[..., None, :]"))
        compare(case, S, want_S, tol=1e-5, name="the last S_new", hint=(
            "the outputs were right but the state you returned at the last token is not: return S_new"))
    return len(_CASES_8)


# ---------------------------------------------------------------------------------------------
# 08.9: the spectrum of the released transition, by symmetrising it
# ---------------------------------------------------------------------------------------------
# (N, K, kind): K = 1; a few random transitions; the released ranges drawn wide; rates near 0 and
# decays near 1 (eigenvalues crowd at 1); rates near 1 (the lowest eigenvalue far below the rest)
_CASES_9 = [(3, 1, "released"), (5, 4, "released"), (200, 8, "released"), (20, 16, "small_rate"),
            (20, 16, "large_rate")]


def _spectrum_inputs(N, K, kind, seed):
    g = torch.Generator().manual_seed(seed)
    w, kk, iclr = delta.released_transitions(N, K, g)
    k = kk * (0.1 + 5 * torch.rand(N, 1, generator=g, dtype=F64))    # raw keys of all sizes
    if kind == "small_rate":
        iclr, w = 1e-4 * iclr, 1e-3 * w
    elif kind == "large_rate":
        iclr = 1 - 1e-3 * iclr
    return w, k, iclr


def _spectrum_wrong(w, k, iclr, kind):
    kh = k if kind == "raw_key" else k / k.norm(dim=-1, keepdim=True)
    if kind == "eigvalsh_of_G":                               # eigvalsh reads only one triangle of G
        return torch.linalg.eigvalsh(delta.transition(w, -kh, iclr * kh))
    z = iclr * kh if kind == "no_sqrt" else iclr.sqrt() * kh
    sign = 1.0 if kind == "plus" else -1.0
    return torch.linalg.eigvalsh(torch.diag_embed(torch.exp(w)) + sign * z[..., :, None] * z[..., None, :])


@exercise("08.9", "the spectrum of the released transition, symmetrised", difficulty="medium", spec="""
    Write transition_spectrum(w, k, iclr) -> eigenvalues: the K eigenvalues, in ascending order, of
    the released RWKV-7 transition G = diag(exp(w)) - (iclr * k_hat) k_hat^T with k_hat = k / ||k||,
    for a batch of N transitions. w, k, iclr: [N, K] float64 (w <= 0 the log decay, k a raw key,
    iclr in (0, 1)); return a real [N, K] tensor. G is not symmetric: use Section 6's similarity
    D^-1 G D = diag(exp(w)) - z z^T with D = diag(sqrt(iclr)) and z = sqrt(iclr) * k_hat, then a
    symmetric eigensolver (torch.linalg.eigvalsh). The checker compares with a general
    (non-symmetric) eigensolver applied to G itself.""")
def _check_08_9(fn):
    for i, (N, K, kind) in enumerate(_CASES_9):
        w, k, iclr = _spectrum_inputs(N, K, kind, seed=90 + i)
        case = f"{i} (N={N}, K={K}, {kind.replace('_', ' ')})"
        kh = k / k.norm(dim=-1, keepdim=True)
        ev = torch.linalg.eigvals(delta.transition(w, -kh, iclr * kh))          # complex, unordered
        assert ev.imag.abs().max().item() < 1e-8, "checker: the reference spectrum should be real"
        want = ev.real.sort(-1).values
        got = call(fn, case, w.clone(), k.clone(), iclr.clone())
        if isinstance(got, torch.Tensor) and got.is_complex():
            raise AssertionError(f"case {case}: eigenvalues: expected a real tensor (the spectrum is real), "
                                 "got a complex one")
        if (isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(want.shape) and torch.isfinite(got).all()
                and close(got.sort(-1).values, want, 1e-9) and not close(got, want, 1e-9)):
            raise AssertionError(f"case {case}: eigenvalues: the right numbers in the wrong order\n"
                                 "hint: return them in ascending order along the last axis (sort(-1))")
        compare(case, got, want, tol=1e-9, name="eigenvalues", hint=(
            "build M = diag(exp(w)) - z z^T with z = sqrt(iclr) * k_hat ([N, K, K]) and return "
            "torch.linalg.eigvalsh(M), already ascending"), mistakes={
                "normalise the key: G uses the unit removal key k_hat = k / ||k||":
                    _spectrum_wrong(w, k, iclr, "raw_key"),
                "z = sqrt(iclr) * k_hat: D^-1 diag(iclr) k_hat k_hat^T D splits iclr as sqrt(iclr) on each side":
                    _spectrum_wrong(w, k, iclr, "no_sqrt"),
                "G itself is not symmetric, so eigvalsh(G) (which reads one triangle) is wrong: symmetrise first":
                    _spectrum_wrong(w, k, iclr, "eigvalsh_of_G"),
                "the rank-one term is SUBTRACTED: b a^T = -(iclr * k_hat) k_hat^T": _spectrum_wrong(w, k, iclr, "plus"),
            })
    return len(_CASES_9)
