"""Checkers for chapter 10 (the chunked form of RWKV-7: WY representation and the UT transform).

References are ``torch.linalg.solve_triangular`` (10.8) and ``wkv7.naive`` in float64 (10.9,
10.10). The wrong answers behind the hints are built here in float64 from the chapter's
definitions, pair by pair (:func:`_pieces`), so the checkers do not lean on the chunked code
they are meant to test.
"""
from __future__ import annotations

import torch

from .. import wkv7
from . import call, compare, exercise

_F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# the chapter's intra-chunk pieces, by definition (float64), for inputs and mistakes
# ---------------------------------------------------------------------------------------------
def _pieces(r, w, k, a, b, read_before_write=False):
    """One chunk's matrices from their definitions; inputs [..., C, K] float64.

    ``read_before_write``: the read-out side built as if o_t read S_{t-1} (strict masks, c_{t-1}).
    """
    C = w.shape[-2]
    c = w.cumsum(-2)
    c_prev = c - w
    lower = torch.tril(torch.ones(C, C, dtype=torch.bool))
    strict = torch.tril(lower, -1)
    d_r = c[..., :, None, :] - c[..., None, :, :]                 # c_t - c_i   [..., t, i, K]
    d_a = c_prev[..., :, None, :] - c[..., None, :, :]            # c_{t-1} - c_i
    E_r = d_r.masked_fill(~lower[..., None], float("-inf")).exp()
    E_a = d_a.masked_fill(~strict[..., None], float("-inf")).exp()
    pair = lambda x, E, y: torch.einsum("...tk,...tik,...ik->...ti", x, E, y)  # noqa: E731
    E_o, c_o = (E_a, c_prev) if read_before_write else (E_r, c)
    to_end = (c[..., -1:, :] - c).exp()                             # e^{c_C - c_i}
    return dict(A_ab=pair(a, E_a, b), A_ak=pair(a, E_a, k), A_rb=pair(r, E_o, b), A_rk=pair(r, E_o, k),
                a_start=a * c_prev.exp(), r_start=r * c_o.exp(), k_end=k * to_end, b_end=b * to_end,
                gamma=c[..., -1, :].exp())


