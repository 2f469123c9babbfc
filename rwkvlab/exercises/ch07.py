"""Checkers for chapter 07 (RWKV-6 in Triton: the recurrent kernel, the backward pass, chunks)."""
from __future__ import annotations

import torch

from .. import device, wkv6
from . import call, compare, exercise, not_attempted_message

F64 = torch.float64


def _inputs(B, T, H, K, V, seed, decay=1.0):
    """wkv6.random_inputs plus an initial state [B, H, K, V], all float32 on CPU."""
    r, k, v, w, u = wkv6.random_inputs(B, T, H, K, V, seed=seed, decay=decay)
    s0 = torch.randn(B, H, K, V, generator=torch.Generator().manual_seed(500 + seed))
    return r, k, v, w, u, s0


def _recurrence(r, k, v, w, u, s0, scale, kind=""):
    """RWKV-6 token by token in float64, right (kind="") or with one mistake made on purpose.

    Returns ``(o [B, T, H, V], S_T [B, H, K, V])``; only the mistakes use it — the checks compare
    with ``wkv6.naive`` (or autograd through it).
    """
    r, k, v, w, u, S = (x.double().cpu() for x in (r, k, v, w, u, s0))
    outs = []
    for t in range(r.shape[1]):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        decay = w[:, t] if kind == "no_exp" else torch.exp(w[:, t])
        S_new = decay[..., None] * S + kv
        if kind == "read_after_update":            # o from S_t (plus the bonus): the two lines swapped
            read = S_new + u[:, :, None] * kv
        elif kind == "no_bonus":
            read = S
        else:
            read = S + u[:, :, None] * kv
        outs.append((1.0 if kind == "no_scale" else scale) * torch.einsum("bhk,bhkv->bhv", r[:, t], read))
        S = S_new
    return torch.stack(outs, 1), S


# ---------------------------------------------------------------------------------------------
# 07.7: the fused recurrent forward kernel
# ---------------------------------------------------------------------------------------------
# (B, T, H, K, V, decay): T = 1; odd T, two sequences and V = 24 (a partial last value block,
# BV = 16); K = 12 (not a power of two) over two value blocks; two heads and slow decay (the
# initial state still matters at the last token)
_CASES_7 = [(1, 1, 1, 16, 16, 1.0), (2, 7, 1, 16, 24, 1.0), (1, 12, 1, 12, 32, 1.0), (1, 12, 2, 16, 16, 0.01)]
_BV = 16


def _launch(id_, fn, case, *args):
    """Call a reader's kernel wrapper. The student stub raises inside a @triton.jit kernel, which
    the interpreter (and the compiler, on a GPU) re-raises as its own error: let it through as the
    NotImplementedError it started as."""
    try:
        return call(fn, case, *args)
    except AssertionError as e:
        if "not implemented yet" in str(e):
            raise NotImplementedError(not_attempted_message(id_)) from e
        raise


@exercise("07.7", "the fused recurrent RWKV-6 kernel", difficulty="medium", spec="""
    Complete wkv6_recurrent_kernel, the forward kernel of Section 2 without varlen or flags. The
    cell's wrapper launches it on the grid (cdiv(V, BV), B*H) with BK = next power of two >= K and
    BV = 16, and is what the checker calls: fn(r, k, v, w, u, scale, initial_state) -> (o, final_state).
    r, k, w: [B, T, H, K] (w the log decay <= 0); v: [B, T, H, V]; u: [H, K]; initial_state and
    final_state [B, H, K, V]; o [B, T, H, V]; all contiguous float32, so row (n, t, h) of r starts
    at element ((n*T + t)*H + h)*K. Program (i_v, i_nh) owns value columns i_v*BV ... i_v*BV + BV - 1
    of head h = i_nh % H of sequence n = i_nh // H: it loads its K x BV slice of the initial state
    into a float32 tile, then for t = 0 .. T-1 writes o_t = scale * r_t^T (S_{t-1} + diag(u) k_t v_t^T)
    and only then updates S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T; after the loop it stores its slice
    of S_T. Mask every load and store: K need not be a power of two, V need not be a multiple of BV.
    In the Triton interpreter on CPU (cases up to T = 12, K, V <= 32).""")
