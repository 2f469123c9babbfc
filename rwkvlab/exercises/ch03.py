"""Checkers for chapter 03 (RWKV-4's WKV)."""
from __future__ import annotations

import torch

from .. import wkv4
from . import call, compare, exercise

# (B, T, C, key scale): T = 1, odd T, several channels, keys large enough to overflow e^k in float32
_CASES = [(1, 1, 3, 1.0), (2, 7, 4, 3.0), (1, 33, 5, 40.0), (3, 20, 2, 100.0)]


def _inputs(B, T, C, scale, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, T, C, generator=g) * scale
    v = torch.randn(B, T, C, generator=g)
    w = torch.rand(C, generator=g) * 2
    u = torch.randn(C, generator=g)
    return k, v, w, u


def _run_steps(step_fn, k, v, w, u, case):
    """Drive a reader's one-token step over a sequence from the empty state; return y [B, T, C]."""
    B, T, C = k.shape
    a, b, p = wkv4.empty_state(B, C)
    ys = []
    for t in range(T):
        out = call(step_fn, case, k[:, t], v[:, t], w, u, a, b, p)
        if not (isinstance(out, tuple) and len(out) == 4):
            raise AssertionError(f"case {case}: expected (y, a, b, p), got {type(out).__name__}")
        y, a, b, p = out
        ys.append(y)
    return torch.stack(ys, 1)


def _mistake(k, v, w, u, kind):
    """The outputs of plausible wrong steps, for the hints."""
    B, T, C = k.shape
    a, b, p = wkv4.empty_state(B, C)
    ys = []
    for t in range(T):
        kt, vt = k[:, t], v[:, t]
        uu = 0.0 if kind == "no_bonus" else u
        q = torch.maximum(p, uu + kt)
        e1, e2 = torch.exp(p - q), torch.exp(uu + kt - q)
        ys.append((e1 * a + e2 * vt) / (e1 * b + e2))
        if kind == "decay_new_token":  # the new token decayed too: e^{-w} applied after adding it
            q2 = torch.maximum(p, kt)
            f1, f2 = torch.exp(p - q2 - w), torch.exp(kt - q2 - w)
        elif kind == "bonus_in_state":   # u added to the token's weight in the state as well
            q2 = torch.maximum(p - w, u + kt)
            f1, f2 = torch.exp(p - w - q2), torch.exp(u + kt - q2)
        else:
            q2 = torch.maximum(p - w, kt)
            f1, f2 = torch.exp(p - w - q2), torch.exp(kt - q2)
        a, b, p = f1 * a + f2 * vt, f1 * b + f2, q2
    return torch.stack(ys, 1)


@exercise("03.7", "the stable WKV-4 step", difficulty="medium", spec="""
    Write stable_step(kt, vt, w, u, a, b, p) -> (y, a, b, p): one token of RWKV-4's numerically
    stable recurrence. kt, vt, a, b, p are [B, C] float32 tensors, w (>= 0, the paper's decay rate)
    and u are [C]. (a, b, p) is the state with a_t = e^p a', b_t = e^p b' and p the largest log
    weight so far; the empty state is a = b = 0, p = -1e38. The output is
    wkv_t = (a_{t-1} + e^{u+k_t} v_t) / (b_{t-1} + e^{u+k_t}) and the update
    a_t = e^{-w} a_{t-1} + e^{k_t} v_t (b likewise with 1 for v). Every exponent you evaluate must
    be <= 0: the checker uses keys up to about 300 in float32.""")
def _check_03_7(fn):
    for i, (B, T, C, scale) in enumerate(_CASES):
        k, v, w, u = _inputs(B, T, C, scale, seed=31 + i)
        case = f"{i} (B={B}, T={T}, C={C}, keys ~ N(0, {scale:g}^2))"
        got = _run_steps(fn, k, v, w, u, case)
        want, _ = wkv4.naive(k.double(), v.double(), w.double(), u.double())
        compare(case, got, want, tol=1e-5, name="y", hint=(
            "compare the stable step of chapter 03: shift both exponents by q = max(p, u + k_t) for the output "
            "and q' = max(p - w, k_t) for the update"), mistakes={
            "the bonus u belongs to the current token's weight in the OUTPUT only; the state gets e^{k_t}":
                _mistake(k, v, w, u, "bonus_in_state"),
            "the output is missing the bonus: the current token's log weight is u + k_t":
                _mistake(k, v, w, u, "no_bonus"),
            "the state decays BEFORE the new token is added: e^{-w} multiplies the old a, b only":
                _mistake(k, v, w, u, "decay_new_token"),
        })
    return len(_CASES)


