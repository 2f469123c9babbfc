"""Checkers for chapter 11: in Triton I (the recurrent kernel) the step's adjoint, a Triton step
kernel, a segment's backward; in Triton II (the chunked kernels) folding two chunks into one step."""
from __future__ import annotations

import torch

from .. import device, wkv7
from . import call, compare, exercise


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _step_inputs(B, H, K, V, seed):
    """r, w, k, v, a, b as a RWKV-7 model makes them ([B, H, ·]); a = −κ̂, b = κ̂·iclr."""
    g = _g(seed)
    r, k = torch.randn(B, H, K, generator=g), torch.randn(B, H, K, generator=g) / K ** 0.5
    v = torch.randn(B, H, V, generator=g)
    w = -0.6065 * torch.rand(B, H, K, generator=g)
    kk = torch.nn.functional.normalize(torch.randn(B, H, K, generator=g), dim=-1)
    iclr = torch.rand(B, H, K, generator=g)
    return r, w, k, v, -kk, kk * iclr


@exercise("11.9", "the adjoint of one RWKV-7 state update", difficulty="medium", spec="""
    Write adjoint(G, w, a, b) -> dS_prev. The update is S_t = diag(e^{w_t}) S_{t-1} + b_t (a_tᵀ S_{t-1})
    + k_t v_tᵀ per head, with S in K×V layout. Given G = ∂L/∂S_t [B, H, K, V] and w, a, b [B, H, K],
    return ∂L/∂S_{t-1} through this update alone, [B, H, K, V]. (Hint for the derivation: the map
    S ↦ (D + b aᵀ) S has the adjoint G ↦ (D + b aᵀ)ᵀ G.)""")
def _check_11_9(fn):
    cases = [(1, 1, 4, 4), (2, 3, 16, 8), (1, 2, 8, 24)]
    for i, (B, H, K, V) in enumerate(cases):
        r, w, k, v, a, b = (x.double() for x in _step_inputs(B, H, K, V, 110 + i))
        G = torch.randn(B, H, K, V, generator=_g(210 + i), dtype=torch.float64)
        S = torch.randn(B, H, K, V, generator=_g(310 + i), dtype=torch.float64, requires_grad=True)
        _, S_new = wkv7.step(r, w, k, v, a, b, S)
        (want,) = torch.autograd.grad((S_new * G).sum(), S)
        case = f"{i} (B={B}, H={H}, K={K}, V={V})"
        got = call(fn, case, G.float(), w.float(), a.float(), b.float())
        D = w.exp()[..., None]
        compare(case, got, want, tol=1e-5, name="dS_prev", hint="dS_prev = diag(e^w) G + a (bᵀ G)", mistakes={
            "the rank-one term is transposed in the adjoint: a (bᵀ G), not b (aᵀ G)":
                D * G + b[..., None] * torch.einsum("bhk,bhkv->bhv", a, G)[..., None, :],
            "the decay factor is e^{w}: w is the LOG decay": w[..., None] * G + a[..., None] * torch.einsum("bhk,bhkv->bhv", b, G)[..., None, :],
            "the rank-one removal term b (aᵀ S) has a gradient too": D * G,
        })
    return len(cases)


@exercise("11.10", "one RWKV-7 step as a Triton kernel", difficulty="hard", spec="""
    Complete triton_step(S, r, w, k, v, a, b) -> (o, S_new) and its @triton.jit kernel: one token of
    RWKV-7 for every batch row and head, S [B, H, K, V] float32, r, w, k, a, b [B, H, K], v [B, H, V].
    S_new = diag(e^w) S + b (aᵀ S) + k vᵀ, and o = S_newᵀ r [B, H, V] (the UPDATED state is read).
    One program per (block of BV = 16 value columns, batch·head), holding a [K, BV] tile of the state.
    V need not be a multiple of 16 (mask the tail block). Runs in the Triton interpreter here.""")