def _check_07_7(fn):
    dev = device.device()
    for i, (B, T, H, K, V, decay) in enumerate(_CASES_7):
        xs = _inputs(B, T, H, K, V, seed=70 + i, decay=decay)
        case = f"{i} (B={B}, T={T}, H={H}, K={K}, V={V}{', slow decay' if decay < 1 else ''})"
        scale = 0.5
        out = _launch("07.7", fn, case, *(x.to(dev, copy=True) for x in xs[:5]), scale, xs[5].to(dev, copy=True))
        if not (isinstance(out, tuple) and len(out) == 2):
            raise AssertionError(f"case {case}: expected (o, final_state), got {type(out).__name__}")
        o, ht = out
        want_o, want_h = wkv6.naive(*(x.double() for x in xs[:5]), scale=scale, initial_state=xs[5].double(),
                                    output_final_state=True)
        full = (V // _BV) * _BV
        tail_o, tail_h = want_o.clone(), want_h.clone()
        tail_o[..., full:], tail_h[..., full:] = 0.0, 0.0
        hint = ("follow the kernel of Section 2: masks m_k = o_k < K and m_v = o_v < V on every load and "
                "store, the state tile [BK, BV] loaded with the mask m_k[:, None] & m_v[None, :], the output "
                "summed over the K rows (axis 0)")
        compare(case, o, want_o, tol=1e-5, name="o", hint=hint, mistakes={
            "the output must be read from S_{t-1}, the state BEFORE the update: compute b_o first, then "
            "update the tile (swapped, the token counts 1 + u times and the past is decayed once too often)":
                _recurrence(*xs, scale, "read_after_update")[0],
            "the output is missing the bonus: the current token enters as q_t^T diag(u) k_t v_t^T":
                _recurrence(*xs, scale, "no_bonus")[0],
            "w is the LOG decay: the state's rows are multiplied by exp(w_t), not by w_t":
                _recurrence(*xs, scale, "no_exp")[0],
            "the output is missing the factor scale (q_t = scale * r_t)":
                _recurrence(*xs, scale, "no_scale")[0],
            "the initial state is missing: load it into the tile before the loop":
                _recurrence(*xs[:5], torch.zeros_like(xs[5]), scale)[0],
            f"the last value block (columns {full} .. {V - 1}) was not written: the grid has cdiv(V, BV) "
            "blocks and the last one is partial; keep it, and mask its lanes with o_v < V":
                tail_o,
        })
        compare(case, ht, want_h, tol=1e-5, name="final_state", hint=hint, mistakes={
            "w is the LOG decay: the state's rows are multiplied by exp(w_t), not by w_t":
                _recurrence(*xs, scale, "no_exp")[1],
            f"the last value block (columns {full} .. {V - 1}) of the final state was not stored: mask "
            "the partial block's lanes with o_v < V instead of skipping it":
                tail_h,
            "the initial state is missing: load it into the tile before the loop":
                _recurrence(*xs[:5], torch.zeros_like(xs[5]), scale)[1],
        })
    return len(_CASES_7)


# ---------------------------------------------------------------------------------------------
# 07.8: the decay gradient without the states
# ---------------------------------------------------------------------------------------------
# (B, T, H, K, V, decay): T = 1; odd T, two sequences, two heads, K != V; strong decay;
# a long, slowly decaying sequence, where the cumulative sums are long (exercise 4's regime)
_CASES_8 = [(1, 1, 1, 4, 3, 1.0), (2, 9, 2, 6, 5, 1.0), (1, 33, 1, 8, 8, 8.0), (1, 256, 1, 8, 8, 1e-3)]


def _states_and_grads(r, k, v, w, s0, do, dht, scale):
    """Float64 S_0..S_T and dS_0..dS_T of one run (for the mistakes only)."""
    r, k, v, w, S, do, dS = (x.double() for x in (r, k, v, w, s0, do, dht))
    T = r.shape[1]
    Ss = [S]
    for t in range(T):
        Ss.append(torch.exp(w[:, t])[..., None] * Ss[-1] + k[:, t, :, :, None] * v[:, t, :, None, :])
    dSs = [None] * (T + 1)
    dSs[T] = dS
    for t in reversed(range(T)):
        dSs[t] = torch.exp(w[:, t])[..., None] * dSs[t + 1] + scale * r[:, t, :, :, None] * do[:, t, :, None, :]
    return Ss, dSs


def _dw_mistakes(r, k, v, w, s0, do, dht, scale):
    r64, k64, v64, w64, do64 = (x.double() for x in (r, k, v, w, do))
    Ss, dSs = _states_and_grads(r, k, v, w, s0, do, dht, scale)
    T = r.shape[1]
    rs = lambda t: (dSs[t + 1] * Ss[t]).sum(-1)                        # rowsum(dS_t ⊙ S_{t-1})   [B, H, K]
    no_exp = torch.stack([rs(t) for t in range(T)], 1)
    seed_formula = torch.stack([-rs(t) * torch.exp(w64[:, t]) * torch.exp(-torch.exp(w64[:, t])) for t in range(T)], 1)
    rdr = torch.stack([r64[:, t] * scale * torch.einsum("bhkv,bhv->bhk", Ss[t], do64[:, t]) for t in range(T)], 1)
    kdk = torch.stack([k64[:, t] * torch.einsum("bhkv,bhv->bhk", dSs[t + 1], v64[:, t]) for t in range(T)], 1)
    rev = lambda x: x.flip(1).cumsum(1).flip(1)                        # Σ_{m ≥ t}
    seed = (dht.double() * Ss[T]).sum(-1)[:, None]
    right_r = rev(rdr) - rdr                                           # Σ_{m > t}
    return {
        "the final state's pull is missing: every dw_t also gets rowsum(dS_T ⊙ S_T), the gradient that "
        "flows in through final_state": right_r - rev(kdk),
        "off by one: r_m ⊙ dr'_m is summed over m > t only (token t reads S_{t-1}, which w_t has not yet "
        "decayed), while k_m ⊙ dk'_m is summed over m >= t":
            seed + rev(rdr) - rev(kdk),
        "the direct formula needs the factor exp(w_t): dw_t = exp(w_t) ⊙ rowsum(dS_t ⊙ S_{t-1})": no_exp,
        "that is the formula often quoted (appendix, misstatement 6), the gradient for RWKV-LM's raw "
        "parameter d (w = -exp(d)); for the "
        "log decay it is dw_t = exp(w_t) ⊙ rowsum(dS_t ⊙ S_{t-1})": seed_formula,
    }


@exercise("07.8", "the decay gradient without the states", difficulty="hard", spec="""
    Write decay_grad(r, k, v, w, u, scale, initial_state, do, dht) -> dw: the gradient of a loss L
    with respect to RWKV-6's log decay, given do = dL/do [B, T, H, V] and dht = dL/dS_T [B, H, K, V].
    r, k, w: [B, T, H, K]; v: [B, T, H, V]; u: [H, K]; initial_state: [B, H, K, V]; scale a float;
    all float32. Return dw [B, T, H, K]. Do it as the chapter's kernels do, keeping no per-token
    state: a forward pass carries S and emits dr'_t = scale * S_{t-1} do_t; a reverse pass carries
    dS (dS_{t-1} = diag(exp(w_t)) dS_t + scale * r_t do_t^T, starting from dht) and emits
    dk'_t = dS_t v_t; then dw_t = rowsum(dht ⊙ S_T) + sum_{m>t} r_m ⊙ dr'_m - sum_{m>=t} k_m ⊙ dk'_m
    (primes: the bonus terms left out; u does not touch the decay). The checker compares with
    autograd through wkv6.naive in float64, on cases up to a 256-token sequence with w close to 0
    (exercise 4's regime, where the cumulative sums are long).""")
def _check_07_8(fn):
    for i, (B, T, H, K, V, decay) in enumerate(_CASES_8):
        r, k, v, w, u, s0 = _inputs(B, T, H, K, V, seed=80 + i, decay=decay)
        if decay > 1:                                     # strong decay, with a few tokens that keep everything
            w = torch.full_like(w, -decay)
            w[:, ::5] = 0.0
        g = torch.Generator().manual_seed(90 + i)
        do, dht = torch.randn(B, T, H, V, generator=g), torch.randn(B, H, K, V, generator=g)
        scale = 0.7
        case = f"{i} (B={B}, T={T}, H={H}, K={K}, V={V}, " + (
            "strong decay w = -8)" if decay > 1 else "w close to 0)" if decay < 1 else "random decay)")
        w64 = w.double().requires_grad_()
        o, ht = wkv6.naive(r.double(), k.double(), v.double(), w64, u.double(), scale=scale,
                           initial_state=s0.double(), output_final_state=True)
        (want,) = torch.autograd.grad((o * do.double()).sum() + (ht * dht.double()).sum(), w64)
        got = call(fn, case, *(x.clone() for x in (r, k, v, w, u)), scale, s0.clone(), do.clone(), dht.clone())
        compare(case, got, want, tol=1e-5, name="dw", mistakes=_dw_mistakes(r, k, v, w, s0, do, dht, scale), hint=(
            "check each piece against Section 3: dr'_t = scale * S_{t-1} do_t with the state BEFORE token t, "
            "dk'_t = dS_t v_t with the gradient of the state AFTER token t, and the reverse sums "
            "x.flip(1).cumsum(1).flip(1)"))
    return len(_CASES_8)


# ---------------------------------------------------------------------------------------------
# 07.9: one off-diagonal sub-chunk block on a matrix product
# ---------------------------------------------------------------------------------------------
# (H, C, K, BC, I, J, kind): adjacent sub-chunks; a gap of two sub-chunks and slow decay (so the
# weights across the gap are not negligible); K not a power of two; strong decay (w = -8: the
# chunk-start factorisation needs e^{+512}); decay spikes of -1e4
_CASES_9 = [(1, 32, 4, 16, 1, 0, "random"), (2, 64, 8, 16, 3, 0, "slow"), (1, 48, 5, 8, 5, 2, "slow"),
            (1, 64, 4, 16, 2, 1, "strong"), (2, 64, 4, 16, 3, 1, "spike")]


def _block_inputs(H, C, K, kind, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(H, C, K, generator=g), torch.randn(H, C, K, generator=g)
    w = -torch.exp(torch.randn(H, C, K, generator=g))
    if kind == "slow":
        w = 0.1 * w
    elif kind == "strong":
        w = torch.full_like(w, -8.0)
    elif kind == "spike":                       # slow decay, and two spikes inside the key sub-chunk
        w = torch.full_like(w, -0.01)
        w[:, [17, 20]] = -1e4
    return q, k, w


def _block(q, k, w, I, J, BC, lo=1, hi=-1):
    """A[a, b] = Σ_κ q_iκ k_jκ exp(Σ_{m=j+lo}^{i+hi} w_mκ), float64 (exact weights: lo = 1, hi = -1)."""
    q, k, w = q.double(), k.double(), w.double()
    c = torch.cat([torch.zeros_like(w[:, :1]), w.cumsum(1)], 1)      # c[n] = Σ_{m<n} w_m, float64
    i = torch.arange(I * BC, (I + 1) * BC)
    j = torch.arange(J * BC, (J + 1) * BC)
    expo = c[:, i + hi + 1][:, :, None, :] - c[:, j + lo][:, None, :, :]   # [H, BC, BC, K]
    return torch.einsum("hak,hbk,habk->hab", q[:, i], k[:, j], torch.exp(expo))


@exercise("07.9", "an off-diagonal sub-chunk block on tl.dot's terms", difficulty="medium", spec="""
    Write offdiag_block(q, k, w, I, J, BC) -> A_IJ, one off-diagonal block of a chunk's intra-chunk
    weights (Section 6), as ONE matrix product whose factors have every exponent <= 0. q, k, w:
    [H, C, K] float32, one chunk of C tokens per head, w the log decay <= 0; the chunk is cut into
    sub-chunks of BC tokens, and J < I. Return [H, BC, BC] with
    A[h, a, b] = sum_kappa q[h, i, kappa] k[h, j, kappa] exp(w[h, j+1, kappa] + ... + w[h, i-1, kappa])
    for i = I*BC + a, j = J*BC + b. Split the exponent at the first token of sub-chunk I:
    p_i = w_{start(I)} + ... + w_{i-1} (inside I), s_j = w_{j+1} + ... + w_{end(J)} (inside J), gap =
    the whole sub-chunks strictly between; then A = (q_I * e^p) @ (k_J * e^(s + gap))^T. Form each
    exponent as a sum over its own interval (a cumulative sum shifted by one token, a reverse one for
    s), not as a difference of running sums: the checker has w = -8 over 64 tokens and decay spikes
    of -1e4.""")
def _check_07_9(fn):
    for i, (H, C, K, BC, I, J, kind) in enumerate(_CASES_9):
        q, k, w = _block_inputs(H, C, K, kind, seed=110 + i)
        case = f"{i} (H={H}, C={C}, K={K}, BC={BC}, I={I}, J={J}, {kind} decay)"
        got = call(fn, case, q.clone(), k.clone(), w.clone(), I, J, BC)
        want = _block(q, k, w, I, J, BC)
        hint = ("p is an exclusive prefix inside I (p of I's first token is 0), s an exclusive suffix inside J "
                "(s of J's last token is 0), and gap the sum of w over the tokens from end(J)+1 to start(I)-1")
        if kind == "spike":
            hint = ("the decay spikes of -1e4 sit in sub-chunk J: an exponent formed as a difference of running sums "
                    "(a total minus a prefix, or c_{i-1} - c_j) carries their float32 rounding, ~1e-3, into weights "
                    "that should be exact; build s with a reverse cumulative sum of the tokens after j")
        elif kind == "strong":
            hint = ("with w = -8 any positive exponent overflows; factor at the start of sub-chunk I, so that "
                    "p, s and gap are all sums of log decays (<= 0)")
        mistakes = {
            "the decay of token i itself is included (the query side must stop at w_{i-1}: an exclusive prefix)":
                _block(q, k, w, I, J, BC, hi=0),
            "the decay of token j itself is included (the key side starts at w_{j+1}: an exclusive suffix)":
                _block(q, k, w, I, J, BC, lo=0),
        }
        if I > J + 1:
            Cg = (I - J - 1) * BC
            w_nogap = w.clone()
            w_nogap[:, (J + 1) * BC:I * BC] = 0.0
            mistakes[f"the gap is missing: the {I - J - 1} whole sub-chunk(s) between J and I ({Cg} tokens) decay "
                     "the weight too"] = _block(q, k, w_nogap, I, J, BC)
        if isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(want.shape) and not torch.isfinite(got).all():
            hint = ("an exponent was positive somewhere and overflowed: factor at the start of sub-chunk I, so "
                    "that p, s and gap are all sums of log decays (<= 0), never e^{-c_j} from the chunk's start")
        compare(case, got, want, tol=1e-5, name="A_IJ", hint=hint, mistakes=mistakes)
    return len(_CASES_9)


# ---------------------------------------------------------------------------------------------
# 07.10: the chunk-start states (what a store_states option would keep)
# ---------------------------------------------------------------------------------------------
# (B, T, H, K, V, C, kind): T = 1; a partial last chunk, two sequences and heads; T a multiple of
# C; strong decay over several chunks (the chunk-start factorisation e^{-c} overflows there)
_CASES_10 = [(1, 1, 1, 4, 3, 16, "random"), (2, 37, 2, 8, 5, 16, "random"), (1, 64, 1, 8, 8, 16, "random"),
             (1, 150, 1, 4, 4, 32, "strong")]


def _states_wrong(k, v, w, s0, C, kind):
    """Chunk-start states and final state with a mistake made on purpose (float64)."""
    k, v, w, S = (x.double() for x in (k, v, w, s0))
    T = k.shape[1]
    hs = []
    for t0 in range(0, T, C):
        hs.append(S)
        kc, vc, wc = k[:, t0:t0 + C], v[:, t0:t0 + C], w[:, t0:t0 + C]
        total = wc.sum(1)                                             # [B, H, K]
        after = wc.flip(1).cumsum(1).flip(1) - wc                     # Σ_{m > j} inside the chunk
        if kind == "inclusive":
            after = after + wc
        decay_S = torch.ones_like(total) if kind == "no_decay" else torch.exp(total)
        S = decay_S[..., None] * S + torch.einsum("bthk,bthv->bhkv", kc * torch.exp(after), vc)
    hs = torch.stack(hs, 1)
    if kind == "shifted":                                             # hs[c] = the state after chunk c
        hs = torch.cat([hs[:, 1:], S[:, None]], 1)
    return hs, S


@exercise("07.10", "the chunk-start states on one matrix product per chunk", difficulty="medium", spec="""
    Write chunk_states(k, v, w, initial_state, C) -> (hs, final): the state pass of the chunked
    kernels, i.e. the chunk-start states that exercise 5's store_states option would keep. k, w:
    [B, T, H, K] (w the log decay <= 0); v: [B, T, H, V]; initial_state: [B, H, K, V]; float32;
    T need not be a multiple of C. hs: [B, NC, H, K, V] with NC = ceil(T / C), hs[:, c] the state
    BEFORE token c*C (so hs[:, 0] is the initial state); final: [B, H, K, V], the state after the
    last token. One matrix product per chunk: S <- diag(exp(W)) S + (k * exp(Q))^T v over the chunk's
    tokens, with W the chunk's total log decay and Q_j = w_{j+1} + ... + w_last (per key channel, inside
    the chunk: a reverse cumulative sum, so every exponent is <= 0; the checker has w = -8 over 150
    tokens).""")
def _check_07_10(fn):
    for i, (B, T, H, K, V, C, kind) in enumerate(_CASES_10):
        _, k, v, w, _, s0 = _inputs(B, T, H, K, V, seed=120 + i)
        if kind == "strong":
            w = torch.full_like(w, -8.0)
            w[:, ::7] = 0.0
        case = f"{i} (B={B}, T={T}, H={H}, K={K}, V={V}, C={C}{', strong decay' if kind == 'strong' else ''})"
        out = call(fn, case, k.clone(), v.clone(), w.clone(), s0.clone(), C)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise AssertionError(f"case {case}: expected (hs, final), got {type(out).__name__}")
        hs, final = out
        # the reference: wkv6.naive in float64, chunk after chunk, each from the state the last one left
        starts = [s0.double()]
        for t0 in range(0, T, C):
            sl = slice(t0, t0 + C)
            starts.append(wkv6.naive(torch.zeros_like(k[:, sl], dtype=F64), k[:, sl].double(), v[:, sl].double(),
                                     w[:, sl].double(), torch.zeros(H, K, dtype=F64), initial_state=starts[-1],
                                     output_final_state=True)[1])
        want_hs, want_final = torch.stack(starts[:-1], 1), starts[-1]
        hint = ("per chunk: S <- exp(W)[..., None] * S + (k_c * exp(Q))^T v_c, with Q the exclusive reverse "
                "cumulative sum of w inside the chunk (Q of the chunk's last token is 0); record S before the update")
        mistakes = {
            "off by one in the hand-off: hs[:, c] is the state at the START of chunk c (hs[:, 0] = initial_state), "
            "recorded before the chunk's update": _states_wrong(k, v, w, s0, C, "shifted")[0],
            "the key's own decay is included: token j is written after its own decay, so Q_j starts at w_{j+1}":
                _states_wrong(k, v, w, s0, C, "inclusive")[0],
            "the incoming state is not decayed across the chunk: it is multiplied by exp(W), W = the chunk's total":
                _states_wrong(k, v, w, s0, C, "no_decay")[0],
        }
        if any(isinstance(x, torch.Tensor) and not torch.isfinite(x).all() for x in (hs, final)):
            hint = ("an exponent was positive somewhere and overflowed: decay each key to the chunk's END with "
                    "Q_j = w_{j+1} + ... + w_last <= 0, never with e^{-c_j} from the chunk's start")
        compare(case, hs, want_hs, tol=1e-5, name="hs", hint=hint, mistakes=mistakes)
        texts = list(mistakes)
        compare(case, final, want_final, tol=1e-5, name="final", hint=(
            "the final state is the state after the last (possibly partial) chunk; " + hint), mistakes={
                texts[1]: _states_wrong(k, v, w, s0, C, "inclusive")[1],
                texts[2]: _states_wrong(k, v, w, s0, C, "no_decay")[1]})
    return len(_CASES_10)