# ---------------------------------------------------------------------------------------------
# 03.8: with w = 0, WKV is a causal softmax
# ---------------------------------------------------------------------------------------------
def _softmax_mistake(k, v, u, kind):
    """WKV with w = 0 written as a softmax, with one mistake made on purpose (float64)."""
    T = k.shape[1]
    logits = k[:, None, :, :].expand(-1, T, -1, -1).clone()       # [B, T(t), T(i), C]: logit k_i
    eye = torch.eye(T, dtype=torch.bool)[None, :, :, None]
    if kind != "no_bonus":
        logits = torch.where(eye, logits + u, logits)
    if kind != "no_mask":
        future = torch.ones(T, T, dtype=torch.bool).triu(1)[None, :, :, None]
        logits = logits.masked_fill(future, float("-inf"))
    alpha = torch.softmax(logits, dim=1 if kind == "wrong_axis" else 2)
    return (alpha * v[:, None, :, :]).sum(2)


@exercise("03.8", "WKV with w = 0 is a causal softmax", difficulty="easy", spec="""
    Write softmax_wkv(k, v, u) -> y: RWKV-4's WKV with no decay (w = 0), computed as a softmax.
    k, v are [B, T, C] float32 tensors, u is [C]; y is [B, T, C]. For each batch row and channel,
    step t averages the values v_1..v_t with the weights softmax(k_1, ..., k_{t-1}, u + k_t):
    build a [B, T, T, C] tensor of logits (row t, column i), add u on the diagonal, set the
    entries with i > t to -inf, apply torch.softmax over the column index i and take the weighted
    sum of v. The checker compares with wkv4.naive at w = 0 in float64, with keys up to about 300,
    so leave the max-subtraction to torch.softmax (do not exponentiate by hand).""")
def _check_03_8(fn):
    for i, (B, T, C, scale) in enumerate(_CASES):
        k, v, _, u = _inputs(B, T, C, scale, seed=81 + i)
        case = f"{i} (B={B}, T={T}, C={C}, keys ~ N(0, {scale:g}^2))"
        got = call(fn, case, k, v, u)
        kd, vd, ud = k.double(), v.double(), u.double()
        want, _ = wkv4.naive(kd, vd, torch.zeros_like(ud), ud)
        compare(case, got, want, tol=1e-5, name="y", hint=(
            "row t of the logits is k_1, ..., k_{t-1}, u + k_t and -inf after it; torch.softmax over the "
            "column (past token) index, then sum the values with those weights"), mistakes={
            "the future is visible: set the logits with i > t to -inf before the softmax":
                _softmax_mistake(kd, vd, ud, "no_mask"),
            "the bonus is missing (or added to every logit, which cancels): only the diagonal entry gets u + k_t":
                _softmax_mistake(kd, vd, ud, "no_bonus"),
            "the softmax runs over the wrong axis: normalise over the past tokens i of each row t, not over t":
                _softmax_mistake(kd, vd, ud, "wrong_axis"),
        })
    return len(_CASES)


# ---------------------------------------------------------------------------------------------
# 03.9: one chunk of the chunked form
# ---------------------------------------------------------------------------------------------
# (B, T, C, key scale, chunk L, initial state, largest w): T = 1, odd T with a short last chunk,
# large keys, a carried state that outweighs every key by far more than e^88, and slow decay over
# many chunks with such a state
_CHUNK_CASES = [(1, 1, 3, 1.0, 4, "empty", 2.0), (2, 7, 4, 3.0, 3, "random", 2.0),
                (1, 33, 5, 40.0, 8, "empty", 2.0), (2, 20, 3, 1.0, 16, "heavy", 2.0),
                (1, 40, 4, 1.0, 4, "heavy", 0.05)]


