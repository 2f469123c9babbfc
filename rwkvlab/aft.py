"""AFT, the Attention Free Transformer (Zhai et al. 2021, arXiv 2105.14103, §3.1–3.2).

AFT has no heads and no query–key dot product. Tensors are ``[B, T, D]`` (one channel per
feature), the learned pairwise position bias ``w`` is ``[T, T]``, one scalar per (t, t') pair
shared by every channel. Causal AFT-full (Eq. 2 with the sum limited to t' ≤ t, footnote 2):

    Y_t = σ(Q_t) ⊙ Σ_{t'≤t} exp(K_{t'} + w_{t,t'}) ⊙ V_{t'} / Σ_{t'≤t} exp(K_{t'} + w_{t,t'})

with σ the sigmoid and the division elementwise: per channel, a weighted average of past values
whose weights come from the key *alone* plus a position bias; the query only gates the result.

Rungs: ``naive`` (loop over t), ``parallel`` (the T × T form, stabilised by the per-channel max
of K + w), ``chunked`` (block by block with a running max, like online softmax),
``triton_chunked`` (the same as a Triton kernel, forward only). Variants: ``simple`` (AFT-simple,
no bias), ``local`` (AFT-local: bias 0, *not* −∞, outside a window of size s), and ``recurrent``
(the bias w_{t,t'} = −(t − t')·λ, which turns the T × T sum into an RNN; see chapter 03).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import validate

__all__ = ["naive", "parallel", "chunked", "triton_chunked", "simple", "local", "recurrent", "decay_bias"]


def _check(q, k, v, w=None):
    """Validate q, k, v [B, T, D] (one dtype, finite) and w [T, T]; return (B, T, D).

    Structure (ranks, shapes, dtypes, devices) first, values (finiteness) last."""
    validate.tensor("q", q, ndim=3, finite=False)
    B, T, D = q.shape
    if T < 1:
        raise ValueError(f"q: expected T >= 1, got shape {tuple(q.shape)}")
    validate.nonempty("q", q.shape, {"B": B, "D": D})
    for name, x in (("k", k), ("v", v)):
        validate.tensor(name, x, ndim=3, finite=False)
        validate.same_shape(name, x, (B, T, D), "q")
    tensors = {"q": q, "k": k, "v": v}
    if w is not None:
        validate.tensor("w", w, ndim=2, finite=False)
        validate.same_shape("w", w, (T, T), "q's T")
        tensors["w"] = w
    if len({x.dtype for x in tensors.values()}) > 1:
        raise ValueError(f"{', '.join(tensors)}: expected one dtype for all, got "
                         f"{sorted(str(x.dtype) for x in tensors.values())}")
    validate.same_device(tensors)
    for name, x in tensors.items():
        validate.tensor(name, x)
    return B, T, D


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    # float64 inputs stay float64 (references); everything else accumulates in float32
    return torch.float64 if x.dtype == torch.float64 else torch.float32



def naive(q, k, v, w):
    """Causal AFT-full, one output position at a time.

    q, k, v: [B, T, D]; w: [T, T] -> Y: [B, T, D].
    Y_t = σ(Q_t) ⊙ Σ_{t'≤t} e^{K_{t'} + w_{t,t'}} V_{t'} / Σ_{t'≤t} e^{K_{t'} + w_{t,t'}}.
    """
    B, T, D = _check(q, k, v, w)
    acc, out_dtype = _acc_dtype(q), v.dtype
    q, k, v, w = q.to(acc), k.to(acc), v.to(acc), w.to(acc)
    ys = []
    for t in range(T):
        z = k[:, : t + 1] + w[t, : t + 1, None]          # [B, t+1, D]: logit of each past token
        z = z - z.amax(dim=1, keepdim=True)               # per channel: the largest weight is e^0
        e = torch.exp(z)
        ys.append(torch.sigmoid(q[:, t]) * (e * v[:, : t + 1]).sum(1) / e.sum(1))
    return torch.stack(ys, dim=1).to(out_dtype)


def parallel(q, k, v, w):
    """Causal AFT-full as one T × T × D tensor of logits (memory O(B·T²·D)).

    q, k, v: [B, T, D]; w: [T, T] -> Y: [B, T, D].
    Z_{t,t',d} = K_{t',d} + w_{t,t'} (−∞ for t' > t); weights = softmax over t' of Z, per (t, d);
    subtracting max_{t'} Z_{t,t',d} keeps every exponent ≤ 0, so nothing overflows.
    """
    B, T, D = _check(q, k, v, w)
    acc = _acc_dtype(q)
    z = k.to(acc)[:, None, :, :] + w.to(acc)[None, :, :, None]          # [B, T, T', D]
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    z = z.masked_fill(future[None, :, :, None], float("-inf"))
    a = torch.softmax(z, dim=2)                                          # over t', per channel
    y = torch.sigmoid(q.to(acc)) * torch.einsum("btsd,bsd->btd", a, v.to(acc))
    return y.to(v.dtype)


def chunked(q, k, v, w, block_size: int = 16):
    """Causal AFT-full block by block, with a running max per (query, channel).

    q, k, v: [B, T, D]; w: [T, T] -> Y: [B, T, D].
    For each block of queries, key blocks are visited in order keeping m (max logit so far),
    den = Σ e^{Z − m} and num = Σ e^{Z − m} V; a larger max rescales both by e^{m − m'}.
    Only a block × block × D tile of logits exists at any time.
    """
    B, T, D = _check(q, k, v, w)
    block_size = validate.positive_int("block_size", block_size)
    acc = _acc_dtype(q)
    qa, ka, va, wa = q.to(acc), k.to(acc), v.to(acc), w.to(acc)
    ys = []
    for i0 in range(0, T, block_size):
        i1 = min(i0 + block_size, T)
        m = torch.full((B, i1 - i0, D), float("-inf"), dtype=acc, device=q.device)
        num = torch.zeros(B, i1 - i0, D, dtype=acc, device=q.device)
        den = torch.zeros(B, i1 - i0, D, dtype=acc, device=q.device)
        for j0 in range(0, i1, block_size):                              # causal: keys < i1
            j1 = min(j0 + block_size, i1)
            z = ka[:, None, j0:j1] + wa[None, i0:i1, j0:j1, None]        # [B, Bq, Bk, D]
            rows = torch.arange(i0, i1, device=q.device)[:, None]
            cols = torch.arange(j0, j1, device=q.device)[None, :]
            z = z.masked_fill((cols > rows)[None, :, :, None], float("-inf"))
            m_new = torch.maximum(m, z.amax(dim=2))
            alpha = torch.exp(m - m_new)                                 # rescales the old sums
            e = torch.exp(z - m_new[:, :, None])
            num = num * alpha + (e * va[:, None, j0:j1]).sum(2)
            den = den * alpha + e.sum(2)
            m = m_new
        ys.append(torch.sigmoid(qa[:, i0:i1]) * num / den)
    return torch.cat(ys, dim=1).to(v.dtype)


@triton.jit
def _aft_fwd_kernel(q_ptr, k_ptr, v_ptr, w_ptr, y_ptr, T, D,
                    BT: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr):
    # one program per (batch, block of BD channels, block of BT queries); [B, T, D] contiguous
    i_b, i_d, i_t = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_t = i_t * BT + tl.arange(0, BT)          # query positions this program owns
    o_d = i_d * BD + tl.arange(0, BD)          # channels this program owns
    m_t, m_d = o_t < T, o_d < D

    # running max m, denominator and numerator per (query, channel)
    b_m = tl.full([BT, BD], float("-inf"), dtype=tl.float32)
    b_den = tl.zeros([BT, BD], dtype=tl.float32)
    b_num = tl.zeros([BT, BD], dtype=tl.float32)

    hi = tl.minimum((i_t + 1) * BT, T)         # causal: no key after the last query of the block
    for s0 in range(0, hi, BS):
        o_s = s0 + tl.arange(0, BS)
        m_s = o_s < T
        kv_off = (i_b * T + o_s[:, None]) * D + o_d[None, :]
        b_k = tl.load(k_ptr + kv_off, mask=m_s[:, None] & m_d[None, :], other=0.0).to(tl.float32)
        b_v = tl.load(v_ptr + kv_off, mask=m_s[:, None] & m_d[None, :], other=0.0).to(tl.float32)
        b_w = tl.load(w_ptr + o_t[:, None] * T + o_s[None, :],
                      mask=m_t[:, None] & m_s[None, :], other=0.0).to(tl.float32)
        # logits Z[t, t', d] = K[t', d] + w[t, t'], −∞ for future or out-of-range keys
        b_z = b_k[None, :, :] + b_w[:, :, None]                         # [BT, BS, BD]
        keep = (o_s[None, :] <= o_t[:, None]) & m_s[None, :]
        b_z = tl.where(keep[:, :, None], b_z, float("-inf"))
        # online max over t': raise it, rescale the old sums by exp(m − m'), add this tile
        m_new = tl.maximum(b_m, tl.max(b_z, axis=1))
        alpha = tl.exp(b_m - m_new)
        b_e = tl.exp(b_z - m_new[:, None, :])
        b_den = b_den * alpha + tl.sum(b_e, axis=1)
        b_num = b_num * alpha + tl.sum(b_e * b_v[None, :, :], axis=1)
        b_m = m_new

    # the query only gates: Y = σ(Q) ⊙ num / den
    y_off = (i_b * T + o_t[:, None]) * D + o_d[None, :]
    b_q = tl.load(q_ptr + y_off, mask=m_t[:, None] & m_d[None, :], other=0.0).to(tl.float32)
    b_y = tl.sigmoid(b_q) * b_num / b_den
    tl.store(y_ptr + y_off, b_y.to(y_ptr.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])


def triton_chunked(q, k, v, w, block_size: int = 16, block_d: int = 16):
    """Causal AFT-full as a Triton kernel. **Forward only** (the result carries no autograd graph).

    q, k, v: [B, T, D]; w: [T, T] -> Y: [B, T, D].
    Grid: one program per (batch, block of ``block_d`` channels, block of ``block_size``
    queries); each loops over key blocks with the running max of :func:`chunked`. There is no
    ``tl.dot``: AFT has no query–key product, only elementwise work on a [BT, BS, BD] tile.
    Both block sizes must be powers of two.
    """
    B, T, D = _check(q, k, v, w)
    block_size = validate.positive_int("block_size", block_size, power_of_two=True)
    block_d = validate.positive_int("block_d", block_d, power_of_two=True)
    validate.kernel_device("q", q)
    q, k, v, w = q.contiguous(), k.contiguous(), v.contiguous(), w.contiguous()
    y = torch.empty_like(v)
    grid = (B, triton.cdiv(D, block_d), triton.cdiv(T, block_size))
    _aft_fwd_kernel[grid](q, k, v, w, y, T, D, BT=block_size, BS=block_size, BD=block_d)
    return y


def simple(q, k, v, causal: bool = True):
    """AFT-simple: no position bias, so the weights are a softmax of K over time, per channel.

    q, k, v: [B, T, D] -> Y: [B, T, D].
    Non-causal (the paper's form): Y_t = σ(Q_t) ⊙ Σ_{t'} softmax_{t'}(K)_{t'} ⊙ V_{t'}, the same
    context vector for every t: O(T·D). Causal: the sum stops at t, computed as a scan that keeps
    a running max, numerator and denominator per channel (a constant-size state).
    """
    B, T, D = _check(q, k, v)
    acc = _acc_dtype(q)
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    if not causal:
        ctx = (torch.softmax(ka, dim=1) * va).sum(1, keepdim=True)      # [B, 1, D]
        return (torch.sigmoid(qa) * ctx).to(v.dtype)
    return recurrent(q, k, v, torch.zeros(D, dtype=q.dtype, device=q.device))


def local(q, k, v, w, s: int):
    """Causal AFT-local: the bias is used inside the window |t − t'| < s and is 0 outside it.

    q, k, v: [B, T, D]; w: [T, T]; s ≥ 0 -> Y: [B, T, D].
    Outside the window the bias is 0, not −∞: far tokens still contribute e^{K_{t'}} V_{t'}, so
    AFT-local keeps global connectivity. s = 0 gives AFT-simple; s ≥ T gives AFT-full.
    (Computed here through the T × T form; the paper's AFT-conv trick gives O(T·s·D).)
    """
    B, T, D = _check(q, k, v, w)
    s = validate.positive_int("s", s, minimum=0)   # the window size
    idx = torch.arange(T, device=w.device)
    inside = (idx[:, None] - idx[None, :]).abs() < s
    return parallel(q, k, v, torch.where(inside, w, torch.zeros_like(w)))


def decay_bias(T: int, lam: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """The bias w_{t,t'} = −(t − t')·λ (λ ≥ 0): older tokens weigh less, at a fixed rate. [T, T].

    Entries above the diagonal (t' > t) are never used by causal AFT; they are set to 0.
    """
    T = validate.positive_int("T", T)
    if validate.real("lam", lam) < 0:
        raise ValueError(f"lam: expected a finite number >= 0 (the decay rate), got {lam!r}")
    idx = torch.arange(T, device=device, dtype=dtype)
    return (-(idx[:, None] - idx[None, :]) * lam).tril()


def recurrent(q, k, v, lam):
    """Causal AFT with the bias w_{t,t'} = −(t − t')·λ_d, run as an RNN (per channel d).

    q, k, v: [B, T, D]; lam: [D], λ ≥ 0 -> Y: [B, T, D].
    Because e^{w_{t,t'}} = e^{−λ}·e^{w_{t−1,t'}}, the sums obey
        num_t = e^{−λ} num_{t−1} + e^{K_t} V_t,    den_t = e^{−λ} den_{t−1} + e^{K_t},
    and Y_t = σ(Q_t) ⊙ num_t / den_t. The state (num, den) has a constant size, kept here with a
    running exponent p (num and den are stored divided by e^p) so nothing overflows.
    With one λ for all channels this equals AFT-full with ``decay_bias(T, λ)``; λ = 0 is causal
    AFT-simple. (A per-channel λ leaves AFT's shared bias behind: that step is RWKV-4's.)
    """
    B, T, D = _check(q, k, v)
    validate.tensor("lam", lam, ndim=1, finite=False)
    if lam.shape[0] != D:
        raise ValueError(f"lam: expected shape ({D},) (one decay rate per channel of q), got {tuple(lam.shape)}")
    validate.same_device({"q": q, "lam": lam})
    validate.tensor("lam", lam)
    if (lam < 0).any():
        raise ValueError(f"lam: decay rates must be >= 0, got min {lam.min().item():.3g}")
    acc = _acc_dtype(q)
    qa, ka, va, la = q.to(acc), k.to(acc), v.to(acc), lam.to(acc)
    num = torch.zeros(B, D, dtype=acc, device=q.device)
    den = torch.zeros(B, D, dtype=acc, device=q.device)
    p = torch.full((B, D), float("-inf"), dtype=acc, device=q.device)
    ys = []
    for t in range(T):
        # decay the old state (p − λ), add e^{K_t}; rescale both to the new exponent p'
        p_new = torch.maximum(p - la, ka[:, t])
        a, b = torch.exp(p - la - p_new), torch.exp(ka[:, t] - p_new)
        num = a * num + b * va[:, t]
        den = a * den + b
        p = p_new
        ys.append(torch.sigmoid(qa[:, t]) * num / den)
    return torch.stack(ys, dim=1).to(v.dtype)
