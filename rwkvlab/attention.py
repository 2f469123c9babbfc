"""Causal softmax attention, the baseline every later chapter is measured against.

Shapes follow the rest of the book: queries and keys ``[B, T, H, K]``, values ``[B, T, H, V]``,
output ``[B, T, H, V]`` in the input dtype. For every head and every position ``t``

    o_t = Σ_{i ≤ t} softmax_i(scale · q_t · k_i) v_i,        scale = K^{-1/2} by default,

i.e. each output is a weighted average of the values seen so far, with weights from a softmax of
query–key dot products. The rungs:

- ``naive``: a loop over ``t`` (float64-friendly; what a reader checks by hand);
- ``parallel``: the masked ``T × T`` score matrix, the textbook matrix form;
- ``chunked``: flash-attention style, over blocks of keys with a running max and normaliser
  (online softmax); never holds more than one ``block × block`` tile of scores;
- ``triton_chunked``: the same algorithm as a Triton kernel, forward only;
- ``kv_cache_step``: decode one new token against a cache of all past keys and values.

And the counter-example that shows what really forces the cache, **linear attention**
(Katharopoulos et al. 2020, arXiv 2006.16236, Eqs. 4–6 and 16–20): replace the kernel
exp(q·k) by φ(q)·φ(k) with a finite feature map φ (theirs: elu(x) + 1), and

    o_t = Σ_{i ≤ t} (φ(q_t)·φ(k_i)) v_i / Σ_{i ≤ t} φ(q_t)·φ(k_i)
        = φ(q_t)ᵀ S_t / φ(q_t)ᵀ z_t,   S_t = S_{t−1} + φ(k_t) v_tᵀ,  z_t = z_{t−1} + φ(k_t),

so the weights still depend on the query, yet a K×V state (plus a K-vector) replaces the cache:

- ``linear_naive``: the first line, a loop over t with the sum over i ≤ t written out;
- ``linear_recurrent``: the second line, one state update per token;
- ``split_rank``: the test that tells the two kinds apart, the rank of the block of weights
  that the future (t ≥ t0) gives the past (i < t0).

``scale`` is ``None`` (K^{-1/2}) or a finite real number (int, float or numpy scalar; not bool),
as for :mod:`rwkvlab.wkv6` and :mod:`rwkvlab.wkv7`; B, H, K, V ≥ 1.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import device, validate

__all__ = ["naive", "parallel", "chunked", "triton_chunked", "kv_cache_step", "KVCache",
           "elu_feature_map", "linear_naive", "linear_recurrent", "split_rank"]


def _check(q, k, v, scale):
    """Validate the [B, T, H, K] / [B, T, H, V] contract and resolve the default scale."""
    B, T, H, K, V, _ = validate.linear_attention(keys={"q": q, "k": k}, values={"v": v})
    scale = validate.real("scale", scale, allow_none=True)   # finite, real (numpy scalars too), not bool
    if scale is None:
        scale = 1.0 / math.sqrt(K)
    return B, T, H, K, V, scale


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    # float64 inputs stay float64 (references); everything else accumulates in float32
    return torch.float64 if x.dtype == torch.float64 else torch.float32

def naive(q, k, v, scale=None):
    """Causal softmax attention, one query position at a time.

    q, k: [B, T, H, K]; v: [B, T, H, V] -> o: [B, T, H, V].
    o_t = Σ_{i≤t} exp(s_ti) v_i / Σ_{i≤t} exp(s_ti), with s_ti = scale · q_t·k_i.
    """
    B, T, H, K, V, scale = _check(q, k, v, scale)
    acc, out_dtype = _acc_dtype(q), v.dtype
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    outs = []
    for t in range(T):
        # scores of query t against keys 0..t: [B, H, t+1]
        s = torch.einsum("bhk,bihk->bhi", q[:, t], k[:, : t + 1]) * scale
        p = torch.softmax(s, dim=-1)
        outs.append(torch.einsum("bhi,bihv->bhv", p, v[:, : t + 1]))
    return torch.stack(outs, dim=1).to(out_dtype)


def parallel(q, k, v, scale=None):
    """Causal softmax attention as one masked T × T matrix per head.

    q, k: [B, T, H, K]; v: [B, T, H, V] -> o: [B, T, H, V].
    S = scale · Q Kᵀ (T × T), S_ti = −∞ for i > t, O = softmax_rows(S) V.
    Memory: the score matrix alone is B·H·T² numbers.
    """
    B, T, H, K, V, scale = _check(q, k, v, scale)
    acc = _acc_dtype(q)
    s = torch.einsum("bthk,bihk->bhti", q.to(acc), k.to(acc)) * scale  # [B, H, T, T]
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    s = s.masked_fill(future, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhti,bihv->bthv", p, v.to(acc)).to(v.dtype)


def chunked(q, k, v, scale=None, block_size: int = 16):
    """Causal softmax attention over key blocks with an online softmax (flash-attention style).

    q, k: [B, T, H, K]; v: [B, T, H, V] -> o: [B, T, H, V].
    For each block of queries, keys are visited block by block while three running quantities
    are kept per query row: the max score m, the normaliser ℓ = Σ exp(s − m) and the unnormalised
    output a = Σ exp(s − m) v. When a new block raises the max to m', the old sums are rescaled by
    exp(m − m'), so the result equals the full softmax exactly; only block × block scores exist at
    any time.
    """
    B, T, H, K, V, scale = _check(q, k, v, scale)
    block_size = validate.positive_int("block_size", block_size)
    acc = _acc_dtype(q)
    q, k, v_ = q.to(acc), k.to(acc), v.to(acc)
    outs = []
    for i0 in range(0, T, block_size):
        i1 = min(i0 + block_size, T)
        qi = q[:, i0:i1]                                                   # [B, Bq, H, K]
        m = torch.full((B, H, i1 - i0), float("-inf"), dtype=acc, device=q.device)
        ell = torch.zeros(B, H, i1 - i0, dtype=acc, device=q.device)
        a = torch.zeros(B, H, i1 - i0, V, dtype=acc, device=q.device)
        for j0 in range(0, i1, block_size):                               # causal: keys up to i1
            j1 = min(j0 + block_size, i1)
            s = torch.einsum("bthk,bihk->bhti", qi, k[:, j0:j1]) * scale  # [B, H, Bq, Bk]
            rows = torch.arange(i0, i1, device=q.device)[:, None]
            cols = torch.arange(j0, j1, device=q.device)[None, :]
            s = s.masked_fill(cols > rows, float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1))
            alpha = torch.exp(m - m_new)                                   # rescales the old sums
            p = torch.exp(s - m_new[..., None])
            ell = ell * alpha + p.sum(dim=-1)
            a = a * alpha[..., None] + torch.einsum("bhti,bihv->bhtv", p, v_[:, j0:j1])
            m = m_new
        outs.append((a / ell[..., None]).permute(0, 2, 1, 3))              # [B, Bq, H, V]
    return torch.cat(outs, dim=1).to(v.dtype)


@triton.jit
def _flash_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, T, H, K, V, scale,
                      BT: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      UPCAST: tl.constexpr):
    # one program per (batch·head, block of BT queries); [B, T, H, *] layout, contiguous
    i_bh, i_t = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)          # query positions this program owns
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    m_t, m_k, m_v = o_t < T, o_k < K, o_v < V

    # the query tile stays in registers for the whole loop
    q_off = ((i_b * T + o_t[:, None]) * H + i_h) * K + o_k[None, :]
    b_q = tl.load(q_ptr + q_off, mask=m_t[:, None] & m_k[None, :], other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)

    # running max m, normaliser l and unnormalised output acc, per query row
    b_m = tl.full([BT], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BT], dtype=tl.float32)
    b_acc = tl.zeros([BT, BV], dtype=tl.float32)

    hi = tl.minimum((i_t + 1) * BT, T)         # causal: no key after the last query of the block
    for s0 in range(0, hi, BS):
        o_s = s0 + tl.arange(0, BS)
        m_s = o_s < T
        k_off = ((i_b * T + o_s[:, None]) * H + i_h) * K + o_k[None, :]
        v_off = ((i_b * T + o_s[:, None]) * H + i_h) * V + o_v[None, :]
        b_k = tl.load(k_ptr + k_off, mask=m_s[:, None] & m_k[None, :], other=0.0)
        b_v = tl.load(v_ptr + v_off, mask=m_s[:, None] & m_v[None, :], other=0.0)
        if UPCAST:
            b_k = b_k.to(tl.float32)
            b_v = b_v.to(tl.float32)
        # scores s = scale · q kᵀ for this tile, −∞ where the key is in the future or past T
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision="ieee") * scale   # ieee: no TF32 rounding
        keep = (o_s[None, :] <= o_t[:, None]) & m_s[None, :]
        b_s = tl.where(keep, b_s, float("-inf"))
        # online softmax: raise the max, rescale the old sums by exp(m − m'), add the new tile
        m_new = tl.maximum(b_m, tl.max(b_s, axis=1))
        alpha = tl.exp(b_m - m_new)
        b_p = tl.exp(b_s - m_new[:, None])
        b_l = b_l * alpha + tl.sum(b_p, axis=1)
        b_acc = b_acc * alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision="ieee").to(tl.float32)
        b_m = m_new

    b_o = b_acc / b_l[:, None]
    o_off = ((i_b * T + o_t[:, None]) * H + i_h) * V + o_v[None, :]
    tl.store(o_ptr + o_off, b_o.to(o_ptr.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


def triton_chunked(q, k, v, scale=None, block_size: int = 16):
    """Causal softmax attention as a Triton flash-attention forward kernel. **Forward only.**

    q, k: [B, T, H, K]; v: [B, T, H, V] -> o: [B, T, H, V] (no autograd graph: the result does
    not require grad; train through ``parallel`` or ``chunked``).
    Grid: one program per (batch·head, block of ``block_size`` queries); each program loops over
    key blocks with the online softmax of :func:`chunked`. ``block_size`` is a power of two ≥ 16
    (``tl.dot`` needs tiles of at least 16); K and V are padded to powers of two with masks.
    """
    B, T, H, K, V, scale = _check(q, k, v, scale)
    block_size = validate.positive_int("block_size", block_size, power_of_two=True, minimum=16)
    validate.kernel_device("q", q)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = torch.empty(B, T, H, V, dtype=v.dtype, device=v.device)
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, triton.next_power_of_2(V))
    # the interpreter computes tl.dot wrongly on half-precision operands: upcast there
    upcast = device.interpreting() or q.dtype == torch.float64
    grid = (B * H, triton.cdiv(T, block_size))
    _flash_fwd_kernel[grid](q, k, v, o, T, H, K, V, scale,
                            BT=block_size, BS=block_size, BK=BK, BV=BV, UPCAST=upcast)
    return o


class KVCache(NamedTuple):
    """Keys [B, L, H, K] and values [B, L, H, V] of every token decoded so far."""

    keys: torch.Tensor
    values: torch.Tensor

    @property
    def length(self) -> int:
        return self.keys.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes the cache occupies: grows linearly with the number of tokens seen."""
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()


def kv_cache_step(q_t, k_t, v_t, cache: KVCache | None = None, scale=None):
    """Decode one token: append (k_t, v_t) to the cache, attend from q_t to everything in it.

    q_t, k_t: [B, H, K]; v_t: [B, H, V]; cache: :class:`KVCache` or None (empty)
    -> (o_t [B, H, V], new cache of length L + 1).
    o_t = Σ_{i ≤ t} softmax_i(scale · q_t·k_i) v_i — the last row of :func:`parallel`, at a cost
    of O(L) per token and a cache that keeps every past key and value.
    """
    validate.tensor("q_t", q_t, ndim=3)
    validate.tensor("k_t", k_t, ndim=3)
    validate.tensor("v_t", v_t, ndim=3)
    validate.same_shape("k_t", k_t, tuple(q_t.shape), "q_t")
    if v_t.shape[:2] != q_t.shape[:2]:
        raise ValueError(f"v_t: expected shape (B, H, V) with (B, H) = {tuple(q_t.shape[:2])} from q_t, "
                         f"got {tuple(v_t.shape)}")
    if len({q_t.dtype, k_t.dtype, v_t.dtype}) > 1:
        raise ValueError("q_t, k_t, v_t: expected one dtype for all")
    B, H, K = q_t.shape
    V = v_t.shape[-1]
    scale = validate.real("scale", scale, allow_none=True)
    if scale is None:
        scale = 1.0 / math.sqrt(K)
    if cache is None:
        keys, values = k_t[:, None], v_t[:, None]
    else:
        if not isinstance(cache, KVCache):
            raise ValueError(f"cache: expected a KVCache or None, got {type(cache).__name__}")
        if cache.keys.shape[0] != B or cache.keys.shape[2:] != (H, K) or cache.values.shape[2:] != (H, V):
            raise ValueError(f"cache: expected keys [B, L, H, K] = [{B}, L, {H}, {K}] and values "
                             f"[{B}, L, {H}, {V}], got {tuple(cache.keys.shape)} and {tuple(cache.values.shape)}")
        keys = torch.cat([cache.keys, k_t[:, None]], dim=1)
        values = torch.cat([cache.values, v_t[:, None]], dim=1)
    acc = _acc_dtype(q_t)
    s = torch.einsum("bhk,bihk->bhi", q_t.to(acc), keys.to(acc)) * scale
    o = torch.einsum("bhi,bihv->bhv", torch.softmax(s, dim=-1), values.to(acc)).to(v_t.dtype)
    return o, KVCache(keys, values)


# ---------------------------------------------------------------------------------------------
# linear attention (Katharopoulos et al. 2020, arXiv 2006.16236)
# ---------------------------------------------------------------------------------------------

def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = elu(x) + 1 > 0, the feature map of Katharopoulos et al. (their Eq. 7)."""
    return torch.nn.functional.elu(x) + 1


_FEATURE_MAPS = {"elu": elu_feature_map, "identity": lambda x: x}


def _linear_check(q, k, v, feature_map, normalize):
    B, T, H, K, V, _ = validate.linear_attention(keys={"q": q, "k": k}, values={"v": v})
    if feature_map not in _FEATURE_MAPS:
        raise ValueError(f"feature_map: expected one of {sorted(_FEATURE_MAPS)}, got {feature_map!r}")
    if not isinstance(normalize, bool):
        raise ValueError(f"normalize: expected True or False, got {normalize!r}")
    if normalize and feature_map == "identity":
        raise ValueError("normalize: the denominator Σ φ(q)·φ(k) needs a positive feature map; "
                         "use feature_map='elu' or normalize=False")
    return B, T, H, K, V, _FEATURE_MAPS[feature_map]


def linear_naive(q, k, v, feature_map: str = "elu", normalize: bool = True):
    """Causal linear attention by its definition: for each t, a weighted sum over i ≤ t.

    q, k: [B, T, H, K]; v: [B, T, H, V] -> o: [B, T, H, V].
    o_t = Σ_{i≤t} (φ(q_t)·φ(k_i)) v_i / Σ_{i≤t} φ(q_t)·φ(k_i)   (``normalize=True``), or the
    numerator alone (``normalize=False``, the form RWKV-5/6, RetNet and GLA build on).
    ``feature_map``: ``"elu"`` (φ = elu + 1) or ``"identity"`` (φ(x) = x; only without the
    denominator, which could then be zero). The loop costs O(T²): it is the reference.
    """
    B, T, H, K, V, phi = _linear_check(q, k, v, feature_map, normalize)
    acc, out_dtype = _acc_dtype(q), v.dtype
    fq, fk, v = phi(q.to(acc)), phi(k.to(acc)), v.to(acc)
    outs = []
    for t in range(T):
        wts = torch.einsum("bhk,bihk->bhi", fq[:, t], fk[:, : t + 1])     # [B, H, t+1]: φ(q_t)·φ(k_i)
        o = torch.einsum("bhi,bihv->bhv", wts, v[:, : t + 1])
        if normalize:
            o = o / wts.sum(-1, keepdim=True)
        outs.append(o)
    return torch.stack(outs, dim=1).to(out_dtype)


def linear_recurrent(q, k, v, feature_map: str = "elu", normalize: bool = True,
                     output_final_state: bool = False):
    """Causal linear attention as an RNN: a K×V state and a K-vector, whatever T.

    q, k: [B, T, H, K]; v: [B, T, H, V] -> o [B, T, H, V], or ``(o, (S, z))`` with
    ``output_final_state=True`` (S: [B, H, K, V], z: [B, H, K], in float32 or float64).
    S_t = S_{t−1} + φ(k_t) v_tᵀ, z_t = z_{t−1} + φ(k_t) (the update comes first: token t reads
    itself), o_t = S_tᵀ φ(q_t) / (z_t·φ(q_t)). Same arguments as :func:`linear_naive`.
    """
    B, T, H, K, V, phi = _linear_check(q, k, v, feature_map, normalize)
    acc, out_dtype = _acc_dtype(q), v.dtype
    fq, fk, v = phi(q.to(acc)), phi(k.to(acc)), v.to(acc)
    S = torch.zeros(B, H, K, V, dtype=acc, device=q.device)
    z = torch.zeros(B, H, K, dtype=acc, device=q.device)
    outs = []
    for t in range(T):
        S = S + fk[:, t, :, :, None] * v[:, t, :, None, :]                 # + φ(k_t) v_tᵀ
        z = z + fk[:, t]
        o = torch.einsum("bhk,bhkv->bhv", fq[:, t], S)
        if normalize:
            o = o / torch.einsum("bhk,bhk->bh", fq[:, t], z)[..., None]
        outs.append(o)
    o = torch.stack(outs, dim=1).to(out_dtype)
    return (o, (S, z)) if output_final_state else o


def split_rank(weights: torch.Tensor, t0: int, rtol: float = 1e-10) -> int:
    """Numerical rank of the block ``weights[t0:, :t0]`` of a causal T × T weight matrix.

    If o_t = Σ_{i≤t} W_ti v_i and a recurrence carries, at the split t0, a state that is linear
    in the past values with n numbers per value channel, then every output t ≥ t0 sees the past
    only through those n numbers, so W[t0:, :t0] has rank ≤ n. The rank is therefore a lower
    bound on the state any such recurrence needs: ≤ m for linear attention with m features,
    min(t0, T − t0) (full) for exp(q·k) or a free bias, i.e. a cache of every past key.
    Singular values below ``rtol`` times the largest count as zero. Row scalings (a softmax's
    denominator) do not change the rank.
    """
    validate.tensor("weights", weights, ndim=2)
    T = weights.shape[0]
    if weights.shape != (T, T):
        raise ValueError(f"weights: expected a square T × T matrix, got {tuple(weights.shape)}")
    t0 = validate.positive_int("t0", t0)
    if t0 >= T:
        raise ValueError(f"t0: expected 1 <= t0 < T = {T}, got {t0}")
    sv = torch.linalg.svdvals(weights[t0:, :t0].double())
    return int((sv > rtol * sv[0]).sum()) if sv[0] > 0 else 0