def _chunk_state(kind, B, C, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "empty":
        return wkv4.empty_state(B, C)
    a = torch.randn(B, C, generator=g)
    b = torch.rand(B, C, generator=g) + 0.5
    p = torch.randn(B, C, generator=g) + (200.0 if kind == "heavy" else 0.0)
    return wkv4.State(a, b, p)


def _chunk_mistake(k, v, w, u, a, b, p, kind):
    """One chunk of the chunked form (float64), with the mistake ``kind`` made on purpose."""
    L = k.shape[1]
    pos = torch.arange(L, dtype=k.dtype)
    age = pos[:, None] - pos[None, :] - (0 if kind == "age" else 1)      # i-1-j (or i-j)
    logw = k[:, None, :, :] - age[None, :, :, None] * w
    eye = torch.eye(L, dtype=torch.bool)[None, :, :, None]
    logw = torch.where(eye, (u + k)[:, :, None, :].expand_as(logw), logw)
    logw = logw.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1)[None, :, :, None], float("-inf"))
    log_state = p[:, None, :] - (0 if kind == "state_not_decayed" else pos[None, :, None]) * w
    m = torch.maximum(logw.amax(2), log_state)
    e, es = torch.exp(logw - m[:, :, None, :]), torch.exp(log_state - m)
    y = ((e * v[:, None]).sum(2) + es * a[:, None]) / (e.sum(2) + es * b[:, None])
    end = k - (L - pos - (0 if kind == "handoff_tokens" else 1))[None, :, None] * w
    old = p - (L - 1 if kind == "handoff_state" else L) * w
    p_new = torch.maximum(end.amax(1), old)
    f, gs = torch.exp(end - p_new[:, None]), torch.exp(old - p_new)
    return y, gs * a + (f * v).sum(1), gs * b + f.sum(1), p_new


def _drive_chunks(fn, k, v, w, u, state, L, case):
    """Cut the sequence into chunks of L (the last may be shorter) and hand the state on."""
    a, b, p = state
    ys = []
    for s in range(0, k.shape[1], L):
        out = fn(k[:, s:s + L], v[:, s:s + L], w, u, a, b, p) if case is None else \
            call(fn, case, k[:, s:s + L], v[:, s:s + L], w, u, a, b, p)
        if not (isinstance(out, tuple) and len(out) == 4):
            raise AssertionError(f"case {case}: expected (y, a, b, p), got {type(out).__name__}")
        y, a, b, p = out
        ys.append(y)
    if not all(isinstance(y, torch.Tensor) and y.ndim == 3 for y in ys):
        raise AssertionError(f"case {case}: y of each chunk must be a [B, L, C] tensor")
    return torch.cat(ys, 1), (a, b, p)


@exercise("03.9", "one chunk of the chunked WKV-4", difficulty="medium", spec="""
    Write wkv_chunk(k, v, w, u, a, b, p) -> (y, a, b, p): one chunk of the chunked form. k, v are
    [B, L, C] float32 (the chunk's L tokens), w >= 0 and u are [C], (a, b, p) is the stable state
    carried in, three [B, C] tensors (empty: 0, 0, -1e38). With positions i, j = 0..L-1 build the
    [B, L, L, C] log weights k_j - (i-1-j) w for j < i, u + k_i for j = i, -inf for j > i, and the
    state's column with log weight p - i w (value a, weight b). Subtract from each row its maximum
    over the WHOLE row, the state's column included, then y_i = (sum_j e^(.) v_j + e^(.) a) /
    (sum_j e^(.) + e^(.) b). Return also the state after the chunk: p_new = max(p - L w,
    max_j k_j - (L-1-j) w) and a, b re-expressed relative to it. The checker cuts sequences into
    chunks of several sizes (the last one shorter) and hands your state from chunk to chunk; some
    carried states outweigh every key of the chunk by about e^200.""")