def _inv_unit_lower(A):
    """(I - A)^{-1} for strictly lower-triangular A (float64, by the library's triangular solve)."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype).expand(A.shape)
    return torch.linalg.solve_triangular(eye - A, eye, upper=False, unitriangular=True)


def _model_inputs(lead, C, K, V, seed, decay=None, w_const=None):
    """wkv7.random_inputs reshaped to the chunk layout [*lead, C, K] (float64)."""
    n = 1
    for d in lead:
        n *= d
    kw = dict(w_const=w_const) if w_const is not None else ({} if decay is None else dict(decay=decay))
    xs = wkv7.random_inputs(1, C, n, K, V, seed=seed, dtype=_F64, **kw)      # [1, C, n, *]
    return [x[0].transpose(0, 1).reshape(*lead, C, x.shape[-1]) for x in xs]


# ---------------------------------------------------------------------------------------------
# 10.8: the UT transform
# ---------------------------------------------------------------------------------------------
# (leading dims, C, how A is drawn): C = 1; small random; A_ab of model inputs in chunks of 16
# and of an odd chunk; every case has noise on and above the diagonal that must be ignored
_UT_CASES = [((), 1, "random"), ((3,), 5, "random"), ((2, 2), 16, "model"), ((4,), 7, "model")]


def _ut_input(lead, C, kind, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "model":
        r, w, k, v, a, b = _model_inputs(lead, C, 16, 4, seed)
        A = _pieces(r, w, k, a, b)["A_ab"]
    else:
        A = torch.tril(torch.randn(*lead, C, C, generator=g, dtype=_F64), -1) * 0.5
    noise = torch.triu(torch.randn(*lead, C, C, generator=g, dtype=_F64))   # diagonal and above
    return (A + noise).float()


@exercise("10.8", "the UT transform by forward substitution", difficulty="easy", spec="""
    Write ut_inverse(A) -> T: A is a [..., C, C] float32 tensor of which only the strict lower
    triangle (A[t, i] with i < t) counts; the checker fills the diagonal and everything above it
    with noise that you must ignore. Return T = (I - A)^{-1}, [..., C, C], computed by forward
    substitution, one row after another: T_t = I_t + sum_{i<t} A[t, i] T_i (row t of T from the
    rows above it; I_t is row t of the identity). Do not call torch.linalg. Any leading dims,
    C = 1 included.""")
def _check_10_8(fn):
    for n, (lead, C, kind) in enumerate(_UT_CASES):
        A = _ut_input(lead, C, kind, seed=1080 + n)
        case = f"{n} (A of shape {tuple(A.shape)}, {'A_ab of model inputs' if kind == 'model' else 'random'})"
        got = call(fn, case, A.clone())
        A64 = A.double()
        As = torch.tril(A64, -1)
        eye = torch.eye(C, dtype=_F64).expand(A64.shape)
        want = _inv_unit_lower(As)
        compare(case, got, want, tol=1e-5, name="T", hint=(
            "row t of T is row t of the identity plus sum over i < t of A[t, i] times row i of T "
            "(rows already computed); use only the strict lower triangle of A"), mistakes={
            "your T is transposed: row t of T = I_t + sum_{i<t} A[t, i] T_i combines ROWS of T "
            "(T is lower triangular, like A)": want.mT,
            "check the sign: T = (I - A)^{-1} satisfies T = I + A T, so the rows ADD A[t, i] T_i":
                _inv_unit_lower(-As),
            "use the STRICT lower triangle (i < t): the diagonal of A is noise, and I - A has ones on its diagonal":
                torch.linalg.inv(eye - torch.tril(A64)),
            "A's upper triangle is noise: only A[t, i] with i < t belongs to the chunk":
                torch.linalg.inv(eye - A64),
            "I + A is only the first term of (I - A)^{-1} = I + A + A^2 + ...: row t must use the finished "
            "rows T_i, not the rows of the identity": eye + As,
        })
    return len(_UT_CASES)


# ---------------------------------------------------------------------------------------------
# 10.9: one chunk of the chunked form, given its start state
# ---------------------------------------------------------------------------------------------
# (B, H, C, K, V, decay): one token; an odd chunk; a full chunk with w = -8 (exponents to -128);
# a full chunk with slow decay, where the start state matters most
_CHUNK_CASES = [(1, 1, 1, 4, 3, "model"), (2, 3, 7, 8, 5, "model"), (1, 2, 16, 16, 16, "strong"),
                (2, 1, 16, 8, 4, "slow")]
_DECAYS = {"model": dict(), "strong": dict(w_const=-8.0), "slow": dict(decay=0.02)}


def _chunk_mistake(r, w, k, v, a, b, S0, scale, kind):
    """(o, S_C) of a plausible wrong chunk, float64, chunk layout [..., C, *]."""
    M = _pieces(r, w, k, a, b, read_before_write=kind == "read_before_write")
    Tm = torch.eye(w.shape[-2], dtype=_F64) if kind == "no_ut" else _inv_unit_lower(M["A_ab"])
    E = Tm @ (M["a_start"] @ S0 + M["A_ak"] @ v)
    o = scale * (M["r_start"] @ S0 + M["A_rk"] @ v + (0 if kind == "no_removal_readout" else M["A_rb"] @ E))
    gamma = torch.ones_like(M["gamma"]) if kind == "no_gamma" else M["gamma"]
    k_end, b_end = (k, b) if kind == "not_to_end" else (M["k_end"], M["b_end"])
    S = gamma[..., None] * S0 + k_end.mT @ v + b_end.mT @ E
    return o, S


def _to_time_major(x):
    return x.permute(0, 2, 1, 3)                                    # [B, H, C, *] <-> [B, C, H, *]


@exercise("10.9", "one chunk from its start state", difficulty="medium", spec="""
    Write chunk_forward(r, w, k, v, a, b, S0, scale) -> (o, S_C): one chunk of C tokens of the
    chunked form, in the chunk layout: r, w, k, a, b [B, H, C, K], v [B, H, C, V], S0 [B, H, K, V]
    the state at the chunk's start (float32), scale a float. With the chapter's matrices,
    T = (I - A_ab)^{-1}, E = T (ã S0 + A_ak V) (the rows a_tᵀ S_{t-1}),
    o = scale (r̃ S0 + A_rk V + A_rb E) and S_C = diag(gamma) S0 + K̂ᵀV + B̂ᵀE.
    Return o [B, H, C, V] and S_C [B, H, K, V]. You may use
    rwkvlab.wkv7.reference.intra_chunk_matrices (its a_start, r_start, k_end, b_end, gamma are
    ã, r̃, K̂, B̂, gamma) and ut_transform; no loop over tokens. The
    checker uses C = 1, an odd C, log decay w = -8 (exponents down to -128) and a slow decay.""")
def _check_10_9(fn):
    for n, (B, H, C, K, V, kind) in enumerate(_CHUNK_CASES):
        xs = _model_inputs((B, H), C, K, V, seed=1090 + n, **_DECAYS[kind])
        S0 = torch.randn(B, H, K, V, generator=torch.Generator().manual_seed(1190 + n), dtype=_F64)
        scale = 0.5 + 0.25 * n
        case = f"{n} (B={B}, H={H}, C={C}, K={K}, V={V}, {kind} decay, scale={scale:g})"
        out = call(fn, case, *(x.float() for x in xs), S0.float(), scale)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise AssertionError(f"case {case}: expected (o, S_C), got {type(out).__name__}")
        x64 = [x.float().double() for x in xs]
        o_ref, S_ref = wkv7.naive(*(_to_time_major(x) for x in x64), scale=scale,
                                  initial_state=S0.float().double(), output_final_state=True)
        o_ref = _to_time_major(o_ref)
        bad = {m: _chunk_mistake(*x64, S0.float().double(), scale, m)
               for m in ("read_before_write", "no_ut", "no_removal_readout", "no_gamma", "not_to_end")}
        general = ("E = T (ã S0 + A_ak V); o = scale (r̃ S0 + A_rk V + A_rb E); "
                   "S_C = diag(gamma) S0 + K̂ᵀV + B̂ᵀE")
        if kind == "strong":
            general += ("; every exponent must be a sum of log decays over a forward interval (<= 0): "
                        "e^{c_t} e^{-c_i} overflows once -c passes ~88")
        compare(case, out[0], o_ref, tol=1e-5, name="o", hint=general, mistakes={
            "the read-out sees the UPDATED state (o_t = S_tᵀ r_t): A_rb and A_rk include the diagonal "
            "and r̃ = r e^{c_t}": bad["read_before_write"][0],
            "E needs the UT transform: (I - A_ab) E = ã S0 + A_ak V, so E = T (ã S0 + A_ak V)":
                bad["no_ut"][0],
            "the output is missing A_rb E: the removal rows b_i e_iᵀ are written into the state and read too":
                bad["no_removal_readout"][0],
        })
        compare(case, out[1], S_ref, tol=1e-5, name="S_C", hint=general, mistakes={
            "the start state decays through the chunk: S_C begins with diag(gamma) S0, gamma = e^{c_C}":
                bad["no_gamma"][1],
            "k_i and b_i decay to the chunk's END: K̂ = k_i e^{c_C - c_i}, B̂ = b_i e^{c_C - c_i}":
                bad["not_to_end"][1],
        })
    return len(_CHUNK_CASES)


# ---------------------------------------------------------------------------------------------
# 10.10: the state-only scan (the chunk hand-off)
# ---------------------------------------------------------------------------------------------
# (B, T, H, K, V, chunk size, decay): T = 1; a partial last chunk; slow decay over 7 chunks (the
# initial state is still visible at the end); exact chunks; a chunk longer than the sequence
_SCAN_CASES = [(1, 1, 1, 4, 4, 4, None), (2, 13, 2, 8, 6, 4, None), (1, 100, 2, 8, 8, 16, 0.02),
               (2, 64, 1, 16, 8, 16, 0.05), (1, 5, 1, 4, 3, 8, 0.05)]


def _scan_mistake(r, w, k, v, a, b, S0, C, kind):
    """Final state of a scan with a wrong chunk transition, float64, wkv7 layout."""
    B, T, H, K = r.shape
    S = S0
    for lo in range(0, T, C):
        ch = [x[:, lo:lo + C].transpose(1, 2) for x in (r, w, k, v, a, b)]       # [B, H, c, *]
        M = _pieces(ch[0], ch[1], ch[2], ch[4], ch[5])
        Tm = _inv_unit_lower(M["A_ab"])
        W, U = Tm @ M["a_start"], Tm @ (M["A_ak"] @ ch[3])
        P = M["b_end"].mT @ W + (0 if kind == "no_gamma" else torch.diag_embed(M["gamma"]))
        if kind == "transposed":
            P = P.mT
        S = P @ S + M["k_end"].mT @ ch[3] + M["b_end"].mT @ U
    return S


@exercise("10.10", "the state-only scan over chunks", difficulty="medium", spec="""
    Write final_state(r, w, k, v, a, b, initial_state, chunk_size) -> S_T [B, H, K, V]: the state
    after the whole sequence, handed from chunk to chunk without computing any output. Inputs in
    wkv7's layout: r, w, k, a, b [B, T, H, K], v [B, T, H, V], initial_state [B, H, K, V], all
    float32. Cut the time axis into chunks of chunk_size tokens (the last one may be shorter: pad
    it with tokens that do nothing, w = 0 and k = a = b = 0, or use a shorter chunk). Per chunk,
    with W = T ã and U = T A_ak V, form the K x K transition P = diag(gamma) + B̂ᵀW and the
    K x V input Q = K̂ᵀV + B̂ᵀU, then S <- P S + Q. You may use
    rwkvlab.wkv7.reference.intra_chunk_matrices and ut_transform. The checker compares with
    wkv7.naive in float64, with slow decays over up to 7 chunks.""")
def _check_10_10(fn):
    for n, (B, T, H, K, V, C, decay) in enumerate(_SCAN_CASES):
        kw = {} if decay is None else dict(decay=decay)
        xs = wkv7.random_inputs(B, T, H, K, V, seed=1100 + n, **kw)
        S0 = torch.randn(B, H, K, V, generator=torch.Generator().manual_seed(1200 + n))
        NC = -(-T // C)
        case = f"{n} (B={B}, T={T}, H={H}, K={K}, V={V}, chunk_size={C}: {NC} chunk{'s' if NC > 1 else ''}" + \
            (f", log decay in (-{decay:g}, 0))" if decay else ")")
        got = call(fn, case, *(x.clone() for x in xs), S0.clone(), C)
        x64, S64 = [x.double() for x in xs], S0.double()

        def naive_state(t_end, S_init=S64):
            if t_end == 0:
                return S_init
            return wkv7.naive(*(x[:, :t_end] for x in x64), initial_state=S_init, output_final_state=True)[1]

        want = naive_state(T)
        compare(case, got, want, tol=1e-5, name="S_T", hint=(
            "per chunk: T = (I - A_ab)^{-1}, W = T ã, U = T A_ak V, then S <- (diag(gamma) + B̂ᵀW) S "
            "+ K̂ᵀV + B̂ᵀU; every chunk, the last (partial) one included, must reach the state"), mistakes={
            ("the last, partial chunk never reached the state: pad it (w = 0, k = a = b = 0) or run it as a "
             "shorter chunk, and let the hand-off cover every chunk" if T % C else
             "the last chunk never reached the state: the hand-off is one chunk short"): naive_state((NC - 1) * C),
            "the scan must start from initial_state, not from zeros":
                naive_state(T, torch.zeros_like(S64)),
            "P acts on the state from the left as it is: P = diag(gamma) + B̂ᵀW (K x K), S <- P S + Q; "
            "yours is transposed": _scan_mistake(*x64, S64, C, "transposed"),
            "the chunk transition keeps the decayed state: P = diag(gamma) + B̂ᵀW, not B̂ᵀW alone":
                _scan_mistake(*x64, S64, C, "no_gamma"),
        })
    return len(_SCAN_CASES)
