"""Wrong answers to chapter 10's exercises: each must fail its checker with the intended hint."""
from __future__ import annotations

import pytest
import torch

from rwkvlab import exercises
from rwkvlab.wkv7 import reference as ref


# --------------------------------------------------------------------------- 10.8
def _forward_substitution(A):
    C = A.shape[-1]
    eye = torch.eye(C, dtype=A.dtype).expand(A.shape)
    rows = [eye[..., 0, :]]
    for t in range(1, C):
        done = torch.stack(rows, dim=-2)
        rows.append(eye[..., t, :] + (A[..., t:t + 1, :t] @ done).squeeze(-2))
    return torch.stack(rows, dim=-2)


def _transposed(A):
    return _forward_substitution(A).mT


def _plus_sign(A):
    return _forward_substitution(-A)


def _diagonal_included(A):
    eye = torch.eye(A.shape[-1], dtype=A.dtype)
    return torch.linalg.inv(eye - torch.tril(A))


def _whole_matrix(A):
    return torch.linalg.inv(torch.eye(A.shape[-1], dtype=A.dtype) - A)


def _first_order(A):
    return torch.eye(A.shape[-1], dtype=A.dtype) + torch.tril(A, -1)


def _drops_batch(A):
    return _forward_substitution(A.reshape(-1, *A.shape[-2:])[0])


# --------------------------------------------------------------------------- 10.9
def _chunk(r, w, k, v, a, b, S0, scale, kind="ok"):
    M = ref.intra_chunk_matrices(r, w, k, a, b)
    if kind == "read_before_write":          # read-out matrices built like the removal ones (strict, c_{t-1})
        Mr = ref.intra_chunk_matrices(r, w, k, r, b)
        M = dict(M, A_rb=Mr["A_ab"], A_rk=Mr["A_ak"], r_start=Mr["a_start"])
    if kind == "factorized":                 # e^{c_t} e^{-c_i}: overflows for strong decay
        c = w.cumsum(-2)
        cp = c - w
        M = dict(M, A_rk=torch.tril((r * c.exp()) @ (k * (-c).exp()).mT),
                 A_rb=torch.tril((r * c.exp()) @ (b * (-c).exp()).mT),
                 A_ab=torch.tril((a * cp.exp()) @ (b * (-c).exp()).mT, -1),
                 A_ak=torch.tril((a * cp.exp()) @ (k * (-c).exp()).mT, -1))
    T = torch.eye(w.shape[-2]) if kind == "no_ut" else ref.ut_transform(M["A_ab"])
    E = T @ (M["a_start"] @ S0 + M["A_ak"] @ v)
    o = scale * (M["r_start"] @ S0 + M["A_rk"] @ v + (0 if kind == "no_rb" else M["A_rb"] @ E))
    gamma = torch.ones_like(M["gamma"]) if kind == "no_gamma" else M["gamma"]
    k_end, b_end = (k, b) if kind == "not_to_end" else (M["k_end"], M["b_end"])
    return o, gamma.unsqueeze(-1) * S0 + k_end.mT @ v + b_end.mT @ E


def _read_before_write(*args):
    return _chunk(*args, kind="read_before_write")


def _no_ut(*args):
    return _chunk(*args, kind="no_ut")


def _no_removal_readout(*args):
    return _chunk(*args, kind="no_rb")


def _no_gamma(*args):
    return _chunk(*args, kind="no_gamma")


def _not_decayed_to_end(*args):
    return _chunk(*args, kind="not_to_end")


def _factorized_decay(*args):
    return _chunk(*args, kind="factorized")


def _output_only(*args):
    return _chunk(*args)[0]


# --------------------------------------------------------------------------- 10.10
def _scan(r, w, k, v, a, b, S0, C, kind="ok"):
    S, T = (torch.zeros_like(S0) if kind == "zeros" else S0), r.shape[1]
    starts = list(range(0, T, C))
    if kind == "drop_partial":
        starts = [lo for lo in starts if lo + C <= T]
    if kind == "one_short":
        starts = starts[:-1]
    for lo in starts:
        r_, w_, k_, v_, a_, b_ = (x[:, lo:lo + C].transpose(1, 2) for x in (r, w, k, v, a, b))
        M = ref.intra_chunk_matrices(r_, w_, k_, a_, b_)
        Tm = ref.ut_transform(M["A_ab"])
        W, U = Tm @ M["a_start"], Tm @ (M["A_ak"] @ v_)
        P = M["b_end"].mT @ W + (0 if kind == "no_gamma" else torch.diag_embed(M["gamma"]))
        if kind == "transposed":
            P = P.mT
        S = P @ S + M["k_end"].mT @ v_ + M["b_end"].mT @ U
    return S


def _drop_partial(*args):
    return _scan(*args, kind="drop_partial")


def _one_chunk_short(*args):
    return _scan(*args, kind="one_short")


def _from_zeros(*args):
    return _scan(*args, kind="zeros")


def _P_transposed(*args):
    return _scan(*args, kind="transposed")


def _P_without_gamma(*args):
    return _scan(*args, kind="no_gamma")


WRONG = {
    "10.8": [(_transposed, "transposed"), (_plus_sign, "check the sign"), (_diagonal_included, "STRICT lower"),
             (_whole_matrix, "upper triangle is noise|STRICT lower"), (_first_order, "first term"),
             (_drops_batch, "expected shape")],
    "10.9": [(_read_before_write, "UPDATED state"), (_no_ut, "needs the UT transform"),
             (_no_removal_readout, "missing A_rb E"), (_no_gamma, "diag\\(gamma\\) S0"),
             (_not_decayed_to_end, "chunk's END"), (_factorized_decay, "overflows"),
             (_output_only, r"expected \(o, S_C\)")],
    "10.10": [(_drop_partial, "partial chunk never reached"), (_one_chunk_short, "one chunk short|cover every chunk"),
              (_from_zeros, "initial_state"), (_P_transposed, "transposed"), (_P_without_gamma, "B̂ᵀW alone")],
}


@pytest.mark.parametrize("id_,fn,hint", [(i, f, h) for i, lst in WRONG.items() for f, h in lst],
                         ids=[f"{i}-{f.__name__}" for i, lst in WRONG.items() for f, _ in lst])
def test_wrong_answer_fails_with_its_hint(id_, fn, hint):
    with pytest.raises(AssertionError, match=hint):
        exercises.check(id_, fn)