def _check_03_9(fn):
    for n, (B, T, C, scale, L, kind, wmax) in enumerate(_CHUNK_CASES):
        k, v, w, u = _inputs(B, T, C, scale, seed=91 + n)
        w = w * (wmax / 2)
        s0 = _chunk_state(kind, B, C, seed=191 + n)
        case = f"{n} (B={B}, T={T}, C={C}, chunk L={L}, {kind} initial state, keys ~ N(0, {scale:g}^2), w <= {wmax:g})"
        y, (a, b, p) = _drive_chunks(fn, k, v, w, u, s0, L, case)
        d = [x.double() for x in (k, v, w, u)]
        want, sT = wkv4.naive(*d, [x.double() for x in s0], True)
        wrong = {kind_: _drive_chunks(lambda *args, kk=kind_: _chunk_mistake(*args, kk), *d,
                                      [x.double() for x in s0], L, None)
                 for kind_ in ("age", "state_not_decayed", "handoff_tokens", "handoff_state")}
        hints = {"age": "inside the chunk a past token j < i has aged i-1-j steps (the newest past token not at "
                        "all), as in Eq. 16",
                 "state_not_decayed": "the state's column has aged i steps at row i: its log weight is p - i w",
                 "handoff_tokens": "at the chunk's end token j has aged L-1-j steps (the last token none): p_new "
                                   "uses k_j - (L-1-j) w",
                 "handoff_state": "at the chunk's end the state carried in has aged L steps: its log weight is p - L w"}
        compare(case, y, want, tol=1e-5, name="y", hint=(
            "take each row's maximum over the in-chunk columns AND the state's column (log weight p - i w), so no "
            "exponent is positive; the chunk's log weights, that column, then the state carried to the chunk's "
            "end, as in wkv4.chunked"), mistakes={hints[kk]: wrong[kk][0] for kk in hints})
        for c, (name, got_s, want_s) in enumerate((("final a", a, sT.a), ("final b", b, sT.b), ("final p", p, sT.p))):
            compare(case, got_s, want_s, tol=1e-5, name=name, hint=(
                "after the chunk p must be the largest log weight, max(p - L w, max_j k_j - (L-1-j) w), and "
                "a, b the sums relative to it"), mistakes={hints[kk]: wrong[kk][1][c] for kk in hints})
    return len(_CHUNK_CASES)


# ---------------------------------------------------------------------------------------------
# 03.10: the backward pass from the weight matrix
# ---------------------------------------------------------------------------------------------
_GRAD_CASES = [(2, 8, 4, 3.0), (1, 33, 5, 40.0), (3, 15, 2, 1.0), (1, 1, 3, 1.0)]  # T = 1 last: its exact answer is 0


def _grad_parts(k, v, w, u, gy):
    """The weight matrix α [B, T(t), T(i), C], y, and G = dL/dλ (float64), for the mistakes."""
    T = k.shape[1]
    pos = torch.arange(T, dtype=k.dtype)
    age = pos[:, None] - 1 - pos[None, :]
    lam = k[:, None, :, :] - age[None, :, :, None] * w
    eye = torch.eye(T, dtype=torch.bool)[None, :, :, None]
    lam = torch.where(eye, (u + k)[:, :, None, :].expand_as(lam), lam)
    past = (age >= 0)[None, :, :, None]
    lam = lam.masked_fill(~(past | eye), float("-inf"))
    alpha = torch.softmax(lam, dim=2)
    y = (alpha * v[:, None]).sum(2)
    G = gy[:, :, None, :] * alpha * (v[:, None, :, :] - y[:, :, None, :])
    return alpha, y, G, age[None, :, :, None].expand_as(G), past, eye


@exercise("03.10", "the WKV-4 backward pass from the weight matrix", difficulty="hard", spec="""
    Write wkv_backward(k, v, w, u, gy) -> (gk, gv, gw, gu): the gradients of L = sum(gy * y),
    y = WKV-4 of (k, v, w, u) from the empty state, without autograd. k, v, gy are [B, T, C]
    float32, w >= 0 and u are [C]; gk, gv are [B, T, C] and gw, gu are [C] (w and u are shared by
    the batch: add up over it). Write y_t = sum_{i<=t} alpha_{t,i} v_i with alpha_{t,.} the
    softmax of the log weights lambda_{t,i} = k_i - (t-1-i) w (i < t) and lambda_{t,t} = u + k_t;
    compute alpha as a [B, T, T, C] tensor with torch.softmax (keys go well past 88, where e^k
    overflows float32). The one fact you need: for a softmax average, d y_t / d lambda_{t,i} = alpha_{t,i} (v_i - y_t). Then
    find which log weights hold k_i, u and w. The checker compares with autograd through
    wkv4.naive in float64.""")