def _check_11_10(fn):
    cases = [(1, 1, 16, 16), (2, 2, 16, 24), (1, 3, 32, 40)]
    for i, (B, H, K, V) in enumerate(cases):
        r, w, k, v, a, b = _step_inputs(B, H, K, V, 120 + i)
        S = torch.randn(B, H, K, V, generator=_g(220 + i))
        case = f"{i} (B={B}, H={H}, K={K}, V={V})"
        dev = device.device()           # a compiled kernel reads only GPU tensors; the interpreter, CPU ones
        out = call(fn, case, *(x.to(dev) for x in (S, r, w, k, v, a, b)))
        if not (isinstance(out, tuple) and len(out) == 2):
            raise AssertionError(f"case {case}: expected (o, S_new), got {type(out).__name__}")
        d = [x.double() for x in (r, w, k, v, a, b)]
        o_ref, S_ref = wkv7.step(*d, S.double())
        Sd = S.double()
        D = d[1].exp()[..., None]
        S_bad = D * Sd + d[2][..., None] * d[3][..., None, :]               # decay and write first ...
        S_bad = S_bad + d[5][..., None] * torch.einsum("bhk,bhkv->bhv", d[4], S_bad)[..., None, :]  # ... then remove
        tail = S_ref.clone()
        tail[..., (V // 16) * 16:] = 0
        compare(case, out[1], S_ref, tol=1e-5, name="S_new", hint="S_new = diag(e^w) S + b (aᵀ S) + k vᵀ, with aᵀ S taken on the OLD state",
                mistakes={"the removal term b (aᵀ S) must use the state BEFORE this token's decay and write": S_bad,
                          "the last value block is dropped: V is not a multiple of BV, so launch cdiv(V, BV) programs and mask": tail})
        o_tail = o_ref.clone()
        o_tail[..., (V // 16) * 16:] = 0
        compare(case, out[0], o_ref, tol=1e-5, name="o", hint="o = S_newᵀ r, summed over the K rows of the tile",
                mistakes={"RWKV-7 reads the UPDATED state: o = S_newᵀ r, not Sᵀ r": torch.einsum("bhk,bhkv->bhv", d[0], Sd),
                          "the last value block is dropped: mask the tail columns instead of skipping them": o_tail})
    return len(cases)


def _adjoint(G, w, a, b):
    return w.exp()[..., None] * G + a[..., None] * torch.einsum("bhk,bhkv->bhv", b, G)[..., None, :]


def _segment_mistake(r, w, a, b, do, dS_end, readout):
    """The reverse sweep with the read-out gradient added at the wrong moment (or not at all)."""
    G = dS_end.clone()
    for t in reversed(range(r.shape[1])):
        ro = r[:, t, :, :, None] * do[:, t, :, None, :]
        if readout == "after":
            G = _adjoint(G, w[:, t], a[:, t], b[:, t]) + ro
        else:
            G = _adjoint(G, w[:, t], a[:, t], b[:, t])
    return G


@exercise("11.11", "the backward of a segment, to its checkpoint", difficulty="medium", spec="""
    Write segment_backward(r, w, k, v, a, b, do, dS_end) -> dS0: the gradient of a loss with respect
    to the state S0 at the start of a segment of L tokens, as the recurrent kernel's backward
    computes it from a checkpoint. r, w, k, a, b are [B, L, H, K], v and do [B, L, H, V] (do = ∂L/∂o_t),
    dS_end = ∂L/∂S_L [B, H, K, V]. o_t = S_tᵀ r_t reads the state AFTER token t. Walk the tokens
    from last to first: add the read-out's gradient r_t do_tᵀ to the gradient of S_t, then pull it
    back through the update (exercise 11.9). Return [B, H, K, V].""")
def _check_11_11(fn):
    cases = [(1, 1, 1, 4, 4), (2, 5, 2, 8, 8), (1, 16, 3, 16, 8)]
    for i, (B, L, H, K, V) in enumerate(cases):
        g = _g(230 + i)
        steps = [_step_inputs(B, H, K, V, 1000 * i + t) for t in range(L)]
        r, w, k, v, a, b = (torch.stack([s[j] for s in steps], 1).double() for j in range(6))
        do = torch.randn(B, L, H, V, generator=g, dtype=torch.float64)
        dS_end = torch.randn(B, H, K, V, generator=g, dtype=torch.float64)
        S0 = torch.randn(B, H, K, V, generator=g, dtype=torch.float64, requires_grad=True)
        o, S_L = wkv7.naive(r, w, k, v, a, b, initial_state=S0, output_final_state=True)
        (want,) = torch.autograd.grad((o * do).sum() + (S_L * dS_end).sum(), S0)
        case = f"{i} (B={B}, L={L}, H={H}, K={K}, V={V})"
        got = call(fn, case, *(x.float() for x in (r, w, k, v, a, b, do)), dS_end.float())
        compare(case, got, want, tol=1e-5, name="dS0",
                hint="G ← G + r_t do_tᵀ, then G ← diag(e^{w_t}) G + a_t (b_tᵀ G), for t = L … 1", mistakes={
                    "the read-outs are missing: o_t = S_tᵀ r_t adds r_t do_tᵀ to the gradient of S_t":
                        _segment_mistake(r, w, a, b, do, dS_end, "none"),
                    "o_t reads the state AFTER token t: add r_t do_tᵀ before pulling G back through token t, not after":
                        _segment_mistake(r, w, a, b, do, dS_end, "after"),
                })
    return len(cases)


def _chunk_map(r, w, k, v, a, b):
    """One chunk's affine maps from its inputs ([B, H, C, ·], float64): (P, Q, R, L) with
    S_end = P S + Q and O = R S + L for the chunk's start state S (chapter 10's algebra)."""
    from ..wkv7 import reference as ref

    M = ref.intra_chunk_matrices(r, w, k, a, b)
    C = r.shape[-2]
    eye = torch.eye(C, dtype=r.dtype)
    Tm = torch.linalg.solve_triangular(eye - M["A_ab"], eye.expand_as(M["A_ab"]), upper=False, unitriangular=True)
    W, TA = Tm @ M["a_start"], Tm @ M["A_ak"]
    P = M["b_end"].transpose(-1, -2) @ W + torch.diag_embed(M["gamma"])
    Q = (M["k_end"] + TA.transpose(-1, -2) @ M["b_end"]).transpose(-1, -2) @ v
    R = M["r_start"] + M["A_rb"] @ W
    L = (M["A_rk"] + M["A_rb"] @ TA) @ v
    return P, Q, R, L


@exercise("11.12", "fold two chunks into one step", difficulty="medium", spec="""
    Write fold(P1, Q1, R1, L1, P2, Q2, R2, L2) -> (R, O, P, Q). Chunk j of C tokens hands its
    successor S_{j+1} = P_j S_j + Q_j (P_j [B, H, K, K], Q_j [B, H, K, V]) and reads out its rows
    O_j = R_j S_j + L_j (R_j [B, H, C, K], L_j [B, H, C, V]), where S_j is the state at the chunk's
    start. Return the same maps for the two chunks as one step, in terms of the first chunk's
    start state S_1: rows R [B, H, 2C, K] and O [B, H, 2C, V] (chunk 1's rows first) with
    outputs R S_1 + O, and P, Q with the state after both chunks P S_1 + Q. This is what
    wkv7_fwd_fold_kernel does for four chunks.""")
def _check_11_12(fn):
    cases = [(1, 1, 2, 4, 4), (2, 3, 8, 8, 16), (1, 2, 16, 16, 8)]      # (B, H, C, K, V)
    for i, (B, H, C, K, V) in enumerate(cases):
        g = _g(240 + i)
        steps = [_step_inputs(B, H, K, V, 2000 * i + t) for t in range(2 * C)]
        r, w, k, v, a, b = (torch.stack([s_[j] for s_ in steps], 2).double() for j in range(6))   # [B, H, 2C, ·]
        maps = [_chunk_map(*(x[:, :, j * C:(j + 1) * C] for x in (r, w, k, v, a, b))) for j in (0, 1)]
        (P1, Q1, R1, L1), (P2, Q2, R2, L2) = maps
        S1 = torch.randn(B, H, K, V, generator=g, dtype=torch.float64)
        tr = lambda x: x.transpose(1, 2)                                          # noqa: E731  [B, T, H, ·]
        o_ref, S_ref = wkv7.naive(*(tr(x) for x in (r, w, k, v, a, b)), initial_state=S1, output_final_state=True)
        case = f"{i} (B={B}, H={H}, C={C}, K={K}, V={V})"
        out = call(fn, case, *(x.float() for x in (P1, Q1, R1, L1, P2, Q2, R2, L2)))
        if not (isinstance(out, tuple) and len(out) == 4):
            raise AssertionError(f"case {case}: expected (R, O, P, Q), got {type(out).__name__}")
        R, O, P, Q = (x.double() if isinstance(x, torch.Tensor) else x for x in out)
        for name, x, shape in (("R", R, (B, H, 2 * C, K)), ("O", O, (B, H, 2 * C, V)), ("P", P, (B, H, K, K)),
                               ("Q", Q, (B, H, K, V))):
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape:
                raise AssertionError(f"case {case}: {name} should be a tensor of shape {shape}, got "
                                     f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        # judged by what the maps do: the outputs and the final state of the loop over the 2C tokens
        o_got, S_got = R @ S1 + O, P @ S1 + Q
        wrong_order = (P1 @ P2) @ S1 + (P2 @ Q1 + Q2)
        compare(case, S_got, S_ref, tol=1e-5, name="P S_1 + Q (the state after the step)",
                hint="after chunk 1, S_2 = P1 S_1 + Q1; after chunk 2, P2 S_2 + Q2", mistakes={
                    "maps compose right to left: chunk 2 acts after chunk 1, so P = P2 P1, not P1 P2": wrong_order,
                    "Q: chunk 1's Q1 passes through chunk 2's map too: Q = P2 Q1 + Q2": P2 @ P1 @ S1 + Q1 + Q2,
                })
        o2_no_q = torch.cat([R1 @ S1 + L1, R2 @ (P1 @ S1) + L2], 2)
        o2_no_p = torch.cat([R1 @ S1 + L1, R2 @ S1 + R2 @ Q1 + L2], 2)
        compare(case, o_got, tr(o_ref), tol=1e-5, name="R S_1 + O (the step's outputs)",
                hint="chunk 2 reads S_2 = P1 S_1 + Q1: its rows are R2 P1 and R2 Q1 + L2", mistakes={
                    "chunk 2's rows in terms of S_1 are R2 P1: it reads S_2 = P1 S_1 + Q1, not S_1": o2_no_p,
                    "chunk 2's read-out also sees Q1 through S_2 = P1 S_1 + Q1: O = L2 + R2 Q1": o2_no_q,
                })
    return len(cases)