def _check_03_10(fn):
    for n, (B, T, C, scale) in enumerate(_GRAD_CASES):
        k, v, w, u = _inputs(B, T, C, scale, seed=101 + n)
        gy = torch.randn(B, T, C, generator=torch.Generator().manual_seed(201 + n))
        case = f"{n} (B={B}, T={T}, C={C}, keys ~ N(0, {scale:g}^2))"
        out = call(fn, case, k, v, w, u, gy)
        if not (isinstance(out, tuple) and len(out) == 4):
            raise AssertionError(f"case {case}: expected (gk, gv, gw, gu), got {type(out).__name__}")
        xs = [x.double().requires_grad_() for x in (k, v, w, u)]
        y, _ = wkv4.naive(*xs)
        (y * gy.double()).sum().backward()
        want = [x.grad for x in xs]
        kd, vd, wd, ud, gyd = (x.double() for x in (k, v, w, u, gy))
        alpha, yd, G, age, past, eye = _grad_parts(kd, vd, wd, ud, gyd)
        Gd = torch.where(eye, G, 0.0)
        mistakes = {
            "gk": {"y_t depends on k_i through the normaliser too: dL/dlambda_{t,i} = gy_t alpha_{t,i} (v_i - y_t)":
                   (gyd[:, :, None] * alpha * vd[:, None]).sum(1),
                   "k_i is in the log weight of EVERY row t >= i, not only the diagonal one: add G_{t,i} over t":
                   Gd.sum(2),
                   "sum over the rows t of column i (token i's key is used by the outputs t >= i), not over i":
                   G.sum(2)},
            "gv": {"v_i is used by every output t >= i: gv_i = sum_t gy_t alpha_{t,i} (a sum over t, not i)":
                   (gyd[:, :, None] * alpha).sum(2)},
            # ages t-i instead of t-1-i, and the diagonal counted with age -1, give the same gw (each row of
            # G adds up to zero)
            "gw": {"the age of past token i at step t is t-1-i (the newest past token is not decayed), not t-i; and "
                   "the current token's log weight u + k_t holds no w, so leave the diagonal out of w's sum":
                   -(torch.where(past, G * (age + 1), 0.0)).sum((0, 1, 2)),
                   "w enters the log weight with a minus sign: lambda_{t,i} = k_i - (t-1-i) w":
                   (torch.where(past, G * age, 0.0)).sum((0, 1, 2))},
            "gu": {"u sits in the diagonal log weight only, and y_t depends on it through the normaliser too: "
                   "gu = sum gy_t alpha_{t,t} (v_t - y_t)": torch.where(eye, gyd[:, :, None] * alpha * vd[:, None],
                                                                       0.0).sum((0, 1, 2))},
        }
        for name, got, ref in zip(("gk", "gv", "gw", "gu"), out, want):
            if name != "gv" and T == 1:  # one token: y = v whatever k, w, u are, so the exact answer is zero
                if not (isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(ref.shape)
                        and torch.isfinite(got).all() and got.abs().max() <= 1e-6):
                    raise AssertionError(f"case {case}: {name}: with T = 1 the output is v_1 whatever k, w and u "
                                         f"are, so {name} must be zeros of shape {tuple(ref.shape)}")
                continue
            compare(case, got, ref, tol=2e-5, name=name, mistakes=mistakes[name], hint=(
                "G_{t,i} = gy_t alpha_{t,i} (v_i - y_t) is dL/dlambda_{t,i}: gk is its column sum over t, gu the sum "
                "of its diagonal, gw minus the sum of (t-1-i) G over the past entries; gv_i = sum_t gy_t alpha_{t,i}; "
                "w and u add up over the batch"))
    return len(_GRAD_CASES)
